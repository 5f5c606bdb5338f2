"""
Your own data (data/prepare.py, nanogpt/corpus.py, nanogpt/tokenizer.py): text files, directories and tables in, each
tokenizer out (characters, GPT-2's BPE, a BPE trained with Hugging Face tokenizers, uint32 ids past
65,536), cut into chunks without changing a token; the existing preparers' files byte for byte as
they were; a trained BPE carried through training, sampling and the Hugging Face export (greedy
tokens equal to transformers'); the advice lines; settings through configurator.py (--key=value, config files);
every bad input one line with nothing left behind;
the README's own-data commands as written. Run: python -m pytest tests/test_corpus.py
"""
import hashlib
import json
import os
import random
import re
import shlex
import shutil

import numpy as np
import pytest

from conftest import REPO, TINY, digest, make_repo, one_line_error, run

# the SHA-256 of what each preparer wrote, on the inputs below, before they shared nanogpt/corpus.py's code
BEFORE = {
    'shakespeare_char': {'meta.json': 'a4ea1aed19f8617aeaee6920fea637f09caa8b5ecd33e9a674beefb8fa8405c0',
                         'train.bin': 'bb3b5d1a3feb242c85c59e9b38fa33b72dd42040f07f498d925ffd62eb3aea82',
                         'val.bin': '41d534d4f10402019397a8e06e0b8c3c87bd5ded8f6da003329334db88eeaaa0'},
    'shakespeare': {'train.bin': 'f3643feb31001c995e594237573c2ca8350b23a4c6787d4a2ac1d4b96c4fb0e4',
                    'val.bin': '61b9618cdabde762449556d454a3546ae3c6dd5d2a95afdab7f96bbc863fa616'},
    'openwebtext_jsonl': {'train.bin': '008295cfb6a5a0cbba7c1b15b9cc4bda57b08c78aa2732a1e92347e4ea3f7757',
                          'val.bin': 'd9da0ca099298081322ef0ae64cc6d65e2de36af71eabf5fd5b07d3f9939b2f6'},
    'openwebtext_txt': {'train.bin': '569fc88d86ef485150921aac622c1a84a7177453e350b5d57779d5f13e761d96',
                        'val.bin': '9b94698f00c014e31d98c59f1aa337c02ba7c7d0fa1f2cddcece7e591ab5906a'},
    'fineweb_edu_parquet': {'train.bin': 'ebf7cfd0d3ffbe4ce0ffe0d4ef3bef16de9ba7b5839f24989a3046c85e708af6',
                            'val.bin': '13195d294f557538494aea70f812d690a62c5b154f234e428d795b277c68101d'},
}


def mixed_text(seed, n_words):
    """Text with what tokenizers trip on: runs of blank lines and spaces, tabs, CRLF, accents, CJK, emoji."""
    rng = random.Random(seed)
    words = ['the', 'Citizen', 'speak', "we'll", "don't", 'café', 'naïve', '日本語', '🙂', '42', '3.14', '--',
             '...', 'First', 'All:', '(x)', 'über', 'THE', "'s", 'a']
    seps = [' ', ' ', ' ', ' ', '  ', '\n', '\n\n', '\n\n\n', '\t', ' \n', '\r\n', ', ', '. ']
    return ''.join(rng.choice(words) + rng.choice(seps) for _ in range(n_words))


def documents(seed, n):
    rng = random.Random(seed)
    return [mixed_text(seed * 1000 + i, rng.randrange(1, 60)) for i in range(n)]


def hashes(directory):
    out = {}
    for f in sorted(os.listdir(directory)):
        if f.endswith(('.bin', '.json')):
            with open(os.path.join(directory, f), 'rb') as g:
                out[f] = hashlib.sha256(g.read()).hexdigest()
    return out


