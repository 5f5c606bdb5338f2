"""
A much shorter version of train.py for benchmarking, in three modes:
$ python bench.py config/train_shakespeare_char_cpu.py  # train: that config's training step, timed (--profile=True)
$ python bench.py --mode=generate                       # sampling: float32, bfloat16, int8, no cache, transformers
$ python bench.py --mode=memory config/train_gpt2.py    # memory: training state per process, finetunings measured
$ torchrun --standalone --nproc_per_node=2 bench.py --mode=memory --parallelism=fsdp  # DDP vs FSDP, measured
train.py's config files run here: what they set that no training step uses is named on one line.
"""
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from model import GPT, MODEL_OPTIONS, GPTConfig
from nanogpt.autotune import choose_cpu_route, measured_run
from nanogpt.bench_generate import generation_source, quality_table, speed_table
from nanogpt.dataloader import get_batch
from nanogpt.device import PeakMemory, autocast, available_memory, maybe_compile, measured_matmul_flops, rss_anon
from nanogpt.device import peak_flops as find_peak_flops, return_freed_memory_at_once, setup_device, synchronize
from nanogpt.distributed import ddp_ranks, end_ddp, process_share, shard_model, start_ddp
from nanogpt.loading import load_model, starting_model
from nanogpt.optim import optimizer_step
from nanogpt.quantize import WEIGHT_DTYPES, weight_dtype_error
from nanogpt.tokenizer import read_meta
from nanogpt.util import check_settings, die, report_usage_errors

report_usage_errors()  # library code's bad-input errors: one line, as die says them

# -----------------------------------------------------------------------------
# what is timed, in train.py's names and defaults (train.py says what each does), so that its config files run here
init_from = 'scratch'  # new weights of the shape below, or 'resume' (out_dir's), a ckpt.pt, a GPT-2 name or directory
out_dir = 'out'
trust_checkpoint = False
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
dataset = 'openwebtext'  # its vocabulary, and its train.bin's batches (real_data), val.bin's for mode=generate
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 1  # one micro-batch per step unless a config file asks for more
lora_rank = 0  # (mode=memory: the LoRA rows' rank, else 8)
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
backend = 'auto'  # under torchrun (mode=memory)
parallelism = 'ddp'  # under torchrun (mode=memory): 'ddp' (a full copy per process) or 'fsdp' (FSDP2's shards)
seed = 1337
peak_flops = 0.0  # for MFU; 0: a known GPU's, or on other devices a measured matmul's
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
transformers_row = True  # mode=generate: also time transformers' generate on the same weights
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
STEP = (*SHAPE, 'batch_size', 'block_size', 'lora_rank', 'lora_alpha', 'lora_dropout', 'lora_targets', 'optimizer',
        'muon_lr', 'learning_rate', 'weight_decay', 'beta1', 'beta2', 'grad_clip', 'dropout', 'num_steps')
USES = {'train': {*STEP, 'init_from', 'out_dir', 'trust_checkpoint', 'gradient_accumulation_steps',
                  'activation_checkpointing', 'autotune', 'compile', 'peak_flops', 'real_data', 'profile',
                  'sdpa_backend', 'compile_mode', 'float8'},
        'generate': {*SHAPE, 'block_size', 'init_from', 'out_dir', 'trust_checkpoint', 'max_new_tokens', 'num_samples',
                     'weight_dtype', 'repeats', 'no_cache', 'transformers_row', 'quality_positions'},
        'memory': {*STEP, 'memory_rows', 'parallelism', 'backend'}}
SDPA = dict(auto=None, flash=SDPBackend.FLASH_ATTENTION, efficient=SDPBackend.EFFICIENT_ATTENTION,
            cudnn=SDPBackend.CUDNN_ATTENTION, math=SDPBackend.MATH)  # sdpa_backend's kernels
check_settings(globals(), positive=('batch_size', 'block_size', 'gradient_accumulation_steps', 'num_steps',
                                   'max_new_tokens', 'repeats', 'n_layer', 'n_head', 'n_embd'),
               choices=dict(mode=tuple(USES), weight_dtype=('all', *WEIGHT_DTYPES), parallelism=('ddp', 'fsdp'),
                            sdpa_backend=tuple(SDPA)))
