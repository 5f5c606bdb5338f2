"""
The device a script runs on: its choice, the dtype and autocast, torch.compile, the peak FLOP/s
that MFU is measured against, memory meters and bandwidth. (On CPUs, autotune.py measures the speed choices.)
"""

import os
import re
import sys
import time
from contextlib import nullcontext

import torch

from nanogpt.util import UsageError


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
        raise UsageError(f"unknown device '{device}' (use auto, cpu, cuda, cuda:N or mps)")
    if kind == 'cuda':
        if not torch.cuda.is_available():
            raise UsageError(f"device '{device}' asked for, but this torch sees no CUDA GPU (try --device=cpu)")
        n = torch.cuda.device_count()
        if index and int(index) >= n:
            raise UsageError(f"device '{device}' asked for, but there are only {n} CUDA GPUs")
        if not index:
            device = f'cuda:{local_rank}'
    if kind == 'mps' and not mps:
        raise UsageError("device 'mps' asked for, but MPS is not available here (try --device=cpu)")
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


def native_bfloat16(device):
    """Whether a CUDA GPU computes bfloat16 in hardware (compute capability 8.0, Ampere, and up): torch's
    is_bf16_supported() also counts the emulation older cards run, several times slower than their float16."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def pick_dtype(device, dtype='auto'):
    """
    'auto': bfloat16 on CUDA GPUs that have it natively, else float16 (with a GradScaler); float32 on MPS,
    where autocast is still patchy, and on CPUs, where training measures whether bfloat16 is faster
    at its shapes (autotune.choose_cpu_route: it depends on the CPU and the shapes both).
    """
    kind = device.type
    if dtype == 'auto':
        if kind == 'cuda':
            return 'bfloat16' if native_bfloat16(device) else 'float16'
        return 'float32'
    if dtype not in ('float32', 'bfloat16', 'float16'):
        raise UsageError(f"unknown dtype '{dtype}' (use auto, float32, bfloat16 or float16)")
    if dtype == 'bfloat16':
        if kind == 'cuda' and not native_bfloat16(device):
            raise UsageError(f"bfloat16 asked for, but {torch.cuda.get_device_name(device)} has no bfloat16 units "
                             f"(compute capability {'.'.join(map(str, torch.cuda.get_device_capability(device)))}): "
                             f"use --dtype=float16")
        flags = _cpu_flags()
        if kind == 'cpu' and flags and not flags & {'avx512_bf16', 'amx_bf16'}:
            raise UsageError("bfloat16 asked for, but this CPU has no bfloat16 units (try --dtype=float32)")
    return dtype


def autocast(device, dtype):
    """The mixed-precision context for forward passes (nothing to do in float32)."""
    if dtype == 'float32':
        return nullcontext()
    ptdtype = {'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]
    return torch.autocast(device_type=device.type, dtype=ptdtype)


def return_freed_memory_at_once(threshold=4 * 2**20):
    """
    On Linux with glibc, serve every allocation of threshold bytes or more (activations, in training)
    from mmap, so that freeing it gives the memory back to the OS at once. By default glibc raises
    that threshold as it sees such blocks freed, and later ones then come from its heap, which keeps
    what is freed: over a backward pass, gigabytes beside a big model's live tensors. Fixing the
    threshold also fixes when the heap's top is given back (trimmed), which glibc would raise as well:
    set high, so that small tensors reuse the heap as before. (mallopt(3), through ctypes: no library
    or torch setting does it.) Returns whether it took effect.
    """
    if not sys.platform.startswith('linux'):
        return False
    import ctypes
    try:
        mallopt = ctypes.CDLL(None).mallopt  # glibc's, and musl's has none
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return mallopt(M_MMAP_THRESHOLD, threshold) == 1 and mallopt(M_TRIM_THRESHOLD, 16 * threshold) == 1


def setup_device(device='auto', dtype='auto', local_rank=0):
    """(torch.device, dtype name, autocast context), with TF32 matmuls allowed on CUDA."""
    device = pick_device(device, local_rank)
    dtype = pick_dtype(device, dtype)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device, dtype, autocast(device, dtype)


def load_inductor():
    """Import torch.compile's Inductor ahead of its first compilation, without the DeprecationWarning that torch
    2.13's raises at import (a module of it uses a deprecated torch.jit API): a warning as error would fail it."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        import torch._inductor.compile_fx  # noqa: F401


