"""
A run that reports itself: the training's health (gradient norm, share of steps clipped, update size,
tokens/s, peak memory) and progress on each log line (after nanoGPT's own text), in metrics.jsonl
and in wandb, checked against an independent computation; a summary at the end, sample.py's progress
bar on stderr, and exported files with the same permissions as checkpoints (out_dir/metrics.jsonl is
checked in test_train.py's resume test, a summary without a checkpoint in test_reliability.py).
Run: python -m pytest tests/test_report.py
"""
import glob
import json
import os
import re
import stat

import pytest
import torch

from conftest import TINY, run


def test_log_lines_show_progress_and_time_left(repo):
    out = run(repo, 'train.py', *TINY, '--max_iters=20', '--eval_interval=10', '--out_dir=out').stdout
    lines = re.findall(r'^iter (\d+): loss [\d.]+, time [\d.]+ms, mfu n/a, .*, ([\d.]+)%, (\S+) left$', out, re.M)
    assert [int(i) for i, _, _ in lines] == list(range(21)), out
    assert [float(p) for _, p, _ in lines] == [100 * i / 20 for i in range(21)]
    assert all(re.fullmatch(r'(\d+h\d\dm|\d+m\d\ds|\d+s)', left) for _, _, left in lines)
    assert lines[-1][2] == '0s'
    summary = out.strip().splitlines()[-2:]
    assert re.fullmatch(r'training done: 21 iterations \(iter 0 to 20\) in (\d+h\d\dm|\d+m\d\ds|\d+s), '
                        r'best val loss [\d.]+ at iter 20', summary[0]), summary
    assert summary[1] == 'checkpoint: out/ckpt.pt (iter 20); sample from it with: python sample.py --out_dir=out'


def test_sample_progress_bar_on_stderr(trained):
    p = run(trained, 'sample.py', '--out_dir=out', '--num_samples=3', '--max_new_tokens=20', '--start=First')
    assert 'sampling 3 x 20 tokens' in p.stderr and '20/20' in p.stderr
    assert 'sampling' not in p.stdout and p.stdout.count('---------------') == 3


def test_export_has_the_permissions_of_a_checkpoint(trained):
    run(trained, 'export.py', '--out_dir=out', '--export_dir=hf_perm')
    mode = lambda p: stat.S_IMODE(os.stat(os.path.join(trained, p)).st_mode)
    assert mode('hf_perm/model.safetensors') == mode('hf_perm/config.json') == mode('out/ckpt.pt')
    assert not any(f.endswith('.tmp') for f in os.listdir(os.path.join(trained, 'hf_perm')))


HEALTH = (r'^iter (\d+): loss ([\d.]+), time [\d.]+ms, mfu n/a, grad norm ([\d.]+)(?: \(clipped (\d+)%\))?, '
          r'update/weight ([\d.e+-]+), ([\d,]+) tok/s, peak mem ([\d,]+)MB, ')


def test_health_on_log_lines_in_metrics_and_wandb(repo):
    """
    Every log_interval (and only then): the gradient norm before clipping, the share of steps
    clipped since the last line, the update-to-weight RMS ratio, tokens/s and peak memory. Iteration
    0's norm and ratio equal a step recomputed here from the same initial weights and batch.
    """
    from nanogpt import optim
    from nanogpt.dataloader import get_batch, open_split
    from model import GPT, GPTConfig
    args = [*TINY, '--max_iters=6', '--eval_interval=5', '--log_interval=2', '--grad_clip=0.5',
            '--wandb_log=True', '--wandb_project=t', '--out_dir=out']
    out = run(repo, 'train.py', *args).stdout
    lines = re.findall(HEALTH, out, re.M)
    assert [int(line[0]) for line in lines] == [0, 2, 4, 6], out
    assert all(line[3] == '100' for line in lines)  # tiny gradient clip: every step clipped
    assert all(float(line[2]) > 0.5 and float(line[4]) > 0 and float(line[6].replace(',', '')) > 0 for line in lines)
    # iteration 0 again, here: scratch init under the same seed, its first batch, one clipped AdamW step
    torch.manual_seed(1337)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=33, bias=False))
    X, Y = get_batch(open_split(os.path.join(repo, 'data', 'tiny_char'), 'train', 16), 4, 16, (1337, 0, 0, 0),
                     torch.device('cpu'))
    optimizer = model.configure_optimizers(0.1, 1e-3 / 3, (0.9, 0.95))  # warmup: lr * (0 + 1) / (2 + 1)
    model(X, Y)[1].backward()
    before = [p.detach().clone() for p in model.parameters()]
    norm = optim.optimizer_step(model, optimizer, torch.amp.GradScaler('cpu', enabled=False), 0.5)
    update = torch.stack([(p - b).square().sum() for p, b in zip(model.parameters(), before)]).sum() / \
        torch.stack([p.square().sum() for p in model.parameters()]).sum()
    assert float(lines[0][2]) == pytest.approx(norm.item(), abs=2e-3)
    assert float(lines[0][4]) == pytest.approx(update.sqrt().item(), rel=1e-2)
    # the same values in the run's record and in wandb (offline)
    with open(os.path.join(repo, 'out', 'metrics.jsonl')) as f:
        logged = [r for r in map(json.loads, f) if 'loss' in r]
    assert [r['iter'] for r in logged] == [0, 2, 4, 6]
    for r, line in zip(logged, lines):
        assert f"{r['grad_norm']:.3f}" == line[2] and f"{r['update_to_weight']:.2e}" == line[4] and r['clipped'] == 1.0
        assert r['tokens_per_s'] > 0 and r['peak_mem_mb'] > 0
    with open(glob.glob(os.path.join(repo, 'wandb', 'offline-run-*', 'run-*.wandb'))[0], 'rb') as f:
        record = f.read()
    for key in ('grad_norm', 'clipped', 'update_to_weight', 'update_to_weight/group0', 'update_to_weight/group1',
                'tokens_per_s', 'batch_tokens', 'peak_mem_mb'):
        assert f'health/{key}'.encode() in record, key


