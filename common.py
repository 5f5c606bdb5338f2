"""
Setup that every script shares and that needs no model: the device, dtype, autocast and compile,
the CPU's fastest float32 route, inference packing, DDP start and end, MFU peaks, and the settings a
script declares. Checkpoints and the model they describe are in checkpoints.py, datasets and
tokenizers in dataloader.py; what needs no torch at all (one-line errors) in util.py.
"""

import ast
import os
import sys
import time
from contextlib import nullcontext

import torch

from util import die

# -----------------------------------------------------------------------------
# device, dtype, autocast, compile

def pick_device(device='auto', local_rank=0):
    """
    The torch.device a device setting names: 'auto' picks CUDA, else MPS, else CPU; under DDP
    'cuda'/'auto' mean this rank's GPU. Parsed once here: everything after uses device.type.
    """
    mps = torch.backends.mps.is_available()
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'mps' if mps else 'cpu'
    kind, _, index = device.partition(':')
    if kind not in ('cpu', 'cuda', 'mps') or (index and not (kind == 'cuda' and index.isdigit())):
        die(f"unknown device '{device}' (use auto, cpu, cuda, cuda:N or mps)")
    if kind == 'cuda':
        if not torch.cuda.is_available():
            die(f"device '{device}' asked for, but this torch sees no CUDA GPU (try --device=cpu)")
        n = torch.cuda.device_count()
        if index and int(index) >= n:
            die(f"device '{device}' asked for, but there are only {n} CUDA GPUs")
        if not index:
            device = f'cuda:{local_rank}'
    if kind == 'mps' and not mps:
        die("device 'mps' asked for, but MPS is not available here (try --device=cpu)")
    return torch.device(device)


def _cpuinfo(field):
    """The first value of a /proc/cpuinfo field ('' where there is none, as on macOS)."""
    try:
        with open('/proc/cpuinfo') as f:
            line = next((l for l in f if l.split(':')[0].strip() == field), '')
    except OSError:
        return ''
    return line.partition(':')[2].strip()


def _cpu_flags():
    return set(_cpuinfo('flags').split())


def pick_dtype(device, dtype='auto'):
    """
    'auto': bfloat16 on CUDA cards that have it, else float16 (with a GradScaler); on CPUs
    bfloat16 only with AMX units (elsewhere it is emulated and slower than float32); float32
    on MPS, where autocast is still patchy.
    """
    kind = device.type
    if dtype == 'auto':
        if kind == 'cuda':
            return 'bfloat16' if torch.cuda.is_bf16_supported() else 'float16'
        if kind == 'cpu' and 'amx_bf16' in _cpu_flags():
            return 'bfloat16'
        return 'float32'
    if dtype not in ('float32', 'bfloat16', 'float16'):
        die(f"unknown dtype '{dtype}' (use auto, float32, bfloat16 or float16)")
    if dtype == 'bfloat16':
        if kind == 'cuda' and not torch.cuda.is_bf16_supported():
            die(f"bfloat16 asked for, but {torch.cuda.get_device_name(device)} has no bfloat16 (try --dtype=float16)")
        flags = _cpu_flags()
        if kind == 'cpu' and flags and not flags & {'avx512_bf16', 'amx_bf16'}:
            die("bfloat16 asked for, but this CPU has no bfloat16 units (try --dtype=float32)")
    return dtype


