"""
Weights for inference (sample.py's and eval.py's weight_dtype): Linears with bfloat16 or int8
weights, their reduction from float32 a block of rows at a time, float32 Linears pre-packed for
oneDNN, and the kernels behind them (the batch-1 one raced), each private torch kernel checked once
against public PyTorch.
"""
import functools
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanogpt import cpu_kernels
from nanogpt.autotune import machine, race, relative_error
from nanogpt.device import available_memory, load_inductor

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
    a model this way holds little besides the results (temporaries of many sizes fragment the heap).
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


# -----------------------------------------------------------------------------
# the kernels: private torch ones are called here alone, each behind a public fallback that
# computes the same thing, chosen once per process with at most one warning line in all
_warned = False  # the process's one warning line is out: later fallbacks follow it silently


def _warn_once(message):
    global _warned
    if not _warned:
        print(f"warning: {message}", file=sys.stderr)
        _warned = True


def _fallback(kernel, e):
    _warn_once(f"{kernel} is not usable in this torch ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
               f"public PyTorch runs instead (the same numbers, slower; so do any other kernels missing)")


@functools.cache
def onednn_packing(dtype):
    """
    Whether oneDNN's pre-packed Linear kernels (torch.ops.mkldnn, the ones torch.compile's CPU
    freezing pass emits) work here for dtype (torch.float32 or torch.bfloat16): they must exist
    and match F.linear on a small example. Packed once, a weight skips its reorder at every call.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    g = torch.Generator().manual_seed(0)  # (not the run's random stream)
    x, w = torch.randn(3, 16, generator=g).to(dtype), torch.randn(8, 16, generator=g).to(dtype)
    try:
        if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False  # no bfloat16 units: nothing to gain
        got = linear_packed(x, pack_linear_weight(w, 3), None)
    except Exception as e:
        _fallback('oneDNN packed Linear (torch.ops.mkldnn)', e)
        return False
    if not torch.allclose(got.float(), F.linear(x, w).float(), rtol=1e-2, atol=1e-2):
        _fallback('oneDNN packed Linear (torch.ops.mkldnn)', ValueError('results differ from F.linear'))
        return False
    return True


def pack_linear_weight(w, batch_size):
    return torch.ops.mkldnn._reorder_linear_weight(w, batch_size)


def linear_packed(x, w, bias):
    return torch.ops.mkldnn._linear_pointwise(x, w, bias, 'none', [], '')


def _int8_mm_public(x, weight, scales):
    """x (N, in) bfloat16 times int8 rows scaled per row, in bfloat16, with public PyTorch."""
    return F.linear(x, weight.to(x.dtype)) * scales


def _int8_mm_private(x, weight, scales):
    """The same with PyTorch's weight-only int8 kernel (the one torchao's int8 weight-only configuration calls)."""
    return torch._weight_int8pack_mm(x, weight, scales)


@functools.cache
def _int8_mm_private_works(device_type):
    """Whether torch._weight_int8pack_mm exists and computes _int8_mm_public."""
    g = torch.Generator().manual_seed(0)  # (not the run's random stream)
    x = torch.randn(2, 32, generator=g).to(device_type, torch.bfloat16)
    w = torch.randint(-127, 128, (8, 32), dtype=torch.int8, generator=g).to(device_type)
    s = torch.rand(8, generator=g).to(device_type, torch.bfloat16)
    try:
        got = _int8_mm_private(x, w, s)
    except Exception as e:
        _fallback('torch._weight_int8pack_mm', e)
        return False
    if not torch.allclose(got.float(), _int8_mm_public(x, w, s).float(), rtol=2e-2, atol=2e-2):
        _fallback('torch._weight_int8pack_mm', ValueError('results differ from the dequantized matmul'))
        return False
    return True


def int8_mm(x, weight, scales):
    """x (N, in) bfloat16 times int8 weight rows (out, in) times their bfloat16 scales: (N, out) bfloat16."""
    if _int8_mm_private_works(x.device.type):
        return _int8_mm_private(x, weight, scales)
    return _int8_mm_public(x, weight, scales)


def _matvec(x, weight, scales=None, bias=None, mean=None):
    """
    x (1, in) float32 times the int8 or bfloat16 rows (out, in), each dot product in float32 (int8:
    then scaled), plus bias and the mean row's product (LowPrecisionLinear's): (1, out), all of it
    one compiled call.
    """
    y = (weight.to(torch.float32) * x).sum(dim=1)
    if scales is not None:
        y = y * scales.to(torch.float32)
    if mean is not None:
        y = y + (x[0] * mean).sum()  # the offset every logit shares
    if bias is not None:
        y = y + bias
    return y[None]


@functools.cache
def matvec_kernel(out_features, in_features, bias=False, mean=False, int8=True):
    """
    _matvec compiled by Inductor for one shape of int8 (or bfloat16) weight, with or without bias and
    mean (once per process and shape), or None where it cannot be built (no C++ compiler): call it as
    (x, weight[, scales][, bias][, mean]). Decoding multiplies each weight matrix by one vector, and
    torch._weight_int8pack_mm reads four rows at a time there and stalls on memory, where the loop
    Inductor writes walks the rows in order and streams them (docs/sampling.md). The graph goes to
    Inductor without Dynamo (make_fx, then the private torch._inductor.compile), so a call checks no
    guards (the shapes are fixed). Written here because PyTorch has no such kernel.
    """
    import logging
    from torch.fx.experimental.proxy_tensor import make_fx
    logging.getLogger('torch.utils.cpp_extension').setLevel(logging.ERROR)  # "No CUDA runtime" on CPU-only machines
    extras = ['scales'] * int8 + ['bias'] * bias + ['mean'] * mean

    def matvec(x, weight, *tensors):
        return _matvec(x, weight, **dict(zip(extras, tensors)))
    # traced with fake tensors: real ones would compute the float32 copy of the weight
    example = [torch.empty(1, in_features), torch.empty(out_features, in_features,
                                                        dtype=torch.int8 if int8 else torch.bfloat16)]
    example += [torch.empty(out_features, dtype=torch.bfloat16)] * int8
    example += [torch.empty(out_features)] * bias + [torch.empty(in_features)] * mean
    try:
        load_inductor()
        return torch._inductor.compile(make_fx(matvec, tracing_mode='fake')(*example), example)
    except Exception:  # no C++ compiler, or no Inductor: the caller says so once (_matvec_fallback)
        return None


def _matvec_fallback():
    _warn_once("decoding falls back to the kernel of several positions (torch.compile could not build "
               "the decoding kernel)")


# -----------------------------------------------------------------------------
# the layers

class LowPrecisionLinear(nn.Module):
    """
    A Linear whose weight is bfloat16, or int8 times a per-row scale; center: the head's mean row apart.
    GPT-2's logits share a large offset that bfloat16 rounding of the kernels' output would blur, so
    the head is stored with its mean row taken out, and that row's product with the activation is
    added back in float32. Activations go in as bfloat16 except for int8 decoding (float32).
    """

    def __init__(self, in_features, out_features, bias, weight_dtype, center=False):
        super().__init__()
        int8 = weight_dtype == 'int8'
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer('weight', torch.empty(out_features, in_features,
                                                   dtype=torch.int8 if int8 else torch.bfloat16))
        self.register_buffer('scales', torch.empty(out_features, dtype=torch.bfloat16) if int8 else None)
        self.register_buffer('mean', torch.empty(in_features) if center else None)
        self.register_buffer('bias', torch.empty(out_features) if bias else None)
        self.decoding = 'Inductor matvec' if int8 else 'F.linear'  # one position's kernel (decoding_kernels)

    def pack(self, batch_size):
        """On CPUs, reorder a bfloat16 weight once into oneDNN's blocked layout (as PackedLinear does).
        Inference only."""
        if self.scales is None and self.weight.device.type == 'cpu' and onednn_packing(torch.bfloat16):
            self.weight = pack_linear_weight(self.weight, batch_size)
            self.decoding = 'oneDNN packed'  # (and for several positions: the weight has its layout now)

    def forward(self, x):
        x2 = x.reshape(-1, x.size(-1))  # (B*T, in): the kernels take 2-D inputs
        if x2.size(0) == 1 and self.decoding.startswith('hand-written'):  # (eagerly, or called by a compiled step)
            compiling = torch.compiler.is_compiling()  # then as torch ops, which the program calls
            q8 = cpu_kernels.q8_matvec if compiling else cpu_kernels.q8_matvec_eager
            bf16 = cpu_kernels.bf16_matvec if compiling else cpu_kernels.bf16_matvec_eager
            y = q8(x2, self.weight, self.scales) if self.scales is not None else bf16(x2, self.weight)
            if self.mean is not None:
                y = y + x2.float() @ self.mean[:, None]
            if self.bias is not None:
                y = y + self.bias
            return y.to(x.dtype).view(*x.shape[:-1], y.size(-1))
        if x2.size(0) == 1 and torch.compiler.is_compiling():  # in a compiled decoding step, Inductor writes the loop
            y = _matvec(x2.float(), self.weight, self.scales, self.bias, self.mean)
            return y.to(x.dtype).view(*x.shape[:-1], y.size(-1))
        if self.decoding == 'Inductor matvec' and x2.size(0) == 1 and x2.device.type == 'cpu' and x2.size(1) <= 4096:
            # decoding: one compiled call does it all (matvec_kernel), built for contiguous tensors of
            # these shapes and checking nothing, so x is made contiguous (the buffers are); longer
            # rows stream faster through the kernel of several positions
            matvec = matvec_kernel(*self.weight.shape, self.bias is not None, self.mean is not None,
                                   self.scales is not None)
            if matvec is not None:
                y = matvec(x2.float().contiguous(), self.weight,
                           *[t for t in (self.scales, self.bias, self.mean) if t is not None])
                return y.to(x.dtype).view(*x.shape[:-1], y.size(-1))
            _matvec_fallback()
        if self.scales is not None:
            y = int8_mm(x2.to(torch.bfloat16), self.weight, self.scales)
        elif self.decoding == 'oneDNN packed':
            y = linear_packed(x2.to(torch.bfloat16), self.weight, None)
        else:
            y = F.linear(x2.to(torch.bfloat16), self.weight)
        # float32 + bfloat16 gives float32 in one op
        if self.mean is not None:
            y = torch.add(x2 @ self.mean.to(x2.dtype)[:, None], y)  # (B*T, 1): the offset every logit shares
        if self.bias is not None:
            y = torch.add(self.bias, y)
        return y.to(x.dtype).view(*x.shape[:-1], y.size(-1))


class PackedLinear(nn.Module):
    """
    An inference-only nn.Linear whose weight oneDNN has reordered once into its blocked layout, so
    each call skips that work: decoding reads every weight once per token. torch.compile would
    emit the same kernels, but a growing KV cache would make it recompile at every step.
    """

    def __init__(self, linear, batch_size):
        super().__init__()
        self.register_buffer('weight', pack_linear_weight(linear.weight.detach(), batch_size))
        self.register_buffer('bias', None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x):
        return linear_packed(x, self.weight, self.bias)


def swap_in_low_precision(model, weight_dtype):
    """
    Replace the block Linears and the head of model (built on the meta device) by empty
    LowPrecisionLinears in weight_dtype, for their reduced weights to be loaded: {name: layer}.
    A tied head gets its own copy; wte stays float32 for the embedding lookup.
    """
    layers = {}

    def swap(parent, name, prefix, center=False):
        linear = getattr(parent, name)
        layer = LowPrecisionLinear(linear.in_features, linear.out_features, linear.bias is not None,
                                   weight_dtype, center)
        setattr(parent, name, layer)
        layers[prefix + name] = layer
    for i, block in enumerate(model.transformer.h):
        for part in ('attn', 'mlp'):
            parent = getattr(block, part)
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    swap(parent, name, f'transformer.h.{i}.{part}.')
    swap(model, 'lm_head', '', center=True)
    return layers


def decoding_kernels(weight_dtype):
    """The kernels that can multiply one position by weight_dtype rows on this CPU, the reference (PyTorch's) first."""
    hand = [f"hand-written {'q8' if weight_dtype == 'int8' else 'bf16'}"] * cpu_kernels.available(weight_dtype)
    if weight_dtype == 'int8':
        return ["PyTorch's int8 kernel", 'Inductor matvec'] + hand
    return ['F.linear'] + ['oneDNN packed'] * onednn_packing(torch.bfloat16) + ['Inductor matvec'] + hand


def choose_decoding_kernel(model, weight_dtype, probe=True, log=print):
    """
    The fastest kernel for one position (batch-1 decoding) through model's LowPrecisionLinears, raced
    on the model's own weights (each candidate multiplies every layer by one vector, as a token does,
    and must match PyTorch's kernel within bfloat16 rounding) and cached by machine, torch and shapes;
    each layer is set to it. Without probe: the Inductor matvec for int8, oneDNN's packed kernel for
    bfloat16 (the usual winners). Returns the kernel's name.
    """
    layers = [m for m in model.modules() if isinstance(m, LowPrecisionLinear)]
    if not layers or weight_dtype not in ('int8', 'bfloat16'):
        return None
    candidates = decoding_kernels(weight_dtype)
    if not all(matvec_kernel(*l.weight.shape, l.bias is not None, l.mean is not None, weight_dtype == 'int8')
               for l in layers if l.in_features <= 4096):
        candidates.remove('Inductor matvec')  # it cannot be built here: said only where it is the usual choice
        if weight_dtype == 'int8':
            _matvec_fallback()
    if any(l.in_features % 32 for l in layers):  # the hand-written kernels take rows of whole blocks of 32
        candidates = [c for c in candidates if not c.startswith('hand-written')]
    packed = {}

    def use(kernel):
        for layer in layers:
            if kernel == 'oneDNN packed' and layer not in packed:  # packed once, kept beside the plain weight
                plain = layer.weight
                layer.pack(1)
                packed[layer] = (plain, layer.weight)
            if layer in packed:
                layer.weight = packed[layer][kernel == 'oneDNN packed']
            layer.decoding = kernel
    xs = {n: torch.randn(1, n, generator=torch.Generator().manual_seed(n)) for n in {l.weight.size(1) for l in layers}}
    if weight_dtype == 'bfloat16':
        xs = {n: x.bfloat16().float() for n, x in xs.items()}  # the same inputs whatever the kernel rounds them to

    def run(kernel):
        use(kernel)
        with torch.no_grad():
            return [layer(xs[layer.in_features]) for layer in layers]

    usual = [c for c in ('oneDNN packed', 'Inductor matvec') if c in candidates]
    choice = usual[0] if usual else candidates[0]
    if probe and len(candidates) > 1:
        shapes = sorted({(*l.weight.shape, l.bias is not None, l.mean is not None) for l in layers})
        key = f"{machine(torch.device('cpu'))} | decode {weight_dtype} {len(layers)} layers {shapes} {candidates}"
        choice = race(f"{weight_dtype} decoding kernel", key, candidates, run,
                      lambda name, ref, got: relative_error(ref, got) <= 2e-2, log=log)
    use(choice)
    return choice


def for_inference(model, device, dtype, batch_size=1, probe=True):
    """
    Make an eval-mode model faster at generating where that is known to pay: on CPUs in float32
    every Linear becomes a PackedLinear (oneDNN, weights pre-packed), with logits within ~1e-5 of
    the plain model's; bfloat16 and int8 LowPrecisionLinears take the fastest kernel for a batch of
    one (choose_decoding_kernel, with probe) or bfloat16 pack the same way. The model is changed in
    place and can only run inference afterwards; the tied lm_head gets its own packed copy of wte.
    Attention over the KV cache stays on MKL, which is faster there than oneDNN for its strided
    slices: so sampling leaves the float32 matmul route as it is.
    """
    if device.type != 'cpu' or dtype != 'float32':
        return model
    float32 = onednn_packing(torch.float32)

    def pack(module):
        for name, child in module.named_children():
            if isinstance(child, nn.Linear) and float32:
                setattr(module, name, PackedLinear(child, batch_size))
            elif isinstance(child, LowPrecisionLinear) and batch_size > 1:
                child.pack(batch_size)
            elif not isinstance(child, LowPrecisionLinear):
                pack(child)
    pack(model.eval())
    reduced = [m for m in model.modules() if isinstance(m, LowPrecisionLinear)]
    if batch_size == 1 and reduced:
        choose_decoding_kernel(model, 'int8' if reduced[0].scales is not None else 'bfloat16', probe)
    return model


DECODE_SECONDS = 20.0  # decoding that takes less, eagerly, is not worth a compilation's seconds (even cached)


def for_sampling(model, device, dtype, batch_size=1, tokens=1000, probe=True, log=print):
    """
    (model, decoder) for generate's decoder: for_inference's model, or at batch 1 on a CPU (float32 activations)
    the faster by measurement of it and the same model decoding through a CompiledDecoding (decoder then, else
    None), raced on a prompt and 8 steps (whose logits must be for_inference's within bfloat16 rounding) and
    cached by machine, torch and shape. The race compiles: it runs where tokens eager steps take DECODE_SECONDS or
    more, and for a float32 model where its packed copy fits in a quarter of the free memory.
    """
    import copy
    import time
    from nanogpt.generate import CompiledDecoding, KVCache
    if not (probe and device.type == 'cpu' and dtype == 'float32' and batch_size == 1):
        return for_inference(model, device, dtype, batch_size, probe), None
    reduced = [m for m in model.modules() if isinstance(m, LowPrecisionLinear)]
    if not reduced and weight_bytes(model) > available_memory() / 4:
        return for_inference(model, device, dtype, batch_size, probe), None
    # new modules over the same tensors: for_inference changes the model's modules, not the weights plain holds
    plain = copy.deepcopy(model.eval(), memo={id(t): t for t in [*model.parameters(), *model.buffers()]})
    model = for_inference(model, device, dtype, batch_size, probe)
    chosen = dict(model.named_modules())
    for name, layer in plain.named_modules():  # a hand-written kernel the race chose serves the compiled step too
        if isinstance(layer, LowPrecisionLinear) and chosen[name].decoding.startswith('hand-written'):
            layer.decoding = chosen[name].decoding
    weights = ('int8' if reduced[0].scales is not None else 'bfloat16') if reduced else 'float32'
    c = plain.config
    key = (f"{machine(torch.device('cpu'))} | decoding step {weights} {c.n_layer}x{c.n_embd} vocab {c.vocab_size} "
           f"{c.pos_encoding} {c.activation} {c.norm} bias={c.bias}")
    x = torch.randint(c.vocab_size, (1, min(12, c.block_size)), generator=torch.Generator().manual_seed(0))
    prompt = min(4, x.size(1) - 1)
    with torch.no_grad():  # an eager step's time, the least of three
        cache, step = KVCache(c.n_layer, c.block_size), float('inf')
        model(x[:, :prompt], cache=cache)
        for _ in range(3):
            cache.pos, t0 = prompt, time.perf_counter()
            model(x[:, [prompt]], cache=cache)
            step = min(step, time.perf_counter() - t0)
    if tokens * step < DECODE_SECONDS:
        return model, None
    decoder = CompiledDecoding(plain)

    def run(name):  # the logits of a prompt and the steps after it, each step fed the same token
        if name == 'eager':
            cache = KVCache(c.n_layer, c.block_size)
            logits = [model(x[:, :prompt], cache=cache)[0]]
            logits += [model(x[:, [i]], cache=cache)[0] for i in range(prompt, x.size(1))]
        else:
            first, cache = decoder.start(x[:, :prompt])
            logits = [first]
            for i in range(prompt, x.size(1)):
                step, cache = decoder.next(x[:, [i]], cache, i)
                logits.append(step)
        return logits

    try:
        with torch.no_grad():
            choice = race('decoding step', key, ['eager', 'compiled step'], run,
                          lambda name, ref, got: relative_error(ref, got) <= 2e-2, log=log)
            if choice == 'compiled step':
                run(choice)  # compiled now (a cached choice raced nothing), so that a failure falls back here
    except Exception as e:  # no C++ compiler, or Inductor cannot compile the step: the eager one decodes
        _warn_once(f"the compiled decoding step could not be built ({type(e).__name__}: "
                   f"{str(e).splitlines()[0][:120] if str(e) else ''}); decoding runs eagerly")
        return model, None
    return (model, None) if choice == 'eager' else (plain, decoder)


def weight_bytes(model):
    """Bytes of weights one decoding step reads: every matmul's (an embedding lookup reads one row)."""
    return sum(t.nbytes for m in model.modules() if not isinstance(m, torch.nn.Embedding)
               for name, t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]
               if (name == 'weight' and t.dim() == 2) or name == 'scales')