def maybe_compile(model, compile, device, mode=None):
    """
    torch.compile the model (a module, or a function such as a module's forward) as one graph, when asked or by
    default (compile=None) on CUDA, the one place it pays off (on CPUs compiling costs more than it saves for
    these models). A model that does not compile as one graph (a graph break) or at all runs eagerly, said in one
    warning line when its call fails to compile; no process-wide compiler setting is changed.
    """
    if compile is None:
        compile = device.type == 'cuda' and sys.platform != 'win32'
    if compile not in (True, False):
        raise UsageError(f"compile expects True or False, got {compile!r}")
    if not compile:
        return model
    import importlib.util
    if device.type == 'cuda' and importlib.util.find_spec('triton') is None:
        print("warning: torch.compile needs triton, which is not installed; running uncompiled", file=sys.stderr)
        return model
    print("compiling the model... (takes a ~minute)")
    try:
        compiled = torch.compile(model, mode=None if mode in (None, 'default') else mode, fullgraph=True)
    except Exception as e:
        print(f"warning: torch.compile failed ({type(e).__name__}); running uncompiled", file=sys.stderr)
        return model
    call = compiled_or_eager(compiled, model)
    return CompiledModule(model, call) if isinstance(model, torch.nn.Module) else call


def compiled_or_eager(compiled, eager):
    """A function that calls compiled, until a call fails to compile (Dynamo's and Inductor's errors, whose
    modules say so): from then on eager, with one warning line that says so and why."""
    failed = False

    def call(*args, **kwargs):
        nonlocal failed
        if not failed:
            try:
                return compiled(*args, **kwargs)
            except Exception as e:
                if not type(e).__module__.startswith(('torch._dynamo', 'torch._inductor')):
                    raise
                failed = True
                lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
                reason = ' '.join(lines[:2]) if lines[0].endswith(':') and len(lines) > 1 else lines[0]  # 'raised:'
                where = re.findall(r'File "([^"]+)", line (\d+)', str(e))  # the user's code it stopped at
                at = f" at {os.path.basename(where[-1][0])}:{where[-1][1]}" if where else ""
                print(f"warning: torch.compile cannot compile the model as one graph ({reason[:160]}{at}); the whole "
                      f"model runs eagerly, uncompiled", file=sys.stderr)
        return eager(*args, **kwargs)
    return call


class CompiledModule(torch.nn.Module):
    """A module whose calls go through call (compiled_or_eager's); the module itself is its one child, named as
    torch.compile's own wrapper names it, so its state_dict reads like a compiled nanoGPT model's."""

    def __init__(self, module, call):
        super().__init__()
        self._orig_mod, self.call = module, call

    def forward(self, *args, **kwargs):
        return self.call(*args, **kwargs)


# -----------------------------------------------------------------------------
# speed and memory: the peak FLOP/s that MFU is measured against, and what the process holds

# dense peak FLOP/s of NVIDIA GPUs by model: (bfloat16/float16 on tensor cores, accumulating in float32 as PyTorch
# does, which GeForce cards, the L40 and the A10G run at half their float16-accumulate rate; float32 as TF32, which
# setup_device allows: V100 and T4 have none, so their plain float32), from NVIDIA's datasheets and whitepapers
PEAK_FLOPS = {
    'B200': (2250e12, 1125e12), 'H200': (989e12, 494e12), 'H200 NVL': (835e12, 418e12), 'GH200': (989e12, 494e12),
    'H100': (989e12, 494e12), 'H100 PCIE': (756e12, 378e12), 'H100 NVL': (835e12, 418e12),
    'A100': (312e12, 156e12), 'A100 PCIE': (312e12, 156e12), 'L40S': (362e12, 183e12), 'L40': (181e12, 90.5e12),
    'L4': (121e12, 60e12), 'A10': (125e12, 62.5e12), 'A10G': (70e12, 35e12), 'RTX 3090': (71e12, 35.6e12),
    'RTX 4090': (165.2e12, 82.6e12), 'RTX 5090': (209.5e12, 104.8e12), 'RTX A6000': (154.8e12, 77.4e12),
    'RTX 6000 ADA': (364.2e12, 182.1e12), 'V100': (125e12, 15.7e12), 'V100 PCIE': (112e12, 14e12),
    'T4': (65e12, 8.1e12),
}
# the words of a device name that are not its model: the brand, and its memory and socket
_NOT_MODEL = re.compile(r'NVIDIA|GEFORCE|TESLA|GENERATION|\d+GB|HBM\d*E?|SXM\d*')


def gpu_model(name):
    """The model a torch.cuda.get_device_name() names, as PEAK_FLOPS keys them: 'NVIDIA A100-SXM4-80GB' is 'A100',
    'NVIDIA A100 80GB PCIe' 'A100 PCIE', 'NVIDIA GeForce RTX 4090' 'RTX 4090'."""
    return ' '.join(w for w in re.split(r'[\s_-]+', name.upper()) if w and not _NOT_MODEL.fullmatch(w))


