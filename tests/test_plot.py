"""
plot.py: the metrics.jsonl of runs drawn into a PNG, each panel's points the file's values.
Run: python -m pytest tests/test_plot.py
"""
import json
import os

import plot
from conftest import one_line_error, run


def test_plot_draws_the_files_values(trained, tmp_path):
    path = tmp_path / 'metrics.png'
    out = run(trained, 'plot.py', 'out', f'--out={path}').stdout
    assert out.strip() == f"wrote {path}"
    with open(path, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    with open(os.path.join(trained, 'out', 'metrics.jsonl')) as f:
        entries = [json.loads(line) for line in f]
    fig = plot.draw([os.path.join(trained, 'out')], str(tmp_path / 'again.png'))
    for ax, (title, x, keys, _) in zip(fig.axes, plot.PANELS):
        drawn = [(list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines]
        want = [([e[x] for e in entries if key in e], [e[key] for e in entries if key in e]) for _, key in keys]
        assert drawn == [w for w in want if w[0]], title
    losses = fig.axes[0].lines
    assert len(losses) == 3 and len(losses[2].get_xdata()) == 3  # val at iterations 0, 5 and 10
    assert len(fig.axes[1].lines[0].get_xdata()) == 11  # every log line, against its seconds


def test_plot_of_a_run_without_metrics_is_one_line(tmp_path):
    one_line_error(run(str(tmp_path), os.path.join(plot.__file__), 'nowhere', check=False), 'no nowhere/metrics.jsonl')
