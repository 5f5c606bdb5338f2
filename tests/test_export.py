"""
export.py's files run anywhere: GPT-2's tokenizer built offline from tiktoken's ranks has GPT-2's merges (the
export's AutoTokenizer, network off: test_gpt2.py); the GGUF file (llama.cpp's gpt2 architecture; f32, bf16,
q8_0) read back with the gguf package holds the architecture, every tensor and the tokenizer; greedy tokens
computed from the file alone (tests/gguf_reference.py) equal sample.py's for GPT-2's BPE, a trained BPE,
characters and an untied head; what llama.cpp cannot express and a bad type are one line each, with nothing
written. Run: python -m pytest tests/test_export.py
"""
import os

import pytest
import torch

from conftest import TINY, make_repo, one_line_error, prepare_dataset, run
from gguf_reference import GGUFModel
from nanogpt.tokenizer import Tokenizer

SMALL = ['--n_layer=2', '--n_head=2', '--n_embd=64', '--block_size=64', '--batch_size=8', '--dropout=0.0',
         '--device=cpu', '--compile=False', '--eval_iters=2', '--learning_rate=3e-3', '--warmup_iters=10',
         '--gradient_accumulation_steps=1']
TEXT = "ROMEO:\nBut soft, what light through yonder window breaks? It is the east, and Juliet is the sun.\n" * 40


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    """A repo copy with trained models: out-char (characters), out-gpt2 (GPT-2's BPE), out-bpe (a trained BPE),
    out-untied (characters, the head its own matrix)."""
    path = make_repo(tmp_path_factory.mktemp('export'))
    prepare_dataset(path, 'verse_char', 'shakespeare_char', text=TEXT)
    prepare_dataset(path, 'verse', 'shakespeare', text=TEXT)
    with open(os.path.join(path, 'verse.txt'), 'w') as f:
        f.write(TEXT)
    run(path, 'data/prepare.py', '--input=verse.txt', '--name=verse_bpe', '--tokenizer=bpe', '--vocab_size=300')
    for name, dataset, *more in (('char', 'verse_char'), ('gpt2', 'verse'), ('bpe', 'verse_bpe'),
                                 ('untied', 'verse_char', '--tie_weights=False')):
        iters = 20 if name == 'gpt2' else 60  # (GPT-2's head: 50,304 rows)
        run(path, 'train.py', *SMALL, *more, f'--dataset={dataset}', f'--out_dir=out-{name}', f'--max_iters={iters}',
            f'--eval_interval={iters}', f'--lr_decay_iters={iters}')
    return path


def test_the_merges_recovered_from_tiktoken_are_gpt2s():
    tokens, merges = Tokenizer('gpt2', 50257).bpe_tables()
    assert len(tokens) == 50257 and len(merges) == 50000 and tokens[-1] == '<|endoftext|>'
    assert merges[:3] == ['Ġ t', 'Ġ a', 'h e'] and tokens[256] == 'Ġt' and merges[-1] == 'Ġg azed'


