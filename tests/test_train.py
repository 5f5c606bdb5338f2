"""
End to end, as a user runs it: train.py writes a checkpoint, init_from=resume continues it (bit for bit,
with gradient accumulation and dropout, also in the middle of a batch-size ramp), sample.py prints text from
it, and checkpoints written by nanoGPT (with '_orig_mod.' prefixes) still resume and sample.
Run: python -m pytest tests/test_train.py
"""
import glob
import json
import math
import os
import re

import pytest
import torch

from conftest import REPO, TINY, char_samples_ok, iter_losses, run

MODEL_ARGS = {'n_layer', 'n_head', 'n_embd', 'block_size', 'bias', 'vocab_size', 'dropout'}


def records(path):
    """The entries of a metrics.jsonl."""
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_train_writes_plain_nanogpt_checkpoint(trained):
    ckpt = torch.load(os.path.join(trained, 'out', 'ckpt.pt'), weights_only=True)
    assert {'model', 'model_args', 'iter_num', 'best_val_loss', 'config', 'optimizer_file'} <= set(ckpt)
    assert set(ckpt['model_args']) == MODEL_ARGS  # nanoGPT's GPTConfig(**model_args) accepts it
    assert ckpt['model_options'] == {'activation': 'gelu'}
    assert ckpt['iter_num'] == 10 and ckpt['config']['dataset'] == 'tiny_char'
    assert all(k.startswith(('transformer.', 'lm_head.')) for k in ckpt['model'])  # no _orig_mod./module.


def test_optimizer_state_is_kept_apart(trained):
    """ckpt.pt (what sample.py reads) is about the size of the weights; AdamW's two moments live beside it."""
    out = os.path.join(trained, 'out')
    ckpt = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)
    weights = sum(v.numel() * v.element_size() for k, v in ckpt['model'].items() if k != 'lm_head.weight')
    assert sorted(os.listdir(out)) == ['ckpt.pt', 'metrics.jsonl', 'optimizer-00000010.pt']
    assert ckpt['optimizer_file'] == 'optimizer-00000010.pt'
    assert os.path.getsize(os.path.join(out, 'ckpt.pt')) < 1.3 * weights
    assert os.path.getsize(os.path.join(out, 'optimizer-00000010.pt')) > 1.8 * weights


def test_training_lowers_the_loss(repo):
    out = run(repo, 'train.py', *TINY, '--max_iters=30', '--eval_interval=30', '--lr_decay_iters=30',
               '--learning_rate=1e-2').stdout
    steps = [float(v) for v in re.findall(r'^step \d+: train loss [\d.]+, val loss ([\d.]+)', out, re.M)]
    assert len(steps) == 2 and steps[1] < steps[0] - 0.5, out


def test_resume_is_exact(repo):
    """
    Stopped at 5, resumed to 10, resumed to 15 equals 15 in one go, with gradient accumulation and
    dropout: same losses, same weights and optimizer state, and the same out_dir/metrics.jsonl (each
    iteration once: a resumed run drops what it redoes).
    """
    common = [*TINY, '--eval_interval=5', '--dropout=0.2', '--gradient_accumulation_steps=3']
    straight = run(repo, 'train.py', *common, '--max_iters=15', '--out_dir=straight').stdout
    run(repo, 'train.py', *common, '--max_iters=5', '--out_dir=stopped')
    run(repo, 'train.py', *common, '--max_iters=10', '--out_dir=stopped', '--init_from=resume')
    resumed = run(repo, 'train.py', *common, '--max_iters=15', '--out_dir=stopped', '--init_from=resume').stdout
    assert 'step 10:' in resumed and min(iter_losses(resumed)) == 10
    a, b = iter_losses(straight), iter_losses(resumed)
    assert all(a[i] == b[i] for i in range(10, 16))
    wa = torch.load(os.path.join(repo, 'straight', 'ckpt.pt'), weights_only=True)
    wb = torch.load(os.path.join(repo, 'stopped', 'ckpt.pt'), weights_only=True)
    assert wa['iter_num'] == wb['iter_num'] == 15
    assert all(torch.equal(wa['model'][k], wb['model'][k]) for k in wa['model'])
    oa, ob = (torch.load(glob.glob(os.path.join(repo, d, 'optimizer-*.pt'))[0], weights_only=True)['optimizer']
              for d in ('straight', 'stopped'))
    assert all(torch.equal(oa['state'][i]['exp_avg_sq'], ob['state'][i]['exp_avg_sq']) for i in oa['state'])
    ma, mb = (records(os.path.join(repo, d, 'metrics.jsonl')) for d in ('straight', 'stopped'))
    assert {r['iter']: round(r['loss'], 4) for r in ma if 'loss' in r} == a  # every printed line, as printed
    evals = re.findall(r'^step (\d+): train loss [\d.]+, val loss ([\d.]+)', straight, re.M)
    logged = [(r['iter'], round(r['val_loss'], 4)) for r in ma if 'val_loss' in r]
    assert logged == [(int(i), float(v)) for i, v in evals]
    timed = ('time_ms', 'time_s', 'mfu', 'tokens_per_s', 'peak_mem_mb')
    # the health values too: the gradient norms and step sizes are exact
    untimed = lambda rs: [{k: v for k, v in r.items() if k not in timed} for r in rs]
    assert untimed(mb) == untimed(ma) and [r['iter'] for r in mb if 'loss' in r] == list(range(16))


