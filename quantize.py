"""
Weight-only reduced precision for generation (sample.py's and eval.py's weight_dtype): the Linears
of the blocks and the output head keep their weights in bfloat16, or in int8 with one scale per
output row, so that each decoded token reads 2x or 4x fewer bytes of weights (at batch 1 decoding
waits on memory, not on arithmetic). Norms, attention and embeddings stay in the model's dtype.

build_model reduces each weight as it is read from a memory-mapped file, so loading never holds the
float32 weights: a GPT-2 XL (6.2 GB in float32) samples in int8 within ~2.3 GB.

int8 decoding (one position at a time, on CPUs) runs a matvec that Inductor (torch.compile's
compiler) builds for each shape, with float32 activations (int8_matvec says why). Everything else with int8 weights runs PyTorch's own
weight-only kernel, torch._weight_int8pack_mm (the one torchao's int8 weight-only configuration
calls; torchao is not a dependency, and torch.ao's dynamic quantization rounds the activations to
int8 too), with bfloat16 activations: on CPUs its float32 path is ~10x slower. Its output is rounded
to bfloat16 (~|y| * 2^-9), and GPT-2's logits share a large offset: so the head is stored with its
mean row taken out, and that row's product with the activation, the same for every token, is added
back in float32. bfloat16 weights take oneDNN's packed kernel on CPUs (pack), else F.linear.
"""
import functools
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import GPT

WEIGHT_DTYPES = ('float32', 'bfloat16', 'int8')


def weight_dtype_error(weight_dtype, device):
    """Why weight_dtype cannot be used on device, in one line; None if it can."""
    if weight_dtype not in WEIGHT_DTYPES:
        return f"weight_dtype must be one of {', '.join(WEIGHT_DTYPES)}; got {weight_dtype!r}"
    if weight_dtype == 'int8' and device.type not in ('cpu', 'cuda'):
        return f"weight_dtype='int8' runs on CPUs and CUDA GPUs, not on {device.type}: use 'bfloat16' there"
    return None


def reduce_tensor(w, weight_dtype, center=False, rows=256):
    """
    A float (out, in) weight as the buffers of a LowPrecisionLinear: {'weight', 'scales', 'mean'}.
    It is converted a block of rows at a time through one float32 buffer, in place, so that loading
    a model this way holds little besides the results (temporaries of many sizes would fragment
    the heap: ~100 MB more for GPT-2 124M).
    """
    out_features, in_features = w.shape
    mean = None
    if center:
        mean = torch.zeros(in_features, device=w.device)
        for r in range(0, out_features, rows):
            mean += w[r:r + rows].float().sum(dim=0)
        mean /= out_features
    int8 = weight_dtype == 'int8'
    out = torch.empty(w.shape, dtype=torch.int8 if int8 else torch.bfloat16, device=w.device)
    scales = torch.empty(out_features, dtype=torch.bfloat16, device=w.device) if int8 else None
    buf = torch.empty(min(rows, out_features), in_features, device=w.device)
    for r in range(0, out_features, rows):
        b = buf[:min(rows, out_features - r)]
        b.copy_(w[r:r + rows])
        if center:
            b.sub_(mean)
        if int8:
            lo, hi = torch.aminmax(b, dim=1)
            # the scales as the kernel will read them (bfloat16), so that rounding them costs nothing
            s = (torch.maximum(hi, -lo).clamp(min=1e-12) / 127).to(torch.bfloat16)
            scales[r:r + rows] = s
            b.div_(s.float()[:, None]).round_().clamp_(-127, 127)
        out[r:r + rows] = b
    return {'weight': out, 'scales': scales, 'mean': mean}


def _int8_matvec(x, weight, scales, bias=None, mean=None):
    """
    x (1, in) float32 times the int8 rows (out, in), each dot product in float32 and scaled, plus
    bias and the mean row's product (LowPrecisionLinear's): (1, out), all of it one compiled call.
    """
    y = (weight.to(torch.float32) * x).sum(dim=1) * scales.to(torch.float32)
    if mean is not None:
        y = y + (x[0] * mean).sum()  # the offset every logit shares
    if bias is not None:
        y = y + bias
    return y[None]


