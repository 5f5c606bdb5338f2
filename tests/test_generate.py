"""
Generation: the KV cache gives exactly the tokens of the recompute-everything algorithm
(nanoGPT's), past block_size too, and per-step logits within 1e-5; transformers' greedy
decoding on the same weights; temperature/top_k/top_p/seed/stop-token behaviour; a batch
equal to its samples drawn one by one; the oneDNN inference path; sample.py streaming and
batching; bench.py's generate mode. Run: python -m pytest tests/test_generate.py
"""
import re

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from model import GPT, GPTConfig
from nanogpt.quantize import for_inference
from conftest import run
from nanogpt.generate import KVCache, sample_next


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=3, n_head=4, n_embd=64, block_size=16, vocab_size=50)).eval()


def recompute(model, idx, n):
    """nanoGPT's generate, greedy: the whole (cropped) context every step."""
    for _ in range(n):
        logits, _ = model(idx[:, -model.config.block_size:])
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


@pytest.mark.parametrize('prompt_len', [1, 5, 16])
def test_cache_equals_recompute_past_block_size(model, prompt_len):
    x = torch.randint(0, 50, (3, prompt_len))
    expected = recompute(model, x, 40)  # 40 new tokens: far past block_size 16
    assert torch.equal(model.generate(x, 40, temperature=0), expected)
    assert torch.equal(model.generate(x, 40, temperature=0, use_cache=False), expected)


def test_cached_logits_match_full_forward(model):
    seq = torch.randint(0, 50, (2, 16))
    full, _ = model(seq, seq)  # logits at every position
    cache = KVCache(model.config.n_layer, 16)
    logits, _ = model(seq[:, :5], cache=cache)  # prefill
    steps = [logits[:, -1]]
    for t in range(5, 16):
        logits, _ = model(seq[:, t:t + 1], cache=cache)
        steps.append(logits[:, -1])
    assert cache.pos == 16
    assert (torch.stack(steps, 1) - full[:, 4:]).abs().max().item() < 1e-5
    # a chunk after the prefill (T > 1 with a past) uses the offset causal mask
    cache = KVCache(model.config.n_layer, 16)
    model(seq[:, :6], cache=cache)
    chunk, _ = model(seq[:, 6:10], cache=cache)
    assert (chunk[:, -1] - full[:, 9]).abs().max().item() < 1e-5


def test_greedy_equals_transformers(tmp_path):
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=97,
                                    bos_token_id=None, eos_token_id=None)).eval()
    hf.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(str(tmp_path)).eval()
    x = torch.randint(0, 97, (2, 3))
    ref = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=40, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(x, 40, temperature=0), ref)
    assert torch.equal(ours.generate(x, 40, temperature=0, use_cache=False), ref)


