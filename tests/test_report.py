"""
A run that reports itself: progress and time left on each log line (after nanoGPT's own text), a
summary at the end, sample.py's progress bar on stderr, and exported files with the same permissions
as checkpoints (out_dir/metrics.jsonl is checked in test_train.py's resume test, a summary without a
checkpoint in test_reliability.py). Run: python -m pytest tests/test_report.py
"""
import os
import re
import stat

from conftest import TINY, run


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


def test_sample_progress_bar_on_stderr(trained):
    p = run(trained, 'sample.py', '--out_dir=out', '--num_samples=3', '--max_new_tokens=20', '--start=First')
    assert 'sampling 3 x 20 tokens' in p.stderr and '20/20' in p.stderr
    assert 'sampling' not in p.stdout and p.stdout.count('---------------') == 3


def test_export_has_the_permissions_of_a_checkpoint(trained):
    run(trained, 'export.py', '--out_dir=out', '--export_dir=hf_perm')
    mode = lambda p: stat.S_IMODE(os.stat(os.path.join(trained, p)).st_mode)
    assert mode('hf_perm/model.safetensors') == mode('hf_perm/config.json') == mode('out/ckpt.pt')
    assert not any(f.endswith('.tmp') for f in os.listdir(os.path.join(trained, 'hf_perm')))
