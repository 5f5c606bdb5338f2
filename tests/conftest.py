"""
Shared fixtures and helpers: a scratch copy of the repository with a tiny character dataset
(repo), one trained on it (trained, read only; trained_copy to change), running its scripts the
way a user does (python train.py ... from the repo root), and reading what they print and write.
"""
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(f for f in os.listdir(REPO) if f.endswith('.py'))  # every module and script at the top

# GPT-2's BPE offline: a pre-filled tiktoken cache beside the repository, where there is one
_cache = os.path.join(os.path.dirname(REPO), 'shared', 'tiktoken_cache')
if 'TIKTOKEN_CACHE_DIR' not in os.environ and os.path.isdir(_cache):
    os.environ['TIKTOKEN_CACHE_DIR'] = _cache

# a small model and dataset that train in seconds on a CPU
TINY = ['--dataset=tiny_char', '--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=16', '--batch_size=4',
        '--eval_iters=2', '--log_interval=1', '--device=cpu', '--dtype=float32', '--warmup_iters=2', '--lr_decay_iters=20',
        '--learning_rate=1e-3', '--gradient_accumulation_steps=1']

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 40


_server = None  # tests/forkserver.py, started at the first script it runs


def _forked(cmd, cwd, env, timeout):
    """subprocess.run(cmd, ...) for `python script.py args`, in a child of the fork server."""
    import select
    import tempfile
    global _server
    if _server is None or _server.poll() is not None:
        _server = subprocess.Popen([sys.executable, os.path.join(REPO, 'tests', 'forkserver.py')], cwd=REPO,
                                   env={**os.environ, 'PYTHONUNBUFFERED': '1'}, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
    with tempfile.TemporaryDirectory() as tmp:
        out, err = os.path.join(tmp, 'stdout'), os.path.join(tmp, 'stderr')
        request = dict(cwd=os.path.abspath(cwd), env=env, argv=cmd[1:], stdout=out, stderr=err)
        _server.stdin.write(json.dumps(request) + '\n')
        _server.stdin.flush()
        pid = int(_server.stdout.readline())
        if not select.select([_server.stdout], [], [], timeout)[0]:
            os.kill(pid, signal.SIGKILL)
            _server.stdout.readline()
            raise subprocess.TimeoutExpired(cmd, timeout)
        code = int(_server.stdout.readline())
        with open(out) as f, open(err) as g:
            return subprocess.CompletedProcess(cmd, code, f.read(), g.read())


def pytest_sessionfinish(session):
    if _server is not None:
        _server.stdin.close()
        _server.wait()
        _server.stdout.close()


def run(cwd, *args, env=None, timeout=240, check=True):
    """
    Run `python *args` (or a torchrun command if args[0] is 'torchrun') in cwd. A script (args[0]
    ends in .py) or torchrun's agent runs in a child of the fork server, which has imported torch
    already (the same exit status, stdout and stderr as its own process; tests/forkserver.py;
    torchrun's workers are processes of their own, as always). With check, it must
    succeed without a Python warning (DeprecationWarning, FutureWarning, UserWarning, ...) on stderr:
    a clean run of any script prints none, from our code or from the libraries it calls.
    """
    cmd = [sys.executable, *args] if args[0] != 'torchrun' else [sys.executable, '-m', 'torch.distributed.run', *args[1:]]
    full_env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'WANDB_MODE': 'offline', **(env or {})}
    if args[0].endswith('.py') or args[0] == 'torchrun':
        p = _forked(cmd, cwd, full_env, timeout)
    else:
        p = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    if check:
        assert not re.search(r'\w+Warning\b', p.stderr), f"{' '.join(args)} warned:\n{p.stderr[-3000:]}"
    return p


def iter_losses(stdout):
    """{iteration: loss} of the log lines in a train.py output."""
    return {int(i): float(l) for i, l in re.findall(r'^iter (\d+): loss ([\d.]+), time [\d.]+ms, mfu ', stdout, re.M)}


def one_line_error(p, expected):
    """A finished process p failed with one line on stderr, 'error: ...' holding expected, and no traceback."""
    assert p.returncode != 0, p.stdout
    err = p.stderr.strip()
    assert 'Traceback' not in err and '\n' not in err, err
    assert err.startswith('error: ') and expected in err, err


def digest(path):
    """The SHA-256 of a file's bytes: to check that a file was left untouched."""
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def prepare_dataset(path, name, prepare_from):
    """data/<name> in the repo copy at path: TEXT as its input.txt, prepared by data/<prepare_from>/prepare.py."""
    data = os.path.join(path, 'data', name)
    os.makedirs(data)
    shutil.copy(os.path.join(REPO, 'data', prepare_from, 'prepare.py'), data)
    with open(os.path.join(data, 'input.txt'), 'w') as f:
        f.write(TEXT)
    run(path, os.path.join('data', name, 'prepare.py'))


def make_repo(path):
    """A copy of the scripts and configs in path, with data/tiny_char prepared (characters) from TEXT."""
    for f in SCRIPTS:
        shutil.copy(os.path.join(REPO, f), path)
    shutil.copytree(os.path.join(REPO, 'config'), os.path.join(path, 'config'))
    prepare_dataset(path, 'tiny_char', 'shakespeare_char')
    return str(path)


@pytest.fixture
def restore_matmul_precision():
    """For tests that switch the process-wide float32 matmul route (device.onednn_float32_matmuls)."""
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


@pytest.fixture
def trained_copy(trained, tmp_path):
    """A private copy of trained, for a test that damages or changes its files."""
    path = str(tmp_path / 'trained')
    shutil.copytree(trained, path)
    return path
