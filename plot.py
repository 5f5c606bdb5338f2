"""
Draw the metrics.jsonl of one or more runs into one PNG: train and val loss against iterations and
against wall time, the learning rate, the gradient norm, tokens/s and the update's size.
$ python plot.py out-shakespeare-char out-shakespeare-char-fast
$ python plot.py out --out=loss.png
"""
import argparse
import json
import os

from nanogpt.util import die, report_usage_errors, written

report_usage_errors()  # library code's bad-input errors: one line, as die says them

PANELS = [  # (title, x, [(label, key of metrics.jsonl)], y log-scale)
    ('loss', 'iter', [('train (log lines)', 'loss'), ('train (eval)', 'train_loss'), ('val', 'val_loss')], False),
    ('loss against wall time', 'time_s', [('train (log lines)', 'loss'), ('val', 'val_loss')], False),
    ('learning rate', 'iter', [('lr', 'lr')], False),
    ('gradient norm (before clipping)', 'iter', [('grad norm', 'grad_norm')], True),
    ('tokens/s', 'iter', [('tokens/s', 'tokens_per_s')], False),
    ('update / weight (RMS)', 'iter', [('update/weight', 'update_to_weight')], True),
]


def read_metrics(run):
    """The entries of run/metrics.jsonl (or of that file itself), each a dict with its 'iter'."""
    path = run if run.endswith('.jsonl') else os.path.join(run, 'metrics.jsonl')
    if not os.path.isfile(path):
        die(f"no {path}: train.py writes it into its out_dir")
    entries = []
    with open(path, encoding='utf-8') as f:
        for line in f:
            try:
                entries.append(json.loads(line))
            except ValueError:
                pass  # a line cut short by a kill
    return entries


def series(entries, x, key):
    """(xs, ys) of the entries that hold key; x 'time_s' is the seconds since the run started."""
    points = [(e[x], e[key]) for e in entries if e.get(key) is not None and e.get(x) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def draw(runs, path):
    """Plot each run's metrics into the PNG at path; returns the figure."""
    import matplotlib
    matplotlib.use('Agg')  # files only: no display needed
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    for r, run in enumerate(runs):
        entries = read_metrics(run)
        name = os.path.basename(os.path.normpath(run))
        for ax, (title, x, keys, log) in zip(axes.flat, PANELS):
            for label, key in keys:
                xs, ys = series(entries, x, key)
                if xs:  # a colour per run, a style per series; evaluations (few points) with markers
                    ax.plot(xs, ys, {'loss': ':', 'train_loss': '--'}.get(key, '-'), color=f'C{r}',
                            marker='o' if len(xs) < 50 else None, markersize=3, linewidth=1,
                            label=f"{name}: {label}" if len(keys) > 1 or len(runs) > 1 else label)
            ax.set_title(title)
            ax.set_xlabel('seconds' if x == 'time_s' else 'iteration')
            if log:
                ax.set_yscale('log')
    for ax in axes.flat:
        if ax.lines:
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    with written(path) as f:
        fig.savefig(f, format='png', dpi=100)
    return fig


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('runs', nargs='+', help="out_dirs of train.py runs (or metrics.jsonl files)")
    parser.add_argument('--out', default='metrics.png', help='the PNG to write')
    args = parser.parse_args()
    draw(args.runs, args.out)
    print(f"wrote {args.out}")
