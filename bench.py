"""
A much shorter version of train.py for benchmarking: the training step alone, timed.
$ python bench.py                                          # GPT-2 124M shape, one 12 x 1024 micro-batch
$ python bench.py config/train_shakespeare_char_cpu.py     # exactly what that config trains
$ python bench.py --profile=True                           # where the time goes (torch profiler)
$ python bench.py --mode=generate                          # sampling: float32, bfloat16, int8, no cache, transformers
$ python bench.py --mode=generate --n_layer=48 --n_head=25 --n_embd=1600 --num_samples=1   # ... at GPT-2 XL's shape
$ python bench.py --mode=memory config/train_gpt2.py       # per-process training state, DDP vs FSDP
$ python bench.py --mode=memory --n_layer=48 --n_head=25 --n_embd=1600 --block_size=256 --batch_size=1  # GPT-2 XL's
  finetuning on one process, measured: full, full + activation checkpointing, LoRA, LoRA + AC
$ torchrun --standalone --nproc_per_node=2 bench.py --mode=memory --parallelism=fsdp   # ... and DDP vs FSDP measured
Every train.py setting is a bench.py setting too, so any config file runs here.
"""
import ast
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from autotune import choose_cpu_route
from dataloader import get_batch
from device import PeakAnonMemory, autocast, maybe_compile, return_freed_memory_at_once, rss_anon, setup_device
from device import peak_flops as find_peak_flops
from distributed import ddp_ranks, end_ddp, shard_model, start_ddp
from generate import generate_stream
from loading import load_model
from model import GPT, MODEL_OPTIONS, GPTConfig
from optim import optimizer_step
from quantize import WEIGHT_DTYPES, for_inference, weight_dtype_error
from tokenizer import read_meta
from util import die


