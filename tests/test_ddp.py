"""
DDP on CPU: `torchrun --nproc_per_node=2` (gloo) trains the same model as one process with
the same global batch (each rank takes half the gradient-accumulation micro-steps, and the
micro-batches are numbered across ranks, so both see the very same batches), and a stopped
DDP run resumes bit for bit. Run: python -m pytest tests/test_ddp.py
"""
import os
import signal
import socket
import subprocess
import sys
import time

import torch

from conftest import TINY, iter_losses, run

# summation order differs (two ranks' gradients are all-reduced), so equality is up to
# float32 rounding: logged losses (printed to 4 decimals) within 2e-4, weights within 1e-5
LOSS_TOL, WEIGHT_TOL = 2e-4, 1e-5


def two_nodes(repo, *args):
    """
    train.py on two torchrun "nodes" of one process each, on the loopback interface with the c10d
    rendezvous (the multi-node command of the README, both nodes on this machine; is_host says
    which agent serves the rendezvous store, as they share an address): rank 0's output.
    """
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    nodes = [subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--nnodes=2', '--nproc_per_node=1',
                               '--rdzv_backend=c10d', f'--rdzv_endpoint=127.0.0.1:{port}', '--rdzv_id=test',
                               f'--rdzv_conf=is_host={int(node == 0)}', 'train.py', *args], cwd=repo, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for node in (0, 1)]
    outputs = [node.communicate(timeout=240) for node in nodes]
    assert all(node.returncode == 0 for node in nodes), [err[-2000:] for _, err in outputs]
    return next(out for out, _ in outputs if 'iter 0:' in out)


def test_one_process_two_processes_and_two_nodes_give_the_same_losses(repo):
    """One process, two under torchrun --standalone, and two "nodes" of one process each: the same losses."""
    args = [*TINY, '--gradient_accumulation_steps=4', '--max_iters=8', '--eval_interval=8']
    one = run(repo, 'train.py', *args, '--out_dir=one').stdout
    two = run(repo, 'torchrun', '--standalone', '--nproc_per_node=2', 'train.py', *args, '--out_dir=two').stdout
    nodes = two_nodes(repo, *args, '--out_dir=nodes')
    a, b, c = (list(iter_losses(out).values()) for out in (one, two, nodes))
    assert len(a) == len(b) == len(c) == 9
    assert max(abs(x - y) for x, y in zip(a, b)) <= LOSS_TOL, (a, b)
    assert max(abs(x - y) for x, y in zip(b, c)) <= LOSS_TOL, (b, c)
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


def _worker_pid(agent_pid, rank):
    """The PID of the worker process of this rank that a torchrun agent started, or None."""
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{pid}/stat') as f:
                ppid = int(f.read().rsplit(')', 1)[1].split()[1])
            with open(f'/proc/{pid}/environ', 'rb') as f:
                env = f.read().split(b'\0')
        except (OSError, IndexError, ValueError):
            continue
        if ppid == agent_pid and f'RANK={rank}'.encode() in env:
            return int(pid)
    return None


def test_torchrun_restart_after_a_killed_worker_ends_like_an_uninterrupted_run(repo):
    """
    torchrun --max-restarts=1 with auto_resume: rank 1 is SIGKILLed mid-training, torchrun restarts
    both workers, they resume from the last checkpoint and end with the uninterrupted run's weights.
    """
    args = [*TINY, '--gradient_accumulation_steps=2', '--max_iters=200', '--eval_interval=50', '--dropout=0.1',
            '--auto_resume=True']
    run(repo, 'torchrun', '--standalone', '--nproc_per_node=2', 'train.py', *args, '--out_dir=straight')
    agent = subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                              '--max-restarts=1', 'train.py', *args, '--out_dir=restarted'], cwd=repo, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = os.path.join(repo, 'restarted', 'ckpt.pt')
    deadline = time.time() + 120
    while not os.path.exists(ckpt) and agent.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    victim = _worker_pid(agent.pid, 1)
    assert victim, "no rank-1 worker to kill"
    os.kill(victim, signal.SIGKILL)
    stdout, stderr = agent.communicate(timeout=240)
    assert agent.returncode == 0, stderr[-3000:]
    assert 'auto_resume: restarted/ckpt.pt exists, so this run resumes it' in stdout  # it really restarted
    assert 'training done' in stdout
    wa = torch.load(os.path.join(repo, 'straight', 'ckpt.pt'), weights_only=True)
    wb = torch.load(ckpt, weights_only=True)
    assert wa['iter_num'] == wb['iter_num'] == 200
    assert all(torch.equal(wa['model'][k], wb['model'][k]) for k in wa['model'])
