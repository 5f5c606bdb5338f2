"""
bench.py on CPU: synthetic and real data, any config file, the profiler, and the memory mode (DDP vs
FSDP; full finetuning, LoRA and activation checkpointing measured); the peak FLOP/s MFU is measured against, for
each GPU model by its exact name, and the dtype 'auto' picks on CUDA by compute capability (both faked on CPU).
Run: python -m pytest tests/test_bench.py
"""
import os
import re

import pytest
import torch

from nanogpt import device
from conftest import one_line_error, run
from nanogpt.util import UsageError

SMALL = ['--device=cpu', '--dtype=float32', '--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=32',
         '--batch_size=4']


def test_bench_synthetic_prints_speed(repo, restore_matmul_precision):
    out = run(repo, 'bench.py', *SMALL, '--dataset=none', '--num_steps=3').stdout
    assert 'data: random tokens' in out
    assert re.search(r'device: cpu, dtype: float32, .*\(float32, (oneDNN matmuls, )?(SDPA attention|attention spelled '
                     r'out)\)', out), out  # the route it took, as train.py states it
    m = re.search(r'time per iteration: ([\d.]+)ms, tokens/s: ([\d,]+), MFU: ([\d.]+)% of ([\d.]+) TFLOP/s '
                  r'\(measured: a 2048\^3 float32 matmul\)', out)  # a CPU: no spec sheet, its own matmul rate
    assert m and float(m.group(1)) > 0 and int(m.group(2).replace(',', '')) > 0, out
    assert 0 < float(m.group(3)) < 100 and float(m.group(4)) > 0, out


def test_bench_runs_a_config_file_on_real_data(repo):
    out = run(repo, 'bench.py', 'config/train_shakespeare_char_cpu.py', '--dataset=tiny_char',
              '--num_steps=2', '--device=cpu', '--peak_flops=1e12').stdout
    assert 'data: data/tiny_char/train.bin' in out
    assert 'batch 12 x 64 x 1 micro-steps' in out  # the config's shape, not bench's defaults
    # train.py's settings that change no step are named, not silently dropped
    assert ("left aside (the config file's, unused by mode=train): always_save_checkpoint, eval_interval, eval_iters, "
            "log_interval, lr_decay_iters, max_iters, min_lr, warmup_iters") in out
    assert re.search(r'MFU: [\d.]+% of 1 TFLOP/s \(configured\)', out), out


def test_bench_settings_take_effect_or_are_refused(trained_copy):
    """LoRA, activation checkpointing and init_from shape the timed step; a setting another mode uses is an error."""
    repo, args = trained_copy, ['--device=cpu', '--dtype=float32', '--num_steps=1', '--dataset=tiny_char']
    out = run(repo, 'bench.py', *args, '--init_from=resume', '--batch_size=2', '--block_size=8', '--lora_rank=2',
              '--activation_checkpointing=True').stdout
    ckpt = torch.load(os.path.join(repo, 'out', 'ckpt.pt'), weights_only=True)
    n, layers = ckpt['model_args']['n_embd'], ckpt['model_args']['n_layer']
    lora = 2 * layers * ((n + 3 * n) + (n + n) + (n + 4 * n) + (4 * n + n))  # rank x (in + out) of each target
    params = sum(v.numel() for k, v in ckpt['model'].items() if 'wpe' not in k and k != 'lm_head.weight') + lora
    assert f"{params / 1e6:.2f}M parameters (LoRA rank 2: {lora:,} train)" in out, out
    assert 'batch 2 x 8 x 1 micro-steps' in out and out.rstrip().splitlines()[-1].startswith('time per iteration')
    assert ', activation checkpointing' in out
    for bad, expected in ((['--mode=generate', '--lora_rank=8'], 'lora_rank does not apply to mode=generate'),
                          (['--mode=memory', '--parallelism=fsdp'], 'parallelism does not apply to mode=memory '
                                                                     '(outside torchrun)'),
                          (['--init_from=resume', '--n_layer=4'], "n_layer is init_from's (resume)")):
        one_line_error(run(repo, 'bench.py', *args, *bad, check=False), expected)
    one_line_error(run(repo, 'bench.py', '--mode=generate', '--device=cpu', '--init_from=nonexistent', check=False),
                   "'nonexistent' is neither a directory")