def script_settings(script):
    """
    The settings at the top of a script (train.py), as a dict: its module-level assignments of
    literal values (or arithmetic on them, 5 * 8) before it runs configurator.py.
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


# -----------------------------------------------------------------------------
# train.py's settings and defaults (so its config files run), then bench's own:
globals().update(script_settings('train.py'))
gradient_accumulation_steps = 1  # one micro-batch per step unless a config file asks for more
real_data = True  # batches from data/<dataset>/train.bin when it exists, else random tokens
num_steps = 20  # timed steps, after 10 warm-up steps
profile = False  # use pytorch profiler, or just simple benchmarking?
sdpa_backend = 'auto'  # train mode: 'auto' (PyTorch's pick), or force 'flash', 'efficient', 'cudnn' or 'math'
compile_mode = 'default'  # train mode, with compile: torch.compile's mode ('max-autotune-no-cudagraphs', ...)
float8 = False  # train mode: the Linears in float8 through torchao (convert_to_float8_training; GPUs with float8)
mode = 'train'  # 'train': the training step; 'generate': tokens/s of sampling, ours and transformers'; 'memory'
max_new_tokens = 200  # generate mode: tokens per sample, from a 4-token prompt
num_samples = 0  # generate mode: the batch size; 0 measures 1 and 8
weight_dtype = 'all'  # generate mode: 'float32', 'bfloat16', 'int8' (sample.py's setting), or 'all' side by side
repeats = 3  # generate mode: timed runs per row, the fastest counts (a shared machine's interference only slows)
no_cache = True  # generate mode: also time float32 without the KV cache, as nanoGPT samples (slow for big models)
quality_positions = 4096  # generate mode: positions (of data/<dataset>/val.bin, else random) to compare; 0: none
parallelism = 'ddp'  # memory mode under torchrun: 'ddp' (a full copy per process) or 'fsdp' (sharded: FSDP2)
memory_rows = 'full,full+ac,lora,lora+ac'  # memory mode: the finetunings to measure (LoRA at lora_rank, else 8)
# -----------------------------------------------------------------------------
config_keys = [k for k, v in globals().items()
               if not k.startswith('_') and isinstance(v, (int, float, bool, str, type(None)))]
exec(open('configurator.py').read())  # overrides from command line or config file
# -----------------------------------------------------------------------------

if mode not in ('train', 'generate', 'memory'):
    die(f"mode must be 'train', 'generate' or 'memory', got '{mode}'")
if weight_dtype not in ('all', *WEIGHT_DTYPES):
    die(f"weight_dtype must be one of all, {', '.join(WEIGHT_DTYPES)}; got {weight_dtype!r}")
SDPA_BACKENDS = {'flash': 'FLASH_ATTENTION', 'efficient': 'EFFICIENT_ATTENTION', 'cudnn': 'CUDNN_ATTENTION',
                 'math': 'MATH'}
if sdpa_backend not in ('auto', *SDPA_BACKENDS):
    die(f"sdpa_backend must be auto, {', '.join(SDPA_BACKENDS)}; got {sdpa_backend!r}")
SDPA_BACKENDS = {k: getattr(SDPBackend, v) for k, v in SDPA_BACKENDS.items()}
if parallelism not in ('ddp', 'fsdp'):
    die(f"parallelism must be 'ddp' or 'fsdp', got '{parallelism}'")
for name in ('batch_size', 'block_size', 'gradient_accumulation_steps', 'num_steps', 'max_new_tokens', 'repeats',
             'n_layer', 'n_head', 'n_embd'):
    if globals()[name] <= 0:
        die(f"{name} must be positive, got {globals()[name]}")
if n_embd % n_head:
    die(f"n_embd ({n_embd}) must be divisible by n_head ({n_head}): each head gets n_embd // n_head dimensions")
torch.manual_seed(seed)
ddp, ddp_rank, ddp_local_rank, ddp_world_size = ddp_ranks()
config_dtype = dtype
device, dtype, ctx = setup_device(device, dtype, ddp_local_rank)
if device.type == 'cpu' and mode != 'generate':  # as train.py does
    return_freed_memory_at_once()
weight_dtypes = WEIGHT_DTYPES if weight_dtype == 'all' else (weight_dtype,)
if mode == 'generate' and weight_dtype_error(weight_dtypes[-1], device):  # int8, the one some devices lack
    die(weight_dtype_error(weight_dtypes[-1], device))


def sync():
    if device.type == 'cuda':
        torch.cuda.synchronize()
    elif device.type == 'mps':
        torch.mps.synchronize()


# -----------------------------------------------------------------------------
# mode 'train': the training step, as train.py takes it (without DDP)

def measured_matmul_flops(device, dtype, n=2048, repeat=5):
    """
    The FLOP/s of the best of a few n x n matmuls in dtype: a practical peak for devices no table
    knows (CPUs, MPS), the rate their BLAS reaches on large, easy shapes (a spec sheet's is higher).
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


def bench_train():
    data_dir = os.path.join('data', dataset)
    meta = read_meta(data_dir)
    vocab_size = meta['vocab_size'] if meta['tokenizer'] != 'gpt2' else 50304
    train_path = os.path.join(data_dir, 'train.bin')
    if real_data and os.path.isfile(train_path):
        train_data = np.memmap(train_path, dtype=meta['dtype'], mode='r')
        get = lambda it, micro: get_batch(train_data, batch_size, block_size, (seed, 0, it, micro), device)
        print(f"data: {train_path}")
    else:
        x = torch.randint(vocab_size, (batch_size, block_size), device=device)
        get = lambda it, micro: (x, x)
        print(f"data: random tokens{'' if not real_data else f' ({train_path} not found)'}")

    raw_model = GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head,
                              n_embd=n_embd, dropout=dropout, bias=bias,
                              **{k: globals()[k] for k in MODEL_OPTIONS})).to(device)
    global dtype, ctx
    route = None
    if device.type == 'cpu':  # as train.py does: the fastest exact route at these shapes
        route = choose_cpu_route(raw_model.config, batch_size, block_size, config_dtype,
                                 raw_model.flops_per_token() * batch_size * block_size * (10 + num_steps), autotune)
        route.apply(raw_model)
        dtype, ctx = route.dtype, autocast(device, route.dtype)
    opt = raw_model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), optimizer, muon_lr)
    scaler = torch.amp.GradScaler(device.type, enabled=(dtype == 'float16'))
    if float8:
        try:
            from torchao.float8 import convert_to_float8_training
        except ImportError:
            die("float8=True needs torchao: pip install torchao")
        convert_to_float8_training(raw_model, module_filter_fn=lambda m, name: name != 'lm_head')
    model = maybe_compile(raw_model, compile, device, compile_mode)
    peak = find_peak_flops(device, dtype, peak_flops)
    peak_source = 'configured' if peak_flops else f'{dtype} spec-sheet peak'
    if peak is None and device.type != 'cuda':  # no spec sheet for a CPU here: its own best matmul rate
        peak, peak_source = measured_matmul_flops(device, dtype), f'measured: a 2048^3 {dtype} matmul'
    print(f"device: {device}, dtype: {dtype}, {raw_model.get_num_params() / 1e6:.2f}M parameters, "
          f"batch {batch_size} x {block_size} x {gradient_accumulation_steps} micro-steps"
          f"{f' ({route.name})' if route else ''}")

    attention = lambda: nullcontext() if sdpa_backend == 'auto' else sdpa_kernel(SDPA_BACKENDS[sdpa_backend])

    def train_step(it):
        """One optimizer step: the mean loss, still on device."""
        loss_accum = torch.zeros((), device=device)
        for micro in range(gradient_accumulation_steps):
            X, Y = get(it, micro)
            with ctx, attention():
                logits, loss = model(X, Y)
                loss = loss / gradient_accumulation_steps
            scaler.scale(loss).backward()
            loss_accum += loss.detach()
        optimizer_step(model, opt, scaler, grad_clip)
        return loss_accum

    if profile:
        # useful docs on pytorch profiler:
        # - tutorial https://pytorch.org/tutorials/intermediate/tensorboard_profiler_tutorial.html
        # - api https://pytorch.org/docs/stable/profiler.html#torch.profiler.profile
        wait, warmup, active = 5, 5, 5
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == 'cuda':
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=wait, warmup=warmup, active=active, repeat=1),
            on_trace_ready=torch.profiler.tensorboard_trace_handler('./bench_log'),
            record_shapes=False, profile_memory=False, with_stack=False,
        ) as prof:
            for k in range(wait + warmup + active):
                lossf = train_step(k).item()
                print(f"{k}/{wait + warmup + active} loss: {lossf:.4f}")
                prof.step()  # notify the profiler at end of each step
        sort_by = 'self_cuda_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
        print(prof.key_averages().table(sort_by=sort_by, row_limit=20))
        print("trace written to ./bench_log (open with tensorboard or https://ui.perfetto.dev)")
        return
    for stage, steps in (('burn-in', 10), ('benchmark', num_steps)):
        sync()
        t0 = time.time()
        for k in range(steps):
            lossf = train_step(k).item()
            print(f"{k}/{steps} loss: {lossf:.4f}")
        sync()
        dt = (time.time() - t0) / steps
    tokens = batch_size * block_size * gradient_accumulation_steps
    mfu = raw_model.estimate_mfu(batch_size * gradient_accumulation_steps, dt, peak)
    mfu_str = f"{mfu * 100:.2f}% of {peak / 1e12:.3g} TFLOP/s ({peak_source})" if mfu is not None else \
        "n/a (peak unknown for this GPU: set --peak_flops=<FLOP/s>)"
    print(f"time per iteration: {dt * 1000:.2f}ms, tokens/s: {tokens / dt:,.0f}, MFU: {mfu_str}")