def autocast(device, dtype):
    """The mixed-precision context for forward passes (nothing to do in float32)."""
    if dtype == 'float32':
        return nullcontext()
    ptdtype = {'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]
    return torch.autocast(device_type=device.type, dtype=ptdtype)


def onednn_float32_matmuls():
    """
    On AMD CPUs with AVX-512, send float32 matmuls to oneDNN instead of MKL, where that is exact.
    MKL, PyTorch's CPU BLAS, runs only its AVX2 code on non-Intel CPUs: half of what a Zen 5 core's
    AVX-512 units do (measured here: ~190 vs ~380 GFLOP/s on 2 cores). PyTorch routes float32 matmuls
    to oneDNN only at torch.set_float32_matmul_precision('medium'), which lets oneDNN round operands
    to bfloat16 where it has kernels for that (AMX). So a probe keeps the route only if a product
    comes out float32-exact (within 1e-6 of float64; bfloat16 would be ~1e-3 off): the same numbers,
    computed faster. Returns whether float32 matmuls go to oneDNN. Intel CPUs stay on MKL, at full
    speed there, and a precision set by someone else is left as it is.
    """
    if not hasattr(torch.backends.mkldnn, 'matmul'):  # torch < 2.9: no way to tell where matmuls go
        return False
    try:
        untouched = torch.get_float32_matmul_precision() == 'highest'
    except RuntimeError:  # backends set apart through the newer per-backend API
        untouched = False
    if (untouched and torch.backends.mkldnn.is_available() and _cpuinfo('vendor_id') == 'AuthenticAMD'
            and 'avx512f' in _cpu_flags()):
        a, b = torch.randn(2, 96, 96, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        torch.set_float32_matmul_precision('medium')
        err = ((a.float() @ b.float()).double() - a @ b).abs().max() / (a.abs() @ b.abs()).max()
        if err > 1e-6:
            torch.set_float32_matmul_precision('highest')
    return torch.backends.mkldnn.matmul.fp32_precision == 'bf16'


def fast_cpu_matmuls(model, device, dtype):
    """
    For training and evaluation on a CPU in float32: the oneDNN route where it is exact and faster
    (onednn_float32_matmuls), decided here once, and the model told what follows from it. CPU flash
    attention runs each tile through PyTorch's gemm, and on oneDNN every call pays a setup cost that
    small tiles cannot hide: for the CPU recipe's shapes (64 keys) flash gets 6x slower there, while
    attention spelled out as two matmuls runs as fast as flash on MKL. From ~256 keys on, flash on
    oneDNN is as fast or faster, and it spares the (T, T) attention matrices' memory: so the model
    spells out attention over up to 128 keys on this route, and over none elsewhere. Returns
    whether float32 matmuls go to oneDNN.
    """
    onednn = device.type == 'cpu' and dtype == 'float32' and onednn_float32_matmuls()
    model.spell_out_attention(128 if onednn else 0)
    return onednn


def setup_device(device='auto', dtype='auto', local_rank=0):
    """(torch.device, dtype name, autocast context), with TF32 matmuls allowed on CUDA."""
    device = pick_device(device, local_rank)
    dtype = pick_dtype(device, dtype)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device, dtype, autocast(device, dtype)


def maybe_compile(model, compile, device):
    """
    torch.compile the model when asked, or by default (compile=None) on CUDA, the one
    place it pays off (on CPU it added ~50 s of compiling and no speed). Where it cannot
    work it falls back to eager with a one-line warning instead of failing.
    """
    if compile is None:
        compile = device.type == 'cuda' and sys.platform != 'win32'
    if compile not in (True, False):
        die(f"compile expects True or False, got {compile!r}")
    if not compile:
        return model
    import importlib.util
    if device.type == 'cuda' and importlib.util.find_spec('triton') is None:
        print("warning: torch.compile needs triton, which is not installed; running uncompiled", file=sys.stderr)
        return model
    import torch._dynamo
    torch._dynamo.config.suppress_errors = True  # a graph that fails to compile runs eagerly
    print("compiling the model... (takes a ~minute)")
    try:
        return torch.compile(model)
    except Exception as e:
        print(f"warning: torch.compile failed ({type(e).__name__}); running uncompiled", file=sys.stderr)
        return model


class PackedLinear(torch.nn.Module):
    """
    An inference-only nn.Linear whose weight oneDNN has reordered once into its blocked layout, so
    each call skips that work: decoding reads every weight once per token, and on CPUs the packed
    product streams them ~1.5x faster than the plain float32 matmul. These are the kernels that
    torch.compile's CPU freezing pass emits (torch.ops.mkldnn), called directly because a growing
    KV cache would make torch.compile recompile at every step; torch.utils.mkldnn, which did the
    same, is a deprecated TorchScript module.
    """

    def __init__(self, linear, batch_size):
        super().__init__()
        self.register_buffer('weight', torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), batch_size))
        self.register_buffer('bias', None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x):
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, 'none', [], '')


