"""
What train.py, sample.py and bench.py share, written once: the choice of device, dtype, autocast
and compile, checkpoints, a run's out_dir, datasets, batches and tokenizers (what needs no torch,
such as one-line errors, is in util.py).
"""

import json
import os
import pickle
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch

from model import GPT, GPTConfig
from util import die, gpt2_encoding


# -----------------------------------------------------------------------------
# device, dtype, autocast, compile

def pick_device(device='auto', local_rank=0):
    """'auto' picks CUDA, else MPS, else CPU. Under DDP 'cuda'/'auto' mean this rank's GPU."""
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
    return device


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
    kind = device.split(':')[0]
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
    return torch.autocast(device_type=device.split(':')[0], dtype=ptdtype)


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
    if not hasattr(torch.backends.mkldnn, 'matmul'):  # torch < 2.9: no way to tell which path attention needs
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


def setup_device(device='auto', dtype='auto', local_rank=0):
    """(device, dtype, autocast context), with TF32 matmuls allowed on CUDA, oneDNN's on AMD CPUs."""
    device = pick_device(device, local_rank)
    dtype = pick_dtype(device, dtype)
    if device.startswith('cuda'):
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if device == 'cpu' and dtype == 'float32':
        onednn_float32_matmuls()
    return device, dtype, autocast(device, dtype)


def maybe_compile(model, compile, device):
    """
    torch.compile the model when asked, or by default (compile=None) on CUDA, the one
    place it pays off (on CPU it added ~50 s of compiling and no speed). Where it cannot
    work it falls back to eager with a one-line warning instead of failing.
    """
    if compile is None:
        compile = device.startswith('cuda') and sys.platform != 'win32'
    if compile not in (True, False):
        die(f"compile expects True or False, got {compile!r}")
    if not compile:
        return model
    import importlib.util
    if device.startswith('cuda') and importlib.util.find_spec('triton') is None:
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


def end_ddp():
    """
    Leave the torchrun process group at the end of a script: every rank waits at a barrier (gloo
    aborts if a rank tears down while another still works), the group is destroyed, and then, on
    gloo, the process ends at once. About one CPU run in twenty here, a gloo thread still alive
    aborts the interpreter's own teardown ('terminate called without an active exception') after
    all the work is done, and torchrun reports the whole run as failed; os._exit skips that
    teardown, once everything is written and flushed.
    """
    import torch.distributed as dist
    gloo = dist.get_backend() == 'gloo'
    dist.barrier()
    dist.destroy_process_group()
    if gloo:
        for fn in _at_os_exit:
            fn()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


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
    lm_head gets its own packed copy of wte. The float32 matmuls left are attention's over the KV
    cache, batched over strided slices, where MKL is ~4x faster than oneDNN: so the oneDNN route
    for them (onednn_float32_matmuls) goes off.
    """
    if (device != 'cpu' or dtype != 'float32' or not torch.backends.mkldnn.is_available()
            or not all(hasattr(torch.ops.mkldnn, op) for op in ('_linear_pointwise', '_reorder_linear_weight'))):
        return model
    if hasattr(torch.backends.mkldnn, 'matmul') and torch.backends.mkldnn.matmul.fp32_precision == 'bf16':
        torch.set_float32_matmul_precision('highest')

    def pack(module):
        for name, child in module.named_children():
            if isinstance(child, torch.nn.Linear):
                setattr(module, name, PackedLinear(child, batch_size))
            else:
                pack(child)
    pack(model.eval())
    return model


# dense bf16 tensor-core peaks, FLOP/s, by substring of torch.cuda.get_device_name()
# dense peak FLOP/s of known GPUs: (name, bfloat16/float16 tensor cores, float32 with TF32, which
# setup_device allows; V100 and T4 have no TF32, so theirs is plain float32)
PEAK_FLOPS = [
    ('H200', 989e12, 494e12), ('H100 PCIe', 756e12, 378e12), ('H100', 989e12, 494e12), ('A100', 312e12, 156e12),
    ('L40S', 362e12, 181e12), ('L4', 121e12, 60e12), ('A10', 125e12, 62.5e12), ('V100', 125e12, 15.7e12),
    ('T4', 65e12, 8.1e12),
]


def peak_flops(device, dtype, configured=0.0):
    """The peak FLOP/s to measure MFU against: the configured one, else a known GPU's for dtype, else None."""
    if configured:
        return configured
    if device.startswith('cuda'):
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
        if device.startswith('mps'):
            torch.mps.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.startswith('mps'):
            torch.mps.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


# -----------------------------------------------------------------------------
# checkpoints

