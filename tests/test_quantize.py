"""
Weight-only bfloat16 and int8 for sampling (quantize.py, sample.py --weight_dtype): the logits
stay within a few thousandths of float32's, also with a large offset shared by every logit (GPT-2's
head has one; the head's mean row is kept apart for it), greedy tokens agree, sample.py samples
with each, and a bad value is one line. Run: python -m pytest tests/test_quantize.py
"""
import copy

import pytest
import torch

from conftest import run
from model import GPT, GPTConfig
from quantize import LowPrecisionLinear, reduce_weights


@pytest.mark.parametrize('weight_dtype', ['bfloat16', 'int8'])
def test_reduced_weights_keep_the_logits(weight_dtype):
    torch.manual_seed(0)
    ref = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=100, bias=True)).eval()
    with torch.no_grad():
        ref.lm_head.weight += torch.randn(64) * 0.5  # the same row in every token's weights: logits ~32 +- 0.5
    x = torch.randint(0, 100, (4, 32))
    with torch.no_grad():
        logits = ref(x, x)[0]
        model = reduce_weights(copy.deepcopy(ref), weight_dtype)
        reduced = model(x, x)[0]
    linears = [m for m in model.modules() if isinstance(m, LowPrecisionLinear)]
    assert len(linears) == 2 * 4 + 1  # every Linear of the blocks and the head
    assert linears[0].weight.dtype == {'bfloat16': torch.bfloat16, 'int8': torch.int8}[weight_dtype]
    # without the head's mean row apart the error is ~0.18 here: bfloat16 output rounding of ~32
    assert (reduced - logits).abs().max() < 0.01
    assert torch.equal(reduced.argmax(-1), logits.argmax(-1))
    with torch.no_grad():
        greedy = model.generate(x[:1, :4], 20, temperature=0)
    assert torch.equal(greedy, ref.generate(x[:1, :4], 20, temperature=0))


def test_sample_with_each_weight_dtype_and_a_bad_one(trained):
    for weight_dtype in ('bfloat16', 'int8'):
        out = run(trained, 'sample.py', '--out_dir=out', f'--weight_dtype={weight_dtype}', '--num_samples=2',
                  '--max_new_tokens=20', '--device=cpu').stdout
        assert out.count('---------------') == 2
    p = run(trained, 'sample.py', '--out_dir=out', '--weight_dtype=int4', '--device=cpu', check=False)
    assert p.returncode == 1 and p.stderr.strip() == "error: weight_dtype must be one of float32, bfloat16, int8; got 'int4'"
