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
SCRIPTS = sorted(f for f in os.listdir(REPO) if f.endswith('.py'))  # the scripts, model.py, configurator.py

# GPT-2's BPE offline: a pre-filled tiktoken cache beside the repository, where there is one
_cache = os.path.join(os.path.dirname(REPO), 'shared', 'tiktoken_cache')
if 'TIKTOKEN_CACHE_DIR' not in os.environ and os.path.isdir(_cache):
    os.environ['TIKTOKEN_CACHE_DIR'] = _cache

# the speed choices scripts measure (nanogpt/autotune.py) go to a cache of the test session's, not the user's
_choices = None  # that cache, when the session made it (and removes it at its end)
if 'NANOGPT_CACHE_DIR' not in os.environ:
    import tempfile
    os.environ['NANOGPT_CACHE_DIR'] = _choices = tempfile.mkdtemp(prefix='nanogpt-choices-')

# a small model and dataset that train in seconds on a CPU
TINY = ['--dataset=tiny_char', '--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=16', '--batch_size=4',
        '--eval_iters=2', '--log_interval=1', '--device=cpu', '--dtype=float32', '--warmup_iters=2',
        '--lr_decay_iters=20', '--learning_rate=1e-3', '--gradient_accumulation_steps=1']

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 40


# NANOGPT_FORK_SERVER=0 runs every script as a plain subprocess, a fresh interpreter each, instead
FORK_SERVER = os.environ.get('NANOGPT_FORK_SERVER', '1') != '0'
_server = None  # tests/forkserver.py, started at the first script it runs, and its socket


# the environment scripts run in: the session's as it started, not what pytest (PYTEST_CURRENT_TEST), torch
# or a test sets in this process's own
SESSION_ENV = {**os.environ, 'PYTHONUNBUFFERED': '1', 'WANDB_MODE': 'offline'}


def script_env(env=None):
    """The environment a test runs a script in: the session's, unbuffered and with wandb offline, and env."""
    return {**SESSION_ENV, **(env or {})}


def _fork_server():
    """The socket path of the fork server, started if need be, in the environment scripts get by default."""
    global _server
    import tempfile
    if _server is None or _server[0].poll() is not None:
        path = os.path.join(tempfile.mkdtemp(), 'forkserver')
        p = subprocess.Popen([sys.executable, os.path.join(REPO, 'tests', 'forkserver.py'), path], cwd=REPO,
                             stdout=subprocess.PIPE, text=True, env=script_env())
        assert p.stdout.readline().strip() == 'ready'
        _server = p, path
    return _server[1]


def pytest_sessionfinish(session):
    if _server is not None:
        _server[0].kill()
        _server[0].wait()
        _server[0].stdout.close()
        shutil.rmtree(os.path.dirname(_server[1]), ignore_errors=True)
    if _choices is not None:
        shutil.rmtree(_choices, ignore_errors=True)


class Forked:
    """
    A script running in a child of the fork server, used as subprocess.Popen(..., stdout=PIPE,
    stderr=PIPE, text=True) is: pid (the script's own process), poll, wait, communicate,
    send_signal, kill, returncode.
    """

    def __init__(self, cmd, cwd, env):
        import forkserver
        self.args, self.returncode = cmd, None
        path = _fork_server()
        self._out, self._err = path + f'.{id(self)}.out', path + f'.{id(self)}.err'  # beside the socket
        with open(os.devnull) as i, open(self._out, 'w') as o, open(self._err, 'w') as e:
            spec = dict(cwd=os.path.abspath(cwd), env={**env, 'FORKSERVER': path}, argv=cmd[1:])
            self._conn, self.pid = forkserver.start(path, spec, [i.fileno(), o.fileno(), e.fileno()])

    def wait(self, timeout=None):
        import select
        import forkserver
        if self.returncode is None:
            if not select.select([self._conn], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self.returncode = int(forkserver.readline(self._conn))
            self._conn.close()
        return self.returncode

    def poll(self):
        return self.wait(0) if self.returncode is not None or self._ready() else None

    def _ready(self):
        import select
        return bool(select.select([self._conn], [], [], 0)[0])

    def communicate(self, timeout=None):
        self.wait(timeout)
        with open(self._out) as f, open(self._err) as g:
            out, err = f.read(), g.read()
        os.remove(self._out)
        os.remove(self._err)
        return out, err

    def send_signal(self, sig):
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self):
        self.send_signal(signal.SIGKILL)


class Plain(subprocess.Popen):
    """
    subprocess.Popen(cmd, cwd, env) with stdout and stderr in files, read by communicate as Forked's are:
    a test that kills it and never reads them leaves no pipe open.
    """

    def __init__(self, cmd, cwd, env):
        import tempfile
        self._dir = tempfile.mkdtemp(prefix='script-')
        with open(os.devnull) as i, open(os.path.join(self._dir, 'out'), 'w') as o, \
                open(os.path.join(self._dir, 'err'), 'w') as e:
            super().__init__(cmd, cwd=cwd, env=env, stdin=i, stdout=o, stderr=e)

    def communicate(self, timeout=None):
        self.wait(timeout)
        with open(os.path.join(self._dir, 'out')) as o, open(os.path.join(self._dir, 'err')) as e:
            out, err = o.read(), e.read()
        shutil.rmtree(self._dir, ignore_errors=True)
        return out, err


