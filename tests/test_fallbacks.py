"""
The private torch APIs behind the speed paths (nanogpt/quantize.py: oneDNN's packed Linear, the int8
weight-only kernel, Inductor's compile of the int8 decoding kernel), each made unavailable as a torch
release that dropped or changed it would: the public fallback computes the same logits, and train.py
and sample.py (every weight_dtype) still run, with at most one warning line.
Run: python -m pytest tests/test_fallbacks.py
"""
import copy

import pytest
import torch

from model import GPT, GPTConfig
from nanogpt import quantize
from conftest import TINY, iter_losses, run
from nanogpt.loading import reduce_weights

# run a script with private torch APIs gone: python no_private.py <api,api,...> script.py args
NO_PRIVATE = '''
import runpy, sys
import torch
import torch._inductor

def gone(*args, **kwargs):
    raise RuntimeError("not in this torch")

for api in sys.argv[1].split(','):
    if api == 'mkldnn':  # changed: present, but failing
        for op in ('_reorder_linear_weight', '_linear_pointwise', '_is_mkldnn_bf16_supported'):
            setattr(torch.ops.mkldnn, op, gone)
    elif api == 'int8pack':  # changed (Inductor refers to it, so it stays)
        torch._weight_int8pack_mm = gone
    elif api == 'inductor':
        torch._inductor.compile = gone
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''
APIS = ('mkldnn', 'int8pack', 'inductor')


@pytest.fixture
def without(monkeypatch):
    """without(api): that private API fails from now on in this process, and quantize chooses again."""
    def gone(*args, **kwargs):
        raise RuntimeError("not in this torch")

    def remove(api):
        if api == 'mkldnn':
            for op in ('_reorder_linear_weight', '_linear_pointwise', '_is_mkldnn_bf16_supported'):
                monkeypatch.setattr(torch.ops.mkldnn, op, gone, raising=False)
        elif api == 'int8pack':
            monkeypatch.setattr(torch, '_weight_int8pack_mm', gone)
        else:
            from torch import _inductor
            monkeypatch.setattr(_inductor, 'compile', gone)
        clear()

    def clear():
        for cached in (quantize.onednn_packing, quantize._int8_mm_private_works, quantize.matvec_kernel):
            cached.cache_clear()
        quantize._warned = False
    yield remove
    clear()


def logits(weight_dtype):
    """(float32 logits, reduced-and-packed logits over many positions, and at one position) of a small GPT."""
    torch.manual_seed(0)
    ref = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=100, bias=True)).eval()
    x = torch.randint(0, 100, (4, 32))
    with torch.no_grad():
        model = ref if weight_dtype == 'float32' else reduce_weights(copy.deepcopy(ref), weight_dtype)
        packed = quantize.for_inference(copy.deepcopy(model), torch.device('cpu'), 'float32')
        return ref(x, x)[0], packed(x, x)[0], packed(x[:1, :1])[0]


@pytest.mark.parametrize('api,weight_dtype', [('mkldnn', 'float32'), ('mkldnn', 'bfloat16'), ('int8pack', 'int8'),
                                              ('inductor', 'int8')])
def test_each_fallback_gives_the_fast_paths_logits(without, capfd, api, weight_dtype):
    fast = logits(weight_dtype)
    capfd.readouterr()
    without(api)
    slow = logits(weight_dtype)
    warnings = capfd.readouterr().err.strip().splitlines()
    tolerance = 1e-5 if weight_dtype == 'float32' else 0.01  # bfloat16 outputs round to ~3 digits
    for got, want in zip(slow, fast):
        assert (got - want).abs().max() < tolerance
    assert torch.equal(slow[1].argmax(-1), fast[1].argmax(-1))
    assert len(warnings) <= 1 and all(w.startswith('warning: ') for w in warnings), warnings


def test_scripts_run_without_the_private_apis(trained_copy):
    """
    Each API gone, sampling in the weight dtypes that use it (one warning line, naming the
    fallback), then all of them (still one line): sampling in every weight_dtype, and
    training (with Muon) to the same losses.
    """
    trained = trained_copy
    with open(f'{trained}/no_private.py', 'w') as f:
        f.write(NO_PRIVATE)
    args = ['--out_dir=out', '--device=cpu', '--dtype=float32', '--num_samples=1', '--max_new_tokens=12',
            '--temperature=0', '--start=First Citizen']
    users = {'mkldnn': ('float32', 'bfloat16'), 'int8pack': ('int8',), 'inductor': ('int8',),
             ','.join(APIS): ('float32', 'bfloat16', 'int8')}
    for apis, weight_dtypes in users.items():
        for weight_dtype in weight_dtypes:
            p = run(trained, 'no_private.py', apis, 'sample.py', *args, f'--weight_dtype={weight_dtype}', check=False)
            assert p.returncode == 0, p.stderr
            assert p.stdout.count('---------------') == 1 and 'First Citizen' in p.stdout
            lines = p.stderr.strip().splitlines()
            assert all(line.startswith('warning: ') for line in lines), p.stderr
            assert len(lines) == 1, p.stderr  # whatever is gone, one line
    train = [*TINY, '--max_iters=4', '--eval_interval=4', '--optimizer=muon', '--dtype=float32']
    plain = run(trained, 'train.py', *train, '--out_dir=plain').stdout
    p = run(trained, 'no_private.py', ','.join(APIS), 'train.py', *train, '--out_dir=bare')
    assert iter_losses(p.stdout) == iter_losses(plain) and len(iter_losses(plain)) == 5

