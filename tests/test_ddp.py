"""
DDP and FSDP on CPU: `torchrun --nproc_per_node=2` (gloo), with DDP or with FSDP2
(--parallelism=fsdp), on one "node" or two, trains the same model as one process with the same
global batch (each rank takes half the gradient-accumulation micro-steps, and the micro-batches
are numbered across ranks, so all see the very same batches); a stopped run resumes bit for bit;
an FSDP checkpoint resumes in 1, 2 or 4 processes and under DDP, survives kill -9, and a torchrun
restart after a killed worker ends like an uninterrupted run (bit for bit). Run: python -m pytest tests/test_ddp.py
"""
import glob
import os
import signal
import socket
import shutil
import time

import pytest
import torch
from transformers import GPT2LMHeadModel

from nanogpt import checkpoints
from nanogpt import loading
from conftest import TINY, char_samples_ok, iter_losses, run, spawn, worker_pid

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
    nodes = [spawn(repo, 'torchrun', '--nnodes=2', '--nproc_per_node=1', '--rdzv_backend=c10d',
                   f'--rdzv_endpoint=127.0.0.1:{port}', '--rdzv_id=test', f'--rdzv_conf=is_host={int(node == 0)}',
                   'train.py', *args) for node in (0, 1)]
    outputs = [node.communicate(timeout=240) for node in nodes]
    assert all(node.returncode == 0 for node in nodes), [err[-2000:] for _, err in outputs]
    return next(out for out, _ in outputs if 'iter 0:' in out)


def test_one_process_two_processes_and_two_nodes_give_the_same_losses(repo):
    """
    One process; two under torchrun --standalone with DDP and with FSDP; two "nodes" of one
    process each with DDP and with FSDP: the same losses and weights. FSDP's ckpt.pt is the
    one-process file (the same names, wte and lm_head still one tensor); it samples and exports.
    """
    args = [*TINY, '--gradient_accumulation_steps=4', '--max_iters=8', '--eval_interval=8']
    torchrun = ['torchrun', '--standalone', '--nproc_per_node=2', 'train.py']
    outputs = {'one': run(repo, 'train.py', *args, '--out_dir=one').stdout,
               'ddp': run(repo, *torchrun, *args, '--out_dir=ddp').stdout,
               'fsdp': run(repo, *torchrun, *args, '--parallelism=fsdp', '--out_dir=fsdp').stdout,
               'ddp_nodes': two_nodes(repo, *args, '--out_dir=ddp_nodes'),
               'fsdp_nodes': two_nodes(repo, *args, '--parallelism=fsdp', '--out_dir=fsdp_nodes')}
    assert 'dtype: float32, FSDP over 2 processes' in outputs['fsdp']
    losses = {name: list(iter_losses(out).values()) for name, out in outputs.items()}
    for name, out in outputs.items():
        assert len(losses[name]) == 9 and 'tokens per iteration will be: 256' in out
        assert max(abs(x - y) for x, y in zip(losses['one'], losses[name])) <= LOSS_TOL, (name, losses)
    one = torch.load(os.path.join(repo, 'one', 'ckpt.pt'), weights_only=True)['model']
    for name in outputs:
        w = torch.load(os.path.join(repo, name, 'ckpt.pt'), weights_only=True)['model']
        assert list(w) == list(one) and max((one[k] - w[k]).abs().max().item() for k in one) <= WEIGHT_TOL
        assert w['lm_head.weight'].data_ptr() == w['transformer.wte.weight'].data_ptr()  # still tied
    sample = run(repo, 'sample.py', '--out_dir=fsdp', '--device=cpu', '--num_samples=1', '--max_new_tokens=10').stdout
    assert char_samples_ok(sample, 1, 10), sample
    run(repo, 'export.py', '--out_dir=fsdp')
    hf = GPT2LMHeadModel.from_pretrained(os.path.join(repo, 'fsdp', 'hf'))
    fsdp = torch.load(os.path.join(repo, 'fsdp', 'ckpt.pt'), weights_only=True)['model']
    assert torch.equal(hf.transformer.wte.weight.detach(), fsdp['transformer.wte.weight'])