def spawn(cwd, *args, env=None):
    """
    Start `python *args` in cwd (a script, or `-m module`; or a torchrun command if args[0] is
    'torchrun') in a child of the fork server, which has imported torch already: a Popen-like
    Forked. Its exit status, stdout and stderr are a process of its own's (tests/forkserver.py);
    torchrun's agent runs there, and each of its workers through tests/forkclient.py. Without the
    fork server (FORK_SERVER), a Plain subprocess.
    """
    if args[0] == 'torchrun':
        script = next(i for i, a in enumerate(args) if a.endswith('.py'))
        client = [os.path.join(REPO, 'tests', 'forkclient.py')] if FORK_SERVER else []
        args = ('-m', 'torch.distributed.run', *args[1:script], *client, *args[script:])
    if not FORK_SERVER:
        return Plain([sys.executable, *args], cwd, script_env(env))
    return Forked([sys.executable, *args], cwd, script_env(env))


def worker_pid(pid):
    """The process of the script that the torchrun worker pid (a tests/forkclient.py) runs."""
    if not FORK_SERVER:
        return pid
    try:
        with open(f"{_fork_server()}.{pid}") as f:
            return int(f.read())
    except (OSError, ValueError):
        return pid


def run(cwd, *args, env=None, timeout=240, check=True):
    """
    Run `python *args` (or a torchrun command if args[0] is 'torchrun') in cwd and wait for it: a
    script, or torchrun, through spawn; anything else (-c code) as a process of its own. With
    check, it must succeed without a Python warning (DeprecationWarning, FutureWarning,
    UserWarning, ...) on stderr: a clean run of any script prints none, from our code or from the
    libraries it calls.
    """
    if args[0].endswith('.py') or args[0] == 'torchrun':
        p = spawn(cwd, *args, env=env)
        try:
            out, err = p.communicate(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            raise
        p = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    else:
        p = subprocess.run([sys.executable, *args], cwd=cwd, env=script_env(env), capture_output=True, text=True,
                           timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    if check:
        assert not re.search(r'\w+Warning\b', p.stderr), f"{' '.join(args)} warned:\n{p.stderr[-3000:]}"
    return p


def iter_losses(stdout):
    """{iteration: loss} of the log lines in a train.py output."""
    return {int(i): float(l) for i, l in re.findall(r'^iter (\d+): loss ([\d.]+), time [\d.]+ms, mfu ', stdout, re.M)}


def losses(out_dir):
    """Every loss a run recorded in out_dir/metrics.jsonl, training and evaluation, in full precision."""
    with open(os.path.join(out_dir, 'metrics.jsonl')) as f:
        return [(r['iter'], r.get('loss'), r.get('val_loss')) for r in map(json.loads, f)]


def samples(stdout):
    """The texts sample.py printed, each ended by its '---------------' line (a line naming the tokenizer left out)."""
    return re.sub(r'\A(Loading .*|No meta.json found.*)\n', '', stdout).split('\n---------------\n')[:-1]


def char_samples_ok(stdout, n, new_tokens, start='\n'):
    """sample.py printed n samples of a character model of TEXT: start and new_tokens characters of TEXT's each."""
    texts = samples(stdout)
    return len(texts) == n and all(t.startswith(start) and len(t) == len(start) + new_tokens and set(t) <= set(TEXT)
                                   for t in texts)


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


def prepare_dataset(path, name, prepare_from, text=TEXT):
    """data/<name> in the repo copy at path: text as its input.txt, prepared by data/<prepare_from>/prepare.py."""
    data = os.path.join(path, 'data', name)
    os.makedirs(data)
    shutil.copy(os.path.join(REPO, 'data', prepare_from, 'prepare.py'), data)
    with open(os.path.join(data, 'input.txt'), 'w') as f:
        f.write(text)
    run(path, os.path.join('data', name, 'prepare.py'))


def make_repo(path):
    """A copy of the scripts, configs and data/prepare.py in path, data/tiny_char prepared (characters) from TEXT."""
    for f in SCRIPTS:
        shutil.copy(os.path.join(REPO, f), path)
    shutil.copytree(os.path.join(REPO, 'nanogpt'), os.path.join(path, 'nanogpt'),
                    ignore=shutil.ignore_patterns('__pycache__'))
    shutil.copytree(os.path.join(REPO, 'config'), os.path.join(path, 'config'))
    os.makedirs(os.path.join(path, 'data'))
    shutil.copy(os.path.join(REPO, 'data', 'prepare.py'), os.path.join(path, 'data'))  # for your own data
    prepare_dataset(path, 'tiny_char', 'shakespeare_char')
    return str(path)


@pytest.fixture
def restore_matmul_precision():
    """For tests that switch the process-wide float32 matmul route (autotune.Route, onednn_float32_exact)."""
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