@pytest.mark.parametrize('name', ['char', 'gpt2', 'bpe', 'untied'])
def test_gguf_holds_the_model_and_its_tokenizer_and_gives_sample_pys_greedy_tokens(models, name):
    out = f'out-{name}'
    kinds = ('f32',) if name == 'gpt2' else ('f32', 'bf16', 'q8_0')  # (GPT-2's 50,257 tokens read slowly)
    files = {}
    for kind in kinds:
        p = run(models, 'export.py', f'--out_dir={out}', '--format=gguf', f'--gguf_type={kind}')
        assert p.stdout.strip().splitlines()[-1].startswith(f'wrote {out}/model-{kind}.gguf (')
        files[kind] = GGUFModel(os.path.join(models, out, f'model-{kind}.gguf'))
    fields, types = files[kinds[-1]].fields, files[kinds[-1]].types
    assert fields['general.architecture'] == 'gpt2' and fields['gpt2.block_count'] == 2
    assert fields['gpt2.context_length'] == 64 and fields['gpt2.embedding_length'] == 64
    assert fields['tokenizer.ggml.model'] == ('gpt2' if name in ('gpt2', 'bpe') else 'rwkv')
    n_vocab = {'gpt2': 50257, 'bpe': 300}.get(name, len(set(TEXT)))
    assert len(fields['tokenizer.ggml.tokens']) == n_vocab
    if name in ('gpt2', 'bpe'):
        assert fields['tokenizer.ggml.pre'] == 'gpt-2' and fields['tokenizer.ggml.eos_token_id'] == n_vocab - 1
    assert len(types) == 2 + 12 * 2 + 2 + (name == 'untied')  # a tied head is token_embd; llama.cpp reads it so
    assert ('output.weight' in types) == (name == 'untied')
    assert types['blk.1.ffn_up.weight'] == types['token_embd.weight'] == kinds[-1].upper()
    assert types['position_embd.weight'] == types['blk.0.attn_norm.bias'] == 'F32'
    # each type's weights against the checkpoint's: f32 exact, bf16 rounded, q8_0 within half a step of its blocks
    ckpt = torch.load(os.path.join(models, out, 'ckpt.pt'), weights_only=True)['model']
    want = ckpt['transformer.h.1.mlp.c_fc.weight'].float()
    for kind, tol in (('f32', 0), ('bf16', 2 ** -8), ('q8_0', 1 / 127)):
        if kind in files:
            assert (files[kind].w['blk.1.ffn_up.weight'] - want).abs().max() <= tol * want.abs().max(), kind
    # greedy tokens from the f32 file alone (its tokenizer too) equal sample.py's
    prompt = 'ROMEO:'
    sample = run(models, 'sample.py', f'--out_dir={out}', f'--start={prompt}', '--temperature=0', '--num_samples=1',
                 '--max_new_tokens=30', '--device=cpu').stdout
    model = files['f32']
    assert model.encode(prompt) == Tokenizer(*_tokenizer_args(models, name)).encode(prompt)
    text = model.decode(model.greedy(model.encode(prompt), 30, 'gelu'))
    assert len(text) > len(prompt) and f'\n{text}\n---------------' in sample, (text, sample)


def _tokenizer_args(repo, name):
    import json
    meta_dir = os.path.join(repo, 'data', {'gpt2': 'verse', 'bpe': 'verse_bpe'}.get(name, 'verse_char'))
    if name == 'gpt2':
        return 'gpt2', 50257
    with open(os.path.join(meta_dir, 'meta.json')) as f:
        meta = json.load(f)
    if name in ('char', 'untied'):
        return 'char', meta['vocab_size'], meta['itos']
    with open(os.path.join(meta_dir, 'tokenizer.json')) as f:
        return 'bpe', meta['vocab_size'], None, f.read()


def test_what_llama_cpp_cannot_express_and_a_bad_type_are_one_line_with_nothing_written(repo):
    run(repo, 'train.py', *TINY, '--pos_encoding=rotary', '--max_iters=2', '--eval_interval=2', '--out_dir=rot')
    before = sorted(os.listdir(os.path.join(repo, 'rot')))
    p = run(repo, 'export.py', '--out_dir=rot', '--format=gguf', check=False)
    one_line_error(p, "llama.cpp's gpt2 architecture cannot express pos_encoding='rotary'")
    p = run(repo, 'export.py', '--out_dir=rot', '--format=gguf', '--gguf_type=q4_0', check=False)
    one_line_error(p, "gguf_type must be 'f32' or 'bf16' or 'q8_0', got 'q4_0'")
    p = run(repo, 'export.py', '--out_dir=rot', '--format=onnx', check=False)
    one_line_error(p, "format must be 'hf' or 'gguf', got 'onnx'")
    assert sorted(os.listdir(os.path.join(repo, 'rot'))) == before
