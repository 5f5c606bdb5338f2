"""
The optimizer and its part of a training step, as train.py and bench.py take it: Muon beside AdamW,
clipping, the step and the gradients' release, and the measures of its health (the gradient norm, the
update's size, finite losses).

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

import math

import torch
import torch.distributed as dist

from nanogpt.util import UsageError


def _local(t):
    """A tensor's share on this process: FSDP's parameters and gradients are DTensors, sharded."""
    return t.to_local() if hasattr(t, 'to_local') else t  # (importing DTensor costs a second)


class FiniteLosses:
    """
    Training stops at a NaN/Inf loss before it can reach a checkpoint in out_dir: add notes the first iteration
    whose loss was not finite, on the device (no sync); check reads it (a sync: call rarely), check_val a val loss.
    """

    def __init__(self, device, out_dir):
        self.first_bad, self.out_dir = torch.tensor(-1, device=device), out_dir

    def add(self, it, loss):
        self.first_bad = torch.where((self.first_bad < 0) & ~loss.isfinite(), it, self.first_bad)

    def check(self):
        bad = int(self.first_bad)
        if bad >= 0:
            raise UsageError(f"the training loss is not finite at iter {bad}; stopping (the last checkpoint in "
                             f"{self.out_dir} is untouched)")

    def check_val(self, val_loss, it):
        if not math.isfinite(val_loss):
            raise UsageError(f"val loss is {val_loss} at iter {it}; stopping (the last checkpoint in {self.out_dir} "
                             f"is untouched)")


def optimizer_step(model, optimizer, scaler, grad_clip, measure=False):
    """
    Clip the gradient norm at grad_clip (0: no clipping; unscaled first under float16's
    GradScaler), step the optimizer and the scaler, and free the gradients' memory. Returns the
    gradient norm before clipping, a tensor on the device (reading it waits for the device:
    train.py does so at log lines only); without clipping it is computed only when measure is set,
    else None. Under FSDP the norm is over every process's shard (a collective: all processes call this).
    """
    scaler.unscale_(optimizer)
    norm = None
    if grad_clip != 0.0 or measure:
        # clip_grad_norm_ in two halves, so that a sharded norm is made whole before it scales
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads)
        if hasattr(norm, 'full_tensor'):
            norm = norm.full_tensor()
        if grad_clip != 0.0:
            torch.nn.utils.clip_grads_with_norm_(model.parameters(), grad_clip, norm)
    scaler.step(optimizer)  # skipped by the scaler if float16 gradients overflowed
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return norm


def _adamw_update_norm(p, state, group):
    """
    The norm of the update torch's AdamW made to p at its last step, from what it holds after it (its moments,
    step count and settings; no copy of the weights). The step is w <- w (1 - lr wd) - lr m^ / (sqrt(v^) + eps),
    with m^ = m / (1 - b1^t) and v^ = v / (1 - b2^t), so the update is -(lr wd w_new + lr m^ / (sqrt(v^) + eps)) /
    (1 - lr wd), and m^ / (sqrt(v^) + eps) = sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps sqrt(1 - b2^t)): a
    few operations on temporaries the size of p.
    """
    lr, wd, eps, (beta1, beta2), step = float(group['lr']), group['weight_decay'], group['eps'], group['betas'], \
        float(_local(state['step']))
    v = state['max_exp_avg_sq'] if group.get('amsgrad') else state['exp_avg_sq']
    c2 = math.sqrt(1 - beta2 ** step)
    scale = lr * c2 / (1 - beta1 ** step)  # of m / (sqrt(v) + eps c2)
    denominator = _local(v).sqrt().add_(eps * c2)
    if wd:
        update = torch.addcdiv(_local(p).detach(), _local(state['exp_avg']), denominator, value=scale / (lr * wd))
        return torch.linalg.vector_norm(update, dtype=torch.float32) * (lr * wd / (1 - lr * wd))
    return torch.linalg.vector_norm(_local(state['exp_avg']) / denominator, dtype=torch.float32) * scale


def update_to_weight(optimizer, skipped=None, sharded=False):
    """
    How far the last step moved the weights: the RMS of the update over the RMS of the weights (after the
    step), overall and per parameter group, as tensors on the device, from what the optimizer holds after its
    step, one parameter at a time: AdamW's update follows from its state (_adamw_update_norm), Muon's is
    recorded by MuonAdamW as it steps. No copy of the weights is made, and the gradients are freed by then: the
    step's peak memory stays as it is. skipped: a boolean tensor, true where float16's gradient scaler skipped
    the step (no update). ~1e-3 is the usual healthy size for AdamW. sharded (FSDP): the sums of squares are
    added up over all processes, which must all call this.
    """
    updates, weights = [], []
    # one device for the figures, where the weights are (a group may be empty: LoRA's has no 1-D weights)
    device = next((p.device for group in optimizer.param_groups for p in group['params']), torch.device('cpu'))
    for i, group in enumerate(optimizer.param_groups):
        params = group['params']
        weights.append(torch.nn.utils.get_total_norm([_local(p).detach() for p in params]).float().square()
                       .to(device) if params else torch.zeros((), device=device))
        if group.get('muon'):
            update = optimizer.update_squares.get(i, torch.zeros(()))
        else:
            norms = [_adamw_update_norm(p, optimizer.state[p], group) for p in params
                     if 'exp_avg' in optimizer.state[p]]
            update = torch.stack(norms).square().sum() if norms else torch.zeros(())
        updates.append(update.to(device))
    sums = torch.stack(updates + weights)
    if skipped is not None:
        sums[:len(updates)] *= ~skipped
    if sharded:
        dist.all_reduce(sums)
    updates, weights = sums[:len(updates)], sums[len(updates):]
    return (updates.sum() / weights.sum()).sqrt(), list((updates / weights).sqrt())


class StepHealth:
    """
    The training's health between two log lines: count sees every step's gradient norm (the share clipped at
    grad_clip), read gives the last iteration's loss (the mean over processes under DDP), its gradient norm, that
    share (None without clipping) and its step's update size (update_to_weight), overall and per group: read from
    the device at once, one sync, as floats on the master process (None elsewhere). Every process calls it, after
    optimizer_step(..., measure=True); scaler is the run's gradient scaler (float16's skips a step it finds
    overflowed, and the gradient norm is then not finite).
    """

    def __init__(self, device, grad_clip, scaler=None):
        self.grad_clip, self.clipped, self.steps = grad_clip, torch.zeros((), device=device), 0
        self.scaled = scaler is not None and scaler.is_enabled()

    def count(self, grad_norm):
        if self.grad_clip != 0.0:
            self.clipped += grad_norm > self.grad_clip
        self.steps += 1

    def read(self, optimizer, loss, grad_norm, ddp, fsdp, master):
        if ddp:
            dist.all_reduce(loss)
            loss /= dist.get_world_size()
        skipped = ~grad_norm.isfinite() if self.scaled else None
        if fsdp:  # the weights are sharded: every process adds its part of the update's size
            update, group_updates = update_to_weight(optimizer, skipped, sharded=True)
        elif master:
            update, group_updates = update_to_weight(optimizer, skipped)
        clipped, self.steps = self.clipped / self.steps, 0
        self.clipped.zero_()
        if not master:
            return None
        lossf, norm, clipped, update, *group_updates = torch.stack(
            [loss, grad_norm, clipped, update, *group_updates]).float().tolist()
        return dict(loss=lossf, grad_norm=norm, clipped=clipped if self.grad_clip != 0.0 else None,
                    update_to_weight=update, group_updates=group_updates)


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
