"""
Resources that run out end in one line saying what ran out and what to change, with nothing on disk
damaged: memory under an address-space limit (train.py, sample.py), and a full disk, a small tmpfs, at
every write the scripts make (the out_dir lock, metrics.jsonl, the optimizer state and ckpt.pt, the
exports, eval results, prepared data). Run: python -m pytest tests/test_resources.py
"""
import os
import shutil
import subprocess

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import REPO, TINY, digest, one_line_error, run

# run a script as a user does, but with the address space limited to what this process holds after
# importing torch plus 2 GiB, so that a big batch cannot be allocated
LIMITED = '''
import resource, runpy, sys, torch
held = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmSize:'))
resource.setrlimit(resource.RLIMIT_AS, (held + 2 * 2**30, resource.RLIM_INFINITY))
sys.argv = sys.argv[1:]
sys.path[0] = '.'
runpy.run_path(sys.argv[0], run_name='__main__')
'''


def test_out_of_memory_in_training_is_one_line_and_keeps_the_checkpoint(trained_copy):
    ckpt = os.path.join(trained_copy, 'out', 'ckpt.pt')
    before = digest(ckpt)
    p = run(trained_copy, '-c', LIMITED, 'train.py', *TINY, '--init_from=resume', '--out_dir=out', '--max_iters=20',
            '--batch_size=1000000', check=False)
    one_line_error(p, 'out of memory (CPU); lower batch_size (more gradient_accumulation_steps keep the batch)')
    assert 'activation_checkpointing=True' in p.stderr and 'lora_rank=8' in p.stderr
    assert digest(ckpt) == before


def test_out_of_memory_in_sampling_is_one_line(trained):
    p = run(trained, '-c', LIMITED, 'sample.py', '--out_dir=out', '--num_samples=10000000', '--max_new_tokens=2',
            '--device=cpu', '--dtype=float32', check=False)
    assert p.returncode == 1 and 'Traceback' not in p.stderr, p.stderr  # after the progress bar, one line:
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith('error: out of memory (CPU); lower num_samples or max_new_tokens'), last


def test_freed_activations_go_back_to_the_os_at_once():
    """
    device.return_freed_memory_at_once (train.py on a CPU): big blocks freed between small ones that
    stay, as activations are in a backward pass, leave the process; glibc's heap would keep them all.
    """
    code = '''
import sys, torch
from nanogpt.device import return_freed_memory_at_once, rss_anon
assert return_freed_memory_at_once()
mib = 2**20
warm = [torch.ones(6 * mib // 4) for _ in range(2)]
del warm  # freeing blocks this big is what raises glibc's own threshold
held, big, small = rss_anon(), [], []
for _ in range(20):
    big.append(torch.ones(6 * mib // 4))
    small.append(torch.ones(1024))
del big
print((rss_anon() - held) / mib)
'''
    kept = float(run(REPO, '-c', code).stdout)
    assert kept < 12, f"{kept:.0f} MiB of the 120 MiB freed are still held"


@pytest.fixture
def small_disk(tmp_path):
    """mount(size): a tmpfs of that many bytes at a fresh directory, its path; unmounted afterwards."""
    mounted = []

    def mount(size, at=None):
        path = at or str(tmp_path / f'disk{len(mounted)}')
        os.makedirs(path, exist_ok=True)
        subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', path], check=True)
        mounted.append(path)
        return path
    yield mount
    for path in reversed(mounted):
        subprocess.run(['umount', path], check=True)


def fill(disk):
    """Take every free byte of disk, so that the next write fails."""
    with open(os.path.join(disk, 'filler'), 'wb', buffering=0) as f:
        try:
            while True:
                f.write(b'\0' * 4096)
        except OSError:
            pass


def leftovers(path):
    """The temporary files under path."""
    return [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith('.tmp')]


def test_full_disk_at_the_lock_and_metrics_is_one_line(trained_copy, small_disk):
    disk = small_disk(64 * 1024)
    fill(disk)
    p = run(trained_copy, 'train.py', *TINY, f'--out_dir={disk}/run', '--max_iters=2', check=False)
    one_line_error(p, f'no space left on device writing {disk}/run/')
    assert p.stderr.strip().endswith('; free some space there, or write elsewhere')
    assert os.listdir(os.path.join(disk, 'run')) in ([], ['metrics.jsonl'])  # no lock left behind, no partial line
    metrics = os.path.join(disk, 'run', 'metrics.jsonl')
    assert not os.path.exists(metrics) or os.path.getsize(metrics) == 0


