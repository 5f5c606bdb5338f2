"""
A much shorter version of train.py for benchmarking, in three modes:
$ python bench.py config/train_shakespeare_char_cpu.py  # train: that config's training step, timed (--profile=True)
$ python bench.py --mode=generate                       # sampling: float32, bfloat16, int8, no cache, transformers
$ python bench.py --mode=memory config/train_gpt2.py    # memory: training state per process, finetunings measured
$ torchrun --standalone --nproc_per_node=2 bench.py --mode=memory --parallelism=fsdp  # DDP vs FSDP, measured
train.py's config files run here: what they set that no training step uses is named on one line.
"""
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
from checkpoints import load_checkpoint
from device import PeakAnonMemory, autocast, available_memory, maybe_compile, measured_matmul_flops, rss_anon
from device import peak_flops as find_peak_flops, return_freed_memory_at_once, setup_device, stream_bandwidth
from device import synchronize
from distributed import ddp_ranks, end_ddp, shard_model, start_ddp
from generate import generate_stream
from loading import from_pretrained, load_model, model_from_checkpoint
from model import GPT, MODEL_OPTIONS, GPTConfig
from optim import optimizer_step
from quantize import WEIGHT_DTYPES, for_inference, weight_bytes, weight_dtype_error
from tokenizer import read_meta
from util import check_settings, die


# -----------------------------------------------------------------------------
# what is timed, with train.py's names and defaults, so that its config files run here
# the model: random weights of this shape (init_from='scratch'), else init_from's, loaded as train.py loads them
init_from = 'scratch'  # or 'resume' (out_dir's ckpt.pt), a ckpt.pt, a GPT-2 name or directory (not mode=memory)
out_dir = 'out'
trust_checkpoint = False  # allow checkpoints holding arbitrary pickled objects (only for files you trust)
n_layer = 12
n_head = 12
n_embd = 768
bias = False
activation = 'gelu'
pos_encoding = 'learned'
qk_norm = False
norm = 'layernorm'
tie_weights = True
zero_init_proj = False
logit_softcap = 0.0
dropout = 0.0
# the training step
dataset = 'openwebtext'  # its vocabulary, and its train.bin's batches (real_data), val.bin's for mode=generate
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 1  # one micro-batch per step unless a config file asks for more
lora_rank = 0  # LoRA adapters (peft) beside frozen weights; 0 = off (mode=memory: the LoRA rows' rank, else 8)
lora_alpha = 16
lora_dropout = 0.0
lora_targets = 'c_attn,c_proj,c_fc'
activation_checkpointing = False
optimizer = 'adamw'
muon_lr = 0.02
learning_rate = 6e-4
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
device = 'auto'
dtype = 'auto'
autotune = True  # on CPUs, train.py's speed choices at these shapes
compile = None
backend = 'auto'  # under torchrun (mode=memory): 'auto', 'nccl' or 'gloo'
parallelism = 'ddp'  # under torchrun (mode=memory): 'ddp' (a full copy per process) or 'fsdp' (sharded: FSDP2)
seed = 1337
peak_flops = 0.0  # the device's peak FLOP/s for MFU; 0: a known GPU's, or on other devices a measured matmul's
# bench's own
mode = 'train'  # 'train': the training step; 'generate': tokens/s of sampling, ours and transformers'; 'memory'
real_data = True  # batches from data/<dataset>/train.bin when it exists, else random tokens
num_steps = 20  # timed steps, after 10 warm-up steps (mode=memory: steps measured, 3)
profile = False  # use pytorch profiler, or just simple benchmarking?
sdpa_backend = 'auto'  # 'auto' (PyTorch's pick), or force 'flash', 'efficient', 'cudnn' or 'math'
compile_mode = 'default'  # with compile: torch.compile's mode ('max-autotune-no-cudagraphs', ...)
float8 = False  # the Linears in float8 through torchao (convert_to_float8_training; GPUs with float8)
max_new_tokens = 200  # mode=generate: tokens per sample, from a 4-token prompt
num_samples = 0  # mode=generate: the batch size; 0 measures 1 and 8
weight_dtype = 'all'  # mode=generate: 'float32', 'bfloat16', 'int8' (sample.py's setting), or 'all' side by side
repeats = 3  # mode=generate: timed runs per row, the fastest counts (a shared machine's interference only slows)
no_cache = True  # mode=generate: also time float32 without the KV cache, as nanoGPT samples (slow for big models)
quality_positions = 4096  # mode=generate: positions (of data/<dataset>/val.bin, else random) to compare; 0: none
memory_rows = 'full,full+ac,lora,lora+ac'  # mode=memory: the finetunings to measure
# train.py's settings that change no training step (evaluation, logging, the schedule): its config files set
# them, and bench.py names those it leaves aside
eval_interval = log_interval = eval_iters = eval_only = always_save_checkpoint = auto_resume = None
wandb_log = wandb_project = wandb_run_name = hellaswag_interval = hellaswag_limit = None
max_iters = decay_lr = warmup_iters = lr_decay_iters = min_lr = batch_ramp_tokens = batch_ramp_start = None
# -----------------------------------------------------------------------------
exec(open('configurator.py').read())  # overrides from command line or config file
# -----------------------------------------------------------------------------

