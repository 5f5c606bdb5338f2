"""
LoRA finetuning (through peft) and activation checkpointing, end to end as a user runs them: only
the adapters train and a LoRA run resumes bit for bit; ckpt.pt holds the merged weights, which
sample.py reads and whose logits equal the adapter model's; a LoRA finetune on a second text lowers
its val loss; the exported adapter loads onto transformers' GPT-2 through peft with equal logits;
activation checkpointing leaves every loss as it was (alone, with LoRA, under DDP and FSDP); bad
combinations end in one line. Run: python -m pytest tests/test_lora.py
"""
import glob
import os
import re
import warnings

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import TEXT, TINY, char_samples_ok, iter_losses, losses, one_line_error, prepare_dataset, run

LORA = ['--init_from=out/ckpt.pt', '--lora_rank=4', '--learning_rate=1e-2']


def load(*path):
    return torch.load(os.path.join(*path), weights_only=True)


def optimizer_file(out_dir):
    return load(glob.glob(os.path.join(out_dir, 'optimizer-*.pt'))[0])


def adapter_model(out_dir):
    """The model a LoRA checkpoint describes, adapters unmerged: its frozen base (from the optimizer file) and
    adapters."""
    from nanogpt.loading import model_from_checkpoint
    from nanogpt.lora import add_adapters, load_adapters, restore_base
    ckpt = load(out_dir, 'ckpt.pt')
    model = add_adapters(model_from_checkpoint(ckpt, dropout=0.0), ckpt['lora'])
    restore_base(model, optimizer_file(out_dir)['lora_base'])
    load_adapters(model, ckpt['lora']['adapters'])
    return model.eval()


def test_only_the_adapters_train_and_a_lora_run_resumes_bit_for_bit(trained_copy):
    common = [*TINY, *LORA, '--eval_interval=5', '--dropout=0.1', '--lora_dropout=0.1',
              '--gradient_accumulation_steps=2']
    straight = run(trained_copy, 'train.py', *common, '--max_iters=10', '--out_dir=straight').stdout
    run(trained_copy, 'train.py', *common, '--max_iters=5', '--out_dir=stopped')
    resumed = run(trained_copy, 'train.py', *common, '--max_iters=10', '--out_dir=stopped', '--init_from=resume').stdout
    assert 'LoRA adapters (rank 4) train' in straight and min(iter_losses(resumed)) == 5
    a, b = iter_losses(straight), iter_losses(resumed)
    assert all(a[i] == b[i] for i in range(5, 11))
    assert losses(os.path.join(trained_copy, 'straight')) == losses(os.path.join(trained_copy, 'stopped'))
    sa, sb = load(trained_copy, 'straight', 'ckpt.pt'), load(trained_copy, 'stopped', 'ckpt.pt')
    assert all(torch.equal(sa['model'][k], sb['model'][k]) for k in sa['model'])
    assert all(torch.equal(sa['lora']['adapters'][k], sb['lora']['adapters'][k]) for k in sa['lora']['adapters'])
    # frozen: the base weights are the starting checkpoint's, bit for bit; AdamW holds the adapters alone
    base, opt = load(trained_copy, 'out', 'ckpt.pt')['model'], optimizer_file(os.path.join(trained_copy, 'stopped'))
    assert opt['lora_base'] and all(torch.equal(v, base[k]) for k, v in opt['lora_base'].items())
    untargeted = [k for k in base if k not in opt['lora_base']]  # embeddings, norms, biases
    assert all(torch.equal(sb['model'][k], base[k]) for k in untargeted)
    assert len(opt['optimizer']['state']) == len(sb['lora']['adapters']) == 2 * 4 * 2  # A, B x 4 Linears x 2 blocks
    # ckpt.pt holds plain GPT weights, merged, in today's format: sample.py reads it as any other
    assert set(sb['model']) == set(base) and sb['lora']['rank'] == 4 and sb['lora']['base'] == 'out/ckpt.pt'
    out = run(trained_copy, 'sample.py', '--out_dir=stopped', '--num_samples=1', '--max_new_tokens=20', '--device=cpu')
    assert char_samples_ok(out.stdout, 1, 20), out.stdout