# -----------------------------------------------------------------------------
# mode 'generate': every row loads its model as sample.py does (loading.load_model), from one source

def generation_source(tmp):
    """
    (source for load_model, a Hugging Face directory for the transformers row or None, what it is):
    random GPT-2-shaped weights written to tmp for init_from='scratch', else the checkpoint
    ('resume'), GPT-2 name or local directory, exported to tmp for transformers where it can be.
    """
    if init_from == 'scratch':
        # made in a process of its own, so that this one's memory starts clean for the rows
        args = dict(block_size=block_size, vocab_size=50257, n_layer=n_layer, n_head=n_head, n_embd=n_embd, bias=bias,
                    **{k: globals()[k] for k in MODEL_OPTIONS})
        subprocess.run([sys.executable, '-c', 'import sys, json, torch; from model import GPT, GPTConfig; '
                        f'torch.manual_seed({seed}); '
                        'GPT(GPTConfig(**json.loads(sys.argv[1]))).save_pretrained(sys.argv[2])',
                        json.dumps(args), tmp], check=True)
        return tmp, tmp, 'random GPT-2-shaped weights'
    if init_from == 'resume':
        model, _ = load_model('resume', out_dir)
        try:
            model.save_pretrained(tmp, vocab_size=model.config.vocab_size)
            return 'resume', tmp, out_dir
        except ValueError as e:
            print(f"no transformers row: {e}")
            return 'resume', None, out_dir
    import hf_gpt2
    return init_from, init_from if os.path.isdir(init_from) else hf_gpt2.hub_snapshot(init_from), init_from


