"""
Shared fixtures: a scratch copy of the repository with a tiny character dataset, and a
helper that runs its scripts the way a user does (python train.py ... from the repo root).
"""
import os
import re
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ['train.py', 'sample.py', 'bench.py', 'export.py', 'eval.py', 'model.py', 'common.py', 'tasks.py',
           'configurator.py', 'util.py', 'hf_gpt2.py']

# GPT-2's BPE offline: a pre-filled tiktoken cache beside the repository, where there is one
_cache = os.path.join(os.path.dirname(REPO), 'shared', 'tiktoken_cache')
if 'TIKTOKEN_CACHE_DIR' not in os.environ and os.path.isdir(_cache):
    os.environ['TIKTOKEN_CACHE_DIR'] = _cache

# a small model and dataset that train in seconds on a CPU
TINY = ['--dataset=tiny_char', '--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=16', '--batch_size=4',
        '--eval_iters=2', '--log_interval=1', '--device=cpu', '--warmup_iters=2', '--lr_decay_iters=20',
        '--learning_rate=1e-3', '--gradient_accumulation_steps=1']

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 40


def run(cwd, *args, env=None, timeout=240, check=True):
    """
    Run `python *args` (or a torchrun command if args[0] is 'torchrun') in cwd. With check, it must
    succeed without a Python warning (DeprecationWarning, FutureWarning, UserWarning, ...) on stderr:
    a clean run of any script prints none, from our code or from the libraries it calls.
    """
    cmd = [sys.executable, *args] if args[0] != 'torchrun' else [sys.executable, '-m', 'torch.distributed.run', *args[1:]]
    full_env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'WANDB_MODE': 'offline', **(env or {})}
    p = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    if check:
        assert not re.search(r'\w+Warning\b', p.stderr), f"{' '.join(args)} warned:\n{p.stderr[-3000:]}"
    return p


def make_repo(path):
    """A copy of the scripts and configs in path, with data/tiny_char prepared from TEXT."""
    for f in SCRIPTS:
        shutil.copy(os.path.join(REPO, f), path)
    shutil.copytree(os.path.join(REPO, 'config'), os.path.join(path, 'config'))
    data = os.path.join(path, 'data', 'tiny_char')
    os.makedirs(data)
    shutil.copy(os.path.join(REPO, 'data', 'shakespeare_char', 'prepare.py'), data)
    with open(os.path.join(data, 'input.txt'), 'w') as f:
        f.write(TEXT)
    run(path, os.path.join('data', 'tiny_char', 'prepare.py'))
    return str(path)


@pytest.fixture
def restore_matmul_precision():
    """For tests that switch the process-wide float32 matmul route (common.onednn_float32_matmuls)."""
    import torch
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)


@pytest.fixture
def repo(tmp_path):
    return make_repo(tmp_path)


@pytest.fixture(scope='session')
def trained(tmp_path_factory):
    """A repo copy holding a checkpoint trained for 10 iterations in out/ (shared by all tests: read only)."""
    path = make_repo(tmp_path_factory.mktemp('trained'))
    run(path, 'train.py', *TINY, '--max_iters=10', '--eval_interval=5', '--out_dir=out')
    return path