def test_full_disk_at_a_checkpoint_leaves_the_previous_one(trained_copy, small_disk):
    out = os.path.join(trained_copy, 'out')
    pair = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out) if f != 'metrics.jsonl')
    disk = small_disk(pair + pair // 3)  # room for one checkpoint and its optimizer state, not for a second beside it
    args = [*TINY, f'--out_dir={disk}', '--eval_interval=5', '--max_iters=10']
    p = run(trained_copy, 'train.py', *args, check=False)
    one_line_error(p, f'no space left on device writing {disk}/')
    assert 'the previous checkpoint is untouched; free some space there' in p.stderr and 'step 10:' in p.stdout
    assert sorted(os.listdir(disk)) == ['ckpt.pt', 'metrics.jsonl', 'optimizer-00000005.pt'] and not leftovers(disk)
    assert torch.load(os.path.join(disk, 'ckpt.pt'), weights_only=True)['iter_num'] == 5
    shutil.copytree(disk, os.path.join(trained_copy, 'saved'))  # it resumes, on a disk with room
    run(trained_copy, 'train.py', *args, '--out_dir=saved', '--init_from=resume')


def test_full_disk_at_exports_and_eval_results_is_one_line_and_leaves_no_partial_file(trained_copy, small_disk):
    run(trained_copy, 'train.py', *TINY, '--init_from=out/ckpt.pt', '--lora_rank=4', '--max_iters=2',
        '--eval_interval=2', '--out_dir=lora')
    disk = small_disk(64 * 1024)
    fill(disk)
    for args, path in ((['export.py', '--out_dir=out', f'--export_dir={disk}/hf'], f'{disk}/hf'),
                       (['export.py', '--out_dir=lora', '--adapter=True', f'--export_dir={disk}/ad'],
                        f'{disk}/ad/adapter_model.safetensors'),
                       (['export.py', '--out_dir=out', '--format=gguf', f'--export_dir={disk}/gguf'],
                        f'{disk}/gguf/model-f32.gguf')):
        p = run(trained_copy, *args, check=False)
        one_line_error(p, f'no space left on device writing {path}')
    assert not leftovers(disk) and all(os.listdir(os.path.join(disk, d)) == [] for d in ('hf', 'ad', 'gguf'))
    gpt2, lambada = os.path.join(trained_copy, 'tiny-gpt2'), os.path.join(trained_copy, 'lambada.jsonl')
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=64)).save_pretrained(gpt2)
    with open(lambada, 'w') as f:
        f.write('{"text": "First Citizen: speak, speak"}\n')
    p = run(trained_copy, 'eval.py', f'--init_from={gpt2}', '--task=lambada', f'--data_file={lambada}',
            f'--out_dir={disk}', '--device=cpu', '--dtype=float32', check=False)
    one_line_error(p, f'no space left on device writing {disk}/eval_lambada.json')
    assert not leftovers(disk)


def test_full_disk_while_preparing_data_leaves_no_partial_file(trained_copy, small_disk):
    data = os.path.join(trained_copy, 'data', 'small')
    disk = small_disk(64 * 1024, at=data)
    shutil.copy(os.path.join(trained_copy, 'data', 'tiny_char', 'prepare.py'), disk)
    shutil.copy(os.path.join(trained_copy, 'data', 'tiny_char', 'input.txt'), disk)
    fill(disk)
    p = run(trained_copy, os.path.join('data', 'small', 'prepare.py'), check=False)
    one_line_error(p, f'no space left on device writing {data}/tokens.tmp; no dataset was written')
    assert sorted(os.listdir(disk)) == ['filler', 'input.txt', 'prepare.py']


def test_full_disk_while_preparing_your_own_data_keeps_the_dataset_there(repo, small_disk):
    """Room for data/prepare.py's temporary tokens, not for the splits too: the dataset before is untouched."""
    data = small_disk(300 * 1024, at=os.path.join(repo, 'data', 'mine'))
    for name, size in (('small', 1000), ('large', 100_000)):
        os.makedirs(os.path.join(repo, name))
        with open(os.path.join(repo, name, 'a.txt'), 'w') as f:
            f.write(('speak, speak.\n' * size)[:size])
    run(repo, 'data/prepare.py', '--input=small', '--name=mine', '--tokenizer=char')
    before = {f: digest(os.path.join(data, f)) for f in os.listdir(data)}
    p = run(repo, 'data/prepare.py', '--input=large', '--name=mine', '--tokenizer=char', check=False)
    one_line_error(p, f'no space left on device writing {data}/train.bin')
    assert {f: digest(os.path.join(data, f)) for f in os.listdir(data)} == before and not leftovers(data)
