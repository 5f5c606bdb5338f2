"""
GPT-2 in and out, offline, with randomly initialised Hugging Face models saved to temporary
directories (the minGPT parity test, made exact): Hugging Face -> our GPT -> save_pretrained ->
Hugging Face gives equal logits (1e-5) and identical greedy tokens at each hop; init_from a
local directory in train.py and sample.py; GPT-2 BPE data preparation; export.py.
Run: python -m pytest tests/test_gpt2.py
"""
import json
import os
import pathlib
import re
import shutil

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from model import GPT, GPTConfig
from nanogpt.util import gpt2_encoding
from conftest import REPO, TEXT, make_repo, one_line_error, prepare_dataset, run

SHAPES = {
    'odd-heads-odd-vocab': dict(n_layer=2, n_head=3, n_embd=48, n_positions=32, vocab_size=101),
    'short-context': dict(n_layer=3, n_head=4, n_embd=64, n_positions=24, vocab_size=128),
    'gpt2-vocab': dict(n_layer=1, n_head=2, n_embd=32, n_positions=64, vocab_size=50257),
}


def hf_model(path, seed=0, **shape):
    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(GPT2Config(**shape, bos_token_id=None, eos_token_id=None)).eval()
    hf.save_pretrained(path)
    return hf


def hf_greedy(hf, x, n):
    return hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False, pad_token_id=0)


def our_greedy(model, x, n):
    for _ in range(n):
        x = torch.cat([x, model(x)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    return x


@pytest.mark.parametrize('name', SHAPES)
def test_round_trip_is_exact(tmp_path, name):
    shape = SHAPES[name]
    hf = hf_model(tmp_path / 'hf', **shape)
    ours = GPT.from_pretrained(str(tmp_path / 'hf')).eval()
    assert ours.config.activation == 'gelu_tanh' and ours.config.block_size == shape['n_positions']
    ours.save_pretrained(str(tmp_path / 'back'))
    back = GPT2LMHeadModel.from_pretrained(tmp_path / 'back').eval()

    x = torch.randint(0, shape['vocab_size'], (2, shape['n_positions']))
    with torch.no_grad():
        ref = hf(x, labels=x)
        logits, _ = ours(x, x)
        _, loss = ours(x[:, :-1], x[:, 1:])  # Hugging Face shifts the labels inside
        again = back(x, labels=x)
    assert (logits - ref.logits).abs().max().item() < 1e-5
    assert abs(loss.item() - ref.loss.item()) < 1e-5
    assert (again.logits - ref.logits).abs().max().item() < 1e-5
    prompt, n = x[:, :4], shape['n_positions'] - 4
    greedy = hf_greedy(hf, prompt, n)
    assert torch.equal(our_greedy(ours, prompt, n), greedy)
    assert torch.equal(hf_greedy(back, prompt, n), greedy)


def test_export_cuts_padding_and_adds_zero_biases(tmp_path):
    torch.manual_seed(0)
    ours = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=50304, bias=False)).eval()
    ours.save_pretrained(str(tmp_path))
    hf = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert hf.config.vocab_size == 50257 and hf.config.activation_function == 'gelu'
    x = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        assert (ours(x, x)[0][..., :50257] - hf(x).logits).abs().max().item() < 1e-5


def test_export_refuses_what_gpt2_cannot_represent(tmp_path):
    ours = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=11))
    ours.config.activation = 'relu'
    with pytest.raises(ValueError, match="cannot represent activation='relu'"):
        ours.save_pretrained(str(tmp_path))
    assert not os.listdir(tmp_path)


def test_loaded_weights_are_adopted_and_tied(tmp_path):
    """The weights are adopted, not copied: our parameters are the tensors read from disk."""
    hf_model(tmp_path, **SHAPES['short-context'])
    model = GPT.from_pretrained(str(tmp_path))
    assert not any(p.is_meta for p in model.parameters())
    assert model.lm_head.weight is model.transformer.wte.weight


