"""
The optimizer's part of a training step, as train.py and bench.py take it: clipping, the step and
the gradients' release, and the measures of its health (the gradient norm, the update's size, finite losses).
"""

import math

import torch
import torch.distributed as dist

from util import die


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
            die(f"the training loss is not finite at iter {bad}; stopping (the last checkpoint in {self.out_dir} "
                f"is untouched)")

    def check_val(self, val_loss, it):
        if not math.isfinite(val_loss):
            die(f"val loss is {val_loss} at iter {it}; stopping (the last checkpoint in {self.out_dir} is untouched)")


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


def weights_before_step(optimizer):
    """A copy of the weights each parameter group holds (this process's shards), for update_to_weight."""
    return [[_local(p).detach().clone() for p in group['params']] for group in optimizer.param_groups]


def update_to_weight(optimizer, before, sharded=False):
    """
    How far the last step moved the weights: the RMS of the update over the RMS of the weights,
    overall and per parameter group, as tensors on the device. before is the groups' weights as
    copied just before the step (weights_before_step), and is used up. ~1e-3 is the usual healthy
    size for AdamW. sharded (FSDP): the sums of squares are added up over all processes, which
    must all call this.
    """
    updates, weights = [], []
    for group, old in zip(optimizer.param_groups, before):
        weights.append(torch.nn.utils.get_total_norm(old).float().square())
        diffs = [o.sub_(_local(p).detach()) for p, o in zip(group['params'], old)]  # in place: old is ours
        updates.append(torch.nn.utils.get_total_norm(diffs).float().square())
    if sharded:
        sums = torch.stack(updates + weights)
        dist.all_reduce(sums)
        updates, weights = list(sums[:len(updates)]), list(sums[len(updates):])
    overall = (sum(updates) / sum(weights)).sqrt()
    return overall, [(u / w).sqrt() for u, w in zip(updates, weights)]


class StepHealth:
    """
    The training's health between two log lines: count sees every step's gradient norm (the share clipped at
    grad_clip), read gives the last iteration's loss (the mean over processes under DDP), its gradient norm, that
    share (None without clipping) and its step's update size (update_to_weight of before), overall and per group:
    read from the device at once, one sync, as floats on the master process (None elsewhere). Every process calls it.
    """

    def __init__(self, device, grad_clip):
        self.grad_clip, self.clipped, self.steps = grad_clip, torch.zeros((), device=device), 0

    def count(self, grad_norm):
        if self.grad_clip != 0.0:
            self.clipped += grad_norm > self.grad_clip
        self.steps += 1

    def read(self, optimizer, before, loss, grad_norm, ddp, fsdp, master):
        if ddp:
            dist.all_reduce(loss)
            loss /= dist.get_world_size()
        if fsdp:  # the weights are sharded: every process adds its part of the update's size
            update, group_updates = update_to_weight(optimizer, before, sharded=True)
        elif master:
            update, group_updates = update_to_weight(optimizer, before)
        clipped, self.steps = self.clipped / self.steps, 0
        self.clipped.zero_()
        if not master:
            return None
        lossf, norm, clipped, update, *group_updates = torch.stack(
            [loss, grad_norm, clipped, update, *group_updates]).float().tolist()
        return dict(loss=lossf, grad_norm=norm, clipped=clipped if self.grad_clip != 0.0 else None,
                    update_to_weight=update, group_updates=group_updates)
