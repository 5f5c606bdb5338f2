"""
The compiled decoding step (nanogpt/generate.py's CompiledDecoding over a StaticKVCache): its greedy tokens equal
the eager path's (for_inference's model, the KV cache of GPT.forward) for float32, bfloat16 and int8 weights
(int8 through the hand-written kernel where this CPU has it, bfloat16 through Inductor's loops), with rotary
positions in float32, whose cache grows and then wraps around the window; for_sampling races it against the eager
path only where decoding is long enough to pay for a compilation, and says which it took. The hand-written
kernels (nanogpt/cpu_kernels.py) compute their products, tails of rows included, or are not offered.
Run: python -m pytest tests/test_compiled_decoding.py
"""
import copy
import os

import pytest
import torch

from conftest import run
from model import GPT, GPTConfig
from nanogpt import cpu_kernels
from nanogpt.generate import CompiledDecoding, generate
from nanogpt.loading import reduce_weights
from nanogpt.quantize import LowPrecisionLinear, decoding_kernels, for_inference, for_sampling

CPU = torch.device('cpu')
ROTARY = {'pos_encoding': 'rotary'}  # a model option that changes the step (positions turn queries and keys)


def distinct_model(**options):
    """A small model whose greedy choices are far apart (large embeddings), so that no rounding ties them."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64, **options)).eval()
    with torch.no_grad():
        model.transformer.wte.weight.mul_(40)
    return model


@pytest.mark.parametrize('weight_dtype,options,new', [('float32', ROTARY, 30), ('bfloat16', {}, 12), ('int8', {}, 12)],
                         ids=['float32-rotary', 'bfloat16', 'int8'])
def test_compiled_step_gives_the_eager_tokens(weight_dtype, options, new):
    model = distinct_model(**options)
    if weight_dtype != 'float32':
        model = reduce_weights(model, weight_dtype)
    x = torch.randint(64, (1, 4), generator=torch.Generator().manual_seed(1))
    eager = for_inference(copy.deepcopy(model), CPU, 'float32', batch_size=1, probe=False)
    if weight_dtype == 'int8' and cpu_kernels.available('int8'):  # the hand-written kernel, eager and compiled
        for layer in [*eager.modules(), *model.modules()]:
            if isinstance(layer, LowPrecisionLinear):
                layer.decoding = 'hand-written q8'
    want = generate(eager, x, new, temperature=0)
    decoder = CompiledDecoding(model)
    sizes = []
    step = decoder.next
    decoder.next = lambda token, cache, position: (sizes.append(cache.max_len), step(token, cache, position))[1]
    if options:  # rotary: 8 slots, grown to the window's 16, then around it (30 new tokens after 4)
        decoder.SLOTS = 8
    got = generate(model, x, new, temperature=0, decoder=decoder)
    assert torch.equal(got, want)
    assert len(sizes) == new - 1  # every step after the prompt went through the compiled step
    if options:
        assert sorted(set(sizes)) == [8, 16]
        # a token with other strides than the steps' (a view, not argmax's) takes the same program
        with torch.no_grad():
            steps = [decoder.next(t, decoder.start(x)[1], 4)[0] for t in (x[:, :1], x[:, [0]])]
        assert torch.equal(*steps)


def test_for_sampling_races_only_long_decoding():
    lines = []
    model, decoder = for_sampling(distinct_model(**ROTARY), CPU, 'float32', 1, tokens=1, log=lines.append)
    assert decoder is None and lines == []  # one token: not worth compiling
    model, decoder = for_sampling(distinct_model(**ROTARY), CPU, 'float32', 8, tokens=10 ** 9, log=lines.append)
    assert decoder is None and lines == []  # batches decode eagerly
    model, decoder = for_sampling(distinct_model(**ROTARY), CPU, 'float32', 1, tokens=10 ** 9, log=lines.append)
    assert len(lines) == 1 and lines[0].startswith('decoding step: ')
    assert (decoder is not None) == lines[0].startswith('decoding step: compiled step')
    x = torch.randint(64, (1, 4), generator=torch.Generator().manual_seed(2))
    want = generate(for_inference(distinct_model(**ROTARY), CPU, 'float32', probe=False), x, 10, temperature=0)
    assert torch.equal(generate(model, x, 10, temperature=0, decoder=decoder), want)


@pytest.mark.parametrize('weight_dtype', ['int8', 'bfloat16'])
def test_hand_written_kernels_compute_their_products(weight_dtype):
    g = torch.Generator().manual_seed(3)
    name = 'hand-written q8' if weight_dtype == 'int8' else 'hand-written bf16'
    if not cpu_kernels.available(weight_dtype):  # no compiler or no such instructions here: not a candidate
        assert name not in decoding_kernels(weight_dtype)
        return
    assert name in decoding_kernels(weight_dtype)
    for out_features, in_features in ((7, 64), (50257, 32), (8, 3072)):  # tails of 1-3 rows, long rows
        x = torch.randn(1, in_features, generator=g)
        if weight_dtype == 'int8':
            w = torch.randint(-127, 128, (out_features, in_features), dtype=torch.int8, generator=g)
            s = torch.rand(out_features, generator=g).bfloat16()
            blocks = x.double().view(-1, 32)  # the activations as the kernel rounds them: blocks of 32, a scale each
            d = blocks.abs().amax(dim=1, keepdim=True) / 127
            q = (blocks / d).round() * d
            want = (q.view(1, -1) @ w.double().t()) * s.double()
            got = cpu_kernels.q8_matvec(x, w, s)
        else:
            w = torch.randn(out_features, in_features, generator=g).bfloat16()
            want = x.bfloat16().double() @ w.double().t()
            got = cpu_kernels.bf16_matvec(x, w)
        assert got.shape == (1, out_features)
        assert torch.allclose(got.double(), want, rtol=1e-4, atol=1e-3 * want.abs().max().item())


def test_without_a_compiler_the_hand_written_kernels_are_not_offered(tmp_path):
    code = ("from nanogpt import cpu_kernels; from nanogpt.quantize import decoding_kernels; "
            "assert not cpu_kernels.available('int8') and not cpu_kernels.available('bfloat16'); "
            "assert not any(k.startswith('hand-written') for w in ('int8', 'bfloat16') for k in decoding_kernels(w))")
    run(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '-c', code,
        env={'CC': str(tmp_path / 'no-such-compiler'), 'NANOGPT_CACHE_DIR': str(tmp_path / 'cache')})