# the settings each mode uses besides mode, device, dtype, seed and dataset: any other set on the command line is
# an error, and one set by a config file (train.py's) is named as left aside
SHAPE = ('n_layer', 'n_head', 'n_embd', 'bias', *MODEL_OPTIONS)
STEP = ('batch_size', 'block_size', 'lora_rank', 'lora_alpha', 'lora_dropout', 'lora_targets', 'optimizer', 'muon_lr',
        'learning_rate', 'weight_decay', 'beta1', 'beta2', 'grad_clip', 'dropout', 'num_steps')
USES = {'train': {*SHAPE, *STEP, 'init_from', 'out_dir', 'trust_checkpoint', 'gradient_accumulation_steps',
                  'activation_checkpointing', 'autotune', 'compile', 'peak_flops', 'real_data', 'profile',
                  'sdpa_backend', 'compile_mode', 'float8'},
        'generate': {*SHAPE, 'block_size', 'init_from', 'out_dir', 'trust_checkpoint', 'max_new_tokens', 'num_samples',
                     'weight_dtype', 'repeats', 'no_cache', 'quality_positions'},
        'memory': {*SHAPE, *STEP, 'memory_rows', 'parallelism', 'backend'}}
check_settings(globals(), positive=('batch_size', 'block_size', 'gradient_accumulation_steps', 'num_steps',
                                   'max_new_tokens', 'repeats', 'n_layer', 'n_head', 'n_embd'),
               choices=dict(mode=tuple(USES), weight_dtype=('all', *WEIGHT_DTYPES), parallelism=('ddp', 'fsdp'),
                            sdpa_backend=('auto', 'flash', 'efficient', 'cudnn', 'math')))
ddp, ddp_rank, ddp_local_rank, ddp_world_size = ddp_ranks()
if ddp and mode != 'memory':
    die(f"mode={mode} runs in one process: torchrun is for mode=memory")
# under torchrun, mode=memory measures one full training step's state per process; alone, its rows
ONE_STEP = {'lora_rank', 'lora_alpha', 'lora_dropout', 'lora_targets', 'num_steps', 'grad_clip', 'memory_rows'}
uses = USES[mode] - (ONE_STEP if ddp else {'parallelism', 'backend'})
on_command_line = {a[2:].partition('=')[0] for a in sys.argv[1:] if a.startswith('--')}
for name in sorted(set_keys - uses - {'mode', 'device', 'dtype', 'seed', 'dataset'}):
    if name in on_command_line:
        die(f"{name} does not apply to mode={mode}" + (" (outside torchrun)" if name in USES[mode] else ""))
left_aside = sorted(set_keys - uses - on_command_line - {'mode', 'device', 'dtype', 'seed', 'dataset'})
if left_aside:
    print(f"left aside (the config file's, unused by mode={mode}): {', '.join(left_aside)}")
fixed = set_keys & {*SHAPE, *(['block_size'] if mode == 'generate' else [])}  # a loaded model's own
if init_from != 'scratch' and fixed:
    die(f"{sorted(fixed)[0]} is init_from's ({init_from}): leave the model's shape to it")
if n_embd % n_head:
    die(f"n_embd ({n_embd}) must be divisible by n_head ({n_head}): each head gets n_embd // n_head dimensions")
torch.manual_seed(seed)
config_dtype = dtype
device, dtype, ctx = setup_device(device, dtype, ddp_local_rank)
if device.type == 'cpu' and mode != 'generate':  # as train.py does
    return_freed_memory_at_once()
weight_dtypes = WEIGHT_DTYPES if weight_dtype == 'all' else (weight_dtype,)
if mode == 'generate' and weight_dtype_error(weight_dtypes[-1], device):  # int8, the one some devices lack
    die(weight_dtype_error(weight_dtypes[-1], device))


# -----------------------------------------------------------------------------
# mode 'train': the training step, as train.py takes it (without DDP)

def model_to_time(vocab_size):
    """The model a timed step trains: random weights of the settings' shape (init_from='scratch') for a vocabulary
    of vocab_size, or init_from's, as train.py loads them; cropped to block_size."""
    if init_from == 'scratch':
        return GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head,
                             n_embd=n_embd, dropout=dropout, bias=bias, **{k: globals()[k] for k in MODEL_OPTIONS}))
    if init_from == 'resume' or os.path.isfile(init_from):
        path = os.path.join(out_dir, 'ckpt.pt') if init_from == 'resume' else init_from
        model = model_from_checkpoint(load_checkpoint(path, trust_checkpoint), dropout=dropout)
    else:
        try:
            model = from_pretrained(init_from, dict(dropout=dropout))
        except (ValueError, OSError) as e:
            die(str(e))
    if block_size > model.config.block_size:
        die(f"block_size {block_size} is larger than the model's {model.config.block_size}")
    model.crop_block_size(block_size)
    return model