def test_existing_preparers_write_what_they_wrote_before(tmp_path):
    import datasets
    repo = make_repo(tmp_path)
    text = mixed_text(1, 60000)
    for name in ('shakespeare_char', 'shakespeare'):
        data = os.path.join(repo, 'data', name)
        os.makedirs(data)
        shutil.copy(os.path.join(REPO, 'data', name, 'prepare.py'), data)
        with open(os.path.join(data, 'input.txt'), 'w', newline='') as f:
            f.write(text)
        run(repo, os.path.join('data', name, 'prepare.py'))
        assert {k: v for k, v in hashes(data).items() if k in BEFORE[name]} == BEFORE[name], name
    inputs = tmp_path / 'in'
    os.makedirs(inputs / 'txt')
    with open(inputs / 'docs.jsonl', 'w') as f:
        f.writelines(json.dumps({'text': t, 'id': i}) + '\n' for i, t in enumerate(documents(2, 3000)))
    for i in range(7):
        with open(inputs / 'txt' / f'd{i}.txt', 'w', newline='') as f:
            f.write(mixed_text(10 + i, 300))
    docs = documents(3, 30)
    datasets.Dataset.from_dict({'text': docs, 'id': [f'<urn:{i}>' for i in range(30)], 'score': [3.1] * 30}
                               ).to_parquet(inputs / 'edu.parquet')
    env = {'HF_HOME': str(tmp_path / 'hf')}
    for key, script, args in (
            ('openwebtext_jsonl', 'openwebtext', [f'--data_files={inputs}/docs.jsonl', '--num_proc=2']),
            ('openwebtext_txt', 'openwebtext',
             [f'--data_files={inputs}/txt/*.txt', '--num_proc=1', '--val_fraction=0.2']),
            ('fineweb_edu_parquet', 'fineweb_edu', [f'--data_files={inputs}/edu.parquet', '--val_fraction=0.1'])):
        out = tmp_path / 'out' / key
        run(REPO, f'data/{script}/prepare.py', *args, f'--out_dir={out}', env=env)
        assert {k: v for k, v in hashes(out).items() if k.endswith('.bin')} == BEFORE[key], key
        meta = json.loads((out / 'meta.json').read_text())
        assert meta == {'tokenizer': 'gpt2', 'vocab_size': 50257, 'dtype': 'uint16'}


def test_chunks_cut_where_gpt2_pretokenization_cuts(monkeypatch, tmp_path):
    """A file read in small chunks tokenizes exactly as its whole text does, with GPT-2's BPE."""
    from nanogpt import corpus
    from nanogpt.util import gpt2_encoding
    enc = gpt2_encoding()
    monkeypatch.setattr(corpus, 'CHUNK', 64)
    for i, text in enumerate([mixed_text(5, 3000), 'word, ' * 1000 + 'a\nb' * 100, '\n\n \t ' * 150 + 'end']):
        path = tmp_path / f'{i}.txt'
        path.write_text(text, newline='')
        with open(path, encoding='utf-8') as f:
            whole = f.read()  # newlines as Python reads them
        chunks = list(corpus.file_chunks(str(path)))
        assert ''.join(chunks) == whole and (len(chunks) > 10 or i == 2)  # the last: nowhere to cut
        assert [t for c in chunks for t in enc.encode_ordinary(c)] == enc.encode_ordinary(whole)