def stream_bandwidth():
    """Bytes/s this device reads when it streams: the best of 6 sums of a 1 GiB float32 tensor."""
    a = torch.ones(2**28, device=device)
    best = float('inf')
    for _ in range(6):
        sync()
        t0 = time.perf_counter()
        a.sum().item()
        best = min(best, time.perf_counter() - t0)
    return a.nbytes / best


def weight_bytes(model):
    """Bytes of weights one decoding step reads: every matmul's (an embedding lookup reads one row)."""
    return sum(t.nbytes for m in model.modules() if not isinstance(m, torch.nn.Embedding)
               for name, t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]
               if (name == 'weight' and t.dim() == 2) or name == 'scales')


def generate_ours(model, x, n, use_cache):
    """(tokens/s, seconds to the first token) of our generate_stream."""
    t0 = time.perf_counter()
    first = None
    for _ in generate_stream(model, x, n, use_cache=use_cache):
        if first is None:
            sync()
            first = time.perf_counter() - t0
    sync()
    return x.size(0) * n / (time.perf_counter() - t0), first


def generate_transformers(hf, x, n):
    """(tokens/s, seconds to the first token) of transformers' generate, sampling over the whole vocabulary."""
    def run(k):
        t0 = time.perf_counter()
        hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=k, min_new_tokens=k, do_sample=True,
                    top_k=0, pad_token_id=0)
        sync()
        return time.perf_counter() - t0
    first = run(1)
    return x.size(0) * n / run(n), first


def measure(name, B, load, generate, bandwidth, runs):
    """
    One row: load a model, warm up, time generate(model, x, n) runs times on the batch's prompts and
    keep the most tokens/s and the least time to the first token; memory counts the loading too.
    """
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with PeakAnonMemory(interval=0.01) as mem, torch.no_grad(), ctx:  # (sampling more often slows the timed loop)
        model = load()
        limit = B * bandwidth / weight_bytes(model)
        if isinstance(model, GPT):
            model = for_inference(model, device, dtype, batch_size=B)
        # the same prompts for every row of a batch size
        x = torch.randint(model.config.vocab_size, (B, 4), generator=torch.Generator().manual_seed(seed)).to(device)
        generate(model, x, 4)  # warm-up
        timings = [generate(model, x, max_new_tokens) for _ in range(runs)]
        tps, first = max(t for t, _ in timings), min(f for _, f in timings)
    peak = torch.cuda.max_memory_allocated(device) if device.type == 'cuda' else mem.peak
    peak = f"{peak / 2**20:>7.0f}MB" if peak is not None else f"{'n/a':>9}"
    print(f"{B:>5} {name:<30} {tps:>9.1f} {first * 1000:>10.1f}ms {peak} {limit:>9.1f}", flush=True)
    return tps