def for_inference(model, device, dtype, batch_size=1):
    """
    Make an eval-mode model faster at generating, where that is known to pay: on CPUs in float32
    every Linear becomes a PackedLinear (oneDNN, weights pre-packed), with logits within ~1e-5 of
    the plain model's. The model is changed in place and can only run inference afterwards; the tied
    lm_head gets its own packed copy of wte. A quantize.LowPrecisionLinear with bfloat16 weights
    packs them the same way (where oneDNN has bfloat16 kernels). The float32 matmuls left are
    attention's over the KV cache, batched over strided slices, where MKL is ~4x faster than
    oneDNN: so sampling leaves them on MKL (it does not take fast_cpu_matmuls' route).
    """
    if (device.type != 'cpu' or dtype != 'float32' or not torch.backends.mkldnn.is_available()
            or not all(hasattr(torch.ops.mkldnn, op) for op in ('_linear_pointwise', '_reorder_linear_weight'))):
        return model

    def pack(module):
        for name, child in module.named_children():
            if isinstance(child, torch.nn.Linear):
                setattr(module, name, PackedLinear(child, batch_size))
            elif hasattr(child, 'pack'):  # quantize.LowPrecisionLinear: bfloat16 weights pack too
                child.pack(batch_size)
            else:
                pack(child)
    pack(model.eval())
    return model


def _local(t):
    """A tensor's share on this process: FSDP's parameters and gradients are DTensors, sharded."""
    return t.to_local() if hasattr(t, 'to_local') else t


def optimizer_step(model, optimizer, scaler, grad_clip, measure=False):
    """
    The end of a training step, as train.py and bench.py take it: clip the gradient norm at
    grad_clip (0: no clipping; unscaled first under float16's GradScaler), step the optimizer and
    the scaler, and free the gradients' memory. Returns the gradient norm before clipping, a tensor
    on the device (reading it waits for the device: train.py does so at log lines only); without
    clipping it is computed only when measure is set, else None. Under FSDP the norm is over every
    process's shard (a collective: all processes call this).
    """
    scaler.unscale_(optimizer)
    norm = None
    if grad_clip != 0.0 or measure:
        # clip_grad_norm_ in two halves, so that a sharded norm is made whole before it scales
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads)
        if hasattr(norm, 'full_tensor'):
            norm = norm.full_tensor()
        if grad_clip != 0.0:
            torch.nn.utils.clip_grads_with_norm_(model.parameters(), grad_clip, norm)
    scaler.step(optimizer)  # skipped by the scaler if float16 gradients overflowed
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return norm


def weights_before_step(optimizer):
    """A copy of the weights each parameter group holds (this process's shards), for update_to_weight."""
    return [[_local(p).detach().clone() for p in group['params']] for group in optimizer.param_groups]


def update_to_weight(optimizer, before, sharded=False):
    """
    How far the last step moved the weights: the RMS of the update over the RMS of the weights,
    overall and per parameter group, as tensors on the device. before is the groups' weights as
    copied just before the step (weights_before_step). ~1e-3 is the usual healthy size for AdamW.
    sharded (FSDP): the sums of squares are added up over all processes, which must all call this.
    """
    updates, weights = [], []
    for group, old in zip(optimizer.param_groups, before):  # foreach: a few kernels per group, not per tensor
        diffs = torch._foreach_sub([_local(p).detach() for p in group['params']], old)
        updates.append(torch.stack(torch._foreach_norm(diffs)).float().square().sum())
        weights.append(torch.stack(torch._foreach_norm(old)).float().square().sum())
    if sharded:
        import torch.distributed as dist
        sums = torch.stack(updates + weights)
        dist.all_reduce(sums)
        updates, weights = list(sums[:len(updates)]), list(sums[len(updates):])
    overall = (sum(updates) / sum(weights)).sqrt()
    return overall, [(u / w).sqrt() for u, w in zip(updates, weights)]


def rss_anon():
    """This process's anonymous memory in bytes (RssAnon: its own pages, not files it maps); None without /proc."""
    try:
        with open('/proc/self/status') as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith('RssAnon:'))
    except (OSError, StopIteration):
        return None


class PeakAnonMemory:
    """
    with PeakAnonMemory() as m: ... then m.peak is the most anonymous memory the process held during
    the block, sampled every interval seconds (Linux; None elsewhere). Unlike peak RSS it leaves out
    memory-mapped weights files, page cache the kernel can drop, and it covers this block only.
    """

    def __init__(self, interval=0.0005):
        self.interval = interval

    def __enter__(self):
        import threading
        self.peak, self._done = rss_anon(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        if self.peak is not None:
            self._thread.start()
        return self

    def _sample(self):
        while not self._done.wait(self.interval):
            self.peak = max(self.peak, rss_anon())

    def __exit__(self, *exc):
        self._done.set()
        if self.peak is not None:
            self._thread.join()
            self.peak = max(self.peak, rss_anon())


def peak_memory(device):
    """The most memory this process has held, in bytes: allocated on a CUDA device, else resident (RSS)."""
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device)
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == 'darwin' else peak * 1024  # macOS counts bytes, Linux KiB