@pytest.fixture
def corpus_repo(tmp_path):
    """A repo copy with a corpus directory: text files of several kinds, nested, a hidden one, a binary one."""
    repo = make_repo(tmp_path)
    notes = os.path.join(repo, 'notes')
    os.makedirs(os.path.join(notes, 'deep'))
    os.makedirs(os.path.join(notes, '.git'))
    for i in range(24):
        ext = ('txt', 'md', 'py')[i % 3]
        with open(os.path.join(notes, 'deep' if i % 2 else '', f'n{i}.{ext}'), 'w') as f:
            f.write(mixed_text(40 + i, 300))
    with open(os.path.join(notes, '.git', 'HEAD'), 'w') as f:
        f.write('ref: refs/heads/main\n')
    with open(os.path.join(notes, 'picture.png'), 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n\xff\xfe\x00')
    return repo


def read(path):
    with open(path, encoding='utf-8') as f:
        return f.read()


def read_split(repo, name, split, dtype=np.uint16):
    return np.fromfile(os.path.join(repo, 'data', name, f'{split}.bin'), dtype=dtype)


def test_a_directory_by_characters_holds_out_whole_documents(corpus_repo):
    repo = corpus_repo
    p = run(repo, 'data/prepare.py', '--input=notes', '--name=notes', '--tokenizer=char', '--val_fraction=0.25')
    assert "1 file not UTF-8, skipped (the first: notes/picture.png; --non_utf8=replace to replace them)" in p.stdout
    meta = json.loads(read(os.path.join(repo, 'data', 'notes', 'meta.json')))
    assert list(meta) == ['vocab_size', 'itos']  # nanoGPT's character vocabulary, as shakespeare_char's
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(repo, 'notes')) if '.git' not in d
                   for f in fs if not f.endswith('.png'))
    docs = [read(f) for f in files]  # newlines as Python reads them
    assert meta['itos'] == sorted(set(''.join(docs)))
    text = {s: ''.join(meta['itos'][i] for i in read_split(repo, 'notes', s)) for s in ('train', 'val')}
    order = np.random.default_rng(2357).permutation(24)  # shuffled by seed as datasets' train_test_split does
    assert text['val'] == ''.join(docs[i] for i in order[:6]) and text['train'] == ''.join(docs[i] for i in order[6:])
    # another seed holds out other documents; the advice line names a model and a command that trains it
    p = run(repo, 'data/prepare.py', '--input=notes', '--name=notes2', '--tokenizer=char', '--val_fraction=0.25',
            '--seed=1')
    order = np.random.default_rng(1).permutation(24)
    assert ''.join(meta['itos'][i] for i in read_split(repo, 'notes2', 'val')) == ''.join(docs[i] for i in order[:6])
    advice = p.stdout.strip().splitlines()[-1]
    assert advice.startswith('24 documents, ')
    assert 'fits; python train.py config/train_shakespeare_char_cpu.py' in advice
    # on a CPU: the CPU recipe, a shape that fits, 10 passes over the training tokens (at least 200 iterations);
    # it runs without a warning
    command = advice.split('; ')[-1].split()
    settings = dict(a[2:].split('=', 1) for a in command[3:])
    train_tokens = len(read_split(repo, 'notes2', 'train'))
    iters, interval = int(settings['max_iters']), int(settings['eval_interval'])
    assert settings['lr_decay_iters'] == settings['max_iters'] and iters % interval == 0 and iters // interval == 4
    assert 0 <= iters - max(200, round(10 * train_tokens / 768)) < interval and settings['n_embd'] == '64' 
    out = run(repo, *command[1:], '--max_iters=4', '--eval_interval=2', '--eval_iters=1', '--device=cpu').stdout
    assert 'step 4:' in out and 'warning:' not in out  # (the README's test runs its advised command as written)