def quality_table(source):
    """Each reduced model against the float32 one, teacher-forced: the loss on the next token, and how often
    the likeliest is the same."""
    val = os.path.join('data', dataset, 'val.bin')
    reference = None
    for wd in ('float32', *[d for d in weight_dtypes if d != 'float32']):
        model = load_model(source, out_dir, weight_dtype=wd)[0].to(device)
        if reference is None:  # sequences of the model's context, up to 1024, from the whole file
            T, vocab = min(model.config.block_size, 1024), model.config.vocab_size
            if os.path.isfile(val):
                data, about = np.memmap(val, dtype=np.uint16, mode='r'), val
            else:
                data = np.random.default_rng(seed).integers(0, vocab, 2**20).astype(np.uint16)
                about = 'random tokens'
            starts = np.linspace(0, len(data) - T - 2, max(1, -(-quality_positions // T))).astype(np.int64)
        losses, argmax = [], []
        with torch.no_grad(), ctx:
            for i in starts:
                chunk = torch.from_numpy(data[i:i + T + 1].astype(np.int64)).to(device)
                logits, _ = model(chunk[None, :-1], chunk[None, 1:])  # (1, T, vocab)
                logits = logits[0].float()
                losses.append(torch.nn.functional.cross_entropy(logits, chunk[1:], reduction='none'))
                argmax.append(logits.argmax(-1))
        loss, argmax = torch.cat(losses), torch.cat(argmax)
        if wd == 'float32':
            reference = dict(loss=loss.mean().item(), argmax=argmax)
            print(f"against float32 on {len(loss):,} positions of {about} (teacher-forced):")
            print(f"{'weights':<9} {'loss':>8} {'change':>8} {'same argmax':>12}")
            print(f"{'float32':<9} {reference['loss']:>8.4f}")
        else:
            agree = (argmax == reference['argmax']).float().mean().item()
            print(f"{wd:<9} {loss.mean().item():>8.4f} {loss.mean().item() - reference['loss']:>+8.4f} "
                  f"{agree * 100:>11.2f}%")
        del model


def bench_generate():
    tmp = tempfile.TemporaryDirectory()
    source, hf_dir, about_source = generation_source(tmp.name)
    bandwidth = stream_bandwidth()
    print(f"device: {device}, dtype: {dtype}, {about_source}, {max_new_tokens} new tokens from a 4-token prompt, "
          f"sampling at temperature 1 over the whole vocabulary; each row the fastest of {repeats} runs "
          f"(the uncached row: 1)")
    print(f"memory bandwidth: {bandwidth / 1e9:.1f} GB/s (streaming a 1 GiB tensor); 'limit' is that over the bytes "
          f"of weights a step reads, times the batch")
    if device.type == 'cpu':
        print("peak mem: the most anonymous memory (RssAnon: not the memory-mapped weights file) the process held "
              "while the row loaded and sampled (with what earlier rows left: run one weight_dtype for its own)")
    print(f"{'batch':>5} {'method':<30} {'tokens/s':>9} {'first token':>12} {'peak mem':>9} {'limit':>9}")
    ours = lambda wd: lambda: load_model(source, out_dir, weight_dtype=wd)[0].to(device)
    for B in ([num_samples] if num_samples else [1, 8]):
        results = {}
        for wd in weight_dtypes:
            results[wd] = measure(f"ours, {wd}, KV cache", B, ours(wd),
                                  lambda m, x, n: generate_ours(m, x, n, True), bandwidth, repeats)
        if no_cache:
            results['no cache'] = measure("ours, float32, no cache", B, ours('float32'),
                                          lambda m, x, n: generate_ours(m, x, n, False), bandwidth, 1)  # slow: once
        if hf_dir:
            with open(os.path.join(hf_dir, 'config.json')) as f:
                positions = json.load(f)['n_positions']
        if hf_dir and 4 + max_new_tokens > positions:
            print(f"{B:>5} no transformers row: its GPT-2 cannot generate past its {positions} positions")
        elif hf_dir:
            from transformers import GPT2LMHeadModel
            from transformers.utils import logging as hf_logging
            hf_logging.disable_progress_bar()
            results['transformers'] = measure("transformers generate, float32", B,
                                              lambda: GPT2LMHeadModel.from_pretrained(hf_dir).to(device).eval(),
                                              generate_transformers, bandwidth, repeats)
        ratios = lambda base, names: ', '.join(f"{w} {results[w] / results[base]:.2f}x" for w in names if w != base)
        summary = []
        if 'float32' in results and len(weight_dtypes) > 1:
            summary.append(f"against float32: {ratios('float32', weight_dtypes)}")
        if 'transformers' in results:
            summary.append(f"against transformers: {ratios('transformers', weight_dtypes)}")
        if 'no cache' in results and 'float32' in results:
            summary.append(f"KV cache against none: {results['float32'] / results['no cache']:.2f}x")
        print(f"{B:>5} " + '; '.join(summary))
    if quality_positions:
        quality_table(source)
    tmp.cleanup()


# -----------------------------------------------------------------------------
# mode 'memory': what finetuning holds on one process. Full finetuning keeps float32 weights, their
# gradients and AdamW's two moments, 16 bytes a parameter (FSDP shards all of it N ways); LoRA only the
# weights (half with a bfloat16 base) and small adapters; activation checkpointing keeps one block's
# activations instead of all. Measured: the peak of a few training steps, over the weights

MEMORY_ROWS = ('full', 'full+ac', 'lora', 'lora+ac')


def memory_label(row):
    """'lora+ac' -> 'LoRA r=8 + AC': a row's name in the table."""
    return (f"LoRA r={lora_rank or 8}" if row.startswith('lora') else 'full') + (" + AC" if row.endswith('+ac') else "")


def available_memory():
    """The memory the kernel could give this process now, in bytes (MemAvailable; unknown: no limit)."""
    try:
        with open('/proc/meminfo') as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith('MemAvailable:'))
    except (OSError, StopIteration):
        return float('inf')


def memory_row(model, lora, checkpointed, steps):
    """Train model steps times (LoRA: adapters added in place first): the peak bytes held, and seconds a step."""
    if lora:
        import lora as lora_module  # (peft: imported only where it is used)
        settings = lora_module.lora_settings(lora_rank or 8, lora_alpha, lora_dropout, lora_targets)
        lora_module.add_adapters(model, settings, torch.bfloat16 if dtype == 'bfloat16' else None)
    model.config.activation_checkpointing = checkpointed
    opt = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), optimizer, muon_lr)
    scaler = torch.amp.GradScaler(device.type, enabled=(dtype == 'float16'))
    x = torch.randint(model.config.vocab_size, (batch_size, block_size), device=device)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    with PeakAnonMemory() as mem:
        for _ in range(steps):
            with ctx:
                _, loss = model(x, x)
            scaler.scale(loss).backward()
            optimizer_step(model, opt, scaler, grad_clip)
        sync()
    dt = (time.perf_counter() - t0) / steps
    return torch.cuda.max_memory_allocated(device) if device.type == 'cuda' else mem.peak, dt