PEAK_ANON = """
import sys
import torch
from model import GPT, GPTConfig
from nanogpt import loading
from nanogpt.device import PeakMemory
with torch.device('meta'):  # the meta device's first use imports ~80 MB of Python: before the baseline
    GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=8))
with PeakMemory() as mem:  # the process's own memory: the memory-mapped file (page cache) is not in it
    base = mem.peak
    if sys.argv[2] == 'GPT.from_pretrained':  # nanoGPT's own call
        model = GPT.from_pretrained(sys.argv[1])
    else:
        model = loading.from_pretrained(sys.argv[1], weight_dtype=sys.argv[2])
kept = {t.data_ptr(): t.nbytes for t in model.state_dict().values()}  # a tied weight once
print(sum(kept.values()), mem.peak - base)
"""


@pytest.fixture(scope='module')
def gpt2_85m(tmp_path_factory):
    """GPT-2 124M's blocks with a small vocabulary: 85M parameters, 340 MB in float32."""
    path = tmp_path_factory.mktemp('gpt2-85m')
    hf_model(path, n_layer=12, n_head=12, n_embd=768, n_positions=64, vocab_size=1000)
    return str(path)


@pytest.mark.parametrize('weight_dtype', ['float32', 'bfloat16', 'int8', 'GPT.from_pretrained'])
def test_loading_holds_the_weights_once_as_they_are_kept(gpt2_85m, weight_dtype):
    """
    Loading holds one copy of the weights (nanoGPT's GPT.from_pretrained as well as the scripts' loader, which it
    calls), in the dtype the model keeps them in, in the process's
    own memory (RssAnon, sampled while it loads), and a few MB of work: a reader that built the
    tensors and then copied or transposed them whole would need twice the weights, and one that
    read float32 weights before reducing them would need the float32 weights (340 MB) for any dtype.
    """
    kept, peak = map(int, run(REPO, '-c', PEAK_ANON, gpt2_85m, weight_dtype).stdout.split())
    bytes_per_weight = {'float32': 4, 'bfloat16': 2, 'int8': 1, 'GPT.from_pretrained': 4}[weight_dtype]
    assert bytes_per_weight * 85e6 < kept < bytes_per_weight * 85e6 + 10e6, kept  # the embeddings stay float32
    assert peak < kept + 40e6, (kept, peak)
    if weight_dtype in ('bfloat16', 'int8'):
        assert peak < 0.8 * 4 * 85e6, (kept, peak)  # less than the float32 weights alone


def test_sample_from_local_directory(tmp_path):
    hf_model(tmp_path / 'tiny-gpt2', **SHAPES['gpt2-vocab'])
    out = run(REPO, 'sample.py', f'--init_from={tmp_path / "tiny-gpt2"}', '--start=Hello, my name is',
              '--num_samples=2', '--max_new_tokens=20', '--device=cpu').stdout
    assert 'assuming GPT-2 encodings' in out
    samples = out.split('---------------')
    assert len(samples) == 3 and all('Hello, my name is' in s for s in samples[:2])


def test_hub_name_offline_is_one_line(tmp_path):
    p = run(REPO, 'sample.py', '--init_from=gpt2-xl', '--device=cpu', check=False,
            env={'HF_HUB_OFFLINE': '1', 'HF_HOME': str(tmp_path)})
    assert p.returncode == 1 and 'Traceback' not in p.stderr
    assert p.stderr.strip().startswith('error: could not fetch gpt2-xl weights from the Hugging Face Hub')


@pytest.fixture(scope='module')
def bpe_repo(tmp_path_factory):
    """A repo copy with data/shakespeare prepared (BPE) from TEXT and a small GPT-2 directory."""
    path = make_repo(tmp_path_factory.mktemp('bpe'))
    prepare_dataset(path, 'shakespeare', 'shakespeare')
    hf_model(os.path.join(path, 'tiny-gpt2'), **SHAPES['gpt2-vocab'])
    return path


def test_prepare_shakespeare_bpe(bpe_repo):
    enc = gpt2_encoding()
    ids = [np.fromfile(os.path.join(bpe_repo, 'data', 'shakespeare', f'{s}.bin'), dtype=np.uint16)
           for s in ('train', 'val')]
    n = len(TEXT)
    assert enc.decode(ids[0].tolist()) == TEXT[:int(n * 0.9)]
    assert enc.decode(ids[1].tolist()) == TEXT[int(n * 0.9):]