def test_a_trained_bpe_goes_through_training_sampling_and_the_export(corpus_repo):
    """The exported directory generates what sample.py does, greedy, through AutoTokenizer and GPT2LMHeadModel."""
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel
    repo = corpus_repo
    run(repo, 'data/prepare.py', '--input=notes/*.txt', 'notes/*.md', '--name=mine', '--tokenizer=bpe',
        '--vocab_size=300')
    meta = json.loads(read(os.path.join(repo, 'data', 'mine', 'meta.json')))
    assert meta == {'tokenizer': 'bpe', 'vocab_size': 300, 'dtype': 'uint16'}
    spec = json.loads(read(os.path.join(repo, 'data', 'mine', 'tokenizer.json')))
    assert spec['added_tokens'][0]['content'] == '<|endoftext|>' and spec['added_tokens'][0]['id'] == 299
    ids = np.concatenate([read_split(repo, 'mine', s) for s in ('train', 'val')])
    assert ids.max() == 299 and (ids == 299).sum() == 8  # 8 documents at the top, each ending with <|endoftext|>
    from tokenizers import Tokenizer
    hf_tok = Tokenizer.from_file(os.path.join(repo, 'data', 'mine', 'tokenizer.json'))
    val = read_split(repo, 'mine', 'val').tolist()
    for doc in hf_tok.decode(val, skip_special_tokens=False).split('<|endoftext|>')[:-1]:
        assert hf_tok.encode(doc).ids == val[:val.index(299)]  # tiktoken's tokens are tokenizers' own
        val = val[val.index(299) + 1:]
    run(repo, 'train.py', *TINY, '--dataset=mine', '--max_iters=30', '--eval_interval=30', '--out_dir=out-mine',
        '--learning_rate=1e-2')
    out = run(repo, 'sample.py', '--out_dir=out-mine', '--start=the café', '--temperature=0', '--num_samples=1',
              '--max_new_tokens=12', '--stop_at_eot=False', '--device=cpu', '--dtype=float32').stdout
    assert 'Loading the BPE tokenizer trained on mine (300 tokens)' in out
    ours = out.split('(300 tokens)\n', 1)[1].rsplit('\n---------------', 1)[0]
    assert run(repo, 'export.py', '--out_dir=out-mine').stdout.strip().endswith(
        "AutoTokenizer.from_pretrained('out-mine/hf')")
    hf_dir = os.path.join(repo, 'out-mine', 'hf')
    tok, model = AutoTokenizer.from_pretrained(hf_dir), GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    assert tok.eos_token_id == model.config.eos_token_id == 299
    x = tok('the café', return_tensors='pt').input_ids
    with torch.no_grad():
        y = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=12,
                           eos_token_id=None, pad_token_id=299)
    assert len(y[0]) == len(x[0]) + 12 and tok.decode(y[0]) == ours
    # eval.py scores with the model's own BPE: the perplexity of each passage's last word, by its tokens
    with open(os.path.join(repo, 'lambada.jsonl'), 'w') as f:
        f.write('{"text": "the café speak"}\n{"text": "naïve über All"}\n')
    run(repo, 'eval.py', '--out_dir=out-mine', '--task=lambada', '--data_file=lambada.jsonl', '--device=cpu',
        '--dtype=float32')  # float32 as transformers computes it: 'auto' may measure bfloat16 the faster here
    results = json.loads(read(os.path.join(repo, 'out-mine', 'eval_lambada.json')))
    ids = [tok(' ' + w).input_ids for w in ('speak', 'All')]
    with torch.no_grad():
        nll = []
        for text, target in zip(('the café', 'naïve über'), ids):
            row = torch.tensor([tok(text).input_ids + target])
            logp = model(row).logits[0, -len(target) - 1:-1].log_softmax(-1)
            nll += [-logp[i, t].item() for i, t in enumerate(target)]
    assert results['examples'] == 2 and abs(results['perplexity'] - float(np.exp(np.mean(nll)))) < 1e-3


def test_a_character_model_exports_a_tokenizer_transformers_loads(trained_copy):
    from transformers import AutoTokenizer
    run(trained_copy, 'export.py', '--out_dir=out')
    tok = AutoTokenizer.from_pretrained(os.path.join(trained_copy, 'out', 'hf'))
    itos = json.loads(read(os.path.join(trained_copy, 'data', 'tiny_char', 'meta.json')))['itos']
    text = 'First Citizen:\nSpeak, speak.'
    assert tok(text)['input_ids'] == [itos.index(c) for c in text] and tok.decode(tok(text)['input_ids']) == text


def test_more_than_65536_characters_are_uint32(tmp_path):
    repo = make_repo(tmp_path)
    rng = random.Random(0)
    chars = [chr(c) for c in range(0x4E00, 0x9FFF)] + [chr(c) for c in range(0x20000, 0x20000 + 50000)]
    os.makedirs(os.path.join(repo, 'wide'))
    for i in range(10):
        with open(os.path.join(repo, 'wide', f'{i}.txt'), 'w') as f:
            f.write(''.join(rng.sample(chars, 8000) + chars[i::10]))
    run(repo, 'data/prepare.py', '--input=wide', '--name=wide', '--tokenizer=char')
    meta = json.loads(read(os.path.join(repo, 'data', 'wide', 'meta.json')))
    assert meta['dtype'] == 'uint32' and meta['vocab_size'] == len(chars) > 2**16
    assert read_split(repo, 'wide', 'train', np.uint32).max() >= 2**16
    run(repo, 'train.py', *TINY, '--dataset=wide', '--max_iters=2', '--eval_interval=2', '--out_dir=out-wide')
    out = run(repo, 'sample.py', '--out_dir=out-wide', '--start=' + chars[-1], '--num_samples=1',
              '--max_new_tokens=5').stdout
    assert out.split('characters)\n', 1)[1].startswith(chars[-1])


