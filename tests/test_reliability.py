"""
Reliability (exact resume is in test_train.py): checkpoints that survive kill -9 at any moment, safe loading
(no pickled code runs), a NaN loss that stops the run without touching the last checkpoint, and one clear line
(no traceback, nothing damaged) for every kind of bad input, which library code raises as its UsageError
(a plain Python process catches it) and a script prints. Run: python -m pytest tests/test_reliability.py
"""
import glob
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from nanogpt import checkpoints
from nanogpt import device
from nanogpt import loading
from conftest import REPO, TINY, char_samples_ok, digest, iter_losses, one_line_error, run, spawn
from nanogpt.device import setup_device
from nanogpt.util import UsageError

def test_kill_9_never_leaves_a_broken_checkpoint(repo):
    """kill -9 while checkpoints are being written and while training; what is on disk always works."""
    args = [*TINY, '--n_layer=4', '--n_embd=192', '--n_head=4', '--eval_interval=1', '--eval_iters=1',
            '--max_iters=1000000', '--out_dir=out']
    out = os.path.join(repo, 'out')
    killed_mid_write = 0
    for attempt in range(6):
        init = 'resume' if os.path.exists(os.path.join(out, 'ckpt.pt')) else 'scratch'
        p = spawn(repo, 'train.py', *args, f'--init_from={init}')
        deadline = time.time() + 60
        while time.time() < deadline and not os.path.exists(os.path.join(out, 'ckpt.pt')):
            time.sleep(0.01)
        if attempt % 2 == 0:  # during checkpointing: as soon as a temporary file shows up
            while time.time() < deadline and not glob.glob(os.path.join(out, '*.tmp')):
                time.sleep(0.0005)
        else:  # during training, at some moment
            time.sleep(0.3 + 0.2 * attempt)
        p.kill()
        p.wait()
        killed_mid_write += bool(glob.glob(os.path.join(out, '*.tmp')))
        # what sample.py and a resume read: a whole checkpoint whose optimizer file exists
        ckpt = checkpoints.load_checkpoint(os.path.join(out, 'ckpt.pt'))
        loading.model_from_checkpoint(ckpt)
        assert checkpoints.load_optimizer_state(out, ckpt)['optimizer']['state']
    assert killed_mid_write >= 1  # at least one kill really landed inside a checkpoint write
    i = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)['iter_num']
    out_text = run(repo, 'train.py', *args, '--init_from=resume', f'--max_iters={i + 2}').stdout
    assert sorted(iter_losses(out_text)) == [i, i + 1, i + 2]
    assert not glob.glob(os.path.join(out, '*.tmp'))  # the next save cleans up
    assert len(glob.glob(os.path.join(out, 'optimizer-*.pt'))) == 1


def test_nan_loss_stops_and_keeps_the_checkpoint(trained_copy):
    repo = trained_copy
    before = digest(os.path.join(repo, 'out', 'ckpt.pt'))
    p = run(repo, 'train.py', *TINY, '--init_from=resume', '--out_dir=out', '--max_iters=30', '--eval_interval=3',
            '--learning_rate=1e30', '--grad_clip=0.0', '--warmup_iters=0', '--decay_lr=False', check=False)
    assert p.returncode == 1 and 'Traceback' not in p.stderr
    assert re.fullmatch(r"error: the training loss is not finite at iter \d+; stopping \(the last checkpoint in out "
                        r"is untouched\)", p.stderr.strip()), p.stderr
    assert digest(os.path.join(repo, 'out', 'ckpt.pt')) == before


class Payload:
    def __reduce__(self):
        return (os.system, ('touch PWNED',))


def test_pickled_code_never_runs(trained_copy):
    repo = trained_copy
    ckpt = torch.load(os.path.join(repo, 'out', 'ckpt.pt'), weights_only=True)
    ckpt['config']['evil'] = Payload()
    torch.save(ckpt, os.path.join(repo, 'out', 'ckpt.pt'))
    p = run(repo, 'sample.py', '--out_dir=out', '--max_new_tokens=3', '--num_samples=1', check=False)
    assert p.returncode == 1 and 'Traceback' not in p.stderr
    assert 'holds Python objects besides tensors and plain values' in p.stderr and '--trust_checkpoint=True' in p.stderr
    assert not os.path.exists(os.path.join(repo, 'PWNED'))
    # nanoGPT's meta.pkl is read by an unpickler that builds no objects but plain data
    data = os.path.join(repo, 'data', 'tiny_char')
    os.rename(os.path.join(data, 'meta.json'), os.path.join(data, 'meta.json.bak'))
    with open(os.path.join(data, 'meta.pkl'), 'wb') as f:
        pickle.dump({'vocab_size': 3, 'itos': {0: 'a'}, 'x': Payload()}, f)
    ckpt.pop('tokenizer')  # a checkpoint from before they carried their tokenizer reads its dataset's
    torch.save({**ckpt, 'config': {'dataset': 'tiny_char'}}, os.path.join(repo, 'out', 'ckpt.pt'))
    p = run(repo, 'sample.py', '--out_dir=out', '--max_new_tokens=3', check=False)
    assert p.returncode == 1 and 'refusing to load' in p.stderr and 'Traceback' not in p.stderr
    assert not os.path.exists(os.path.join(repo, 'PWNED'))


