"""
GPU checks, deselected by default so that the CPU suite reports nothing skipped. On a machine with
a CUDA GPU: python -m pytest -m cuda
A tiny model trains on CUDA with bfloat16 autocast, with float16 and its gradient scaler, and with
torch.compile, then samples there; DDP in two processes (NCCL over two GPUs, else gloo on one); FSDP
trains with bfloat16 and torch.compile, resumes and samples; every model option with Muon (its
Newton-Schulz in bfloat16 there) trains compiled, resumes and samples past block_size;
eval.py scores HellaSwag on CUDA as it does on the CPU; bfloat16 and int8 weights (nanogpt/quantize.py)
keep the logits there and sample.
"""
import copy
import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from model import GPT, GPTConfig
from conftest import REPO, TINY, iter_losses, run
from nanogpt.loading import reduce_weights

pytestmark = pytest.mark.cuda
CUDA = [a for a in TINY if a not in ('--device=cpu', '--dtype=float32')] + ['--device=cuda']


@pytest.mark.parametrize('dtype,compile', [('bfloat16', False), ('float16', False), ('bfloat16', True)])
def test_train_and_sample_on_cuda(repo, dtype, compile):
    out = run(repo, 'train.py', *CUDA, f'--dtype={dtype}', f'--compile={compile}', '--max_iters=30',
              '--eval_interval=30', '--out_dir=out', timeout=600).stdout
    assert f'device: cuda:0, dtype: {dtype}' in out
    losses = iter_losses(out)
    assert losses[30] < losses[0], losses
    assert 'peak mem' in out
    sample = run(repo, 'sample.py', '--out_dir=out', '--device=cuda', '--num_samples=2', '--max_new_tokens=20').stdout
    assert sample.count('---------------') == 2


def two_processes():
    """torchrun's arguments for two processes on this machine's GPUs: NCCL on two, else gloo sharing the one."""
    return [] if torch.cuda.device_count() >= 2 else ['--device=cuda:0', '--backend=gloo']


def test_ddp_on_cuda_matches_one_process(repo):
    args = [*CUDA, '--dtype=float32', '--gradient_accumulation_steps=2', '--max_iters=8', '--eval_interval=8']
    one = iter_losses(run(repo, 'train.py', *args, '--out_dir=one').stdout)
    ddp = run(repo, 'torchrun', '--standalone', '--nproc_per_node=2', 'train.py', *args, *two_processes(),
              '--out_dir=ddp').stdout
    assert 'device: cuda:0' in ddp
    many = iter_losses(ddp)
    assert sorted(many) == list(range(9)) and max(abs(one[i] - many[i]) for i in one) < 1e-3


def test_fsdp_on_cuda_with_bfloat16_and_compile_resumes_and_samples(repo):
    args = [*CUDA, '--dtype=bfloat16', '--compile=True', '--parallelism=fsdp', '--gradient_accumulation_steps=2',
            '--eval_interval=20', *two_processes()]
    torchrun = ['torchrun', '--standalone', '--nproc_per_node=2', 'train.py']
    out = run(repo, *torchrun, *args, '--max_iters=20', '--out_dir=fsdp', timeout=600).stdout
    assert 'dtype: bfloat16, FSDP' in out
    losses = iter_losses(out)
    assert losses[20] < losses[0], losses
    resumed = run(repo, *torchrun, *args, '--max_iters=24', '--out_dir=fsdp', '--init_from=resume', timeout=600).stdout
    assert sorted(iter_losses(resumed)) == list(range(20, 25))
    sample = run(repo, 'sample.py', '--out_dir=fsdp', '--device=cuda', '--num_samples=1', '--max_new_tokens=20').stdout
    assert sample.count('---------------') == 1


def test_options_and_muon_on_cuda_compile_resume_exactly_and_sample(repo):
    args = [*CUDA, '--dtype=bfloat16', '--compile=True', '--pos_encoding=rotary', '--qk_norm=True',
            '--activation=relu2', '--norm=rmsnorm', '--tie_weights=False', '--zero_init_proj=True',
            '--logit_softcap=15.0', '--optimizer=muon', '--eval_interval=10', '--gradient_accumulation_steps=2']
    straight = iter_losses(run(repo, 'train.py', *args, '--max_iters=20', '--out_dir=a', timeout=600).stdout)
    assert straight[20] < straight[0], straight
    run(repo, 'train.py', *args, '--max_iters=10', '--out_dir=b', timeout=600)
    resumed = iter_losses(run(repo, 'train.py', *args, '--max_iters=20', '--out_dir=b', '--init_from=resume',
                              timeout=600).stdout)
    assert sorted(resumed) == list(range(10, 21))
    # GPU kernels may add in any order (embedding backward's atomics), so up to rounding, not bit for bit
    diff = max(abs(resumed[i] - straight[i]) for i in resumed)
    print(f'resumed vs straight: max loss difference {diff:.4f}')
    assert diff < 5e-3, (resumed, straight)
    sample = run(repo, 'sample.py', '--out_dir=a', '--device=cuda', '--num_samples=1', '--max_new_tokens=40').stdout
    assert sample.count('---------------') == 1  # 40 new tokens: past block_size (16), on the ring cache


def test_eval_on_cuda_equals_cpu(tmp_path):
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64)).save_pretrained(tmp_path / 'gpt2')
    rows = [{'ctx': 'A man is sitting on a roof. He', 'label': 3,
             'endings': ['is using wrap.', 'is ripping tiles off.', 'is holding a cube.',
                         'starts pulling up roofing.']}] * 4
    (tmp_path / 'hs.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    results = {}
    for device in ('cpu', 'cuda'):
        run(REPO, 'eval.py', f'--init_from={tmp_path / "gpt2"}', f'--data_file={tmp_path / "hs.jsonl"}',
            f'--device={device}', '--dtype=float32', f'--out_dir={tmp_path / device}')
        results[device] = json.loads((tmp_path / device / 'eval_hellaswag.json').read_text())
    assert results['cuda']['acc_norm'] == results['cpu']['acc_norm'] and results['cuda']['examples'] == 4


@pytest.mark.parametrize('weight_dtype', ['bfloat16', 'int8'])
def test_reduced_weights_on_cuda(weight_dtype):
    torch.manual_seed(0)
    ref = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=100, bias=True)).eval()
    x = torch.randint(0, 100, (4, 32))
    model = reduce_weights(copy.deepcopy(ref), weight_dtype).cuda()
    with torch.no_grad():
        want, want_one = ref(x, x)[0], ref(x[:1, :1])[0]
        for autocast in (False, True):  # float32 activations, and bfloat16 ones as sample.py runs by default
            with torch.autocast('cuda', torch.bfloat16, enabled=autocast):
                got, one = model(x.cuda(), x.cuda())[0].float().cpu(), model(x[:1, :1].cuda())[0].float().cpu()
                tokens = model.generate(x[:1, :4].cuda(), 40, temperature=0)  # past block_size, on the ring cache
            tolerance = 0.05 if autocast else 0.01
            assert (got - want).abs().max() < tolerance and (one - want_one).abs().max() < tolerance
            assert tokens.shape == (1, 44)
