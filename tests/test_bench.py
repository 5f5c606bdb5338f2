"""
bench.py on CPU: synthetic and real data, any config file, and the profiler.
Run: python -m pytest tests/test_bench.py
"""
import os
import re

from conftest import run

SMALL = ['--device=cpu', '--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=32', '--batch_size=4']


def test_bench_synthetic_prints_speed(repo):
    out = run(repo, 'bench.py', *SMALL, '--dataset=none', '--num_steps=3').stdout
    assert 'data: random tokens' in out
    m = re.search(r'time per iteration: ([\d.]+)ms, tokens/s: ([\d,]+), MFU: n/a', out)
    assert m and float(m.group(1)) > 0 and int(m.group(2).replace(',', '')) > 0, out


def test_bench_runs_a_config_file_on_real_data(repo):
    out = run(repo, 'bench.py', 'config/train_shakespeare_char_cpu.py', '--dataset=tiny_char',
              '--num_steps=2', '--device=cpu', '--peak_flops=1e12').stdout
    assert 'data: data/tiny_char/train.bin' in out
    assert 'batch 12 x 64 x 1 micro-steps' in out  # the config's shape, not bench's defaults
    assert re.search(r'MFU: [\d.]+% of 1.0 TFLOP/s', out), out


def test_bench_profiler(repo):
    out = run(repo, 'bench.py', *SMALL, '--dataset=none', '--profile=True').stdout
    assert 'Self CPU time total' in out and 'aten::' in out
    assert os.listdir(os.path.join(repo, 'bench_log'))
