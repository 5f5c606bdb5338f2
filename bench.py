"""
A much shorter version of train.py for benchmarking: the training step alone, timed.
$ python bench.py                                          # GPT-2 124M shape, one 12 x 1024 micro-batch
$ python bench.py config/train_shakespeare_char_cpu.py     # exactly what that config trains
$ python bench.py --profile=True                           # where the time goes (torch profiler)
$ python bench.py --mode=generate                          # sampling: KV cache vs no cache vs transformers
$ python bench.py --mode=memory config/train_gpt2.py       # per-process training state, DDP vs FSDP
$ torchrun --standalone --nproc_per_node=2 bench.py --mode=memory --parallelism=fsdp   # ... and measured
Every train.py setting is a bench.py setting too, so any config file runs here.
"""
import os
import time

import torch

from common import (ddp_ranks, end_ddp, fast_cpu_matmuls, for_inference, maybe_compile, measured_matmul_flops, optimizer_step,
                    peak_flops as find_peak_flops, peak_memory, script_settings, setup_device, shard_model,
                    start_ddp)
from dataloader import get_batch, load_meta
from model import GPT, MODEL_OPTIONS, GPTConfig
from util import die

# -----------------------------------------------------------------------------
globals().update(script_settings('train.py'))  # train.py's settings and defaults, then bench's own:
gradient_accumulation_steps = 1  # one micro-batch per step unless a config file asks for more
real_data = True  # batches from data/<dataset>/train.bin when it exists, else random tokens
num_steps = 20  # timed steps, after 10 warm-up steps
profile = False  # use pytorch profiler, or just simple benchmarking?
mode = 'train'  # 'train': the training step; 'generate': tokens/s of sampling, ours and transformers'; 'memory'
max_new_tokens = 200  # generate mode: tokens per sample, from a 4-token prompt
num_samples = 0  # generate mode: the batch size; 0 measures 1 and 8
parallelism = 'ddp'  # memory mode under torchrun: 'ddp' (a full copy per process) or 'fsdp' (sharded: FSDP2)
# -----------------------------------------------------------------------------
config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str, type(None)))]
exec(open('configurator.py').read())  # overrides from command line or config file
# -----------------------------------------------------------------------------

if mode not in ('train', 'generate', 'memory'):
    die(f"mode must be 'train', 'generate' or 'memory', got '{mode}'")
if parallelism not in ('ddp', 'fsdp'):
    die(f"parallelism must be 'ddp' or 'fsdp', got '{parallelism}'")
for name in ('batch_size', 'block_size', 'gradient_accumulation_steps', 'num_steps', 'max_new_tokens', 'n_layer',
             'n_head', 'n_embd'):
    if globals()[name] <= 0:
        die(f"{name} must be positive, got {globals()[name]}")
if n_embd % n_head:
    die(f"n_embd ({n_embd}) must be divisible by n_head ({n_head}): each head gets n_embd // n_head dimensions")
torch.manual_seed(seed)
ddp, ddp_rank, ddp_local_rank, ddp_world_size = ddp_ranks()
device, dtype, ctx = setup_device(device, dtype, ddp_local_rank)


def sync():
    if device.type == 'cuda':
        torch.cuda.synchronize()
    elif device.type == 'mps':
        torch.mps.synchronize()


if mode == 'generate':
    # the same random GPT-2-shaped weights in our model and in transformers' GPT2LMHeadModel
    import tempfile
    from transformers import GPT2LMHeadModel
    model = GPT(GPTConfig(block_size=block_size, vocab_size=50257, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                          bias=bias, **{k: globals()[k] for k in MODEL_OPTIONS})).to(device).eval()
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        hf = GPT2LMHeadModel.from_pretrained(d).to(device).eval()
    model = for_inference(model, device, dtype)
    print(f"device: {device}, dtype: {dtype}, {n_layer} layers, {n_embd} wide, {max_new_tokens} new tokens "
          f"from a 4-token prompt, sampling at temperature 1 over the whole vocabulary")

    def ours(x, n, use_cache):
        """(tokens/s, seconds to the first token)"""
        t0 = time.perf_counter()
        first = None
        for _ in model.generate_stream(x, n, use_cache=use_cache):
            if first is None:
                sync()
                first = time.perf_counter() - t0
        sync()
        return x.size(0) * n / (time.perf_counter() - t0), first

    def transformers(x, n):
        def run(k):
            t0 = time.perf_counter()
            hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=k, min_new_tokens=k, do_sample=True,
                        top_k=0, pad_token_id=0)
            sync()
            return time.perf_counter() - t0
        first = run(1)
        return x.size(0) * n / run(n), first

    print(f"{'batch':>5} {'method':<22} {'tokens/s':>9} {'first token':>12} {'peak mem':>9}")
    with torch.no_grad(), ctx:
        for B in ([num_samples] if num_samples else [1, 8]):
            x = torch.randint(50257, (B, 4), device=device)
            results = {}
            for name, fn in (('ours, KV cache', lambda n: ours(x, n, True)),
                             ('ours, no cache', lambda n: ours(x, n, False)),
                             ('transformers generate', lambda n: transformers(x, n))):
                fn(4)  # warm-up
                if device.type == 'cuda':
                    torch.cuda.reset_peak_memory_stats()
                tps, first = fn(max_new_tokens)
                mem = peak_memory(device) / 2**20  # so far: the device's allocator on CUDA, else peak RSS
                results[name] = tps
                print(f"{B:>5} {name:<22} {tps:>9.1f} {first * 1000:>10.1f}ms {mem:>7.0f}MB", flush=True)
            print(f"{B:>5} KV cache vs transformers: {results['ours, KV cache'] / results['transformers generate']:.2f}x, "
                  f"vs no cache: {results['ours, KV cache'] / results['ours, no cache']:.2f}x")