ddp, ddp_rank, ddp_local_rank, ddp_world_size = ddp_ranks()
if ddp and mode != 'memory':
    die(f"mode={mode} runs in one process: torchrun is for mode=memory")
# under torchrun, mode=memory measures one full training step's state per process; alone, its rows
ONE_STEP = {'lora_rank', 'lora_alpha', 'lora_dropout', 'lora_targets', 'num_steps', 'grad_clip', 'memory_rows'}
uses = USES[mode] - (ONE_STEP if ddp else {'parallelism', 'backend'}) | {'mode', 'device', 'dtype', 'seed', 'dataset'}
unused = set_keys - uses
for name in sorted(unused & {a[2:].partition('=')[0] for a in sys.argv[1:] if a.startswith('--')}):
    die(f"{name} does not apply to mode={mode}" + (" (outside torchrun)" if name in USES[mode] else ""))
if unused:
    print(f"left aside (the config file's, unused by mode={mode}): {', '.join(sorted(unused))}")
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
meta = read_meta(os.path.join('data', dataset))  # the dataset's vocabulary (GPT-2's padded) and token dtype
model_args = dict(block_size=block_size, vocab_size=meta['vocab_size'] if meta['tokenizer'] != 'gpt2' else 50304,
                  **{k: globals()[k] for k in SHAPE})


def trainable(lora, checkpointed, path='scratch'):
    """The model a step trains, as train.py sets it up: path's (starting_model), with LoRA adapters (of rank lora,
    0: none) and activation checkpointing as asked; its optimizer and gradient scaler."""
    model = starting_model(path, model_args, dropout, trust_checkpoint)
    if block_size > model.config.block_size:
        die(f"block_size {block_size} is larger than the model's {model.config.block_size}")
    model.crop_block_size(block_size)
    if lora:
        from nanogpt.lora import Adapters  # (peft: imported only where it is used)
        Adapters(model, lora, lora_alpha, lora_dropout, lora_targets, path, dtype)
    model.config.activation_checkpointing = checkpointed
    model.to(device)
    return model, model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), optimizer=optimizer,
                                             muon_lr=muon_lr), \
        torch.amp.GradScaler(device.type, enabled=(dtype == 'float16'))


def train_step(model, opt, scaler, get, it, micro_steps=1):
    """One optimizer step over the batches get(it, micro), as train.py takes it: the mean loss, on the device."""
    loss_accum = torch.zeros((), device=device)
    for micro in range(micro_steps):
        X, Y = get(it, micro)
        with ctx, sdpa_kernel(SDPA[sdpa_backend]) if SDPA[sdpa_backend] and mode == 'train' else nullcontext():
            _, loss = model(X, Y)
            loss = loss / micro_steps
        scaler.scale(loss).backward()
        loss_accum += loss.detach()
    optimizer_step(model, opt, scaler, grad_clip)
    return loss_accum


# -----------------------------------------------------------------------------
# mode 'train': the training step, as train.py takes it (without DDP)

