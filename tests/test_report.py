"""
A run that reports itself: progress and time left on each log line (after nanoGPT's own text), a
summary at the end, out_dir/metrics.jsonl (one record per log line and evaluation, no duplicates
across a resume), sample.py's progress bar on stderr, and exported files with the same permissions
as checkpoints. Run: python -m pytest tests/test_report.py
"""
import json
import os
import re
import stat

from conftest import TINY, run


def records(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_log_lines_show_progress_and_time_left(repo):
    out = run(repo, 'train.py', *TINY, '--max_iters=20', '--eval_interval=10', '--out_dir=out').stdout
    lines = re.findall(r'^iter (\d+): loss [\d.]+, time [\d.]+ms, mfu n/a, ([\d.]+)%, (\S+) left$', out, re.M)
    assert [int(i) for i, _, _ in lines] == list(range(21)), out
    assert [float(p) for _, p, _ in lines] == [100 * i / 20 for i in range(21)]
    assert all(re.fullmatch(r'(\d+h\d\dm|\d+m\d\ds|\d+s)', left) for _, _, left in lines)
    assert lines[-1][2] == '0s'
    summary = out.strip().splitlines()[-2:]
    assert re.fullmatch(r'training done: 21 iterations \(iter 0 to 20\) in \d+s, best val loss [\d.]+ at iter 20',
                        summary[0]), summary
    assert summary[1] == 'checkpoint: out/ckpt.pt (iter 20); sample from it with: python sample.py --out_dir=out'


def test_summary_without_a_checkpoint(repo):
    out = run(repo, 'train.py', *TINY, '--max_iters=3', '--eval_interval=10', '--out_dir=out').stdout
    assert out.strip().splitlines()[-1] == \
        'no checkpoint written: one is saved at each evaluation after iter 0 (eval_interval=10)'


def test_metrics_jsonl_records_every_line_once_across_resumes(repo):
    args = [*TINY, '--eval_interval=5', '--dropout=0.1']
    straight = run(repo, 'train.py', *args, '--max_iters=15', '--out_dir=a').stdout
    run(repo, 'train.py', *args, '--max_iters=10', '--out_dir=b')
    run(repo, 'train.py', *args, '--max_iters=15', '--out_dir=b', '--init_from=resume')
    a, b = records(os.path.join(repo, 'a', 'metrics.jsonl')), records(os.path.join(repo, 'b', 'metrics.jsonl'))
    # every printed line is a record, with the same numbers
    losses = {int(i): float(l) for i, l in re.findall(r'^iter (\d+): loss ([\d.]+)', straight, re.M)}
    assert {r['iter']: round(r['loss'], 4) for r in a if 'loss' in r} == losses
    evals = [(int(i), float(v)) for i, v in re.findall(r'^step (\d+): train loss [\d.]+, val loss ([\d.]+)', straight, re.M)]
    assert [(r['iter'], round(r['val_loss'], 4)) for r in a if 'val_loss' in r] == evals
    # stopped at 10 and resumed: each iteration once, the same record as the straight run (timings aside)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ('time_ms', 'mfu')} for r in rs]
    assert strip(b) == strip(a)
    assert [r['iter'] for r in b if 'loss' in r] == list(range(16))


def test_sample_progress_bar_on_stderr(trained):
    p = run(trained, 'sample.py', '--out_dir=out', '--num_samples=3', '--max_new_tokens=20', '--start=First')
    assert 'sampling 3 x 20 tokens' in p.stderr and '20/20' in p.stderr
    assert 'sampling' not in p.stdout and p.stdout.count('---------------') == 3


def test_export_has_the_permissions_of_a_checkpoint(trained):
    run(trained, 'export.py', '--out_dir=out', '--export_dir=hf_perm')
    mode = lambda p: stat.S_IMODE(os.stat(os.path.join(trained, p)).st_mode)
    assert mode('hf_perm/model.safetensors') == mode('hf_perm/config.json') == mode('out/ckpt.pt')
    assert not any(f.endswith('.tmp') for f in os.listdir(os.path.join(trained, 'hf_perm')))
