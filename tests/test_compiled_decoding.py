"""
The compiled decoding step (nanogpt/generate.py's CompiledDecoding over a StaticKVCache): its greedy tokens equal
the eager path's (for_inference's model, the KV cache of GPT.forward) for float32, bfloat16 and int8 weights,
with rotary positions in float32, whose cache grows and then wraps around the window; for_sampling races it against the
eager path only where decoding is long enough to pay for a compilation, and says which it took.
Run: python -m pytest tests/test_compiled_decoding.py
"""
import copy

import pytest
import torch

from model import GPT, GPTConfig
from nanogpt.generate import CompiledDecoding, generate
from nanogpt.loading import reduce_weights
from nanogpt.quantize import for_inference, for_sampling

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
