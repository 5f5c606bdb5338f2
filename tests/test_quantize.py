"""
Weight-only bfloat16 and int8 for sampling (nanogpt/quantize.py, sample.py --weight_dtype): the logits
stay within a few thousandths of float32's on every path (many positions, one, packed), also with a
large offset shared by every logit (GPT-2's head has one; the head's mean row is kept apart for
it), greedy tokens agree, the int8 decoding kernel compiles and is exact, sample.py samples with
each, and a bad value is one line. (Loading without the float32 weights: tests/test_gpt2.py.)
Run: python -m pytest tests/test_quantize.py
"""
import copy

import pytest
import torch

from model import GPT, GPTConfig
from conftest import char_samples_ok, run
from nanogpt.loading import reduce_weights
from nanogpt.quantize import LowPrecisionLinear, _matvec, for_inference, matvec_kernel


@pytest.mark.parametrize('weight_dtype', ['bfloat16', 'int8'])
def test_reduced_weights_keep_the_logits(weight_dtype):
    """
    Each path: many positions at once (int8: torch._weight_int8pack_mm), one position (int8: the
    compiled matvec of decoding) and, as sample.py runs it, packed for inference (bfloat16: oneDNN).
    """
    torch.manual_seed(0)
    ref = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=100, bias=True)).eval()
    with torch.no_grad():
        ref.lm_head.weight += torch.randn(64) * 0.5  # the same row in every token's weights: logits ~32 +- 0.5
    x = torch.randint(0, 100, (4, 32))
    with torch.no_grad():
        logits, one = ref(x, x)[0], ref(x[:1, :1])[0]
        model = reduce_weights(copy.deepcopy(ref), weight_dtype)
        reduced = model(x, x)[0]
        packed = for_inference(copy.deepcopy(model), torch.device('cpu'), 'float32')
        reduced_packed, reduced_one = packed(x, x)[0], packed(x[:1, :1])[0]
    linears = [m for m in model.modules() if isinstance(m, LowPrecisionLinear)]
    assert len(linears) == 2 * 4 + 1  # every Linear of the blocks and the head
    assert linears[0].weight.dtype == {'bfloat16': torch.bfloat16, 'int8': torch.int8}[weight_dtype]
    # without the head's mean row apart the error is ~0.18 here: bfloat16 output rounding of ~32
    for got, want in ((reduced, logits), (reduced_packed, logits), (reduced_one, one)):
        assert (got - want).abs().max() < 0.01
        assert torch.equal(got.argmax(-1), want.argmax(-1))
    with torch.no_grad():
        greedy = packed.generate(x[:1, :4], 20, temperature=0)
    assert torch.equal(greedy, ref.generate(x[:1, :4], 20, temperature=0))


def test_int8_decoding_kernel_is_exact_where_it_builds():
    """
    The speed path of int8 decoding, built for this machine's CPU by Inductor (C++ for its ISA)
    where there is a compiler, for each shape it is asked for (odd sizes: the loops' remainders),
    computes what its eager expression does; without a compiler it is None and the layer falls
    back (tests/test_fallbacks.py checks that path's logits).
    """
    torch.manual_seed(0)
    for out_features, in_features in ((96, 64), (50257, 48), (7, 13), (64, 4096)):
        matvec = matvec_kernel(out_features, in_features)
        x = torch.randn(1, in_features)
        w = torch.randint(-127, 128, (out_features, in_features), dtype=torch.int8)
        s = torch.rand(out_features).to(torch.bfloat16)
        want = (x.double() @ w.double().t()) * s.double()
        assert matvec is not None  # a CPU with a C++ compiler (every machine here) builds it
        assert torch.allclose(matvec(x, w, s).double(), want, rtol=1e-5, atol=1e-3)
        assert torch.allclose(_matvec(x, w, s).double(), want, rtol=1e-5, atol=1e-3)


def test_sample_with_each_weight_dtype_and_a_bad_one(trained):
    for weight_dtype in ('bfloat16', 'int8'):
        out = run(trained, 'sample.py', '--out_dir=out', f'--weight_dtype={weight_dtype}', '--num_samples=2',
                  '--max_new_tokens=20', '--device=cpu').stdout
        assert char_samples_ok(out, 2, 20), out
    p = run(trained, 'sample.py', '--out_dir=out', '--weight_dtype=int4', '--device=cpu', check=False)
    assert p.returncode == 1
    assert p.stderr.strip() == "error: weight_dtype must be one of float32, bfloat16, int8; got 'int4'"