# -----------------------------------------------------------------------------
# DDP: torchrun starts one process per device; these join and leave its process group

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
    where the killed attempt's keys still lie, and the new ranks then try to connect to the dead
    ones ('Gloo connectFullMesh failed ... Connection refused'; pytorch issue #167288, for NCCL).
    """
    import torch.distributed as dist
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


def shard_model(model, device, dtype):
    """
    FSDP2 (torch.distributed.fsdp.fully_shard) over the torchrun group: each transformer block, then
    the root (torchtitan's order), so every process keeps 1/N of the weights, gradients and optimizer
    state, and a block's weights are gathered only while it runs. On GPUs the gathered weights are
    in the autocast dtype and gradients are reduced in float32; on CPUs (gloo) all stays float32. The
    tied wte/lm_head weight lives in the root unit and stays one parameter.
    """
    import torch.distributed as dist
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


def end_ddp(before_exit=None):
    """
    Leave the torchrun process group at the end of a script: every rank waits at a barrier (gloo
    aborts if a rank tears down while another still works), the group is destroyed, and then, on
    gloo, the process ends at once. About one CPU run in twenty here, a gloo thread still alive
    aborts the interpreter's own teardown ('terminate called without an active exception') after
    all the work is done, and torchrun reports the whole run as failed; os._exit skips that
    teardown, and atexit with it, so before_exit is called first, once everything is flushed.
    """
    import torch.distributed as dist
    gloo = dist.get_backend() == 'gloo'
    dist.barrier()
    dist.destroy_process_group()
    if gloo:
        if before_exit is not None:
            before_exit()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


# -----------------------------------------------------------------------------
# speed: MFU against a peak, progress

# dense peak FLOP/s of known GPUs, by substring of torch.cuda.get_device_name(): (name, bfloat16/float16
# tensor cores, float32 with TF32, which setup_device allows; V100 and T4 have no TF32: plain float32)
PEAK_FLOPS = [
    ('H200', 989e12, 494e12), ('H100 PCIe', 756e12, 378e12), ('H100', 989e12, 494e12), ('A100', 312e12, 156e12),
    ('L40S', 362e12, 181e12), ('L4', 121e12, 60e12), ('A10', 125e12, 62.5e12), ('V100', 125e12, 15.7e12),
    ('T4', 65e12, 8.1e12),
]


def peak_flops(device, dtype, configured=0.0):
    """The peak FLOP/s to measure MFU against: the configured one, else a known GPU's for dtype, else None."""
    if configured:
        return configured
    if device.type == 'cuda':
        name = torch.cuda.get_device_name(device)
        row = next((row for row in PEAK_FLOPS if row[0] in name), None)
        return row and row[2 if dtype == 'float32' else 1]
    return None


def measured_matmul_flops(device, dtype, n=2048, repeat=5):
    """
    The FLOP/s of the best of a few n x n matmuls in dtype: a practical peak for devices no table
    knows (CPUs, MPS), the rate their BLAS reaches on large, easy shapes. A spec-sheet peak is
    higher still, so MFU against this one is the generous kind.
    """
    ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]
    a, b = torch.randn(2, n, n, device=device).to(ptdtype)
    best = float('inf')
    for _ in range(repeat + 1):  # the first warms up
        if device.type == 'mps':
            torch.mps.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.type == 'mps':
            torch.mps.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def format_duration(seconds):
    """1h02m, 3m05s, 42s: a duration the way a progress line shows it."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


# -----------------------------------------------------------------------------
# the settings a script declares

def script_settings(script):
    """
    The settings at the top of a script (train.py), as a dict: its module-level assignments of
    literal values (or arithmetic on them, 5 * 8) before it runs configurator.py. bench.py takes
    train.py's this way, so every config file written for train.py runs in bench.py too.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), script)
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    literal = (ast.Constant, ast.BinOp, ast.UnaryOp, ast.operator, ast.unaryop)
    settings = {}
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):  # exec(open('configurator.py')...)
            break
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and all(isinstance(n, literal) for n in ast.walk(node.value))):
            settings[node.targets[0].id] = eval(compile(ast.Expression(node.value), path, 'eval'), {})
    return settings