def test_tables_read_their_text_column(tmp_path):
    import datasets
    docs = documents(6, 12)
    datasets.Dataset.from_dict({'body': docs, 'n': list(range(12))}).to_parquet(tmp_path / 'a.parquet')
    repo, env = make_repo(tmp_path), {'HF_HOME': str(tmp_path / 'hf')}
    run(repo, 'data/prepare.py', f'--input={tmp_path}/a.parquet', '--name=rows', '--text_column=body',
        '--tokenizer=char', env=env)
    itos = json.loads(read(os.path.join(repo, 'data', 'rows', 'meta.json')))['itos']
    order = np.random.default_rng(2357).permutation(12)  # 12 documents: one held out
    assert ''.join(itos[i] for i in read_split(repo, 'rows', 'val')) == docs[order[0]]
    assert ''.join(itos[i] for i in read_split(repo, 'rows', 'train')) == ''.join(docs[i] for i in order[1:])


def _nothing_left(data):
    return not os.path.exists(data) or not [f for f in os.listdir(data) if f.endswith('.tmp')]


@pytest.mark.parametrize('case,args,expected', [
    ('no_match', ['--input=nowhere/*.txt'], 'no files match nowhere/*.txt'),
    ('empty_dir', ['--input=empty'], 'no files match empty (an empty directory)'),
    ('empty_corpus', ['--input=blank'], 'the corpus is empty (3 documents, no text)'),
    ('empty_split', ['--input=notes/n0.txt', '--split=document'],
     'the train split is empty (1 document, val_fraction=0.1, split by document)'),
    ('not_utf8', ['--input=notes/picture.png'], 'the corpus is empty (0 documents, no text)'),
    ('vocab_low', ['--input=notes', '--tokenizer=bpe', '--vocab_size=100'],
     'vocab_size must be between 257 (the 256 bytes and <|endoftext|>) and 1,048,576 for --tokenizer=bpe, got 100'),
    ('vocab_char', ['--input=notes', '--tokenizer=char', '--vocab_size=100'],
     "vocab_size applies to --tokenizer=bpe; --tokenizer=char has the corpus's characters"),
    ('no_column', ['--input=rows.jsonl', '--text_column=body'],
     "the dataset has no 'body' column (columns: text); name the text's with --text_column"),
])
def test_bad_input_is_one_line_and_leaves_the_dataset_as_it_was(corpus_repo, case, args, expected):
    repo = corpus_repo
    os.makedirs(os.path.join(repo, 'empty'))
    os.makedirs(os.path.join(repo, 'blank'))
    for i in range(3):
        open(os.path.join(repo, 'blank', f'{i}.txt'), 'w').close()
    with open(os.path.join(repo, 'rows.jsonl'), 'w') as f:
        f.write('{"text": "a row"}\n')
    data = os.path.join(repo, 'data', 'mine')
    run(repo, 'data/prepare.py', '--input=notes', '--name=mine', '--tokenizer=char')  # a dataset already there
    before = {f: digest(os.path.join(data, f)) for f in os.listdir(data)}
    p = run(repo, 'data/prepare.py', *args, '--name=mine', check=False, env={'HF_HOME': os.path.join(repo, 'hf')})
    if case == 'no_column':  # after datasets' own progress bars, one line (the Hub offline: test_gpt2.py)
        assert p.returncode == 1 and 'Traceback' not in p.stderr
        assert p.stderr.strip().splitlines()[-1].startswith('error: ' + expected), p.stderr
    else:
        one_line_error(p, expected)
    assert {f: digest(os.path.join(data, f)) for f in os.listdir(data)} == before and _nothing_left(data)
    p = run(repo, 'data/prepare.py', *args, '--name=fresh', check=False, env={'HF_HOME': os.path.join(repo, 'hf')})
    assert p.returncode == 1 and not os.path.exists(os.path.join(repo, 'data', 'fresh'))  # no dataset begun