def test_sampling_controls_are_seeded_and_bounded(model):
    x = torch.randint(0, 50, (4, 3))
    greedy = model.generate(x, 20, temperature=0)
    assert torch.equal(model.generate(x, 20, top_k=1, seeds=[1, 2, 3, 4]), greedy)
    assert torch.equal(model.generate(x, 20, top_p=1e-6, seeds=[1, 2, 3, 4]), greedy)
    a = model.generate(x, 20, temperature=1.5, top_k=10, top_p=0.9, seeds=[7, 8, 9, 10])
    b = model.generate(x, 20, temperature=1.5, top_k=10, top_p=0.9, seeds=[7, 8, 9, 10])
    c = model.generate(x, 20, temperature=1.5, top_k=10, top_p=0.9, seeds=[17, 18, 19, 20])
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    draws = lambda p: torch.cat([sample_next(logits, top_p=p, generators=[torch.Generator().manual_seed(s)])
                                 for s in range(300)])
    assert set(draws(0.7).flatten().tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.7; 2 and 3 are cut
    assert set(draws(0.85).flatten().tolist()) == {0, 1, 2}


def test_batch_equals_one_by_one(model):
    x = torch.randint(0, 50, (1, 4))
    batch = model.generate(x.repeat(3, 1), 25, seeds=[5, 6, 7])
    for i in range(3):
        assert torch.equal(batch[i:i + 1], model.generate(x, 25, seeds=[5 + i]))


def test_stop_token_ends_each_row_and_the_batch(model):
    x = torch.randint(0, 50, (1, 4))
    free = model.generate(x, 20, temperature=0)
    stop = free[0, 4 + 5].item()  # the sixth new token
    first = (free[0, 4:] == stop).nonzero()[0].item()  # it may come earlier too
    out = model.generate(x, 20, temperature=0, stop_token=stop)
    assert out.size(1) == 4 + first + 1 and out[0, -1] == stop
    # a batch runs until every row has stopped
    xs = torch.cat([x, torch.randint(0, 50, (1, 4))])
    free, two = model.generate(xs, 20, temperature=0), model.generate(xs, 20, temperature=0, stop_token=stop)
    hits = [(row[4:] == stop).nonzero() for row in free]
    expected = 4 + max(h[0].item() for h in hits) + 1 if all(len(h) for h in hits) else 24
    assert two.size(1) == expected and torch.equal(two, free[:, :expected])


def test_onednn_inference_path_is_exact_enough(model):
    x = torch.randint(0, 50, (2, 16))
    ref, _ = model(x, x)
    greedy = model.generate(x[:, :3], 30, temperature=0)
    fast = for_inference(model, torch.device('cpu'), 'float32')
    with torch.no_grad():
        assert (fast(x, x)[0] - ref).abs().max().item() < 1e-5
    assert torch.equal(fast.generate(x[:, :3], 30, temperature=0), greedy)


def test_sample_streams_and_batches(trained):
    args = ['--out_dir=out', '--max_new_tokens=40', '--start=First', '--temperature=1.0']
    one = run(trained, 'sample.py', *args, '--num_samples=1').stdout
    three = run(trained, 'sample.py', *args, '--num_samples=3').stdout
    nocache = run(trained, 'sample.py', *args, '--num_samples=1', '--kv_cache=False', '--stream=False').stdout
    first_sample = lambda out: out.split('---------------')[0].split('\n', 1)[1]
    assert first_sample(one) == first_sample(three) == first_sample(nocache)  # sample i uses seed + i
    assert three.count('---------------') == 3
    greedy = [run(trained, 'sample.py', *args, '--temperature=0', f'--kv_cache={c}').stdout for c in (True, False)]
    assert greedy[0] == greedy[1]


def test_bench_generate_mode_prints_each_method(repo):
    """Each weight dtype, no cache and transformers side by side, their ratios, and the quality of each."""
    out = run(repo, 'bench.py', '--mode=generate', '--device=cpu', '--n_layer=2', '--n_head=2', '--n_embd=32',
              '--block_size=32', '--max_new_tokens=6', '--num_samples=2', '--dataset=tiny_char',
              '--quality_positions=64', '--repeats=2').stdout
    for method in ('ours, float32, KV cache', 'ours, bfloat16, KV cache', 'ours, int8, KV cache',
                   'ours, float32, no cache', 'transformers generate, float32'):
        assert re.search(rf'^\s+2 {method}\s+[\d.]+\s+[\d.]+ms\s+\d+MB\s+[\d.]+$', out, re.M), out
    assert re.search(r'against float32: bfloat16 [\d.]+x, int8 [\d.]+x; against transformers: float32 [\d.]+x, '
                     r'bfloat16 [\d.]+x, int8 [\d.]+x; KV cache against none: [\d.]+x', out), out
    assert 'on 64 positions of data/tiny_char/val.bin' in out
    for weight_dtype in ('bfloat16', 'int8'):
        m = re.search(rf'^{weight_dtype}\s+([\d.]+)\s+([+-][\d.]+)\s+([\d.]+)%$', out, re.M)
        assert m and abs(float(m.group(2))) < 0.01 and float(m.group(3)) > 90, out