def peak_flops(device, dtype, configured=0.0):
    """
    The peak FLOP/s to measure MFU against: the configured one, else the GPU model's for dtype (its name matched
    whole: an L40 is not an L4), else None, said in one line on stderr for a GPU the table does not know.
    """
    if configured:
        return configured
    if device.type != 'cuda':
        return None
    name = torch.cuda.get_device_name(device)
    row = PEAK_FLOPS.get(gpu_model(name))
    if row is None:
        print(f"warning: no peak FLOP/s known for {name}: mfu n/a (set --peak_flops=<its dense {dtype} FLOP/s>)",
              file=sys.stderr)
        return None
    return row[1 if dtype == 'float32' else 0]


def synchronize(device):
    """Wait for the device's queued work (a timer's start and end; nothing on a CPU)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    elif device.type == 'mps':
        torch.mps.synchronize()


def measured_matmul_flops(device, dtype, n=2048, repeat=5):
    """
    The FLOP/s of the best of a few n x n matmuls in dtype: a practical peak for devices no table
    knows (CPUs, MPS), the rate their BLAS reaches on large, easy shapes (a spec sheet's is higher).
    """
    ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]
    a, b = torch.randn(2, n, n, generator=torch.Generator().manual_seed(0)).to(device, ptdtype)  # not the run's stream
    best = float('inf')
    for _ in range(repeat + 1):  # the first warms up
        synchronize(device)
        t0 = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def stream_bandwidth(device):
    """Bytes/s this device reads when it streams: the best of 6 sums of a 1 GiB float32 tensor."""
    a = torch.ones(2**28, device=device)
    best = float('inf')
    for _ in range(6):
        synchronize(device)
        t0 = time.perf_counter()
        a.sum().item()
        best = min(best, time.perf_counter() - t0)
    return a.nbytes / best


def available_memory():
    """The memory the kernel could give this process now, in bytes (MemAvailable; unknown: no limit)."""
    try:
        with open('/proc/meminfo') as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith('MemAvailable:'))
    except (OSError, StopIteration):
        return float('inf')


def rss_anon():
    """This process's anonymous memory in bytes (RssAnon: its own pages, not files it maps); None without /proc."""
    try:
        with open('/proc/self/status') as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith('RssAnon:'))
    except (OSError, StopIteration):
        return None


class PeakMemory:
    """
    with PeakMemory(device) as m: ... then m.peak is the most memory the process held during the block: allocated
    on a CUDA device; elsewhere anonymous memory, sampled every interval seconds (Linux; None elsewhere), which
    unlike peak RSS leaves out memory-mapped weights files and page cache the kernel can drop.
    """

    def __init__(self, device=None, interval=0.0005):
        self.cuda, self.interval = device if device is not None and device.type == 'cuda' else None, interval

    def __enter__(self):
        import threading
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.cuda)
            return self
        self.peak, self._done = rss_anon(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        if self.peak is not None:
            self._thread.start()
        return self

    def _sample(self):
        while not self._done.wait(self.interval):
            self.peak = max(self.peak, rss_anon())

    def __exit__(self, *exc):
        if self.cuda:
            self.peak = torch.cuda.max_memory_allocated(self.cuda)
        elif self.peak is not None:
            self._done.set()
            self._thread.join()
            self.peak = max(self.peak, rss_anon())


def peak_memory(device):
    """The most memory this process has held, in bytes: allocated on a CUDA device, else resident (RSS)."""
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device)
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == 'darwin' else peak * 1024  # macOS counts bytes, Linux KiB


def out_of_memory(e):
    """Which memory ran out ('GPU', 'MPS', 'CPU'), if e says one did, else None."""
    if isinstance(e, torch.OutOfMemoryError):
        return 'GPU'
    if isinstance(e, MemoryError):
        return 'CPU'
    if isinstance(e, RuntimeError):
        msg = str(e)
        if 'MPS backend out of memory' in msg:
            return 'MPS'
        if "DefaultCPUAllocator: can't allocate memory" in msg or 'not enough memory' in msg or 'std::bad_alloc' in msg:
            return 'CPU'
    return None


def exit_on_out_of_memory(advice):
    """
    From here on, an out-of-memory error that nothing catches ends the script with one line on
    stderr, what ran out and then advice (what to change), and exit status 1, not a traceback.
    Anything else is reported as before.
    """
    report = sys.excepthook

    def hook(kind, e, tb):
        what = out_of_memory(e)
        if what is None:
            return report(kind, e, tb)
        print(f"error: out of memory ({what}); {advice}", file=sys.stderr)
    sys.excepthook = hook