def test_trusted_legacy_checkpoint_loads_with_the_flag(trained_copy):
    """Some nanoGPT forks pickle an argparse.Namespace as the config: refused unless trusted."""
    import argparse
    repo = trained_copy
    ckpt = torch.load(os.path.join(repo, 'out', 'ckpt.pt'), weights_only=True)
    ckpt['args'] = argparse.Namespace(lr=1.0)
    torch.save(ckpt, os.path.join(repo, 'out', 'ckpt.pt'))
    args = ['--out_dir=out', '--max_new_tokens=3', '--num_samples=1']
    assert run(repo, 'sample.py', *args, check=False).returncode == 1
    assert char_samples_ok(run(repo, 'sample.py', *args, '--trust_checkpoint=True').stdout, 1, 3)


def test_nanogpt_meta_pkl_is_read(trained_copy):
    """A checkpoint without its tokenizer (nanoGPT's, or one from before they carried it) reads its dataset's."""
    import json
    repo = trained_copy
    ckpt = torch.load(os.path.join(repo, 'out', 'ckpt.pt'), weights_only=True)
    ckpt.pop('tokenizer')
    torch.save(ckpt, os.path.join(repo, 'out', 'ckpt.pt'))
    data = os.path.join(repo, 'data', 'tiny_char')
    with open(os.path.join(data, 'meta.json')) as f:
        itos = json.load(f)['itos']
    os.remove(os.path.join(data, 'meta.json'))
    with open(os.path.join(data, 'meta.pkl'), 'wb') as f:
        meta = {'vocab_size': len(itos), 'itos': dict(enumerate(itos)), 'stoi': {c: i for i, c in enumerate(itos)}}
        pickle.dump(meta, f)
    out = run(repo, 'sample.py', '--out_dir=out', '--max_new_tokens=10', '--num_samples=1', '--start=First').stdout
    assert 'Loading character vocabulary of tiny_char' in out and '\nFirst' in out


def test_no_unsafe_load_in_the_code():
    sources = glob.glob(os.path.join(REPO, '*.py')) + glob.glob(os.path.join(REPO, 'data', '*', '*.py'))
    for path in sources:
        with open(path) as f:
            text = f.read()
        assert 'pickle.load(' not in text and 'pickle.loads(' not in text, path
        for call in re.findall(r'torch\.load\(.*', text):  # each call is on one line
            assert 'weights_only=True' in call or 'weights_only=not trust' in call, (path, call)


# -----------------------------------------------------------------------------
# bad input: one line on stderr, non-zero exit, no traceback

@pytest.mark.parametrize('args,expected', [
    (['--init_from=resume', '--out_dir=empty'], 'no checkpoint at empty/ckpt.pt'),
    (['--init_from=resume', '--n_layer=3'], 'has n_layer=2, but n_layer=3 was asked'),
    (['--init_from=resume', '--block_size=32'], "block_size 32 is larger than the model's 16"),
    (['--batch_size=0'], 'batch_size must be positive, got 0'),
    (['--block_size=-1'], 'block_size must be positive, got -1'),
    (['--gradient_accumulation_steps=0'], 'gradient_accumulation_steps must be positive'),
    (['--lr_decay_iters=2'], 'lr_decay_iters (2) must be larger than warmup_iters (2)'),
    (['--block_size=100000'], 'fewer than block_size + 1 = 100001'),
    (['--device=tpu'], "unknown device 'tpu'"),
    (['--out_dir=data/tiny_char/train.bin/out'], "cannot write to out_dir 'data/tiny_char/train.bin/out'"),
    (['--n_embd=100', '--n_head=3'], 'n_embd (100) must be divisible by n_head (3)'),
    (['--dropout=-0.5'], 'dropout must be in [0, 1), got -0.5'),
    (['--dropout=1.5'], 'dropout must be in [0, 1), got 1.5'),
    (['--max_iters=-1'], 'max_iters must be >= 0, got -1'),
    (['--learning_rate=nan'], 'learning_rate must be finite and positive, got nan'),
    (['--batch_ramp_tokens=100', '--batch_ramp_start=5'],
     'batch_ramp_start (5) must be between 1 and gradient_accumulation_steps (1)'),
])
def test_train_bad_input_is_one_line_and_checkpoint_untouched(trained, args, expected):
    # TINY's settings come first, the bad one last; the checkpoint in out/ has n_layer=2, block_size=16
    before = digest(os.path.join(trained, 'out', 'ckpt.pt'))
    one_line_error(run(trained, 'train.py', *TINY, '--out_dir=out', *args, check=False), expected)
    assert digest(os.path.join(trained, 'out', 'ckpt.pt')) == before