@pytest.fixture(scope='module')
def two_texts(tmp_path_factory):
    """A repo copy with a model trained on TEXT (out/) and a second text, TEXT with each line spelled backwards
    (data/other)."""
    from conftest import make_repo
    path = make_repo(tmp_path_factory.mktemp('two_texts'))
    run(path, 'train.py', *TINY, '--max_iters=30', '--eval_interval=30', '--lr_decay_iters=30', '--learning_rate=1e-2',
        '--out_dir=out')
    other = '\n'.join(line[::-1] for line in TEXT.split('\n'))  # the same characters (vocabulary), other statistics
    prepare_dataset(path, 'other', 'shakespeare_char', text=other)
    return path


def test_lora_finetune_on_a_second_text_lowers_its_val_loss_and_merges_exactly(two_texts):
    out = run(two_texts, 'train.py', *TINY, *LORA, '--dataset=other', '--lora_rank=8', '--max_iters=30',
              '--eval_interval=30', '--lr_decay_iters=30', '--out_dir=lora').stdout
    val = [float(v) for v in re.findall(r'^step \d+: train loss [\d.]+, val loss ([\d.]+)', out, re.M)]
    assert len(val) == 2 and val[1] < val[0] - 0.3, out  # the stated margin: 0.3 nats per character
    from nanogpt.loading import model_from_checkpoint
    merged = model_from_checkpoint(load(two_texts, 'lora', 'ckpt.pt'), dropout=0.0).eval()
    x = torch.randint(merged.config.vocab_size, (2, 16))
    with torch.no_grad():
        assert (merged(x, x)[0] - adapter_model(os.path.join(two_texts, 'lora'))(x, x)[0]).abs().max().item() < 1e-5


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_exported_adapter_loads_onto_transformers_gpt2_through_peft(tmp_path, dtype):
    """Under bfloat16 the frozen copy is rounded, but the merged weights are the full-precision base's plus the
    adapters: the whole export computes what peft's adapter on transformers' GPT-2 does."""
    from conftest import make_repo
    from peft import PeftModel
    path = make_repo(tmp_path)
    prepare_dataset(path, 'shakespeare', 'shakespeare')
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=50257, bos_token_id=None,
                               eos_token_id=None)).save_pretrained(os.path.join(path, 'tiny-gpt2'))
    out = run(path, 'train.py', 'config/finetune_shakespeare_lora.py', '--init_from=tiny-gpt2', '--block_size=32',
              '--max_iters=4', '--eval_interval=4', '--eval_iters=2', '--gradient_accumulation_steps=2',
              '--batch_size=2', '--learning_rate=1e-2', '--device=cpu', f'--dtype={dtype}', '--out_dir=ft').stdout
    assert 'saving checkpoint' in out
    out = run(path, 'export.py', '--out_dir=ft', '--adapter=True').stdout
    assert "PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained('tiny-gpt2'), 'ft/adapter')" in out
    with warnings.catch_warnings():  # peft asks transformers a question it has renamed (peft's to change, not ours)
        warnings.filterwarnings('ignore', '`is_gradient_checkpointing` is deprecated', FutureWarning)
        hf = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(os.path.join(path, 'tiny-gpt2')),
                                       os.path.join(path, 'ft', 'adapter')).eval()
    ckpt = load(path, 'ft', 'ckpt.pt')
    assert any(v.abs().sum() > 0 for k, v in ckpt['lora']['adapters'].items() if 'lora_B' in k)
    x = torch.randint(0, 50257, (2, 32))
    if dtype == 'float32':  # (in bfloat16, the adapter model's frozen copy is rounded)
        with torch.no_grad():
            assert (adapter_model(os.path.join(path, 'ft'))(x, x)[0] - hf(x).logits).abs().max().item() < 1e-5
    else:  # the full-precision base is kept beside the checkpoints, which name it; the merged weights are float32
        assert [f for f in os.listdir(os.path.join(path, 'ft')) if f.startswith('lora_base-')] == \
            [ckpt['lora']['full_base']]
        assert ckpt['model']['transformer.h.0.attn.c_attn.weight'].dtype == torch.float32
    # the merged checkpoint exports as a whole GPT-2 too, with the same logits
    run(path, 'export.py', '--out_dir=ft')
    merged = GPT2LMHeadModel.from_pretrained(os.path.join(path, 'ft', 'hf')).eval()
    with torch.no_grad():
        assert (merged(x).logits - hf(x).logits).abs().max().item() < (1e-5 if dtype == 'float32' else 1e-4)


