"""
bench.py's generate mode: tokens/s and the time to the first token of sampling in each weight dtype, with and
without the KV cache and beside transformers' generate, against the memory-bandwidth limit; then how far each
reduced model's next-token predictions are from the float32 one's.
"""
import functools
import gc
import json
import math
import os
import subprocess
import sys

import numpy as np
import torch

from model import GPT
from nanogpt.device import PeakMemory, stream_bandwidth
from nanogpt.generate import generate, generation_speed
from nanogpt.loading import load_model
from nanogpt.quantize import for_sampling, weight_bytes
from nanogpt.tasks import token_losses
from nanogpt.util import UsageError


def generation_source(init_from, out_dir, trust, model_args, seed, tmp):
    """
    (source for load_model, a Hugging Face directory for the transformers row or None, what it is): random
    GPT-2-shaped weights of model_args written to tmp for init_from='scratch', else the checkpoint ('resume'),
    GPT-2 name or local directory, exported to tmp for transformers where it can be.
    """
    if init_from == 'scratch':  # made in a process of its own, so that this one's memory starts clean for the rows
        subprocess.run([sys.executable, '-c', 'import sys, json, torch; from model import GPT, GPTConfig; '
                        f'torch.manual_seed({seed}); '
                        'GPT(GPTConfig(**json.loads(sys.argv[1]))).save_pretrained(sys.argv[2])',
                        json.dumps({**model_args, 'vocab_size': 50257}), tmp], check=True)
        return tmp, tmp, 'random GPT-2-shaped weights'
    if init_from == 'resume':
        model, _ = load_model('resume', out_dir, trust)
        try:
            model.save_pretrained(tmp, vocab_size=model.config.vocab_size)
            return 'resume', tmp, out_dir
        except ValueError as e:
            print(f"no transformers row: {e}")
            return 'resume', None, out_dir
    if os.path.isdir(init_from):
        return init_from, init_from, init_from
    from nanogpt import hf_gpt2
    try:
        return init_from, hf_gpt2.hub_snapshot(init_from), init_from
    except ValueError as e:  # not a GPT-2 name, or no network: as load_model says it
        raise UsageError(str(e))