def bench_memory():
    data_dir = os.path.join('data', dataset)
    meta = read_meta(data_dir)  # the dataset's vocabulary, as train.py has it
    config = GPTConfig(block_size=block_size, vocab_size=meta['vocab_size'] if meta['tokenizer'] != 'gpt2' else 50304,
                       n_layer=n_layer,
                       n_head=n_head, n_embd=n_embd, bias=bias,
                       **{k: globals()[k] for k in MODEL_OPTIONS})
    with torch.device('meta'):
        n = sum(p.numel() for p in GPT(config).parameters())
    rows = [r.strip() for r in memory_rows.split(',') if r.strip()]
    child = os.environ.get('BENCH_MEMORY_ROW') == '1'  # one row of a table its parent prints
    if not child:
        print(f"{n:,} parameters; weights + gradients + AdamW state per process (activations not included):")
        for world in (1, 8):
            print(f"{world:>3} processes: DDP {16 * n / 2**30:8.2f} GiB, FSDP {16 * n / world / 2**30:8.2f} GiB")
    if ddp:
        return bench_memory_sharded(GPT(config).to(device))
    # measured, one process: each row in a process of its own, so that no row's memory is another's
    gib, steps = 2**30, num_steps if 'num_steps' in _set_keys else 3
    for row in rows:
        if row not in MEMORY_ROWS:
            die(f"memory_rows: '{row}' is none of {', '.join(MEMORY_ROWS)}")
    if not rows:
        return
    if not child:
        print(f"measured: {steps} training steps of batch {batch_size} x {block_size}, dtype {dtype}, on {device}; "
              f"peak {'allocated' if device.type == 'cuda' else 'anonymous memory (RssAnon)'}")
        print(f"{'finetuning':<20} {'peak GiB':>9} {'weights GiB':>12} {'over them':>10} {'s/step':>8}", flush=True)
    if len(rows) > 1:
        for row in rows:
            if not row.startswith('lora') and device.type == 'cpu' and 16 * n > 0.9 * available_memory():
                print(f"{memory_label(row):<20} {'-':>9} {4 * n / gib:12.2f} {'-':>10} {'-':>8}  "
                      f"(needs {16 * n / gib:.1f} GiB before activations)", flush=True)
                continue
            subprocess.run([sys.executable, *sys.argv, f'--memory_rows={row}', f'--num_steps={steps}'], check=True,
                           env={**os.environ, 'BENCH_MEMORY_ROW': '1'})
        return
    row = rows[0]
    before = rss_anon() if device.type == 'cpu' else 0
    model = GPT(config).to(device)
    peak, dt = memory_row(model, row.startswith('lora'), row.endswith('+ac'), steps)
    weights = sum(p.nbytes for p in model.parameters())  # as kept: a LoRA base in bfloat16 is half
    peak -= before  # (CPU) what this process held before the model: torch itself
    print(f"{memory_label(row):<20} {peak / gib:9.2f} {weights / gib:12.2f} {(peak - weights) / gib:10.2f} {dt:8.2f}")


