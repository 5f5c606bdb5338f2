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
sqrt(max(1, rows / cols)); the state is torch's too ('momentum_buffer'). Muon's matrices take no weight
decay, as in the GPT-2 speedruns: weight_decay applies to AdamW's groups only.
"""

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(G, dtype, steps=5, eps=1e-7):
    """
    The nearest semi-orthogonal matrix to G (..., m, n), roughly (singular values pushed into
    ~[0.7, 1.2]): Newton-Schulz in dtype, on a stack of same-shaped matrices at once.
    """
    a, b, c = NS_COEFFICIENTS
    X = G.to(dtype)
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT  # iterate on the wide side: the Gram matrix is the smaller one
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    return (X.mT if tall else X).to(G.dtype)


class MuonAdamW(torch.optim.Optimizer):
    """
    Parameter groups with muon=True get Muon (lr, momentum); the others AdamW
    (lr, betas, eps, weight_decay), through a torch.optim.AdamW that updates this optimizer's
    groups and state (so the state and its checkpoints are one optimizer's). The Newton-Schulz iteration runs
    in bfloat16 where the parameters' device has fast bfloat16 matmuls (CUDA GPUs, as torch.optim.Muon),
    else in float32 (several times faster than bfloat16 on CPUs without bfloat16 units).
    Under FSDP a matrix's gradient is gathered whole for the iteration (every process computes the
    same update and keeps its shard of it).
    """

    def __init__(self, groups, lr, betas, momentum=0.95, eps=1e-8):
        super().__init__(groups, dict(lr=lr, betas=betas, momentum=momentum, eps=eps, weight_decay=0.0, muon=False))
        self._adamw = None  # made at the first step that has AdamW parameters
        self.update_squares = {}  # group index -> the sum of squares of its last Muon update (this process's part)

    @classmethod
    def for_model(cls, model, weight_decay, learning_rate, betas, muon_lr):
        """For a GPT (model.configure_optimizers(..., optimizer='muon')): Muon at muon_lr for the matrices inside
        the blocks, AdamW for the rest (weight decay on its 2D weights); each group's 'lr_scale' is its learning
        rate over learning_rate, for the schedule to keep."""
        params = [p for p in model.parameters() if p.requires_grad]
        inside = {id(p) for p in model.transformer.h.parameters() if p.dim() == 2}
        groups = [{'params': [p for p in params if id(p) in inside], 'muon': True, 'lr': muon_lr,
                   'lr_scale': muon_lr / learning_rate},
                  {'params': [p for p in params if p.dim() >= 2 and id(p) not in inside], 'weight_decay': weight_decay},
                  {'params': [p for p in params if p.dim() < 2]}]
        return cls(groups, lr=learning_rate, betas=betas)

    @torch.no_grad()
    def step(self, closure=None):
        for i, group in enumerate(self.param_groups):
            if group['muon']:
                self.update_squares[i] = self._muon(group)
        groups = [g for g in self.param_groups if not g['muon'] and g['params']]
        if groups:
            if self._adamw is None:
                self._adamw = torch.optim.AdamW([p for g in groups for p in g['params']])
            # AdamW's defaults under each of our groups' settings, which may have changed (the schedule, a resume)
            self._adamw.param_groups = [{**self._adamw.defaults, **g} for g in groups]
            self._adamw.state = self.state
            self._adamw.step()
        return None

    def _muon(self, group):
        lr, momentum = group['lr'], group['momentum']
        updates = {}  # matrices of one shape are orthogonalized together: a few batched matmuls, not many small ones
        for p in group['params']:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state['momentum_buffer'] = torch.zeros_like(p)
            buf = state['momentum_buffer']
            buf.lerp_(p.grad, 1 - momentum)
            update = p.grad.lerp(buf, momentum)  # Nesterov
            if hasattr(update, 'full_tensor'):  # an FSDP shard: orthogonalize the whole matrix
                update = update.full_tensor()
            updates.setdefault(tuple(update.shape), []).append((p, update))
        square = torch.zeros(())  # of the whole update, for the training's health (optim.update_to_weight)
        for (rows, cols), pairs in updates.items():
            stack = torch.stack([u for _, u in pairs])
            ortho = orthogonalize(stack, torch.bfloat16 if stack.device.type == 'cuda' else torch.float32)
            scale, parts = lr * max(1, rows / cols) ** 0.5, []
            for (p, _), o in zip(pairs, ortho):
                if hasattr(p, 'device_mesh'):  # back to this process's shard
                    o = torch.distributed.tensor.distribute_tensor(o, p.device_mesh, p.placements)
                p.add_(o, alpha=-scale)
                parts.append(o.to_local() if hasattr(o, 'to_local') else o)
            square = square + torch.nn.utils.get_total_norm(parts).float().square() * scale ** 2
        return square
