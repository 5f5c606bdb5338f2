"""
Muon (MomentUm Orthogonalized by Newton-schulz, https://kellerjordan.github.io/posts/muon/) for the
weight matrices inside the transformer blocks, and AdamW for everything else (embeddings, an untied
head, gains and biases), as the GPT-2 speedruns (modded-nanogpt) and nanochat train.

Written here rather than taken from torch.optim.Muon because that one runs the Newton-Schulz
iteration in bfloat16 only, several times slower than float32 on CPUs without bfloat16 units, and
takes 2-D parameters only: this is one optimizer with two kinds of parameter groups (the group's
'muon' flag), so train.py's learning-rate schedule, checkpoints (state_dict, DCP under FSDP), resume
and gradient scaling treat it like AdamW. Its Muon update is torch.optim.Muon's: Nesterov momentum
0.95, five quintic Newton-Schulz steps with the same coefficients, the learning rate scaled by
sqrt(max(1, rows / cols)) and decoupled weight decay; the state is torch's too ('momentum_buffer').
"""

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(G, dtype, steps=5, eps=1e-7):
    """The nearest semi-orthogonal matrix to G, roughly (singular values pushed into ~[0.7, 1.2]): Newton-Schulz in dtype."""
    a, b, c = NS_COEFFICIENTS
    X = G.to(dtype)
    tall = X.size(0) > X.size(1)
    if tall:
        X = X.T  # iterate on the wide side: the Gram matrix is the smaller one
    X = X / X.norm().clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    return (X.T if tall else X).to(G.dtype)


class MuonAdamW(torch.optim.Optimizer):
    """
    Parameter groups with muon=True get Muon (lr, momentum, weight_decay); the others AdamW
    (lr, betas, eps, weight_decay). ns_dtype is the Newton-Schulz dtype: bfloat16 where the device's
    bfloat16 matmuls are fast (CUDA GPUs, as torch.optim.Muon), else float32 (train.py chooses).
    Under FSDP a matrix's gradient is gathered whole for the iteration (every process computes the
    same update and keeps its shard of it).
    """

    def __init__(self, groups, lr, betas, momentum=0.95, ns_dtype=torch.float32, eps=1e-8):
        super().__init__(groups, dict(lr=lr, betas=betas, momentum=momentum, eps=eps, weight_decay=0.0, muon=False))
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, wd = group['lr'], group['weight_decay']
            for p in group['params']:
                if p.grad is None:
                    continue
                state = self.state[p]
                if group['muon']:
                    if not state:
                        state['momentum_buffer'] = torch.zeros_like(p)
                    buf = state['momentum_buffer']
                    buf.lerp_(p.grad, 1 - group['momentum'])
                    update = p.grad.lerp(buf, group['momentum'])  # Nesterov
                    if hasattr(update, 'full_tensor'):  # an FSDP shard: orthogonalize the whole matrix
                        from torch.distributed.tensor import distribute_tensor
                        whole = orthogonalize(update.full_tensor(), self.ns_dtype)
                        update = distribute_tensor(whole, update.device_mesh, update.placements)
                    else:
                        update = orthogonalize(update, self.ns_dtype)
                    p.mul_(1 - lr * wd)
                    p.add_(update, alpha=-lr * max(1, p.size(0) / p.size(1)) ** 0.5)
                else:  # AdamW, as torch.optim.AdamW computes it
                    if not state:
                        state['step'] = torch.zeros((), dtype=torch.float32)
                        state['exp_avg'] = torch.zeros_like(p)
                        state['exp_avg_sq'] = torch.zeros_like(p)
                    beta1, beta2 = group['betas']
                    state['step'] += 1
                    t = state['step'].item()
                    state['exp_avg'].lerp_(p.grad, 1 - beta1)
                    state['exp_avg_sq'].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                    denom = (state['exp_avg_sq'] / (1 - beta2 ** t)).sqrt_().add_(group['eps'])
                    p.mul_(1 - lr * wd)
                    p.addcdiv_(state['exp_avg'], denom, value=-lr / (1 - beta1 ** t))
        return None