def test_fsdp_checkpoint_resumes_in_any_number_of_processes_and_under_ddp(repo):
    """
    A checkpoint saved by 2 FSDP processes (the optimizer state in shards, through DCP) resumes in
    2 bit for bit, and in 1 or 4 processes and under DDP up to rounding; a DDP checkpoint resumes
    under FSDP.
    """
    args = [*TINY, '--gradient_accumulation_steps=4', '--eval_interval=4']

    def torchrun(n, out_dir, *more):
        return run(repo, 'torchrun', '--standalone', f'--nproc_per_node={n}', 'train.py', *args,
                   f'--out_dir={out_dir}', *more).stdout
    straight = iter_losses(torchrun(2, 'straight', '--parallelism=fsdp', '--max_iters=8'))
    torchrun(2, 'half', '--parallelism=fsdp', '--max_iters=4')
    assert os.path.isdir(os.path.join(repo, 'half', 'optimizer-00000004'))  # sharded, not one file
    assert os.path.isfile(os.path.join(repo, 'half', 'optimizer-00000004', '.metadata'))
    torchrun(2, 'ddp_half', '--max_iters=4')
    resumes = {('fsdp', 2): ('half', '--parallelism=fsdp'), ('fsdp', 4): ('half', '--parallelism=fsdp'),
               ('fsdp', 1): ('half', '--parallelism=fsdp'), ('ddp', 2): ('half', '--parallelism=ddp'),
               ('fsdp from ddp', 2): ('ddp_half', '--parallelism=fsdp')}
    for (name, n), (source, parallelism) in resumes.items():
        out_dir = f'{name}_{n}'.replace(' ', '_')
        shutil.copytree(os.path.join(repo, source), os.path.join(repo, out_dir))
        more = (parallelism, '--max_iters=8', '--init_from=resume')
        if n > 1:
            out = torchrun(n, out_dir, *more)
        else:
            out = run(repo, 'train.py', *args, f'--out_dir={out_dir}', *more).stdout
        resumed = iter_losses(out)
        assert sorted(resumed) == list(range(4, 9)), (name, n, out)
        if (name, n) == ('fsdp', 2):
            assert all(resumed[i] == straight[i] for i in resumed), (resumed, straight)
        else:
            assert max(abs(resumed[i] - straight[i]) for i in resumed) <= LOSS_TOL, (name, n, resumed, straight)
    a = torch.load(os.path.join(repo, 'straight', 'ckpt.pt'), weights_only=True)['model']
    b = torch.load(os.path.join(repo, 'fsdp_2', 'ckpt.pt'), weights_only=True)['model']
    assert all(torch.equal(a[k], b[k]) for k in a)
    optimizer_files = glob.glob(os.path.join(repo, 'fsdp_2', 'optimizer-*'))
    assert optimizer_files == [os.path.join(repo, 'fsdp_2', 'optimizer-00000008')]


def test_kill_9_during_an_fsdp_save_leaves_a_checkpoint_that_resumes(repo):
    """The whole FSDP job is SIGKILLed while its shards or its ckpt.pt are being written; it resumes."""
    args = [*TINY, '--n_layer=4', '--n_embd=128', '--n_head=4', '--eval_interval=1', '--eval_iters=1',
            '--gradient_accumulation_steps=2', '--parallelism=fsdp', '--max_iters=1000000', '--out_dir=out']
    out = os.path.join(repo, 'out')
    killed_mid_write = 0
    for attempt in range(4):
        init = 'resume' if os.path.exists(os.path.join(out, 'ckpt.pt')) else 'scratch'
        agent = spawn(repo, 'torchrun', '--standalone', '--nproc_per_node=2', 'train.py', *args, f'--init_from={init}')
        deadline = time.time() + 90
        while time.time() < deadline and not os.path.exists(os.path.join(out, 'ckpt.pt')):
            time.sleep(0.01)
        before = set(os.listdir(out)) | {'lock'}  # with what a killed attempt left behind
        while time.time() < deadline and set(os.listdir(out)) <= before:  # until the next save begins
            time.sleep(0.0005)
        time.sleep(0.005 * attempt)
        # the whole job at once: torchrun starts its workers in sessions of their own
        for pid in [_worker_pid(agent.pid, 0), _worker_pid(agent.pid, 1), agent.pid]:
            if pid:
                os.kill(pid, signal.SIGKILL)
        agent.wait()
        entries = set(os.listdir(out))
        ckpt = checkpoints.load_checkpoint(os.path.join(out, 'ckpt.pt'))
        killed_mid_write += 'ckpt.pt.tmp' in entries or len([e for e in entries if e.startswith('optimizer-')]) > 1
        loading.model_from_checkpoint(ckpt)
        assert os.path.isfile(os.path.join(out, ckpt['optimizer_file'], '.metadata'))
    assert killed_mid_write >= 1
    ckpt = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)
    out_text = run(repo, 'torchrun', '--standalone', '--nproc_per_node=2', 'train.py', *args, '--init_from=resume',
                   f'--max_iters={ckpt["iter_num"] + 2}').stdout
    assert sorted(iter_losses(out_text)) == [ckpt['iter_num'], ckpt['iter_num'] + 1, ckpt['iter_num'] + 2]
    assert len(glob.glob(os.path.join(out, 'optimizer-*'))) == 1 and not glob.glob(os.path.join(out, '*.tmp'))


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
            return worker_pid(int(pid))
    return None


@pytest.mark.parametrize('parallelism', ['ddp', 'fsdp'])
def test_torchrun_restart_after_a_killed_worker_ends_like_an_uninterrupted_run(repo, parallelism):
    """
    torchrun --max-restarts=1 with auto_resume: rank 1 is SIGKILLed mid-training, torchrun restarts
    both workers, they resume from the last checkpoint and end with the uninterrupted run's weights,
    bit for bit with dropout on (which is also the test that DDP and FSDP resume exactly).
    """
    args = [*TINY, '--gradient_accumulation_steps=2', '--max_iters=200', '--eval_interval=50', '--dropout=0.1',
            '--auto_resume=True', f'--parallelism={parallelism}']
    run(repo, 'torchrun', '--standalone', '--nproc_per_node=2', 'train.py', *args, '--out_dir=straight')
    agent = spawn(repo, 'torchrun', '--standalone', '--nproc_per_node=2', '--max-restarts=1', 'train.py', *args,
                  '--out_dir=restarted')
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