def test_bfloat16_keeps_the_frozen_base_in_bfloat16_and_the_adapters_in_float32(trained_copy):
    args = [*TINY, *LORA, '--dtype=bfloat16', '--eval_interval=3', '--max_iters=3', '--out_dir=bf']
    run(trained_copy, 'train.py', *args)
    opt, ckpt = optimizer_file(os.path.join(trained_copy, 'bf')), load(trained_copy, 'bf', 'ckpt.pt')
    assert {v.dtype for v in opt['lora_base'].values()} == {torch.bfloat16}
    assert {v.dtype for v in ckpt['lora']['adapters'].values()} == {torch.float32}
    assert ckpt['model']['transformer.wte.weight'].dtype == torch.float32  # embeddings and norms stay float32
    resumed = run(trained_copy, 'train.py', *args[:-2], '--max_iters=5', '--out_dir=bf', '--init_from=resume').stdout
    assert min(iter_losses(resumed)) == 3


def test_activation_checkpointing_leaves_every_loss_as_it_was(trained_copy):
    common = [*TINY, '--eval_interval=4', '--max_iters=8', '--dropout=0.1', '--gradient_accumulation_steps=2']
    for name, extra in (('full', []), ('lora', [*LORA, '--lora_dropout=0.1'])):
        run(trained_copy, 'train.py', *common, *extra, f'--out_dir={name}')
        run(trained_copy, 'train.py', *common, *extra, '--activation_checkpointing=True', f'--out_dir={name}-ac')
        assert losses(os.path.join(trained_copy, name)) == losses(os.path.join(trained_copy, f'{name}-ac'))


@pytest.mark.parametrize('parallelism', ['ddp', 'fsdp'])
def test_activation_checkpointing_under_torchrun_leaves_the_losses(repo, parallelism):
    common = ['torchrun', '--standalone', '--nproc_per_node=2', 'train.py', *TINY, '--eval_interval=4', '--max_iters=6',
              '--dropout=0.1', '--gradient_accumulation_steps=2', f'--parallelism={parallelism}']
    run(repo, *common, '--out_dir=plain')
    run(repo, *common, '--activation_checkpointing=True', '--out_dir=ac')
    assert losses(os.path.join(repo, 'plain')) == losses(os.path.join(repo, 'ac'))


def test_lora_under_ddp_gives_one_process_losses(trained_copy):
    common = [*TINY, *LORA, '--eval_interval=4', '--max_iters=6', '--gradient_accumulation_steps=2']
    one = run(trained_copy, 'train.py', *common, '--out_dir=one').stdout
    two = run(trained_copy, 'torchrun', '--standalone', '--nproc_per_node=2', 'train.py', *common,
              '--out_dir=two').stdout
    assert iter_losses(one) == iter_losses(two) and len(iter_losses(one)) == 7
    run(trained_copy, 'torchrun', '--standalone', '--nproc_per_node=2', 'train.py', *common, '--max_iters=8',
        '--out_dir=two', '--init_from=resume')


def test_bad_lora_settings_are_one_line(trained_copy):
    p = run(trained_copy, 'train.py', *TINY, *LORA, '--lora_targets=nothing_here', '--max_iters=1', '--out_dir=x',
            check=False)
    one_line_error(p, "lora_targets 'nothing_here'")
    p = run(trained_copy, 'train.py', *TINY, '--init_from=resume', '--out_dir=out', '--lora_rank=4', check=False)
    one_line_error(p, "has lora_rank=0, but lora_rank=4 was asked (to LoRA-finetune it, use --init_from=out/ckpt.pt")
    run(trained_copy, 'train.py', *TINY, *LORA, '--max_iters=2', '--eval_interval=2', '--out_dir=lo')
    p = run(trained_copy, 'train.py', *TINY, '--init_from=resume', '--out_dir=lo', '--lora_rank=8', check=False)
    one_line_error(p, "has lora_rank=4, but lora_rank=8 was asked")
    p = run(trained_copy, 'torchrun', '--standalone', '--nproc_per_node=1', 'train.py', *TINY, *LORA,
            '--parallelism=fsdp', '--out_dir=y', check=False)
    assert p.returncode != 0 and "error: LoRA runs under DDP, not FSDP" in p.stderr
    p = run(trained_copy, 'export.py', '--out_dir=out', '--adapter=True', check=False)
    one_line_error(p, "is not a LoRA run's")