def test_sample_prints_text_from_the_vocabulary(trained):
    out = run(trained, 'sample.py', '--out_dir=out', '--num_samples=2', '--max_new_tokens=30', '--start=First').stdout
    assert 'Loading character vocabulary of tiny_char' in out
    samples = out.split('---------------')
    assert len(samples) == 3
    assert samples[0].split('\n', 1)[1].startswith('First') and samples[1].startswith('\nFirst')


def test_sample_unknown_character_is_one_line(trained):
    p = run(trained, 'sample.py', '--out_dir=out', '--start=a@b', check=False)
    assert p.returncode == 1 and 'Traceback' not in p.stderr
    assert p.stderr.strip() == "error: the prompt has the character '@', which is not in the model's vocabulary"


def test_nanogpt_checkpoint_with_orig_mod_prefix(trained):
    """A checkpoint as nanoGPT writes it after torch.compile: prefixed keys, tensor best_val_loss."""
    ckpt = torch.load(os.path.join(trained, 'out', 'ckpt.pt'), weights_only=True)
    ckpt['model'] = {'_orig_mod.' + k: v for k, v in ckpt['model'].items()}
    ckpt['best_val_loss'] = torch.tensor(ckpt['best_val_loss'])
    optimizer_file = os.path.join(trained, 'out', ckpt.pop('optimizer_file'))
    ckpt['optimizer'] = torch.load(optimizer_file, weights_only=True)['optimizer']
    del ckpt['model_options']
    os.makedirs(os.path.join(trained, 'nano'))
    torch.save(ckpt, os.path.join(trained, 'nano', 'ckpt.pt'))
    out = run(trained, 'sample.py', '--out_dir=nano', '--num_samples=1', '--max_new_tokens=10').stdout
    assert char_samples_ok(out, 1, 10), out
    out = run(trained, 'train.py', *TINY, '--init_from=resume', '--out_dir=nano', '--max_iters=12',
              '--eval_interval=100').stdout
    assert sorted(iter_losses(out)) == [10, 11, 12]


def test_missing_dataset_names_prepare(repo):
    p = run(repo, 'train.py', '--dataset=nope', '--device=cpu', check=False)
    assert p.returncode == 1 and 'Traceback' not in p.stderr
    assert 'prepare the dataset first (python data/prepare.py --input=<your files> --name=nope)' in p.stderr.strip()


def test_wandb_offline_logs_and_resumes_same_run(repo):
    args = [*TINY, '--wandb_log=True', '--wandb_project=t', '--eval_interval=5', '--out_dir=out']
    run(repo, 'train.py', *args, '--max_iters=5')
    run_id = torch.load(os.path.join(repo, 'out', 'ckpt.pt'), weights_only=True)['wandb_run_id']
    run(repo, 'train.py', *args, '--max_iters=10', '--init_from=resume')
    runs = [d for d in os.listdir(os.path.join(repo, 'wandb')) if d.startswith('offline-run-')]
    assert len(runs) == 2 and all(d.endswith(run_id) for d in runs), runs
    assert all(os.path.exists(os.path.join(repo, 'wandb', d, f'run-{run_id}.wandb')) for d in runs)