def bench_train():
    global dtype, ctx
    train_path = os.path.join('data', dataset, 'train.bin')
    if real_data and os.path.isfile(train_path):
        train_data = np.memmap(train_path, dtype=meta['dtype'], mode='r')
        get = lambda it, micro: get_batch(train_data, batch_size, block_size, (seed, 0, it, micro), device)
        print(f"data: {train_path}")
    else:
        x = torch.randint(model_args['vocab_size'], (batch_size, block_size), device=device)
        get = lambda it, micro: (x, x)
        print(f"data: random tokens{'' if not real_data else f' ({train_path} not found)'}")
    path = os.path.join(out_dir, 'ckpt.pt') if init_from == 'resume' else init_from
    raw_model, opt, scaler = trainable(lora_rank, activation_checkpointing, path)
    route = None
    if device.type == 'cpu':  # as train.py does: the fastest exact route at these shapes
        route = choose_cpu_route(raw_model.config, batch_size, block_size, config_dtype,
                                 measured_run(raw_model, batch_size, block_size, 10 + num_steps), autotune)
        route.apply(raw_model)
        dtype, ctx = route.dtype, autocast(device, route.dtype)
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
    n_train = sum(p.numel() for p in raw_model.parameters() if p.requires_grad)
    print(f"device: {device}, dtype: {dtype}, {raw_model.get_num_params() / 1e6:.2f}M parameters"
          f"{f' (LoRA rank {lora_rank}: {n_train:,} train)' if lora_rank else ''}, batch {batch_size} x "
          f"{block_size} x {gradient_accumulation_steps} micro-steps{f' ({route.name})' if route else ''}"
          f"{', activation checkpointing' if activation_checkpointing else ''}")
    step = lambda it: train_step(model, opt, scaler, get, it, gradient_accumulation_steps).item()

    if profile:  # https://pytorch.org/docs/stable/profiler.html: 5 steps skipped, 5 to warm up, 5 recorded
        cuda = device.type == 'cuda'
        activities = [torch.profiler.ProfilerActivity.CPU, *([torch.profiler.ProfilerActivity.CUDA] if cuda else [])]
        schedule = torch.profiler.schedule(wait=5, warmup=5, active=5, repeat=1)
        with torch.profiler.profile(activities=activities, schedule=schedule,
                                    on_trace_ready=torch.profiler.tensorboard_trace_handler('./bench_log')) as prof:
            for k in range(15):
                print(f"{k}/15 loss: {step(k):.4f}")
                prof.step()  # notify the profiler at end of each step
        print(prof.key_averages().table(sort_by=f"self_{'cuda' if cuda else 'cpu'}_time_total", row_limit=20))
        print("trace written to ./bench_log (open with tensorboard or https://ui.perfetto.dev)")
        return
    for steps in (10, num_steps):  # burn-in, then the timed steps
        synchronize(device)
        t0 = time.time()
        for k in range(steps):
            print(f"{k}/{steps} loss: {step(k):.4f}")
        synchronize(device)
        dt = (time.time() - t0) / steps
    mfu = raw_model.estimate_mfu(batch_size * gradient_accumulation_steps, dt, peak)
    mfu = f"{mfu * 100:.2f}% of {peak / 1e12:.3g} TFLOP/s ({peak_source})" if mfu is not None else \
        "n/a (peak unknown for this GPU: set --peak_flops=<FLOP/s>)"
    print(f"time per iteration: {dt * 1000:.2f}ms, tokens/s: "
          f"{batch_size * block_size * gradient_accumulation_steps / dt:,.0f}, MFU: {mfu}")


# -----------------------------------------------------------------------------
# mode 'generate' (nanogpt/bench_generate.py's tables): every row loads its model as sample.py does, from one source

def bench_generate():
    tmp = tempfile.TemporaryDirectory()
    source, hf_dir, about = generation_source(init_from, out_dir, trust_checkpoint, model_args, seed, tmp.name)
    load = lambda wd: load_model(source, out_dir, trust_checkpoint, wd)[0].to(device)
    speed_table(load, hf_dir if transformers_row else None, about, [num_samples] if num_samples else [1, 8],
                weight_dtypes, max_new_tokens, repeats, no_cache, seed, device, dtype, ctx)
    if quality_positions:
        val = os.path.join('data', dataset, 'val.bin')
        quality_table(load, weight_dtypes, val if os.path.isfile(val) else None, meta['dtype'], quality_positions,
                      seed, device, ctx)
    tmp.cleanup()


# -----------------------------------------------------------------------------
# mode 'memory': what finetuning holds on one process. Full finetuning keeps float32 weights, their
# gradients and AdamW's two moments, 16 bytes a parameter (FSDP shards all of it N ways); LoRA only the
# weights (half with a bfloat16 base) and small adapters; activation checkpointing keeps one block's
# activations instead of all. Measured: the peak of a few training steps, over the weights

MEMORY_ROWS = {'full': 'full', 'full+ac': 'full + AC', 'lora': 'LoRA r={}', 'lora+ac': 'LoRA r={} + AC'}