def add_lora(model, rank=None):
    """LoRA adapters (rank, else lora_rank's) on model, its frozen weights in bfloat16 where it computes in it."""
    import lora  # (peft: imported only where it is used)
    settings = lora.lora_settings(rank or lora_rank, lora_alpha, lora_dropout, lora_targets)
    try:
        lora.add_adapters(model, settings, torch.bfloat16 if dtype == 'bfloat16' else None)
    except ValueError as e:
        die(f"lora_targets '{lora_targets}': {str(e).splitlines()[0][:200]}")


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

    raw_model = model_to_time(vocab_size)
    if lora_rank:
        add_lora(raw_model)
    raw_model.config.activation_checkpointing = activation_checkpointing
    raw_model.to(device)
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
    trainable = sum(p.numel() for p in raw_model.parameters() if p.requires_grad)
    print(f"device: {device}, dtype: {dtype}, {raw_model.get_num_params() / 1e6:.2f}M parameters"
          f"{f' (LoRA rank {lora_rank}: {trainable:,} train)' if lora_rank else ''}, batch {batch_size} x "
          f"{block_size} x {gradient_accumulation_steps} micro-steps{f' ({route.name})' if route else ''}"
          f"{', activation checkpointing' if activation_checkpointing else ''}")

    backends = dict(flash='FLASH_ATTENTION', efficient='EFFICIENT_ATTENTION', cudnn='CUDNN_ATTENTION', math='MATH')
    attention = lambda: nullcontext() if sdpa_backend == 'auto' else \
        sdpa_kernel(getattr(SDPBackend, backends[sdpa_backend]))

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

    if profile:  # https://pytorch.org/docs/stable/profiler.html
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
    for steps in (10, num_steps):  # burn-in, then the timed steps
        synchronize(device)
        t0 = time.time()
        for k in range(steps):
            lossf = train_step(k).item()
            print(f"{k}/{steps} loss: {lossf:.4f}")
        synchronize(device)
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
        model, _ = load_model('resume', out_dir, trust_checkpoint)
        try:
            model.save_pretrained(tmp, vocab_size=model.config.vocab_size)
            return 'resume', tmp, out_dir
        except ValueError as e:
            print(f"no transformers row: {e}")
            return 'resume', None, out_dir
    import hf_gpt2
    return init_from, init_from if os.path.isdir(init_from) else hf_gpt2.hub_snapshot(init_from), init_from


def generate_ours(model, x, n, use_cache):
    """(tokens/s, seconds to the first token) of our generate_stream."""
    t0 = time.perf_counter()
    first = None
    for _ in generate_stream(model, x, n, use_cache=use_cache):
        if first is None:
            synchronize(device)
            first = time.perf_counter() - t0
    synchronize(device)
    return x.size(0) * n / (time.perf_counter() - t0), first


def generate_transformers(hf, x, n):
    """(tokens/s, seconds to the first token) of transformers' generate, sampling over the whole vocabulary."""
    def run(k):
        t0 = time.perf_counter()
        hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=k, min_new_tokens=k, do_sample=True,
                    top_k=0, pad_token_id=0)
        synchronize(device)
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
        model = load_model(source, out_dir, trust_checkpoint, wd)[0].to(device)
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
    bandwidth = stream_bandwidth(device)
    print(f"device: {device}, dtype: {dtype}, {about_source}, {max_new_tokens} new tokens from a 4-token prompt, "
          f"sampling at temperature 1 over the whole vocabulary; each row the fastest of {repeats} runs "
          f"(the uncached row: 1)")
    print(f"memory bandwidth: {bandwidth / 1e9:.1f} GB/s (streaming a 1 GiB tensor); 'limit' is that over the bytes "
          f"of weights a step reads, times the batch")
    if device.type == 'cpu':
        print("peak mem: the most anonymous memory (RssAnon: not the memory-mapped weights file) the process held "
              "while the row loaded and sampled (with what earlier rows left: run one weight_dtype for its own)")
    print(f"{'batch':>5} {'method':<30} {'tokens/s':>9} {'first token':>12} {'peak mem':>9} {'limit':>9}")
    ours = lambda wd: lambda: load_model(source, out_dir, trust_checkpoint, wd)[0].to(device)
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


def memory_row(model, lora, checkpointed, steps):
    """Train model steps times (LoRA: adapters added in place first): the peak bytes held, and seconds a step."""
    if lora:
        add_lora(model, lora_rank or 8)
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
        synchronize(device)
    dt = (time.perf_counter() - t0) / steps
    return torch.cuda.max_memory_allocated(device) if device.type == 'cuda' else mem.peak, dt


def bench_memory():
    data_dir = os.path.join('data', dataset)
    meta = read_meta(data_dir)  # the dataset's vocabulary, as train.py has it
    config = GPTConfig(block_size=block_size, vocab_size=meta['vocab_size'] if meta['tokenizer'] != 'gpt2' else 50304,
                       n_layer=n_layer, n_head=n_head, n_embd=n_embd, bias=bias, dropout=dropout,
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
    gib, steps = 2**30, num_steps if 'num_steps' in set_keys else 3
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
        DDP(model, device_ids=[device.index] if device.type == 'cuda' else None)
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
