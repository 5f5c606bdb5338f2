"""
What a training run reports, from its master process: nanoGPT's log lines followed by the training's
health and progress, out_dir/metrics.jsonl, wandb when asked, and the summary at the end.
"""

import errno
import json
import os
import time

from nanogpt.util import UsageError, write_error, written


def format_duration(seconds):
    """1h02m, 3m05s, 42s: a duration the way a progress line shows it."""
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Report:
    """
    The run's reports from iteration iter_num on (a resume keeps metrics.jsonl's earlier entries). config is
    train.py's settings; wandb_run_id the run a resumed checkpoint names, continued there. Its clock starts here.
    """

    def __init__(self, config, iter_num, wandb_run_id, peak_flops):
        self.max_iters, self.ramp = config['max_iters'], config['batch_ramp_tokens']
        self.out_dir, self.eval_interval = config['out_dir'], config['eval_interval']
        self.metrics = MetricsLog(os.path.join(config['out_dir'], 'metrics.jsonl'), iter_num)
        self.wandb = None
        self.wandb_run_id = wandb_run_id
        if config['wandb_log']:
            import wandb
            self.wandb = wandb
            self.wandb_run_id = wandb.init(project=config['wandb_project'], name=config['wandb_run_name'],
                                           config=config, id=wandb_run_id, resume='allow' if wandb_run_id else None).id
        self.peak_known = bool(peak_flops)
        self.running_mfu = -1.0
        self.t_start = time.time()

    def evaluation(self, iter_num, losses, lr):
        print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        self.metrics.log(iter=iter_num, train_loss=losses['train'], val_loss=losses['val'], lr=lr,
                         time_s=time.time() - self.t_start)
        if self.wandb:
            self.wandb.log({"iter": iter_num, "train/loss": losses['train'], "val/loss": losses['val'], "lr": lr,
                            "mfu": self.running_mfu * 100}, step=iter_num)

    def hellaswag(self, iter_num, result):
        print(f"step {iter_num}: hellaswag acc_norm {result['acc_norm']:.4f}, acc {result['acc']:.4f} "
              f"({result['examples']} examples)")
        self.metrics.log(iter=iter_num, hellaswag_acc_norm=result['acc_norm'], hellaswag_acc=result['acc'],
                         hellaswag_examples=result['examples'])
        if self.wandb:
            self.wandb.log({"iter": iter_num, "hellaswag/acc_norm": result['acc_norm'],
                            "hellaswag/acc": result['acc']}, step=iter_num)

    def step(self, iter_num, local_iter_num, dt, lr, health, batch_tokens, mfu, peak_mem):
        """
        The log line of an iteration that took dt seconds: health is optim.step_health's, mfu this step's
        (None if the device's peak is unknown: set peak_flops), peak_mem the process's peak in bytes.
        """
        if local_iter_num >= 5 and mfu is not None:  # let the training loop settle a bit
            self.running_mfu = mfu if self.running_mfu == -1.0 else 0.9 * self.running_mfu + 0.1 * mfu
        mfu_str = f"{self.running_mfu * 100:.2f}%" if self.peak_known else "n/a"
        t1 = time.time()
        figures = dict(grad_norm=health['grad_norm'], clipped=health['clipped'],
                       update_to_weight=health['update_to_weight'], tokens_per_s=batch_tokens / dt,
                       batch_tokens=batch_tokens, peak_mem_mb=peak_mem / 2**20)
        # progress, and the time left at this process's pace so far (evaluations included)
        left = (t1 - self.t_start) / (local_iter_num + 1) * (self.max_iters - iter_num)
        done = int(1000 * iter_num / max(self.max_iters, 1)) / 10  # rounded down: 100% only at the end
        clip_str = f" (clipped {health['clipped']:.0%})" if health['clipped'] is not None else ""
        ramp_str = f", batch {batch_tokens:,} tokens" if self.ramp else ""
        print(f"iter {iter_num}: loss {health['loss']:.4f}, time {dt * 1000:.2f}ms, mfu {mfu_str}, grad norm "
              f"{health['grad_norm']:.3f}{clip_str}, update/weight {health['update_to_weight']:.2e}, "
              f"{figures['tokens_per_s']:,.0f} tok/s{ramp_str}, peak mem {figures['peak_mem_mb']:,.0f}MB, "
              f"{done:.1f}%, {format_duration(left)} left")
        self.metrics.log(iter=iter_num, loss=health['loss'], time_ms=dt * 1000,
                         mfu=self.running_mfu * 100 if self.peak_known else None, lr=lr, time_s=t1 - self.t_start,
                         **figures)
        if self.wandb:
            self.wandb.log({"iter": iter_num, "train/loss_step": health['loss'],
                            **{f"health/{k}": v for k, v in figures.items()},
                            **{f"health/update_to_weight/group{i}": u for i, u in enumerate(health['group_updates'])}},
                           step=iter_num)

    def summary(self, first_iter, iter_num, best_val_loss, best_iter, saved_iter):
        """What was done, the best val loss, and where the model is."""
        best = "no evaluation" if best_val_loss == 1e9 else f"best val loss {best_val_loss:.4f}" + \
            (f" at iter {best_iter}" if best_iter is not None else "")
        print(f"training done: {iter_num - first_iter} iterations (iter {first_iter} to {iter_num - 1}) in "
              f"{format_duration(time.time() - self.t_start)}, {best}")
        if saved_iter is not None:
            print(f"checkpoint: {os.path.join(self.out_dir, 'ckpt.pt')} (iter {saved_iter}); sample from it with: "
                  f"python sample.py --out_dir={self.out_dir}")
        else:
            print(f"no checkpoint written: one is saved at each evaluation after iter 0 "
                  f"(eval_interval={self.eval_interval})")

    def finish(self):
        if self.wandb:
            self.wandb.finish()


class MetricsLog:
    """
    out_dir/metrics.jsonl: one JSON object per log line and per evaluation, each with its 'iter',
    so a run can be read or plotted without wandb. A run started at iteration iter_num (a resume)
    keeps the entries of the iterations before it and drops the rest, which it is about to redo:
    the record never holds an iteration twice.
    """

    def __init__(self, path, iter_num):
        self.path = path
        kept = []
        if iter_num > 0 and os.path.isfile(path):
            with open(path, encoding='utf-8') as f:
                for line in f:
                    try:
                        if json.loads(line)['iter'] < iter_num:
                            kept.append(line if line.endswith('\n') else line + '\n')
                    except (ValueError, KeyError, TypeError):
                        pass  # a line cut short by a kill
        with written(path) as f:
            f.write(''.join(kept).encode('utf-8'))
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND)

    def log(self, **entry):
        """One entry, a whole line (written unbuffered: a full disk cuts off nothing, and fails here)."""
        line = (json.dumps(entry) + '\n').encode('utf-8')
        end = os.lseek(self.fd, 0, os.SEEK_END)
        try:
            if os.write(self.fd, line) != len(line):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # so: the disk took part of the line
        except OSError as e:
            os.ftruncate(self.fd, end)
            raise UsageError(write_error(self.path, e))
