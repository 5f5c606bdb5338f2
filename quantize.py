"""
Weight-only reduced precision for generation (sample.py's weight_dtype): the Linears of the blocks
and the output head keep their weights in bfloat16, or in int8 with one scale per output row, so
that each decoded token reads 2x or 4x fewer bytes of weights (at batch 1 decoding waits on memory,
not on arithmetic). Activations enter those matmuls in bfloat16 and leave in the model's dtype.

int8 runs PyTorch's own weight-only kernel, torch._weight_int8pack_mm (the one torchao's int8
weight-only configuration calls; torchao is not a dependency, and torch.ao's dynamic quantization
rounds the activations to int8 too). On CPUs its float32-activation path is ~10x slower than its
bfloat16 one, hence bfloat16 activations. Its output is rounded to bfloat16 (~|y| * 2^-9), and
GPT-2's logits share a large offset: so the head is stored with its mean row taken out, and that
row's product with the activation, the same for every token, is added back in float32.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

WEIGHT_DTYPES = ('float32', 'bfloat16', 'int8')


class LowPrecisionLinear(nn.Module):
    """A Linear whose weight is bfloat16, or int8 times a per-row scale; center: the head's mean row apart."""

    def __init__(self, linear, weight_dtype, center=False):
        super().__init__()
        w = linear.weight.detach().float()
        mean = w.mean(dim=0) if center else None  # (in,)
        if center:
            w = w - mean
        if weight_dtype == 'int8':
            # the scales as the kernel will read them (bfloat16), so that rounding them costs nothing
            scales = (w.abs().amax(dim=1).clamp(min=1e-12) / 127).to(torch.bfloat16)
            weight = torch.round(w / scales.float()[:, None]).clamp(-127, 127).to(torch.int8)  # (out, in)
        else:
            scales, weight = None, w.to(torch.bfloat16)
        self.register_buffer('weight', weight)
        self.register_buffer('scales', scales)
        self.register_buffer('mean', mean)
        self.register_buffer('bias', None if linear.bias is None else linear.bias.detach().float())

    def forward(self, x):
        x2 = x.reshape(-1, x.size(-1))  # (B*T, in): the kernel takes 2-D inputs
        xb = x2.to(torch.bfloat16)
        if self.scales is not None:
            y = torch._weight_int8pack_mm(xb, self.weight, self.scales)
        else:
            y = F.linear(xb, self.weight)
        y = y.to(x.dtype)
        if self.mean is not None:
            y = y + x2 @ self.mean.to(x.dtype)[:, None]  # (B*T, 1): the offset every logit shares
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.view(*x.shape[:-1], y.size(-1))


def reduce_weights(model, weight_dtype):
    """The model (eval mode, for generation only) with its block Linears and head in weight_dtype; in place."""
    assert weight_dtype in WEIGHT_DTYPES, weight_dtype
    if weight_dtype == 'float32':
        return model
    for block in model.transformer.h:
        for parent in (block.attn, block.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, LowPrecisionLinear(child, weight_dtype))
    # a tied head gets its own copy; wte stays float32 for the embedding lookup
    model.lm_head = LowPrecisionLinear(model.lm_head, weight_dtype, center=True)
    return model.eval()