def strip_prefixes(state_dict):
    """Drop the '_orig_mod.' (torch.compile) and 'module.' (DDP) prefixes older checkpoints carry."""
    out = {}
    for k, v in state_dict.items():
        while k.startswith(('_orig_mod.', 'module.')):
            k = k.split('.', 1)[1]
        out[k] = v
    return out


def _os_error(e):
    """The OSError behind an exception, if any: torch.save reports a failed write as a RuntimeError."""
    while e is not None and not isinstance(e, OSError):
        e = e.__cause__ or e.__context__
    return e


def _atomic_save(obj, path):
    """
    Write to a temporary file beside path, then rename: path is always complete, old or new. A write
    that fails (a full disk) removes the temporary file and ends the run with one line naming path.
    """
    tmp = path + '.tmp'
    try:
        with open(tmp, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:  # Ctrl-C included: no temporary file is left behind
        if os.path.exists(tmp):
            os.remove(tmp)
        cause = _os_error(e)
        if cause is None:
            raise
        die(f"{(cause.strerror or str(cause)).lower()} writing {path}; the previous checkpoint is untouched")


def save_checkpoint(out_dir, checkpoint, optimizer_state):
    """
    out_dir/ckpt.pt holds the model and what describes it (about the size of the weights, all
    that sample.py and export.py read); the optimizer state, twice that size, goes to
    out_dir/optimizer-<iter>.pt, which ckpt.pt names. The optimizer file is written first and the
    previous one removed last, so a kill at any moment leaves a ckpt.pt whose optimizer file exists.
    If ckpt.pt cannot be written, the new optimizer file goes again and the old pair stays. A Ctrl-C
    meanwhile (exit_on_interrupt) takes effect once the save is complete.
    """
    global _saving
    name = f"optimizer-{checkpoint['iter_num']:08d}.pt"
    existed = os.path.exists(os.path.join(out_dir, name))  # a resumed run saving its first iteration again
    _saving = True
    try:
        _atomic_save(optimizer_state, os.path.join(out_dir, name))
        try:
            _atomic_save({**checkpoint, 'optimizer_file': name}, os.path.join(out_dir, 'ckpt.pt'))
        except BaseException:
            if not existed:
                os.remove(os.path.join(out_dir, name))
            raise
        for f in os.listdir(out_dir):
            if f.startswith('optimizer-') and f != name:
                os.remove(os.path.join(out_dir, f))
    finally:
        _saving = False
    if _stop is not None:
        _stop()


def _load(path, trust):
    try:
        return torch.load(path, map_location='cpu', weights_only=not trust)
    except Exception as e:
        if isinstance(e, pickle.UnpicklingError) and 'GLOBAL' in str(e):  # a class or function inside
            die(f"{path} holds Python objects besides tensors and plain values, which could run code "
                f"when loaded; if you trust the file, pass --trust_checkpoint=True")
        die(f"cannot read checkpoint {path} (truncated or corrupt?): {str(e).splitlines()[0][:200]}")


def load_checkpoint(path, trust=False):
    """
    A checkpoint dict, read safely (weights_only: tensors and plain values, no code runs), or a
    one-line error. trust=True allows arbitrary pickled objects, for old files one trusts.
    """
    if not os.path.isfile(path):
        die(f"no checkpoint at {path} (train one first, or check --out_dir)")
    checkpoint = _load(path, trust)
    if not isinstance(checkpoint, dict) or 'model' not in checkpoint or 'model_args' not in checkpoint:
        die(f"{path} is not a GPT checkpoint (no 'model' and 'model_args')")
    return checkpoint


def load_optimizer_state(out_dir, checkpoint, trust=False):
    """The optimizer and grad-scaler state saved with a checkpoint: its own file, or inside it (nanoGPT)."""
    if 'optimizer_file' not in checkpoint:
        return {'optimizer': checkpoint['optimizer'], 'scaler': checkpoint.get('scaler')}
    path = os.path.join(out_dir, checkpoint['optimizer_file'])
    if not os.path.isfile(path):
        die(f"{path}, the optimizer state of {os.path.join(out_dir, 'ckpt.pt')}, is missing")
    return _load(path, trust)


def model_from_checkpoint(checkpoint, **overrides):
    """The GPT a checkpoint describes, with its weights; overrides (e.g. dropout) replace config fields."""
    args = {**checkpoint['model_args'], **checkpoint.get('model_options', {}), **overrides}
    unknown = set(args) - set(GPTConfig.__dataclass_fields__)
    if unknown:
        die(f"the checkpoint's model has options this model.py does not know: {', '.join(sorted(unknown))}")
    model = GPT(GPTConfig(**args))
    try:
        model.load_state_dict(strip_prefixes(checkpoint['model']))
    except RuntimeError as e:
        die(f"checkpoint weights do not match its model_args: {str(e).splitlines()[1].strip()[:200]}")
    return model


def load_model(init_from, out_dir, trust=False):
    """
    An eval-mode model to sample or evaluate with, and the character vocabulary it needs (or None
    for GPT-2 BPE): init_from 'resume' reads out_dir/ckpt.pt, anything else is a GPT-2 name or a
    local Hugging Face GPT-2 directory.
    """
    meta = None
    if init_from == 'resume':
        checkpoint = load_checkpoint(os.path.join(out_dir, 'ckpt.pt'), trust)
        model = model_from_checkpoint(checkpoint, dropout=0.0)
        dataset = checkpoint.get('config', {}).get('dataset')
        if dataset:  # a character-level model comes with its dataset's vocabulary
            meta = load_meta(os.path.join('data', dataset))
            if meta is not None:
                meta['dataset'] = dataset
    else:
        try:
            model = GPT.from_pretrained(init_from, dict(dropout=0.0))
        except (ValueError, OSError) as e:
            die(str(e))
    return model.eval(), meta


# -----------------------------------------------------------------------------
# a run's out_dir: one run at a time, Ctrl-C, and the record of its losses

def lock_out_dir(out_dir):
    """
    Hold out_dir/lock for the life of this process, or exit with one line naming the run that holds
    it: two runs writing the same checkpoints would destroy each other's. The lock is the kernel's
    (flock), so a run killed with kill -9 leaves a file but no lock, and the next run simply takes
    it. Where there is no flock (Windows), runs are not locked.
    """
    try:
        import fcntl
    except ImportError:
        return
    path = os.path.join(out_dir, 'lock')
    while True:
        f = open(path, 'a+')
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or 'unknown'
            die(f"{out_dir} is in use by another training run (PID {holder}); wait for it, stop it, or "
                f"choose another --out_dir")
        try:  # the file may have been removed by the run that held it just before: lock the current one
            if os.fstat(f.fileno()).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        f.close()
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()

    def release():
        os.remove(path)  # before the lock goes, so a waiting run never locks a removed file
        f.close()
    import atexit
    atexit.register(release)
    _at_os_exit.append(release)


_at_os_exit = []  # what end_ddp must still do when it skips the interpreter's exit (and so atexit)


def exit_on_interrupt(where=None):
    """
    Ctrl-C (SIGINT) ends the script with one line on stderr, 'interrupted ' + where() (nothing where
    where is None: the other DDP ranks), and exit status 130, instead of a KeyboardInterrupt traceback.
    It raises SystemExit, at once, or once the checkpoint being written is complete: stopping a
    torch.save midway leaves its writer in a state that fails again on the way out.
    """
    import signal

    def stop():
        if where is not None:
            print(f"\ninterrupted {where()}", file=sys.stderr, flush=True)
        raise SystemExit(130)

    def handler(signum, frame):
        global _stop
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while stopping changes nothing
        if _saving:
            _stop = stop  # save_checkpoint calls it when the files are in place
        else:
            stop()
    signal.signal(signal.SIGINT, handler)


_saving = False  # save_checkpoint is writing files
_stop = None  # a Ctrl-C that came while it was


class MetricsLog:
    """
    out_dir/metrics.jsonl: one JSON object per log line and per evaluation, each with its 'iter',
    so a run can be read or plotted without wandb. A run started at iteration iter_num (a resume)
    keeps the entries of the iterations before it and drops the rest, which it is about to redo:
    the record never holds an iteration twice.
    """

    def __init__(self, path, iter_num):
        self.path = path
        kept = []
        if iter_num > 0 and os.path.isfile(path):
            with open(path, encoding='utf-8') as f:
                for line in f:
                    try:
                        if json.loads(line)['iter'] < iter_num:
                            kept.append(line if line.endswith('\n') else line + '\n')
                    except (ValueError, KeyError, TypeError):
                        pass  # a line cut short by a kill
        try:
            with open(path + '.tmp', 'w', encoding='utf-8') as f:
                f.writelines(kept)
            os.replace(path + '.tmp', path)
            self.file = open(path, 'a', encoding='utf-8')
        except OSError as e:
            die(f"{e.strerror.lower()} writing {path}")

    def log(self, **entry):
        try:
            self.file.write(json.dumps(entry) + '\n')
            self.file.flush()
        except OSError as e:
            die(f"{e.strerror.lower()} writing {self.path}")


def format_duration(seconds):
    """1h02m, 3m05s, 42s: a duration the way a progress line shows it."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


# -----------------------------------------------------------------------------
# datasets, batches, tokenizers

def train_settings():
    """The source of train.py's settings block (between its first two '# ---' rulers)."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'train.py')) as f:
        blocks = f.read().split('# ' + '-' * 77 + '\n')
    return blocks[1]


def open_split(data_dir, split, block_size):
    """data_dir/{split}.bin as a read-only array of uint16 token ids: a whole number of them, and enough."""
    path = os.path.join(data_dir, f'{split}.bin')
    if not os.path.isfile(path):
        die(f"no {path}: prepare the dataset first (python {os.path.join(data_dir, 'prepare.py')})")
    size = os.path.getsize(path)
    if size % 2:
        die(f"{path} has an odd number of bytes ({size}): not a file of uint16 token ids (damaged or cut short?)")
    data = np.memmap(path, dtype=np.uint16, mode='r') if size else np.zeros(0, dtype=np.uint16)
    if len(data) < block_size + 1:
        die(f"{path} has {len(data)} tokens, fewer than block_size + 1 = {block_size + 1}")
    return data


def _check_ids(ids, vocab_size, path):
    """Every id in ids is below vocab_size, or one line naming the file they came from."""
    top = int(ids.max())
    if top >= vocab_size:
        die(f"{path} holds token id {top}, beyond the vocabulary ({vocab_size} tokens): "
            f"was it prepared for another dataset or tokenizer?")


def check_token_ids(data, vocab_size, path):
    """
    Every token id of a file up to 2^28 tokens (512 MB, read in full) is below vocab_size, or one
    line; the ids of larger files are checked batch by batch instead (get_batch with vocab_size).
    """
    if len(data) <= 2**28:
        for i in range(0, len(data), 2**24):
            _check_ids(data[i:i + 2**24], vocab_size, path)


def get_batch(data, batch_size, block_size, seed, device, vocab_size=None):
    """
    batch_size random windows of data as (x, y), y shifted by one token. The windows depend
    only on seed (an int or a tuple of ints), which makes runs and resumes reproducible. With
    vocab_size, a token id beyond it ends the run with one line (a check of ~B*T ids, on the CPU).
    """
    ix = np.random.default_rng(seed).integers(len(data) - block_size, size=batch_size)
    rows = data[ix[:, None] + np.arange(block_size + 1)]  # (B, T+1)
    if vocab_size:
        _check_ids(rows, vocab_size, getattr(data, 'filename', 'the data'))
    buf = torch.from_numpy(rows.astype(np.int64))
    if device.startswith('cuda'):
        buf = buf.pin_memory().to(device, non_blocking=True)
    else:
        buf = buf.to(device)
    return buf[:, :-1], buf[:, 1:]  # (B, T) each


class _NoCode(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_meta(data_dir):
    """
    A character dataset's vocabulary, {'vocab_size', 'itos'} from meta.json, or None for
    GPT-2 BPE datasets. nanoGPT's meta.pkl is read too, with an unpickler that builds only
    plain dicts, lists and strings, so it cannot run code.
    """
    path = os.path.join(data_dir, 'meta.json')
    if os.path.isfile(path):
        try:
            with open(path, encoding='utf-8') as f:
                meta = json.load(f)
            itos = meta['itos']
            assert meta['vocab_size'] == len(itos) and all(isinstance(c, str) for c in itos)
        except (ValueError, KeyError, TypeError, AssertionError) as e:  # JSON and UTF-8 errors are ValueErrors
            why = 'not valid JSON' if isinstance(e, ValueError) else "not {'vocab_size': n, 'itos': [n strings]}"
            die(f"cannot read {path}: {why}; run python {os.path.join(data_dir, 'prepare.py')} again")
        return meta
    path = os.path.join(data_dir, 'meta.pkl')
    if os.path.isfile(path):
        try:
            with open(path, 'rb') as f:
                meta = _NoCode(f).load()
            itos = meta['itos']
            return {'vocab_size': meta['vocab_size'], 'itos': [itos[i] for i in range(len(itos))]}
        except Exception as e:
            die(f"cannot read {path}: {e}")
    return None


def get_tokenizer(meta):
    """(encode, decode) for a character vocabulary (meta) or, with meta None, GPT-2 BPE."""
    if meta is None:
        enc = gpt2_encoding()
        return (lambda s: enc.encode(s, allowed_special={'<|endoftext|>'})), enc.decode
    itos = meta['itos']
    stoi = {ch: i for i, ch in enumerate(itos)}

    def encode(s):
        bad = next((c for c in s if c not in stoi), None)
        if bad is not None:
            die(f"the prompt has the character {bad!r}, which is not in the model's vocabulary")
        return [stoi[c] for c in s]
    return encode, lambda ids: ''.join(itos[i] for i in ids)
