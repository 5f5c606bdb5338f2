"""
model.py on its own: last-position logits at inference, block-size surgery, optimizer groups,
MFU and the FLOPs it counts (held against PyTorch's FlopCounterMode for every option, tied and untied
heads, LoRA and activation checkpointing) and generation (GPT-2 exactness is in test_gpt2.py).
model.py copied alone into an empty directory: it imports torch and the standard library only, and a GPT
trains a step, samples and answers nanoGPT's configure_optimizers(..., 'cpu') and estimate_mfu(...).
Run: python -m pytest tests/test_model.py
"""
import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from model import GPT, GPTConfig
from conftest import REPO, script_env


def test_inference_computes_last_position_only():
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11)).eval()
    x = torch.randint(0, 11, (3, 8))
    logits, loss = model(x)
    full, _ = model(x, x)
    assert loss is None and logits.shape == (3, 1, 11)
    assert torch.allclose(logits[:, 0], full[:, -1], atol=1e-6)


def test_crop_block_size_and_generate_past_it():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=11)).eval()
    model.crop_block_size(8)
    assert model.config.block_size == 8 and model.transformer.wpe.weight.shape == (8, 16)
    out = model.generate(torch.zeros(2, 3, dtype=torch.long), max_new_tokens=12, top_k=5)
    assert out.shape == (2, 15) and out.max() < 11
    # past the cropped context, each token is the likeliest after the last 8 (nanoGPT's generate, spelled out)
    idx = torch.zeros(2, 3, dtype=torch.long)
    for _ in range(12):
        idx = torch.cat([idx, model(idx[:, -8:])[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(model.generate(torch.zeros(2, 3, dtype=torch.long), 12, temperature=0), idx)


def test_optimizer_decays_matrices_only():
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=11))
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95))
    decay, no_decay = opt.param_groups
    assert decay['weight_decay'] == 0.1 and all(p.dim() == 2 for p in decay['params'])
    assert no_decay['weight_decay'] == 0.0 and all(p.dim() == 1 for p in no_decay['params'])
    assert len(decay['params']) + len(no_decay['params']) == len(list(model.parameters()))
    assert opt.defaults['fused']  # fused AdamW on CPU


def test_mfu_against_a_peak_or_none():
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=11))
    assert model.estimate_mfu(4, 0.01, None) is None
    assert model.estimate_mfu(4, 0.01) == model.estimate_mfu(4, 0.01, 312e12)  # nanoGPT's A100 figure
    flops = model.flops_per_token() * 8 * 4 / 0.01
    assert model.estimate_mfu(4, 0.01, 2 * flops) == pytest.approx(0.5)


@pytest.mark.parametrize('options', [{}, dict(tie_weights=False), dict(bias=False), dict(activation='gelu_tanh'),
                                     dict(activation='relu2'), dict(pos_encoding='rotary'), dict(pos_encoding='alibi'),
                                     dict(qk_norm=True), dict(norm='rmsnorm'), dict(zero_init_proj=True),
                                     dict(logit_softcap=15.0), dict(lora=True), dict(lora=True, tie_weights=False),
                                     dict(activation_checkpointing=True)], ids=repr)
def test_flops_per_token_are_the_steps_own(options):
    """flops_per_token against FlopCounterMode over one forward and backward: the head once, tied or not, no
    FLOPs for embedding lookups, frozen weights (LoRA) at forward plus input-gradient cost, and activation
    checkpointing's recomputation left out. (Attention spelled out as matmuls: the counter has no formula for
    the CPU's fused attention kernel.)"""
    options = dict(options)
    lora, checkpointed = options.pop('lora', False), options.pop('activation_checkpointing', False)
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=3, n_head=2, n_embd=64, block_size=32, vocab_size=97, spelled_out_keys=32, **options))
    if lora:
        from nanogpt.lora import add_adapters, lora_settings
        add_adapters(model, lora_settings(4, 16, 0.0, 'c_attn,c_proj,c_fc'))
    x = torch.randint(0, 97, (2, 32))

    def counted():
        with FlopCounterMode(display=False) as counter:
            model(x, x)[1].backward()
        return counter.get_total_flops() / x.numel()
    assert model.flops_per_token() == pytest.approx(counted(), rel=0.03)
    if checkpointed:  # the counter sees the recomputed forward; MFU's model FLOPs do not change
        model.config.activation_checkpointing = True
        assert counted() > 1.2 * model.flops_per_token()


def test_checkpoint_args_are_nanogpts_seven():
    cfg = GPTConfig(activation='gelu_tanh')
    assert set(cfg.model_args()) == {'n_layer', 'n_head', 'n_embd', 'block_size', 'bias', 'vocab_size', 'dropout'}
    assert cfg.model_options() == {'activation': 'gelu_tanh'}


ALONE = """
import sys
import torch
with_torch = set(sys.modules)
from model import GPT, GPTConfig
added = {m.split('.')[0] for m in set(sys.modules) - with_torch} - set(sys.stdlib_module_names) - {'model', 'torch'}
assert not added, added
torch.manual_seed(0)
model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50))
optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu')  # nanoGPT's call
x = torch.randint(0, 50, (2, 16))
before = model.transformer.h[0].attn.c_attn.weight.clone()
model(x, x)[1].backward()
optimizer.step()
assert not torch.equal(before, model.transformer.h[0].attn.c_attn.weight)
mfu = model.estimate_mfu(2 * 16, 0.5)  # nanoGPT's call: against its A100 figure
out = model.eval().generate(x[:, :4], 20, temperature=0.8, top_k=5)  # past block_size: the last 16 tokens
greedy = model.generate(x[:, :4], 3, temperature=0)
assert out.shape == (2, 24) and greedy.shape == (2, 7) and 0 < mfu < 1
try:
    model.generate(x[:, :4], 3, top_p=0.9)  # top_p is nanogpt/generate.py's
except ModuleNotFoundError as e:
    print('alone', e.name)
"""


def test_model_py_stands_alone(tmp_path):
    shutil.copy(os.path.join(REPO, 'model.py'), tmp_path)
    env = {k: v for k, v in script_env().items() if k != 'PYTHONPATH'}
    p = subprocess.run([sys.executable, '-c', ALONE], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == 'alone nanogpt', p.stdout + p.stderr
