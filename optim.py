"""
The optimizer's part of a training step, as train.py and bench.py take it: clipping, the step and
the gradients' release, and the measures of its health (the gradient norm, the update's size, finite losses).
"""

import math

import torch
import torch.distributed as dist

from util import UsageError


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
