"""
The GPU check (tools/gpu_check.py) works before a GPU is lent: its dry run runs every row, tiny and on
the CPU (ours beside nanoGPT's model, the sweep's training rows at one micro-batch, DDP and FSDP in two
processes, decoding in each weight dtype, the XL-shaped LoRA memory row, the cuda tests collected),
prints each row as it ends and appends it to its file at once; with a deadline too short for every row it skips each
and says so, and without GPT-2's BPE in a tiktoken cache it skips the tests that need it.
Run: python -m pytest tests/test_gpu_check.py
"""
import os
import re
import shutil
import subprocess
import sys

from conftest import REPO, script_env


def table_rows(text):
    """{what: result} of the table's rows in text."""
    rows = [l for l in text.splitlines() if l.startswith('| ') and not l.startswith('| ---')]
    return rows[0], {l.split(' | ')[0][2:]: l.split(' | ')[1] for l in rows[1:]}


def test_gpu_check_dry_run_measures_every_row_and_writes_each_as_it_ends(tmp_path):
    out = tmp_path / 'gpu_check.md'
    p = subprocess.run([sys.executable, 'tools/gpu_check.py', '--dry_run=True', f'--out={out}'], cwd=REPO,
                       capture_output=True, text=True, timeout=600, env=script_env())
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    heading, rows = table_rows(p.stdout)
    assert heading.startswith('| no GPU (dry run on the CPU), torch ') and 'deadline 420 s' in heading
    assert table_rows(out.read_text()) == (heading, rows)  # the file holds what was printed
    assert re.match(r"ours [\d,]+ tokens/s, [\d.]+ ms/iter, MFU [\d.]+%; nanoGPT's model builds and trains a step$",
                    rows["124M train, batch 12, compiled: ours beside nanoGPT's"])
    for what in ('124M train, batch 8, compiled, SDPA auto', '124M train, batch 12, compiled, SDPA flash',
                 '124M train, batch 12, compiled, SDPA math', '124M train, batch 12, uncompiled'):
        assert re.match(r'[\d,]+ tokens/s, [\d.]+ ms/iter, MFU [\d.]+%', rows[what]), (what, rows[what])
    for parallelism in ('DDP', 'FSDP'):
        assert 'total' in rows[f'2-process {parallelism} on one device, memory per process']
    assert rows['GPT-2 XL shape, LoRA r=8 + AC, peak memory'].startswith('peak ')
    assert re.fullmatch(', '.join(rf'{w} [\d.]+ tokens/s \(limit [\d.]+, first token [\d.]+ms\)'
                                  for w in ('float32', 'bfloat16', 'int8')),
                        rows['124M decoding, batch 1, float32, bfloat16 and int8 weights'])
    assert re.match(r'\d+ tests collected', rows['python -m pytest -m cuda'])
    assert len(rows) == 10 and re.search(r'^10 rows measured, 0 skipped, 0 failed in \d+ s', p.stdout, re.M)


def test_gpu_check_skips_what_its_deadline_cannot_fit_and_what_needs_gpt2s_bpe(tmp_path):
    """A copy of the check away from ../shared, with no tiktoken cache anywhere it looks, and one second for all."""
    os.makedirs(tmp_path / 'repo' / 'tools')
    shutil.copy(os.path.join(REPO, 'tools', 'gpu_check.py'), tmp_path / 'repo' / 'tools')
    shutil.copy(os.path.join(REPO, 'configurator.py'), tmp_path / 'repo')
    os.makedirs(tmp_path / 'empty')
    env = script_env({'TIKTOKEN_CACHE_DIR': str(tmp_path / 'empty'), 'TMPDIR': str(tmp_path / 'empty')})
    p = subprocess.run([sys.executable, 'tools/gpu_check.py', '--dry_run=True', '--deadline=1', '--out=t.md'],
                       cwd=tmp_path / 'repo', capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert table_rows((tmp_path / 'repo' / 't.md').read_text()) == table_rows(p.stdout)
    _, rows = table_rows(p.stdout)
    assert rows.pop('python -m pytest -m cuda') == ("skipped: needs GPT-2's BPE in a tiktoken cache "
                                                    "(TIKTOKEN_CACHE_DIR), and there is no network")
    assert len(rows) == 9 and all(re.fullmatch(r'skipped: needs about \d+ s, [01] s left', r) for r in rows.values())
    assert re.search(r'^0 rows measured, 10 skipped, 0 failed', p.stdout, re.M)
