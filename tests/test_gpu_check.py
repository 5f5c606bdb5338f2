"""
The GPU check (tools/gpu_check.py) works before a GPU is lent: its dry run runs every row, tiny and on
the CPU (the cuda tests collected, each training row of the sweep, nanoGPT's model, DDP and FSDP in
two processes, the XL-shaped LoRA memory row, bfloat16 and int8 decoding), and prints one table with
none failed. Run: python -m pytest tests/test_gpu_check.py
"""
import re
import subprocess
import sys

from conftest import REPO


def test_gpu_check_dry_run_prints_its_whole_table():
    p = subprocess.run([sys.executable, 'tools/gpu_check.py', '--dry_run=True'], cwd=REPO, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    table = [l for l in p.stdout.splitlines() if l.startswith('| ') and not l.startswith('| ---')]
    assert table[0].startswith('| no GPU (dry run on the CPU), torch ')
    rows = {l.split(' | ')[0][2:]: l.split(' | ')[1] for l in table[1:]}
    assert re.match(r'\d+ tests collected', rows['python -m pytest -m cuda'])
    for what in ('124M train, batch 8, compiled, SDPA auto', '124M train, batch 8, compiled, SDPA flash',
                 '124M train, batch 8, compiled, SDPA math', '124M train, batch 8, uncompiled'):
        assert re.match(r'[\d,]+ tokens/s, [\d.]+ ms/iter, MFU [\d.]+%', rows[what]), (what, rows[what])
    assert rows["nanoGPT's model (its bench.py needs CUDA)"] == 'builds and trains a step'
    for parallelism in ('DDP', 'FSDP'):
        assert 'total' in rows[f'2-process {parallelism} on one device, memory per process']
    assert rows['GPT-2 XL shape, LoRA r=8 + AC, peak memory'].startswith('peak ')
    for weight_dtype in ('bfloat16', 'int8'):
        assert re.match(r'[\d.]+ tokens/s \(limit [\d.]+\)', rows[f'124M decoding, batch 1, {weight_dtype} weights'])
    assert p.stdout.strip().endswith('11 rows measured, 0 failed')