@functools.cache
def int8_matvec(out_features, in_features, bias=False, mean=False):
    """
    _int8_matvec compiled for one shape of weight, with or without bias and mean (once per process
    and shape, ~0.1 s from the disk cache), or None where it cannot be built (no C++ compiler): call
    it as (x, weight, scales[, bias][, mean]). Decoding one token at a time multiplies each weight
    matrix by one vector, and on CPUs torch._weight_int8pack_mm does that at ~11-15 GB/s: it reads
    four rows at a time and stalls on memory; the loop Inductor writes for this expression walks
    rows in order and streams them at ~21-26 GB/s (2-core Zen 4), with float32 activations (no
    rounding to bfloat16). Not for rows longer than 4096 (GPT-2 XL's MLP down projection, 6400):
    every form of the loop tried there streamed at 12-14 GB/s, against int8pack's ~19. The graph
    goes to Inductor without Dynamo (make_fx, then torch._inductor.compile), so a call checks no
    guards (the shapes are fixed): ~7 us a call instead of ~30, and a GPT-2 token makes ~50.
    Written here only because PyTorch has no such kernel.
    """
    import logging
    import warnings
    from torch.fx.experimental.proxy_tensor import make_fx
    logging.getLogger('torch.utils.cpp_extension').setLevel(logging.ERROR)  # "No CUDA runtime" on CPU-only machines
    with warnings.catch_warnings():  # torch 2.13's Inductor imports a module that uses a deprecated torch.jit API
        warnings.simplefilter('ignore', DeprecationWarning)
        import torch._inductor.compile_fx  # noqa: F401
    extras = ['bias'] * bias + ['mean'] * mean

    def matvec(x, weight, scales, *tensors):
        return _int8_matvec(x, weight, scales, **dict(zip(extras, tensors)))
    # traced with fake tensors: real ones would compute the float32 copy of the weight (321 MB for XL's head)
    example = [torch.empty(1, in_features), torch.empty(out_features, in_features, dtype=torch.int8),
               torch.empty(out_features, dtype=torch.bfloat16)]
    example += [torch.empty(out_features)] * bias + [torch.empty(in_features)] * mean
    try:
        return torch._inductor.compile(make_fx(matvec, tracing_mode='fake')(*example), example)
    except Exception as e:
        _warn_once(f"warning: int8 weights fall back to torch._weight_int8pack_mm ({type(e).__name__}: "
                   f"torch.compile could not build the decoding kernel)")
        return None


@functools.cache
def _warn_once(message):
    import sys
    print(message, file=sys.stderr)


class LowPrecisionLinear(nn.Module):
    """A Linear whose weight is bfloat16, or int8 times a per-row scale; center: the head's mean row apart."""

    def __init__(self, in_features, out_features, bias, weight_dtype, center=False):
        super().__init__()
        int8 = weight_dtype == 'int8'
        self.register_buffer('weight', torch.empty(out_features, in_features,
                                                   dtype=torch.int8 if int8 else torch.bfloat16))
        self.register_buffer('scales', torch.empty(out_features, dtype=torch.bfloat16) if int8 else None)
        self.register_buffer('mean', torch.empty(in_features) if center else None)
        self.register_buffer('bias', torch.empty(out_features) if bias else None)
        self.packed = False

    def pack(self, batch_size):
        """
        On CPUs, reorder a bfloat16 weight once into oneDNN's blocked layout (as common.PackedLinear
        does for float32): the product then streams it ~1.6x faster than F.linear. Inference only.
        """
        if self.scales is None and self.weight.device.type == 'cpu' and torch.ops.mkldnn._is_mkldnn_bf16_supported():
            self.weight = torch.ops.mkldnn._reorder_linear_weight(self.weight, batch_size)
            self.packed = True

    def forward(self, x):
        x2 = x.reshape(-1, x.size(-1))  # (B*T, in): the kernels take 2-D inputs
        if self.scales is not None and x2.size(0) == 1 and x2.device.type == 'cpu' and x2.size(1) <= 4096:
            # decoding: one compiled call does it all (see int8_matvec), built for contiguous tensors of
            # these shapes and checking nothing, so x is made contiguous (the buffers are)
            matvec = int8_matvec(*self.weight.shape, self.bias is not None, self.mean is not None)
            if matvec is not None:
                y = matvec(x2.float().contiguous(), self.weight, self.scales,
                           *[t for t in (self.bias, self.mean) if t is not None])
                return y.to(x.dtype).view(*x.shape[:-1], y.size(-1))
        if self.scales is not None:
            y = torch._weight_int8pack_mm(x2.to(torch.bfloat16), self.weight, self.scales)
        elif self.packed:
            y = torch.ops.mkldnn._linear_pointwise(x2.to(torch.bfloat16), self.weight, None, 'none', [], '')
        else:
            y = F.linear(x2.to(torch.bfloat16), self.weight)
        # float32 + bfloat16 gives float32 in one op
        if self.mean is not None:
            y = torch.add(x2 @ self.mean.to(x2.dtype)[:, None], y)  # (B*T, 1): the offset every logit shares
        if self.bias is not None:
            y = torch.add(self.bias, y)
        return y.to(x.dtype).view(*x.shape[:-1], y.size(-1))