def test_settings_are_the_configurators_and_an_unquoted_glob_stays_input(corpus_repo):
    """data/prepare.py reads --key=value and config files as every script does, one line for a bad one; the shell's
    expansion of an unquoted --input glob is input, never run as a config file (here: Python files)."""
    repo = corpus_repo
    with open(os.path.join(repo, 'mine.py'), 'w') as f:
        f.write("input = 'notes'\ntokenizer = 'char'\nval_fraction = 0.25\n")
    p = run(repo, 'data/prepare.py', 'mine.py', '--name=cfg')
    assert 'Overriding config with mine.py:' in p.stdout
    assert p.stdout.strip().splitlines()[-1].startswith('24 documents')
    assert list(json.loads(read(os.path.join(repo, 'data', 'cfg', 'meta.json')))) == ['vocab_size', 'itos']
    python_files = sorted(f'notes/{f}' for f in os.listdir(os.path.join(repo, 'notes')) if f.endswith('.py'))
    with open(os.path.join(repo, python_files[-1]), 'a') as f:
        f.write('\nraise SystemExit("ran as a config file")\n')
    p = run(repo, 'data/prepare.py', f'--input={python_files[0]}', *python_files[1:], '--name=code', '--tokenizer=char')
    assert p.stdout.strip().splitlines()[-1].startswith(f'{len(python_files)} documents')
    for args, expected, status in (
            (['--input=notes', '--name=x', '--tokenzier=char'],
             "unknown config key 'tokenzier' (did you mean tokenizer?)", 2),
            (['--input=notes', '--name=x', '--tokenizer=bep'],
             "tokenizer must be 'char' or 'gpt2' or 'bpe', got 'bep'", 1),
            (['--input=notes', '--name=x', '--split=random'], "split must be 'auto' or 'document' or 'position'", 1),
            (['--input=notes', '--name=x', '--seed=1.5'], 'seed expects an int, got 1.5', 2),
            (['--input', 'notes', '--name=x'], "'--input' is not of the form --key=value", 2),
            (['--input=notes'], "give --name: the dataset's directory under data/", 1),
            (['--name=x'], 'give --input (files, globs, directories) or --hub (a Hub dataset id), one of them', 1)):
        p = run(repo, 'data/prepare.py', *args, check=False)
        one_line_error(p, expected)
        assert p.returncode == status and not os.path.exists(os.path.join(repo, 'data', 'x'))


def test_non_utf8_files_can_be_kept_with_replacement_characters(corpus_repo):
    repo = corpus_repo
    p = run(repo, 'data/prepare.py', '--input=notes', '--name=all', '--tokenizer=char', '--non_utf8=replace')
    assert '1 file not UTF-8, read with U+FFFD for the bytes that are not UTF-8' in p.stdout
    assert '\ufffd' in json.loads(read(os.path.join(repo, 'data', 'all', 'meta.json')))['itos']


def test_a_model_far_larger_than_its_data_is_warned_of_once(repo):
    out = run(repo, 'train.py', *TINY, '--n_layer=4', '--n_embd=128', '--n_head=4', '--max_iters=1',
              '--eval_interval=1', '--out_dir=big').stdout
    assert len(re.findall(r'^warning: 0\.\d\dM parameters is over 20 a training token \(5,364 in tiny_char\)', out,
                          re.M)) == 1
    assert 'warning:' not in run(repo, 'train.py', *TINY, '--max_iters=1', '--out_dir=small').stdout


def test_the_readme_commands_for_your_own_data_run_as_written(tmp_path):
    """Its ```sh block under 'training on your own data', on this repository's docs; train.py for 4 iterations."""
    readme = read(os.path.join(REPO, 'README.md'))
    block = readme.split('## training on your own data', 1)[1].split('```sh\n', 1)[1].split('```', 1)[0]
    commands = [shlex.split(c) for c in block.strip().splitlines()]
    assert [c[1] for c in commands] == ['data/prepare.py', 'train.py', 'sample.py', 'export.py']
    repo = make_repo(tmp_path)
    shutil.copytree(os.path.join(REPO, 'docs'), os.path.join(repo, 'docs'))
    fast = {'sample.py': ['--max_new_tokens=20']}  # train.py as written: the advice's command, a few seconds
    outputs = [run(repo, *c[1:], *fast.get(c[1], [])).stdout for c in commands]
    # the README's train command is the one data/prepare.py suggests, but for the numbers of iterations, which
    # follow the size of docs/
    advice = shlex.split(outputs[0].strip().splitlines()[-1].split('fits; ', 1)[1])
    numbers = re.compile(r'--(max_iters|lr_decay_iters|eval_interval)=\d+')
    assert [numbers.sub(r'--\1=N', w) for w in advice] == [numbers.sub(r'--\1=N', w) for w in commands[1]]
    assert f"step {dict(w[2:].split('=') for w in commands[1][3:])['max_iters']}:" in outputs[1]
    assert 'warning:' not in outputs[1]
    assert outputs[2].count('---------------') == 10 and 'tokenizer.json' in outputs[3]