def speed_table(load, hf_dir, about, batch_sizes, weight_dtypes, n, repeats, no_cache, seed, device, dtype, ctx):
    """
    The table: for each batch size, our model in each weight dtype (load(weight_dtype) gives it), float32 without
    the KV cache (no_cache), and transformers' generate on hf_dir's model, each sampling n tokens after the same
    4-token prompts, the fastest of repeats runs; then their ratios.
    """
    bandwidth = stream_bandwidth(device)
    print(f"device: {device}, dtype: {dtype}, {about}, {n} new tokens from a 4-token prompt, sampling at "
          f"temperature 1 over the whole vocabulary; each row the fastest of {repeats} runs (the uncached row: 1)")
    print(f"memory bandwidth: {bandwidth / 1e9:.1f} GB/s (streaming a 1 GiB tensor); 'limit' is that over the bytes "
          f"of weights a step reads, times the batch")
    if device.type == 'cpu':
        print("peak mem: the most anonymous memory (RssAnon: not the memory-mapped weights file) the process held "
              "while the row loaded and sampled (with what earlier rows left: run one weight_dtype for its own)")
    print(f"{'batch':>5} {'method':<30} {'tokens/s':>9} {'first token':>12} {'peak mem':>9} {'limit':>9}")

    def row(name, B, load, run, runs):
        """Load a model, warm up, time run(model, x, k) runs times (k tokens after each prompt of x): the most
        tokens/s and the least time to the first token; memory counts the loading too."""
        gc.collect()
        if device.type == 'cuda':
            torch.cuda.empty_cache()
        with PeakMemory(device, interval=0.01) as mem, torch.no_grad(), ctx:  # (sampling more often slows it)
            model = load()
            limit = B * bandwidth / weight_bytes(model)
            if isinstance(model, GPT):
                # the route of a long sampling, whatever n: the speed of decoding, not of compiling
                model, decoder = for_sampling(model, device, dtype, B, tokens=math.inf)
                if decoder is not None:
                    run = functools.partial(run, decoder=decoder)
            x = torch.randint(model.config.vocab_size, (B, 4), generator=torch.Generator().manual_seed(seed))
            x = x.to(device)
            run(model, x, 4)  # warm-up
            timings = [generation_speed(lambda x, k: run(model, x, k), x, n, device) for _ in range(runs)]
            tps, first = max(t for t, _ in timings), min(f for _, f in timings)
        peak = f"{mem.peak / 2**20:>7.0f}MB" if mem.peak is not None else f"{'n/a':>9}"
        print(f"{B:>5} {name:<30} {tps:>9.1f} {first * 1000:>10.1f}ms {peak} {limit:>9.1f}", flush=True)
        return tps

    if hf_dir:
        with open(os.path.join(hf_dir, 'config.json')) as f:
            positions = json.load(f)['n_positions']
    for B in batch_sizes:
        results = {wd: row(f"ours, {wd}, KV cache", B, lambda: load(wd), generate, repeats) for wd in weight_dtypes}
        if no_cache:  # (slow: once)
            results['no cache'] = row("ours, float32, no cache", B, lambda: load('float32'),
                                      lambda m, x, k: generate(m, x, k, use_cache=False), 1)
        if hf_dir and 4 + n > positions:
            print(f"{B:>5} no transformers row: its GPT-2 cannot generate past its {positions} positions")
        elif hf_dir:
            from transformers import GPT2LMHeadModel
            from transformers.utils import logging as hf_logging
            hf_logging.disable_progress_bar()
            results['transformers'] = row(  # sampling over the whole vocabulary, as ours does
                "transformers generate, float32", B, lambda: GPT2LMHeadModel.from_pretrained(hf_dir).to(device).eval(),
                lambda hf, x, k: hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=k, min_new_tokens=k,
                                             do_sample=True, top_k=0, pad_token_id=0), repeats)
        ratios = lambda base: ', '.join(f"{w} {results[w] / results[base]:.2f}x" for w in weight_dtypes if w != base)
        summary = [f"against float32: {ratios('float32')}"] if 'float32' in results and len(weight_dtypes) > 1 else []
        if 'transformers' in results:
            summary.append(f"against transformers: {ratios('transformers')}")
        if 'no cache' in results and 'float32' in results:
            summary.append(f"KV cache against none: {results['float32'] / results['no cache']:.2f}x")
        print(f"{B:>5} " + '; '.join(summary))


def quality_table(load, weight_dtypes, val, token_dtype, positions, seed, device, ctx):
    """
    Each reduced model (load(weight_dtype)) against the float32 one, teacher-forced on the same sequences of
    val (a token file; None: random tokens) covering about positions: the loss on the next token, and how often
    the likeliest is the same.
    """
    results = {}
    for wd in ('float32', *[d for d in weight_dtypes if d != 'float32']):
        model = load(wd)
        if not results:  # sequences of the model's context, up to 1024, from the whole file
            T = min(model.config.block_size, 1024)
            data = np.memmap(val, dtype=token_dtype, mode='r') if val else \
                np.random.default_rng(seed).integers(0, model.config.vocab_size, 2**20)
            starts = np.linspace(0, len(data) - T - 2, max(1, -(-positions // T))).astype(np.int64)
        losses, argmax = [], []
        with torch.no_grad(), ctx:
            for i in starts:
                chunk = torch.from_numpy(data[i:i + T + 1].astype(np.int64))[None].to(device)
                loss, logits = token_losses(model, chunk, torch.ones_like(chunk))  # (1, T), (1, T, vocab)
                losses.append(loss)
                argmax.append(logits.argmax(-1))
        results[wd] = torch.cat(losses, 1).mean().item(), torch.cat(argmax, 1)
        del model
    loss32, argmax32 = results['float32']
    print(f"against float32 on {argmax32.numel():,} positions of {val or 'random tokens'} (teacher-forced):")
    print(f"{'weights':<9} {'loss':>8} {'change':>8} {'same argmax':>12}")
    for wd, (loss, argmax) in results.items():
        agree = (argmax == argmax32).float().mean().item()
        print(f"{wd:<9} {loss:>8.4f}" + (f" {loss - loss32:>+8.4f} {agree * 100:>11.2f}%" if wd != 'float32' else ''))