def test_finetune_config_improves_val_loss(bpe_repo):
    out = run(bpe_repo, 'train.py', 'config/finetune_shakespeare.py', '--init_from=tiny-gpt2', '--block_size=32',
              '--max_iters=10', '--eval_interval=10', '--eval_iters=5', '--gradient_accumulation_steps=2',
              '--batch_size=4', '--learning_rate=1e-2', '--device=cpu', '--out_dir=ft').stdout
    val = [float(v) for v in re.findall(r'^step \d+: train loss [\d.]+, val loss ([\d.]+)', out, re.M)]
    assert len(val) == 2 and val[1] < val[0] - 0.5, out
    ckpt = torch.load(os.path.join(bpe_repo, 'ft', 'ckpt.pt'), weights_only=True)
    assert ckpt['model_args']['block_size'] == 32  # cropped, and recorded so
    assert ckpt['model_options'] == {'activation': 'gelu_tanh'}
    # the finetuned model samples BPE text, and exports back to Hugging Face
    out = run(bpe_repo, 'sample.py', '--out_dir=ft', '--num_samples=1', '--max_new_tokens=5', '--start=First').stdout
    assert 'assuming GPT-2 encodings' in out and out.count('---------------') == 1
    run(bpe_repo, 'export.py', '--out_dir=ft')
    # with GPT-2's tokenizer, built offline from tiktoken's ranks: AutoTokenizer with the network off, tiktoken's ids
    code = ("import sys; from transformers import AutoTokenizer; tok = AutoTokenizer.from_pretrained('ft/hf'); "
            "ids = tok(sys.argv[1])['input_ids']; print(ids, len(tok), tok.eos_token_id); "
            "assert tok.decode(ids) == sys.argv[1]")
    text = "Hello  world,\n\n\tit's 3.14 -- café 日本語 🙂 <|endoftext|> done"
    out = run(bpe_repo, '-c', code, text, env={'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1'}).stdout
    assert out.strip() == f"{gpt2_encoding().encode(text, allowed_special='all')} 50257 50256"
    hf = GPT2LMHeadModel.from_pretrained(os.path.join(bpe_repo, 'ft', 'hf')).eval()
    assert json.loads(pathlib.Path(bpe_repo, 'ft', 'hf', 'config.json').read_text())['n_positions'] == 32
    from nanogpt.loading import model_from_checkpoint
    ours = model_from_checkpoint(ckpt).eval()
    x = torch.randint(0, 50257, (1, 32))
    with torch.no_grad():
        assert (ours(x, x)[0] - hf(x).logits).abs().max().item() < 1e-5


def test_eval_config_prints_losses_only(bpe_repo):
    out = run(bpe_repo, 'train.py', 'config/eval_gpt2.py', '--init_from=tiny-gpt2', '--dataset=shakespeare',
              '--block_size=32', '--eval_iters=2', '--device=cpu', '--out_dir=ev').stdout
    assert re.search(r'^step 0: train loss [\d.]+, val loss [\d.]+$', out, re.M)
    assert not re.search(r'^iter ', out, re.M)


def test_prepare_openwebtext_from_local_files(tmp_path):
    docs = [f"Document {i}: the quick brown fox, café {i * i}.\nSecond line.\n" for i in range(40)]
    with open(tmp_path / 'docs.jsonl', 'w') as f:
        f.writelines(json.dumps({'text': d}) + '\n' for d in docs)
    run(REPO, 'data/openwebtext/prepare.py', f'--data_files={tmp_path / "docs.jsonl"}', f'--out_dir={tmp_path / "out"}',
        '--num_proc=2', '--val_fraction=0.1', env={'HF_HOME': str(tmp_path / 'hf')})
    enc = gpt2_encoding()
    got = []
    for split in ('train', 'val'):
        ids = np.fromfile(tmp_path / 'out' / f'{split}.bin', dtype=np.uint16).tolist()
        assert ids[-1] == enc.eot_token
        got += enc.decode(ids).split('<|endoftext|>')[:-1]
    assert sorted(got) == sorted(docs)
    assert len(np.fromfile(tmp_path / 'out' / 'val.bin', dtype=np.uint16)) > 0