def stepped(model, optimizer, x, measure, scaler=None):
    """One training step of model on x (its output's mean square), as train.py takes it; with measure, the
    update's size as its log lines read it."""
    from nanogpt import optim
    scaler = scaler or torch.amp.GradScaler('cpu', enabled=False)
    scaler.scale(model(x).square().mean()).backward()
    norm = optim.optimizer_step(model, optimizer, scaler, 0.0, measure=measure)
    if measure:
        health = optim.StepHealth(torch.device('cpu'), 0.0, scaler)
        health.count(norm)
        return health.read(optimizer, torch.zeros(()), norm, False, False, True)


@pytest.mark.parametrize('kind', ['adamw', 'adamw unfused', 'muon'])
def test_update_size_is_the_steps_own(kind):
    """The update-to-weight ratio read from the optimizer after its step (no copy of the weights) equals the one
    measured against a copy, overall and per group, step after step: AdamW fused or not, with weight decay, and
    MuonAdamW's Muon and AdamW groups; a step float16's gradient scaler skips has none."""
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=8, vocab_size=40))
    forward = model.forward
    model.forward = lambda x: forward(x, x)[1]
    optimizer = model.configure_optimizers(0.1, 1e-2, (0.9, 0.95), optimizer='muon' if kind == 'muon' else 'adamw')
    if kind == 'adamw unfused':
        optimizer = torch.optim.AdamW(optimizer.param_groups, lr=1e-2, betas=(0.9, 0.95))
    x = torch.randint(0, 40, (4, 8))
    for step in range(4):
        before = [[p.detach().clone() for p in g['params']] for g in optimizer.param_groups]
        figures = stepped(model, optimizer, x, measure=True)
        groups = [(sum((p - b).square().sum() for p, b in zip(g['params'], old)), sum(p.square().sum()
                                                                                      for p in g['params']))
                  for g, old in zip(optimizer.param_groups, before)]
        assert figures['update_to_weight'] == pytest.approx((sum(u for u, _ in groups) / sum(w for _, w in groups))
                                                            .sqrt().item(), rel=1e-3)
        assert figures['group_updates'] == pytest.approx([(u / w).sqrt().item() for u, w in groups], rel=1e-3)
        assert figures['update_to_weight'] > 1e-4
    # an overflowed float16 step: the scaler skips it, and the weights do not move
    scaler = torch.amp.GradScaler('cpu', init_scale=2.0 ** 100)
    before = [p.detach().clone() for p in model.parameters()]
    model.transformer.wte.weight.register_hook(lambda g: g * float('inf'))
    figures = stepped(model, optimizer, x, measure=True, scaler=scaler)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert figures['update_to_weight'] == 0 and figures['group_updates'] == [0] * len(optimizer.param_groups)


def test_measuring_the_update_holds_no_copy_of_the_weights():
    """A step that measures its update peaks no higher than one that does not: nothing like a copy of the weights
    (here 48 MiB of them) is made."""
    from nanogpt.device import PeakMemory
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024, bias=False) for _ in range(12)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x, weights = torch.randn(2, 1024), sum(p.nbytes for p in model.parameters())
    peaks = {}
    for measure in (False, True, False, True):  # the first two warm up (AdamW's state, the allocator's pools)
        with PeakMemory() as memory:
            stepped(model, optimizer, x, measure)
        peaks[measure] = memory.peak
    assert peaks[True] - peaks[False] < 0.25 * weights