def _shells(model, weight_dtype):
    """Swap the block Linears and the head for LowPrecisionLinears with empty buffers; {name: shell}."""
    shells = {}

    def swap(parent, name, prefix, center=False):
        linear = getattr(parent, name)
        shell = LowPrecisionLinear(linear.in_features, linear.out_features, linear.bias is not None,
                                   weight_dtype, center)
        setattr(parent, name, shell)
        shells[prefix + name] = shell
    for i, block in enumerate(model.transformer.h):
        for part in ('attn', 'mlp'):
            parent = getattr(block, part)
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    swap(parent, name, f'transformer.h.{i}.{part}.')
    # a tied head gets its own copy; wte stays float32 for the embedding lookup
    swap(model, 'lm_head', '', center=True)
    return shells


def reduce_weights(model, weight_dtype):
    """A copy of the model (eval mode, for generation only) with its block Linears and head in weight_dtype."""
    return build_model(model.config, model.state_dict().items(), weight_dtype).eval()


def build_model(config, weights, weight_dtype='float32'):
    """
    A GPT of config from weights, (name, tensor) pairs in its state_dict's names that may
    arrive one at a time (read from a file), each weight of a reduced Linear reduced as it arrives:
    the model is built on the meta device and adopts the tensors, so no second copy is ever made.
    When reducing, the tensors may be views of a memory-mapped file: the reduced weights are read
    from it a block of rows at a time, and the tensors kept as they are get copied out in float32.
    Raises ValueError if the names do not match the model's.
    """
    assert weight_dtype in WEIGHT_DTYPES, weight_dtype
    with torch.device('meta'):
        model = GPT(config)
        shells = _shells(model, weight_dtype) if weight_dtype != 'float32' else {}
    state = {}
    for name, t in weights:
        if name == 'lm_head.weight' and config.tie_weights:
            continue  # the same tensor as wte's (or absent, as in Hugging Face's files)
        module, _, kind = name.rpartition('.')
        if module in shells and kind == 'weight':
            t = {f'{module}.{k}': v for k, v in reduce_tensor(t, weight_dtype, shells[module].mean is not None).items()}
        elif shells:  # a bias, a norm, an embedding: float32, in memory of its own
            t = {name: t.to(torch.float32 if t.is_floating_point() else t.dtype, copy=True)}
        else:
            t = {name: t}
        if name == 'transformer.wte.weight' and config.tie_weights and 'lm_head' in shells:
            t.update({f'lm_head.{k}': v for k, v in reduce_tensor(t[name], weight_dtype, center=True).items()})
        state.update({k: v for k, v in t.items() if v is not None})
    try:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as e:  # a shape that differs: its line, not the whole report
        raise ValueError(str(e).splitlines()[1].strip()) from None
    if config.tie_weights and 'lm_head' not in shells:
        missing = [k for k in missing if k != 'lm_head.weight']
        model.lm_head.weight = model.transformer.wte.weight  # re-tie after assign
    if missing or unexpected:
        raise ValueError(f"the weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    # the buffers GPT makes rather than saves (rotary's frequencies, ALiBi's slopes), from one without layers
    for name, b in GPT(replace(config, n_layer=0, vocab_size=1, block_size=1)).named_buffers():
        model.register_buffer(name, b, persistent=False)
    return model