def test_prepare_openwebtext_text_files_are_documents(tmp_path):
    for i in range(3):
        (tmp_path / f'd{i}.txt').write_text(f"line one of {i}\nline two\n")
    run(REPO, 'data/openwebtext/prepare.py', f'--data_files={tmp_path}/*.txt', f'--out_dir={tmp_path / "out"}',
        '--num_proc=1', env={'HF_HOME': str(tmp_path / 'hf')})
    enc = gpt2_encoding()
    ids = np.concatenate([np.fromfile(tmp_path / 'out' / f'{s}.bin', dtype=np.uint16) for s in ('train', 'val')])
    assert (ids == enc.eot_token).sum() == 3


def test_prepare_fineweb_edu_from_local_parquet_and_offline(tmp_path):
    """FineWeb-Edu's columns (text, id, url, score, ...) from a local Parquet file; offline, the Hub is one line."""
    import datasets
    docs = [f"Photosynthesis, part {i}: light becomes sugar.\n{'More text. ' * i}" for i in range(30)]
    datasets.Dataset.from_dict({'text': docs, 'id': [f'<urn:{i}>' for i in range(30)], 'url': ['https://x'] * 30,
                                'score': [3.1] * 30, 'token_count': [9] * 30}).to_parquet(tmp_path / 'edu.parquet')
    out = tmp_path / 'out'
    env = {'HF_HOME': str(tmp_path / 'hf'), 'HF_HUB_OFFLINE': '1'}
    run(REPO, 'data/fineweb_edu/prepare.py', f'--data_files={tmp_path / "edu.parquet"}', f'--out_dir={out}',
        '--num_proc=1', '--val_fraction=0.1', env=env)
    enc = gpt2_encoding()
    ids = {s: np.fromfile(out / f'{s}.bin', dtype=np.uint16).tolist() for s in ('train', 'val')}
    assert len(enc.decode(ids['val']).split('<|endoftext|>')[:-1]) == 3
    assert sorted(enc.decode(ids['train'] + ids['val']).split('<|endoftext|>')[:-1]) == sorted(docs)
    p = run(REPO, 'data/fineweb_edu/prepare.py', f'--out_dir={tmp_path / "hub"}', check=False, env=env)
    assert p.returncode == 1 and 'Traceback' not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith('error: could not load HuggingFaceFW/fineweb-edu')
    assert not os.path.exists(tmp_path / 'hub')


def test_pytorch_model_bin_directory(tmp_path):
    """Older checkpoints: pytorch_model.bin, keys without 'transformer.', causal-mask buffers."""
    shape = SHAPES['odd-heads-odd-vocab']
    hf = hf_model(tmp_path / 'st', **shape)
    os.makedirs(tmp_path / 'bin')
    shutil.copy(tmp_path / 'st' / 'config.json', tmp_path / 'bin')
    sd = {k.removeprefix('transformer.'): v for k, v in hf.state_dict().items() if k != 'lm_head.weight'}
    sd['h.0.attn.bias'] = torch.tril(torch.ones(1, 1, 32, 32))
    torch.save(sd, tmp_path / 'bin' / 'pytorch_model.bin')
    ours = GPT.from_pretrained(str(tmp_path / 'bin')).eval()
    x = torch.randint(0, shape['vocab_size'], (2, 32))
    with torch.no_grad():
        assert (ours(x, x)[0] - hf(x).logits).abs().max().item() < 1e-5


def test_prepare_openwebtext_offline_is_one_line(tmp_path):
    p = run(REPO, 'data/openwebtext/prepare.py', f'--out_dir={tmp_path / "out"}', check=False,
            env={'HF_HUB_OFFLINE': '1', 'HF_HOME': str(tmp_path / 'hf')})
    assert p.returncode == 1 and 'Traceback' not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith('error: could not load Skylion007/openwebtext')
    assert not os.path.exists(tmp_path / 'out')
    # its settings are the configurator's, as every script's: a misspelt one is one line naming the real one
    p = run(REPO, 'data/fineweb_edu/prepare.py', f'--out_dir={tmp_path / "out"}', '--data_file=x.parquet', check=False)
    one_line_error(p, "unknown config key 'data_file' (did you mean data_files?)")
    assert not os.path.exists(tmp_path / 'out')