def test_bench_profiler_prints_a_table_and_writes_a_trace(repo):
    out = run(repo, 'bench.py', *SMALL, '--dataset=none', '--profile=True').stdout
    assert 'Self CPU time total' in out and 'aten::' in out
    assert os.listdir(os.path.join(repo, 'bench_log'))


# (torch.cuda.get_device_name(), the model's bfloat16 peak, its TF32 peak): one case per row of the table, the
# names as the cards report them, and the names a substring match mistook for another card's
GPU_NAMES = [
    ('NVIDIA B200', 2250e12, 1125e12), ('NVIDIA H200', 989e12, 494e12), ('NVIDIA H200 NVL', 835e12, 418e12),
    ('NVIDIA GH200 480GB', 989e12, 494e12), ('NVIDIA H100 80GB HBM3', 989e12, 494e12),
    ('NVIDIA H100 PCIe', 756e12, 378e12), ('NVIDIA H100 NVL', 835e12, 418e12),
    ('NVIDIA A100-SXM4-80GB', 312e12, 156e12), ('NVIDIA A100 80GB PCIe', 312e12, 156e12),
    ('NVIDIA L40S', 362e12, 183e12), ('NVIDIA L40', 181e12, 90.5e12), ('NVIDIA L4', 121e12, 60e12),
    ('NVIDIA A10', 125e12, 62.5e12), ('NVIDIA A10G', 70e12, 35e12), ('NVIDIA GeForce RTX 3090', 71e12, 35.6e12),
    ('NVIDIA GeForce RTX 4090', 165.2e12, 82.6e12), ('NVIDIA GeForce RTX 5090', 209.5e12, 104.8e12),
    ('NVIDIA RTX A6000', 154.8e12, 77.4e12), ('NVIDIA RTX 6000 Ada Generation', 364.2e12, 182.1e12),
    ('Tesla V100-SXM2-16GB', 125e12, 15.7e12), ('Tesla V100-PCIE-32GB', 112e12, 14e12), ('Tesla T4', 65e12, 8.1e12),
]


@pytest.mark.parametrize('name,half,tf32', GPU_NAMES, ids=[n for n, _, _ in GPU_NAMES])
def test_peak_flops_of_each_gpu_model_by_dtype(monkeypatch, name, half, tf32):
    GPU = torch.device('cuda:0')
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device: name)
    assert device.peak_flops(GPU, 'bfloat16') == device.peak_flops(GPU, 'float16') == half
    assert device.peak_flops(GPU, 'float32') == tf32
    assert device.peak_flops(GPU, 'bfloat16', configured=5e14) == 5e14


def test_an_unknown_gpu_has_no_peak_and_says_so_once(monkeypatch, capsys):
    GPU = torch.device('cuda:0')
    for name in ('Some Future GPU', 'NVIDIA H800', 'NVIDIA GeForce RTX 4090 D', 'NVIDIA A100X'):
        monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device: name)
        assert device.peak_flops(GPU, 'bfloat16') is None
        err = capsys.readouterr().err
        assert err == f"warning: no peak FLOP/s known for {name}: mfu n/a (set --peak_flops=<its dense bfloat16 " \
                      f"FLOP/s>)\n"
    assert device.peak_flops(torch.device('cpu'), 'float32') is None  # bench.py measures a CPU instead
    assert capsys.readouterr().err == ''


@pytest.mark.parametrize('capability,auto', [((7, 0), 'float16'), ((7, 5), 'float16'), ((8, 0), 'bfloat16'),
                                             ((8, 9), 'bfloat16'), ((9, 0), 'bfloat16'), ((12, 0), 'bfloat16')])