elif mode == 'memory':
    # what training keeps on each process between steps: float32 weights, their gradients and AdamW's
    # two moments, 16 bytes a parameter under DDP on every process; FSDP shards all of it N ways
    model = GPT(GPTConfig(block_size=block_size, vocab_size=50304, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                          bias=bias)).to(device)
    n = sum(p.numel() for p in model.parameters())
    print(f"{n:,} parameters; weights + gradients + AdamW state per process (activations not included):")
    for world in (1, 8):
        print(f"{world:>3} processes: DDP {16 * n / 2**30:8.2f} GiB, FSDP {16 * n / world / 2**30:8.2f} GiB")
    if ddp:  # measured: one training step on this process's share
        from torch.distributed.tensor import DTensor
        from torch.nn.parallel import DistributedDataParallel as DDP
        start_ddp(device)
        wrapped = shard_model(model, device, dtype) if parallelism == 'fsdp' else \
            DDP(model, device_ids=[ddp_local_rank] if device.type == 'cuda' else None)
        optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), optimizer, muon_lr)
        local = lambda ts: sum((t.to_local() if isinstance(t, DTensor) else t).nbytes for t in ts)
        x = torch.randint(50304, (batch_size, block_size), device=device)
        with ctx:
            _, loss = wrapped(x, x)
        loss.backward()
        grads = local(p.grad for p in model.parameters())
        optimizer.step()
        state = local(t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0)
        weights = local(model.parameters())
        if ddp_rank == 0:
            print(f"measured on rank 0 of {ddp_world_size} ({parallelism}): weights {weights / 2**20:.1f} MiB, "
                  f"gradients {grads / 2**20:.1f} MiB, AdamW state {state / 2**20:.1f} MiB, "
                  f"total {(weights + grads + state) / 2**20:.1f} MiB")
        end_ddp()
else:
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
                          dropout=dropout, bias=bias, **{k: globals()[k] for k in MODEL_OPTIONS})).to(device)
    onednn = fast_cpu_matmuls(model, device, dtype)  # as train.py does
    optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), optimizer, muon_lr)
    scaler = torch.amp.GradScaler(device.type, enabled=(dtype == 'float16'))
    raw_model = model
    model = maybe_compile(model, compile, device)
    peak = find_peak_flops(device, dtype, peak_flops)
    peak_source = 'configured' if peak_flops else f'{dtype} spec-sheet peak'
    if peak is None and device.type != 'cuda':  # no spec sheet for a CPU here: its own best matmul rate
        peak, peak_source = measured_matmul_flops(device, dtype), f'measured: a 2048^3 {dtype} matmul'
    print(f"device: {device}, dtype: {dtype}, {raw_model.get_num_params() / 1e6:.2f}M parameters, "
          f"batch {batch_size} x {block_size} x {gradient_accumulation_steps} micro-steps"
          f"{', float32 matmuls on oneDNN' if onednn else ''}")


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
        optimizer_step(model, optimizer, scaler, grad_clip)
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
        mfu_str = f"{mfu * 100:.2f}% of {peak / 1e12:.3g} TFLOP/s ({peak_source})" if mfu is not None else \
            "n/a (peak unknown for this GPU: set --peak_flops=<FLOP/s>)"
        print(f"time per iteration: {dt * 1000:.2f}ms, tokens/s: {tokens / dt:,.0f}, MFU: {mfu_str}")