def test_missing_bin_file_names_prepare(repo):
    os.remove(os.path.join(repo, 'data', 'tiny_char', 'val.bin'))
    one_line_error(run(repo, 'train.py', *TINY, check=False),
                   'no data/tiny_char/val.bin: prepare the dataset first (python data/tiny_char/prepare.py)')


@pytest.mark.parametrize('damage', ['truncate', 'garbage'])
def test_damaged_checkpoint_is_one_line_and_left_as_is(trained_copy, damage):
    repo = trained_copy
    path = os.path.join(repo, 'out', 'ckpt.pt')
    with open(path, 'rb') as f:
        data = f.read()
    with open(path, 'wb') as f:
        # garbage opens like a pickle of an unknown protocol, on which torch.load warns before failing
        f.write(data[:len(data) // 2] if damage == 'truncate' else b'\x80\x10' + os.urandom(1000))
    before = digest(path)
    for script in ('sample.py', 'train.py'):
        extra = ['--init_from=resume', *TINY] if script == 'train.py' else []
        one_line_error(run(repo, script, '--out_dir=out', *extra, check=False), 'cannot read checkpoint out/ckpt.pt')
    assert digest(path) == before


@pytest.mark.parametrize('args,expected', [
    (['--start='], 'the prompt is empty'),
    (['--start=FILE:nope.txt'], 'prompt file nope.txt does not exist'),
    (['--start=hello~'], "the prompt has the character '~'"),
    (['--max_new_tokens=0'], 'max_new_tokens must be positive, got 0'),
    (['--top_k=1000'], 'top_k=1000 is larger than the vocabulary'),
    (['--temperature=-1.0'], 'temperature must be >= 0'),
])
def test_sample_bad_input_is_one_line(trained, args, expected):
    one_line_error(run(trained, 'sample.py', '--out_dir=out', '--device=cpu', *args, check=False), expected)


def test_prompt_file_not_utf8_is_one_line(trained, tmp_path):
    (tmp_path / 'prompt.txt').write_bytes(b'\xff\xfe\x80 not text')
    one_line_error(run(trained, 'sample.py', '--out_dir=out', f'--start=FILE:{tmp_path / "prompt.txt"}', check=False),
                   'is not UTF-8 text')


@pytest.mark.parametrize('device,dtype,expected', [
    ('tpu', 'auto', "unknown device 'tpu' (use auto, cpu, cuda, cuda:N or mps)"),
    ('cuda', 'auto', "device 'cuda' asked for, but this torch sees no CUDA GPU (try --device=cpu)"),
    ('cuda:x', 'auto', "unknown device 'cuda:x'"),
    ('cpu', 'fp8', "unknown dtype 'fp8' (use auto, float32, bfloat16 or float16)"),
    ('cpu', 'float64', "unknown dtype 'float64'"),
])
def test_bad_device_or_dtype_is_one_line(monkeypatch, device, dtype, expected):
    """What every script says for a bad --device or --dtype (train.py's is checked end to end above)."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)  # the same answer on a GPU machine
    with pytest.raises(UsageError) as e:  # which a script prints as 'error: ...' (report_usage_errors)
        setup_device(device, dtype)
    assert expected in str(e.value) and '\n' not in str(e.value)


def test_bfloat16_refused_without_bfloat16_units(monkeypatch):
    cpu = torch.device('cpu')
    monkeypatch.setattr(device, '_cpu_flags', lambda: {'avx2', 'fma'})
    with pytest.raises(UsageError) as e:
        device.pick_dtype(cpu, 'bfloat16')
    assert str(e.value) == "bfloat16 asked for, but this CPU has no bfloat16 units (try --dtype=float32)"
    monkeypatch.setattr(device, '_cpu_flags', lambda: {'avx512_bf16'})
    assert device.pick_dtype(cpu, 'bfloat16') == 'bfloat16'
    assert device.pick_dtype(cpu, 'auto') == 'float32'  # emulated bf16 is slower


@pytest.mark.parametrize('damage,expected', [
    ('odd_bytes', 'data/tiny_char/train.bin has an odd number of bytes'),
    ('token_beyond_vocab', 'data/tiny_char/train.bin holds token id 999, beyond the vocabulary (33 tokens)'),
    ('meta_not_json', 'cannot read data/tiny_char/meta.json: not valid JSON'),
    ('meta_wrong_shape', "cannot read data/tiny_char/meta.json: not {'vocab_size': n, 'itos': [n strings]}"),
])
def test_damaged_dataset_is_one_line_and_checkpoint_untouched(trained_copy, damage, expected):
    """Token files and vocabularies are checked before training; sample.py has the checkpoint's own."""
    import json
    repo = trained_copy
    data = os.path.join(repo, 'data', 'tiny_char')
    before = digest(os.path.join(repo, 'out', 'ckpt.pt'))
    if damage == 'odd_bytes':
        with open(os.path.join(data, 'train.bin'), 'ab') as f:
            f.write(b'\x00')
    elif damage == 'token_beyond_vocab':
        with open(os.path.join(data, 'train.bin'), 'r+b') as f:
            f.seek(100)
            f.write((999).to_bytes(2, 'little'))
    elif damage == 'meta_not_json':
        with open(os.path.join(data, 'meta.json'), 'w') as f:
            f.write('{"vocab_size": 33, "itos": ["a", ')
    else:
        with open(os.path.join(data, 'meta.json'), 'w') as f:
            json.dump({'vocab_size': 33, 'itos': 'abc'}, f)
    one_line_error(run(repo, 'train.py', *TINY, '--out_dir=out', '--init_from=resume', '--max_iters=12',
                       check=False), expected)
    if damage.startswith('meta'):  # the checkpoint carries its vocabulary: sampling needs no meta.json
        out = run(repo, 'sample.py', '--out_dir=out', '--max_new_tokens=3', '--num_samples=1').stdout
        assert 'Loading character vocabulary of tiny_char' in out
    assert digest(os.path.join(repo, 'out', 'ckpt.pt')) == before


def _mount_tmpfs(path, size):
    """A small real filesystem at path (root only); False where mounting is not allowed."""
    os.makedirs(path, exist_ok=True)
    try:
        return subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', path],
                              capture_output=True).returncode == 0
    except OSError:
        return False


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(trained_copy):
    """
    A checkpoint save that runs out of space: one line naming the file and the cause, no temporary
    file left, the previous checkpoint intact and still resuming. On a real full filesystem (a small
    tmpfs) where the test may mount one, else under a file-size limit (RLIMIT_FSIZE), which fails
    the same writes with EFBIG instead of ENOSPC.
    """
    import resource
    repo = trained_copy
    out = os.path.join(repo, 'full')
    mounted = _mount_tmpfs(out, '4m')
    try:
        shutil.copytree(os.path.join(repo, 'out'), out, dirs_exist_ok=True)
        before = {f: digest(os.path.join(out, f)) for f in os.listdir(out) if f != 'metrics.jsonl'}
        ckpt_size = os.path.getsize(os.path.join(out, 'ckpt.pt'))
        limit = None
        if mounted:  # leave less room than the new optimizer file needs
            free = shutil.disk_usage(out).free
            with open(os.path.join(out, 'filler'), 'wb') as f:
                f.write(b'\0' * (free - ckpt_size))
            before['filler'] = digest(os.path.join(out, 'filler'))
        else:
            limit = ckpt_size  # the optimizer file is ~2x the checkpoint

        def limit_file_size():
            if limit:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write (EFBIG) instead of killing
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        p = subprocess.run([sys.executable, 'train.py', *TINY, '--out_dir=full', '--init_from=resume',
                            '--max_iters=12', '--eval_interval=1'], cwd=repo, capture_output=True, text=True,
                           preexec_fn=limit_file_size, timeout=240)
        cause = 'no space left on device' if mounted else 'file too large'
        # the resumed run saves again at its first evaluation, iter 10, and cannot
        one_line_error(p, f"error: {cause} writing full/optimizer-00000010.pt; the previous checkpoint is untouched")
        assert {f: digest(os.path.join(out, f)) for f in os.listdir(out) if f != 'metrics.jsonl'} == before
        if mounted:
            os.remove(os.path.join(out, 'filler'))
        resumed = run(repo, 'train.py', *TINY, '--out_dir=full', '--init_from=resume', '--max_iters=11').stdout
        assert sorted(iter_losses(resumed)) == [10, 11]
    finally:
        if mounted:
            subprocess.run(['umount', out])


def _wait_for(path, timeout=60):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_ctrl_c_ends_with_one_line(repo):
    """Ctrl-C, aimed at the middle of a checkpoint save (the hardest moment), ends with one line."""
    p = spawn(repo, 'train.py', *TINY, '--max_iters=1000000', '--eval_interval=2', '--eval_iters=1', '--n_layer=4',
              '--n_embd=192', '--n_head=4', '--out_dir=out')
    _wait_for(os.path.join(repo, 'out', 'ckpt.pt'))
    deadline = time.time() + 20
    while time.time() < deadline and not glob.glob(os.path.join(repo, 'out', '*.tmp')):
        time.sleep(0.0005)
    assert glob.glob(os.path.join(repo, 'out', '*.tmp')), "no save was under way"  # the moment this test is about
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 130, stderr
    err = stderr.strip()
    assert 'Traceback' not in err and '\n' not in err, err
    m = re.fullmatch(r"interrupted at iter (\d+): the last checkpoint is out/ckpt.pt \(iter (\d+); continue with "
                     r"--init_from=resume\)", err)
    assert m and int(m.group(2)) <= int(m.group(1)), err
    ckpt = torch.load(os.path.join(repo, 'out', 'ckpt.pt'), weights_only=True)
    assert ckpt['iter_num'] == int(m.group(2))
    assert sorted(os.listdir(os.path.join(repo, 'out'))) == \
        ['ckpt.pt', 'metrics.jsonl', f"optimizer-{ckpt['iter_num']:08d}.pt"]  # no temporary file, no lock


def test_one_run_per_out_dir(repo):
    """A second run on a busy out_dir refuses, naming the first; a run killed with -9 blocks nothing."""
    first = spawn(repo, 'train.py', *TINY, '--max_iters=1000000', '--eval_interval=5', '--out_dir=out')
    try:
        _wait_for(os.path.join(repo, 'out', 'ckpt.pt'))
        with open(os.path.join(repo, 'out', 'lock')) as f:
            assert f.read().strip() == str(first.pid)
        one_line_error(run(repo, 'train.py', *TINY, '--out_dir=out', '--init_from=resume', check=False),
                       f"out is in use by another training run (PID {first.pid})")
    finally:
        first.kill()
        first.communicate()
    assert os.path.exists(os.path.join(repo, 'out', 'lock'))  # left behind by kill -9, but no longer locked
    i = torch.load(os.path.join(repo, 'out', 'ckpt.pt'), weights_only=True)['iter_num']
    out = run(repo, 'train.py', *TINY, '--out_dir=out', '--init_from=resume', f"--max_iters={i + 1}")
    assert sorted(iter_losses(out.stdout)) == [i, i + 1]
    assert not os.path.exists(os.path.join(repo, 'out', 'lock'))


def test_scratch_over_a_checkpoint_says_so(trained_copy):
    repo = trained_copy
    before = digest(os.path.join(repo, 'out', 'ckpt.pt'))
    p = run(repo, 'train.py', *TINY, '--out_dir=out', '--max_iters=0', '--eval_interval=5')
    assert p.stderr.strip() == ("warning: out/ckpt.pt exists and this run starts from scratch: its first checkpoint "
                                "will replace that one (--init_from=resume continues it instead)")
    assert sorted(iter_losses(p.stdout)) == [0]  # max_iters=0: the one iteration 0, nothing saved
    assert p.stdout.strip().splitlines()[-1] == \
        'no checkpoint written: one is saved at each evaluation after iter 0 (eval_interval=5)'
    assert digest(os.path.join(repo, 'out', 'ckpt.pt')) == before


def test_library_code_raises_its_usage_error_and_a_script_prints_it_in_one_line(trained_copy):
    """From a plain Python process a missing checkpoint is an exception to catch (a notebook keeps its kernel),
    not an exit; the scripts print the same error as one line."""
    p = run(REPO, '-c', 'from nanogpt import checkpoints, util\n'
            'try:\n    checkpoints.load_checkpoint("missing/ckpt.pt")\n'
            'except util.UsageError as e:\n    print("raised:", e)')
    assert p.stdout.strip() == 'raised: no checkpoint at missing/ckpt.pt (train one first, or check --out_dir)'
    one_line_error(run(trained_copy, 'sample.py', '--out_dir=missing', '--device=cpu', check=False),
                   'no checkpoint at missing/ckpt.pt')