def test_auto_dtype_on_cuda_is_bfloat16_only_where_native(monkeypatch, capability, auto):
    """A V100 (7.0) or T4 (7.5) gets float16, though torch's is_bf16_supported() counts their emulated bfloat16."""
    GPU = torch.device('cuda:0')
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: 'Tesla T4')
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda including_emulation=True: True)
    assert device.pick_dtype(GPU, 'auto') == auto
    assert device.pick_dtype(GPU, 'float16') == 'float16'
    if auto == 'float16':
        with pytest.raises(UsageError) as e:
            device.pick_dtype(GPU, 'bfloat16')
        assert str(e.value) == (f"bfloat16 asked for, but Tesla T4 has no bfloat16 units (compute capability "
                                f"{capability[0]}.{capability[1]}): use --dtype=float16")
    else:
        assert device.pick_dtype(GPU, 'bfloat16') == 'bfloat16'


def test_bench_memory_fsdp_holds_half_of_ddp_per_process(repo):
    """
    bench.py --mode=memory: the per-process table (16 bytes a parameter under DDP, a 1/N share under
    FSDP), and under torchrun with 2 processes the measured weights, gradients and AdamW state of
    rank 0 after one step: FSDP2's share is half of DDP's full copy.
    """
    args = ['--mode=memory', *SMALL]
    table = run(repo, 'bench.py', *args, '--memory_rows=full').stdout
    n = int(re.search(r'^([\d,]+) parameters', table, re.M).group(1).replace(',', ''))
    ddp8, fsdp8 = map(float, re.search(r'8 processes: DDP\s+([\d.]+) GiB, FSDP\s+([\d.]+) GiB', table).groups())
    assert ddp8 == pytest.approx(16 * n / 2**30, abs=0.01) and fsdp8 == pytest.approx(ddp8 / 8, abs=0.01)
    totals = {}
    for parallelism in ('ddp', 'fsdp'):
        out = run(repo, 'torchrun', '--standalone', '--nproc_per_node=2', 'bench.py', *args,
                  f'--parallelism={parallelism}').stdout
        m = re.search(rf'measured on rank 0 of 2 \({parallelism}\): weights ([\d.]+) MiB, gradients ([\d.]+) MiB, '
                      rf'AdamW state ([\d.]+) MiB, total ([\d.]+) MiB', out)
        assert m, out
        weights, grads, state, total = map(float, m.groups())
        assert grads == weights and state == pytest.approx(2 * weights, abs=0.1)
        totals[parallelism] = total
    assert totals['ddp'] == pytest.approx(16 * n / 2**20, rel=0.01)
    assert totals['fsdp'] == pytest.approx(totals['ddp'] / 2, rel=0.02)


def test_bench_memory_rows_activation_checkpointing_holds_less(repo):
    """
    bench.py --mode=memory's measured rows (full finetuning, LoRA, each with activation checkpointing),
    each in a process of its own, at a shape whose activations outweigh its weights. Recomputing
    them in the backward pass lowers the peak by most of their size.
    """
    shape = ['--dataset=tiny_char', '--device=cpu', '--dtype=float32', '--n_layer=8', '--n_head=4', '--n_embd=256',
             '--block_size=512', '--batch_size=8', '--num_steps=1']
    out = ''.join(run(repo, 'bench.py', '--mode=memory', *shape, f'--memory_rows={row}').stdout
                  for row in ('full', 'full+ac', 'lora', 'lora+ac'))
    peaks = dict(re.findall(r'^(full|full \+ AC|LoRA r=8|LoRA r=8 \+ AC) +([\d.]+) ', out, re.M))
    assert len(peaks) == 4, out
    peaks = {k: float(v) for k, v in peaks.items()}
    assert peaks['full + AC'] < peaks['full'] - 0.2 and peaks['LoRA r=8 + AC'] < peaks['LoRA r=8'] - 0.2, out
