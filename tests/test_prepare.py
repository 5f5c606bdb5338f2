"""
data/shakespeare_char/prepare.py on a small local text: 90/10 split, uint16 ids, a JSON
vocabulary, and a one-line error when there is neither input.txt nor network; no prepare script
imports torch. Run: python -m pytest tests/test_prepare.py
"""
import json
import os
import shutil

import numpy as np

from conftest import REPO, TEXT, run


def test_prepare_char_dataset_without_torch_writes_splits_and_vocabulary(repo):
    data = os.path.join(repo, 'data', 'tiny_char')
    # a prepare script needs no torch: it starts in a fraction of the time
    probe = "import runpy, sys; runpy.run_path('data/tiny_char/prepare.py'); assert 'torch' not in sys.modules"
    assert 'vocab size' in run(repo, '-c', probe).stdout
    with open(os.path.join(data, 'meta.json')) as f:
        meta = json.load(f)
    itos = meta['itos']
    assert meta['vocab_size'] == len(itos) == len(set(TEXT)) and itos == sorted(set(TEXT))
    train = np.fromfile(os.path.join(data, 'train.bin'), dtype=np.uint16)
    val = np.fromfile(os.path.join(data, 'val.bin'), dtype=np.uint16)
    assert len(train) == int(len(TEXT) * 0.9) and len(train) + len(val) == len(TEXT)
    assert ''.join(itos[i] for i in np.concatenate([train, val])) == TEXT


def test_prepare_offline_without_input(repo):
    data = os.path.join(repo, 'data', 'tiny_char')
    for f in ('input.txt', 'train.bin', 'val.bin', 'meta.json'):
        os.remove(os.path.join(data, f))
    # an unroutable proxy makes the download fail at once, as it does on an offline machine
    env = {'https_proxy': 'http://127.0.0.1:9', 'HTTPS_PROXY': 'http://127.0.0.1:9'}
    p = run(repo, 'data/tiny_char/prepare.py', env=env, check=False)
    assert p.returncode == 1 and 'Traceback' not in p.stderr
    assert p.stderr.strip().startswith('error: could not download https://')
    assert p.stderr.strip().endswith(f"put the file at {os.path.join(data, 'input.txt')} and run this again")
    assert sorted(os.listdir(data)) == ['prepare.py']  # nothing half-written


def test_prepare_scripts_import_no_torch(repo):
    """The BPE and evaluation-set scripts too, each with its file already in place (nothing to download)."""
    files = {'shakespeare': ('input.txt', TEXT), 'hellaswag': ('hellaswag_val.jsonl', '{"endings": ["a"]}\n'),
             'lambada': ('lambada_test.jsonl', '{"text": "a b"}\n')}
    for name, (file, text) in files.items():
        os.makedirs(os.path.join(repo, 'data', name))
        shutil.copy(os.path.join(REPO, 'data', name, 'prepare.py'), os.path.join(repo, 'data', name))
        with open(os.path.join(repo, 'data', name, file), 'w') as f:
            f.write(text)
        probe = f"import runpy, sys; runpy.run_path('data/{name}/prepare.py'); assert 'torch' not in sys.modules"
        assert run(repo, '-c', probe).stdout
