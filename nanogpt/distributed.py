"""
Distributed runs under torchrun: which process this is, joining its process group (restarts
included), FSDP2 sharding of the model, what each process holds, and leaving the group at the end.
"""

import os
import sys

import torch
import torch.distributed as dist

def ddp_ranks():
    """(ddp, rank, local_rank, world_size): whether torchrun started this process, and where it stands."""
    if 'RANK' not in os.environ:
        return False, 0, 0, 1
    return True, int(os.environ['RANK']), int(os.environ['LOCAL_RANK']), int(os.environ['WORLD_SIZE'])


def start_ddp(device, backend='auto'):
    """
    Join torchrun's process group: NCCL between GPUs, gloo otherwise, unless backend names one.
    After torchrun restarts its workers (--max-restarts), the new group forms on the agent's store
    under a prefix naming the attempt: torch's env:// path hands the agent's store over as it is,
    where the killed attempt's keys still lie, and the new ranks would try to connect to the dead
    ones (see docs/distributed.md).
    """
    if backend == 'auto':
        backend = 'nccl' if device.type == 'cuda' else 'gloo'
    # naming the GPU binds NCCL's communicator to it (without, barrier() warns that it guesses)
    gpu = {'device_id': device} if device.type == 'cuda' else {}
    attempt = int(os.environ.get('TORCHELASTIC_RESTART_COUNT', 0))
    if attempt == 0 or os.environ.get('TORCHELASTIC_USE_AGENT_STORE') != 'True':
        dist.init_process_group(backend=backend, **gpu)  # env://: a first attempt, or a store new each time
        return
    store = dist.TCPStore(os.environ['MASTER_ADDR'], int(os.environ['MASTER_PORT']), is_master=False)
    dist.init_process_group(backend=backend, store=dist.PrefixStore(f'attempt_{attempt}', store),
                            rank=int(os.environ['RANK']), world_size=int(os.environ['WORLD_SIZE']), **gpu)


def broadcast_object(obj):
    """Rank 0's obj on every rank (a choice one process made for all)."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard_model(model, device, dtype):
    """
    FSDP2 (torch.distributed.fsdp.fully_shard) over the torchrun group: each transformer block, then
    the root (torchtitan's order), so every process keeps 1/N of the weights, gradients and optimizer
    state, and a block's weights are gathered only while it runs. On GPUs the gathered weights are
    in the autocast dtype and gradients are reduced in float32; on CPUs (gloo) all stays float32. The
    tied wte/lm_head weight lives in the root unit and stays one parameter.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy()
    if device.type == 'cuda' and dtype != 'float32':
        policy = MixedPrecisionPolicy(param_dtype=getattr(torch, dtype), reduce_dtype=torch.float32)
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def process_share(model, optimizer):
    """The bytes this process holds of model's weights, their gradients and optimizer's state: under FSDP its
    shards (DTensors' local parts), else the whole of each."""
    from torch.distributed.tensor import DTensor
    local = lambda ts: sum((t.to_local() if isinstance(t, DTensor) else t).nbytes for t in ts if t is not None)
    state = (t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0)
    return local(model.parameters()), local(p.grad for p in model.parameters()), local(state)


def end_ddp(before_exit=None):
    """
    Leave the torchrun process group at the end of a script: every rank waits at a barrier (gloo
    aborts if a rank tears down while another still works), the group is destroyed, and then, on
    gloo, the process ends at once: a gloo thread still alive can abort the interpreter's own
    teardown after all the work is done ('terminate called without an active exception'), and
    torchrun would report the run as failed. os._exit skips that teardown, and atexit with it, so
    before_exit is called first, once everything is flushed.
    """
    gloo = dist.get_backend() == 'gloo'
    dist.barrier()
    dist.destroy_process_group()
    if gloo:
        if before_exit is not None:
            before_exit()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