def bench_memory():
    with torch.device('meta'):
        n = sum(p.numel() for p in GPT(GPTConfig(**model_args)).parameters())
    rows, gib = [r.strip() for r in memory_rows.split(',') if r.strip()], 2**30
    for row in rows:
        if row not in MEMORY_ROWS:
            die(f"memory_rows: '{row}' is none of {', '.join(MEMORY_ROWS)}")
    child = os.environ.get('BENCH_MEMORY_ROW') == '1'  # one row of the table its parent prints
    if not child:
        print(f"{n:,} parameters; weights + gradients + AdamW state per process (activations not included):")
        for world in (1, 8):
            print(f"{world:>3} processes: DDP {16 * n / gib:8.2f} GiB, FSDP {16 * n / world / gib:8.2f} GiB")
    if ddp:
        return memory_share()
    steps = num_steps if 'num_steps' in set_keys else 3
    if rows and not child:
        print(f"measured: {steps} training steps of batch {batch_size} x {block_size}, dtype {dtype}, on {device}; "
              f"peak {'allocated' if device.type == 'cuda' else 'anonymous memory (RssAnon)'}")
        print(f"{'finetuning':<20} {'peak GiB':>9} {'weights GiB':>12} {'over them':>10} {'s/step':>8}", flush=True)
    if len(rows) == 1:
        return memory_row(rows[0], steps)
    for row in rows:  # each in a process of its own, so that no row's memory is another's
        if not row.startswith('lora') and device.type == 'cpu' and 16 * n > 0.9 * available_memory():
            print(f"{MEMORY_ROWS[row]:<20} {'-':>9} {4 * n / gib:12.2f} {'-':>10} {'-':>8}  "
                  f"(needs {16 * n / gib:.1f} GiB before activations)", flush=True)
            continue
        subprocess.run([sys.executable, *sys.argv, f'--memory_rows={row}', f'--num_steps={steps}'], check=True,
                       env={**os.environ, 'BENCH_MEMORY_ROW': '1'})


def memory_row(row, steps):
    """Train a model steps times as row says: its line of the table (the peak over what the process held before,
    torch itself; the weights; seconds a step)."""
    before = rss_anon() if device.type == 'cpu' else 0
    model, opt, scaler = trainable((lora_rank or 8) * row.startswith('lora'), row.endswith('+ac'))
    x = torch.randint(model.config.vocab_size, (batch_size, block_size), device=device)
    t0 = time.perf_counter()
    with PeakMemory(device) as mem:
        for it in range(steps):
            train_step(model, opt, scaler, lambda it, micro: (x, x), it)
        synchronize(device)
    dt, peak = (time.perf_counter() - t0) / steps, mem.peak - before
    weights = sum(p.nbytes for p in model.parameters())  # as kept: a LoRA base in bfloat16 is half
    print(f"{MEMORY_ROWS[row].format(lora_rank or 8):<20} {peak / 2**30:9.2f} {weights / 2**30:12.2f} "
          f"{(peak - weights) / 2**30:10.2f} {dt:8.2f}")


def memory_share():
    """Under torchrun: one training step on this process's share (DDP: all of it; FSDP: 1/N), measured."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    start_ddp(device, backend)
    model = starting_model('scratch', model_args, dropout).to(device)
    wrapped = shard_model(model, device, dtype) if parallelism == 'fsdp' else \
        DDP(model, device_ids=[device.index] if device.type == 'cuda' else None)
    opt = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), optimizer=optimizer, muon_lr=muon_lr)
    x = torch.randint(model.config.vocab_size, (batch_size, block_size), device=device)
    with ctx:
        _, loss = wrapped(x, x)
    loss.backward()
    opt.step()
    weights, grads, state = (b / 2**20 for b in process_share(model, opt))
    if ddp_rank == 0:
        print(f"measured on rank 0 of {ddp_world_size} ({parallelism}): weights {weights:.1f} MiB, gradients "
              f"{grads:.1f} MiB, AdamW state {state:.1f} MiB, total {weights + grads + state:.1f} MiB")
    end_ddp()


{'train': bench_train, 'generate': bench_generate, 'memory': bench_memory}[mode]()