def bench_memory_sharded(model):
    """Under torchrun: one training step on this process's share (DDP: all of it; FSDP: 1/N)."""
    from torch.distributed.tensor import DTensor
    from torch.nn.parallel import DistributedDataParallel as DDP
    start_ddp(device, backend)
    wrapped = shard_model(model, device, dtype) if parallelism == 'fsdp' else \
        DDP(model, device_ids=[ddp_local_rank] if device.type == 'cuda' else None)
    opt = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), optimizer, muon_lr)
    local = lambda ts: sum((t.to_local() if isinstance(t, DTensor) else t).nbytes for t in ts)
    x = torch.randint(model.config.vocab_size, (batch_size, block_size), device=device)
    with ctx:
        _, loss = wrapped(x, x)
    loss.backward()
    grads = local(p.grad for p in model.parameters())
    opt.step()
    state = local(t for s in opt.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0)
    weights = local(model.parameters())
    if ddp_rank == 0:
        print(f"measured on rank 0 of {ddp_world_size} ({parallelism}): weights {weights / 2**20:.1f} MiB, "
              f"gradients {grads / 2**20:.1f} MiB, AdamW state {state / 2**20:.1f} MiB, "
              f"total {(weights + grads + state) / 2**20:.1f} MiB")
    end_ddp()


{'train': bench_train, 'generate': bench_generate, 'memory': bench_memory}[mode]()
