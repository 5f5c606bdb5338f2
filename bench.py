"""
A much shorter version of train.py for benchmarking: the training step alone, timed.
$ python bench.py                                          # GPT-2 124M shape, one 12 x 1024 micro-batch
$ python bench.py config/train_shakespeare_char_cpu.py     # exactly what that config trains
$ python bench.py --profile=True                           # where the time goes (torch profiler)
Every train.py setting is a bench.py setting too, so any config file runs here.
"""
import os
import time

import torch

from common import (die, get_batch, load_meta, maybe_compile, peak_flops as find_peak_flops, setup_device,
                    train_settings)
from model import GPT, GPTConfig

# -----------------------------------------------------------------------------
exec(train_settings())  # train.py's settings and defaults, then bench's own:
gradient_accumulation_steps = 1  # one micro-batch per step unless a config file asks for more
real_data = True  # batches from data/<dataset>/train.bin when it exists, else random tokens
num_steps = 20  # timed steps, after 10 warm-up steps
profile = False  # use pytorch profiler, or just simple benchmarking?
# -----------------------------------------------------------------------------
config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str, type(None)))]
exec(open('configurator.py').read())  # overrides from command line or config file
# -----------------------------------------------------------------------------

for name in ('batch_size', 'block_size', 'gradient_accumulation_steps', 'num_steps'):
    if globals()[name] <= 0:
        die(f"{name} must be positive, got {globals()[name]}")
torch.manual_seed(seed)
device, dtype, ctx = setup_device(device, dtype)
device_type = device.split(':')[0]

# data loading init
data_dir = os.path.join('data', dataset)
meta = load_meta(data_dir) if os.path.isdir(data_dir) else None
vocab_size = meta['vocab_size'] if meta else 50304
train_path = os.path.join(data_dir, 'train.bin')
if real_data and os.path.isfile(train_path):
    import numpy as np
    train_data = np.memmap(train_path, dtype=np.uint16, mode='r')
    get = lambda it, micro: get_batch(train_data, batch_size, block_size, (seed, 0, it, micro), device)
    print(f"data: {train_path}")
else:
    x = torch.randint(vocab_size, (batch_size, block_size), device=device)
    get = lambda it, micro: (x, x)
    print(f"data: random tokens{'' if not real_data else f' ({train_path} not found)'}")

# model init
model = GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                      dropout=dropout, bias=bias, activation=activation)).to(device)
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16'))
raw_model = model
model = maybe_compile(model, compile, device)
peak = find_peak_flops(device, peak_flops)
print(f"device: {device}, dtype: {dtype}, {raw_model.get_num_params() / 1e6:.2f}M parameters, "
      f"batch {batch_size} x {block_size} x {gradient_accumulation_steps} micro-steps")


def sync():
    if device_type == 'cuda':
        torch.cuda.synchronize()
    elif device_type == 'mps':
        torch.mps.synchronize()


def train_step(it):
    """One optimizer step, as train.py takes it (without DDP): the mean loss, still on device."""
    loss_accum = torch.zeros((), device=device)
    for micro in range(gradient_accumulation_steps):
        X, Y = get(it, micro)
        with ctx:
            logits, loss = model(X, Y)
            loss = loss / gradient_accumulation_steps
        scaler.scale(loss).backward()
        loss_accum += loss.detach()
    if grad_clip != 0.0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss_accum


if profile:
    # useful docs on pytorch profiler:
    # - tutorial https://pytorch.org/tutorials/intermediate/tensorboard_profiler_tutorial.html
    # - api https://pytorch.org/docs/stable/profiler.html#torch.profiler.profile
    wait, warmup, active = 5, 5, 5
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device_type == 'cuda':
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
    sort_by = 'self_cuda_time_total' if device_type == 'cuda' else 'self_cpu_time_total'
    print(prof.key_averages().table(sort_by=sort_by, row_limit=20))
    print("trace written to ./bench_log (open with tensorboard or https://ui.perfetto.dev)")
else:
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
    mfu_str = f"{mfu * 100:.2f}% of {peak / 1e12:.1f} TFLOP/s" if mfu is not None else \
        "n/a (peak unknown for this device: set --peak_flops=<FLOP/s>)"
    print(f"time per iteration: {dt * 1000:.2f}ms, tokens/s: {tokens / dt:,.0f}, MFU: {mfu_str}")
