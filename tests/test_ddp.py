"""
DDP on CPU: `torchrun --nproc_per_node=2` (gloo) trains the same model as one process with
the same global batch (each rank takes half the gradient-accumulation micro-steps, and the
micro-batches are numbered across ranks, so both see the very same batches), and a stopped
DDP run resumes bit for bit. Run: python -m pytest tests/test_ddp.py
"""
import os

import torch

from conftest import TINY, iter_losses, run

# summation order differs (two ranks' gradients are all-reduced), so equality is up to
# float32 rounding: logged losses (printed to 4 decimals) within 2e-4, weights within 1e-5
LOSS_TOL, WEIGHT_TOL = 2e-4, 1e-5


def test_two_processes_match_one(repo):
    args = [*TINY, '--gradient_accumulation_steps=4', '--max_iters=8', '--eval_interval=8']
    one = run(repo, 'train.py', *args, '--out_dir=one').stdout
    two = run(repo, 'torchrun', '--standalone', '--nproc_per_node=2', 'train.py', *args, '--out_dir=two').stdout
    a, b = list(iter_losses(one).values()), list(iter_losses(two).values())
    assert len(a) == len(b) == 9
    assert max(abs(x - y) for x, y in zip(a, b)) <= LOSS_TOL, (a, b)
    assert 'tokens per iteration will be: 256' in one and 'tokens per iteration will be: 256' in two
    wa = torch.load(os.path.join(repo, 'one', 'ckpt.pt'), weights_only=True)['model']
    wb = torch.load(os.path.join(repo, 'two', 'ckpt.pt'), weights_only=True)['model']
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= WEIGHT_TOL


def test_ddp_resume_is_exact(repo):
    """Two processes: stopped at 4 and resumed to 8 equals 8 in one go, bit for bit, dropout on."""
    args = [*TINY, '--gradient_accumulation_steps=4', '--eval_interval=4', '--dropout=0.1']
    ddp = ['torchrun', '--standalone', '--nproc_per_node=2', 'train.py']
    straight = run(repo, *ddp, *args, '--max_iters=8', '--out_dir=a').stdout
    run(repo, *ddp, *args, '--max_iters=4', '--out_dir=b')
    resumed = run(repo, *ddp, *args, '--max_iters=8', '--out_dir=b', '--init_from=resume').stdout
    a, b = iter_losses(straight), iter_losses(resumed)
    assert sorted(b) == list(range(4, 9)) and all(a[i] == b[i] for i in b)
    wa = torch.load(os.path.join(repo, 'a', 'ckpt.pt'), weights_only=True)['model']
    wb = torch.load(os.path.join(repo, 'b', 'ckpt.pt'), weights_only=True)['model']
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_accumulation_must_divide_by_world_size(repo):
    p = run(repo, 'torchrun', '--standalone', '--nproc_per_node=2', 'train.py', *TINY,
            '--gradient_accumulation_steps=3', check=False)
    # torchrun itself reports a failed child with a traceback of its own; train.py's is one line
    assert p.returncode != 0 and 'train.py", line' not in p.stderr
    assert 'gradient_accumulation_steps (3) must be divisible by the number of processes (2)' in p.stderr
