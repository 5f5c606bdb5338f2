"""
The fast paths compute the same thing as the plain ones: spelled-out attention (a route nanogpt/autotune.py
may choose) equals scaled_dot_product_attention (training, and generation with a KV cache), and
training on oneDNN's float32 matmuls, where they are exact, tracks MKL's.
Speed itself is measured by bench.py, never asserted here. Run: python -m pytest tests/test_speed.py
"""
import pytest
import torch

from model import GPT, GPTConfig
from nanogpt import autotune
from nanogpt.generate import KVCache


def _loss_and_grads(model, x, y):
    model.zero_grad()
    _, loss = model(x, y)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_spelled_out_attention_equals_sdpa():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=23))
    x, y = torch.randint(0, 23, (2, 3, 16))
    model.config.spelled_out_keys = 0
    loss_sdpa, grads_sdpa = _loss_and_grads(model, x, y)
    model.config.spelled_out_keys = 16
    loss_ours, grads_ours = _loss_and_grads(model, x, y)
    assert loss_ours == pytest.approx(loss_sdpa, abs=1e-6)
    for n in grads_sdpa:
        assert torch.allclose(grads_ours[n], grads_sdpa[n], atol=1e-6), n


def test_spelled_out_attention_with_kv_cache():
    """A prompt, then a chunk of 3 (offset causal mask), then one token at a time (no mask)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=23)).eval()
    x = torch.randint(0, 23, (2, 12))
    with torch.no_grad():
        full, _ = model(x, x)  # logits at every position, no cache: SDPA
    model.config.spelled_out_keys = 16
    cache = KVCache(n_layer=2, max_len=16)
    with torch.no_grad():
        for start, end in ((0, 5), (5, 8), (8, 9), (9, 10), (10, 12)):
            logits, _ = model(x[:, start:end], cache=cache)
            assert torch.allclose(logits[:, -1], full[:, end - 1], atol=1e-5), (start, end)
    assert cache.pos == 12


def test_training_on_the_fast_path_tracks_the_plain_one(restore_matmul_precision):
    """Optimizer steps on oneDNN's matmuls (where this CPU takes that route) with spelled-out attention
    (on every CPU) give the losses of MKL's matmuls with scaled_dot_product_attention."""
    def losses(fast):
        torch.set_float32_matmul_precision('highest')
        if fast and autotune.onednn_float32_exact():
            torch.set_float32_matmul_precision('medium')
        torch.manual_seed(0)
        model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=50))
        model.config.spelled_out_keys = 32 if fast else 0
        opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99))
        out = []
        for x, y in torch.randint(0, 50, (6, 2, 8, 32)):
            _, loss = model(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            out.append(loss.item())
        return out

    assert losses(fast=True) == pytest.approx(losses(fast=False), abs=1e-5)


def test_a_route_spells_out_attention_over_its_keys_only(restore_matmul_precision, monkeypatch):
    """A route with spelled-out attention (up to 128 keys) skips SDPA over short contexts, calls it over long ones."""
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=256, vocab_size=11)).eval()
    autotune.Route('float32', 'default', 128).apply(model)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    counted = lambda *a, **k: calls.append(1) or sdpa(*a, **k)
    monkeypatch.setattr(torch.nn.functional, 'scaled_dot_product_attention', counted)
    with torch.no_grad():
        model(torch.zeros(1, 64, dtype=torch.long))
        assert not calls  # short: spelled out
        model(torch.zeros(1, 256, dtype=torch.long))
        assert len(calls) == 2  # long (one call per layer): SDPA, which spares the (T, T) matrices