def test_batch_ramp_grows_in_micro_batches_follows_tokens_and_resumes_exactly(repo):
    """
    batch_ramp_tokens=500 from 1 micro-batch of 64 tokens to 4: each iteration takes
    int(1 + 3 * tokens / 500) micro-batches until 500 tokens are seen; the learning rate follows
    tokens seen (in full 256-token batches); a run stopped in the middle of the ramp resumes bit for bit.
    """
    args = [*TINY, '--gradient_accumulation_steps=4', '--batch_ramp_tokens=500', '--eval_interval=4', '--dropout=0.1']
    straight = run(repo, 'train.py', *args, '--max_iters=8', '--out_dir=straight').stdout
    run(repo, 'train.py', *args, '--max_iters=4', '--out_dir=stopped')
    resumed = run(repo, 'train.py', *args, '--max_iters=8', '--out_dir=stopped', '--init_from=resume').stdout
    sizes = [int(b.replace(',', '')) for b in re.findall(r'^iter \d+: .*, batch ([\d,]+) tokens, ', straight, re.M)]
    assert sizes == [64, 64, 64, 128, 128, 192, 256, 256, 256], sizes  # seen before: 0, 64, 128, 192, 320, 448, 640...
    lrs = [r['lr'] for r in records(os.path.join(repo, 'straight', 'metrics.jsonl')) if 'loss' in r]
    seen = [sum(sizes[:i]) / 256 for i in range(len(sizes))]  # full batches of tokens before each iteration
    expected = [1e-3 * (x + 1) / 3 if x < 2 else 6e-5 + 0.5 * (1 + math.cos(math.pi * (x - 2) / 18)) * (1e-3 - 6e-5)
                for x in seen]  # TINY: warmup 2, decay to 20, min_lr 6e-5
    assert lrs == pytest.approx(expected, rel=1e-9)
    a, b = iter_losses(straight), iter_losses(resumed)
    assert sorted(b) == list(range(4, 9)) and all(a[i] == b[i] for i in b)
    assert re.findall(r'batch ([\d,]+) tokens', resumed) == [str(s) for s in sizes[4:]]
    wa = torch.load(os.path.join(repo, 'straight', 'ckpt.pt'), weights_only=True)['model']
    wb = torch.load(os.path.join(repo, 'stopped', 'ckpt.pt'), weights_only=True)['model']
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# the training tokens of the datasets the recipes in config/ name, as their preparers write them
TRAIN_TOKENS = {'shakespeare_char': 1_003_854, 'shakespeare': 301_966, 'openwebtext': 9_035_582_198,
                'fineweb_edu': 9_900_000_000}


def test_a_run_that_learns_its_data_by_heart_warns_and_no_recipe_does(repo, capsys):
    """One warning line naming the count of passes and a fix; none for any recipe with its own dataset."""
    from conftest import TEXT, prepare_dataset
    from nanogpt.dataloader import warn_if_passes_are_many
    prepare_dataset(repo, 'wee', 'shakespeare_char', text=TEXT[:400])
    train_tokens = os.path.getsize(os.path.join(repo, 'data', 'wee', 'train.bin')) // 2
    out = run(repo, 'train.py', *TINY, '--dataset=wee', '--batch_size=64', '--max_iters=40',
              '--eval_interval=40').stdout
    warnings = [line for line in out.splitlines() if line.startswith('warning:') and ' pass over ' in line]
    passes, fewer = round(40 * 1024 / train_tokens), max(1, round(20 * train_tokens / 1024))
    assert warnings == [f"warning: 40 iterations of 1,024 tokens pass over the {train_tokens:,} training tokens of wee "
                        f"{passes} times: the model will learn them by heart, and the run takes longer than it needs; "
                        f"--max_iters={fewer} --lr_decay_iters={fewer} is 20 passes (or more data)"]
    with open(os.path.join(REPO, 'train.py')) as f:
        defaults = f.read().split('# ' + '-' * 77)[1]
    recipes = 0
    for path in sorted(glob.glob(os.path.join(REPO, 'config', '*.py'))):
        settings = {}
        exec(defaults, settings)
        with open(path) as f:
            exec(f.read(), settings)
        if settings['eval_only']:
            continue
        tokens_per_iter = settings['batch_size'] * settings['block_size'] * settings['gradient_accumulation_steps']
        warn_if_passes_are_many(settings['max_iters'], tokens_per_iter, TRAIN_TOKENS[settings['dataset']], 'x')
        recipes += 1
    assert recipes == 7 and capsys.readouterr().out == ''
