"""
Data: a dataset's token files (data/<dataset>/{train,val}.bin) and the batches drawn from them,
a character dataset's vocabulary (meta.json), and tokenizers.
"""

import json
import os
import pickle

import numpy as np
import torch

from util import die, gpt2_encoding


def open_split(data_dir, split, block_size):
    """data_dir/{split}.bin as a read-only array of uint16 token ids: a whole number of them, and enough."""
    path = os.path.join(data_dir, f'{split}.bin')
    if not os.path.isfile(path):
        die(f"no {path}: prepare the dataset first (python {os.path.join(data_dir, 'prepare.py')})")
    size = os.path.getsize(path)
    if size % 2:
        die(f"{path} has an odd number of bytes ({size}): not a file of uint16 token ids (damaged or cut short?)")
    data = np.memmap(path, dtype=np.uint16, mode='r') if size else np.zeros(0, dtype=np.uint16)
    if len(data) < block_size + 1:
        die(f"{path} has {len(data)} tokens, fewer than block_size + 1 = {block_size + 1}")
    return data


def _check_ids(ids, vocab_size, path):
    """Every id in ids is below vocab_size, or one line naming the file they came from."""
    top = int(ids.max())
    if top >= vocab_size:
        die(f"{path} holds token id {top}, beyond the vocabulary ({vocab_size} tokens): "
            f"was it prepared for another dataset or tokenizer?")


def check_token_ids(data, vocab_size, path):
    """
    Every token id of a file up to 2^28 tokens (512 MB, read in full) is below vocab_size, or one
    line; the ids of larger files are checked batch by batch instead (get_batch with vocab_size).
    """
    if len(data) <= 2**28:
        for i in range(0, len(data), 2**24):
            _check_ids(data[i:i + 2**24], vocab_size, path)


def get_batch(data, batch_size, block_size, seed, device, vocab_size=None):
    """
    batch_size random windows of data as (x, y), y shifted by one token. The windows depend
    only on seed (an int or a tuple of ints), which makes runs and resumes reproducible. With
    vocab_size, a token id beyond it ends the run with one line (a check of ~B*T ids, on the CPU).
    """
    ix = np.random.default_rng(seed).integers(len(data) - block_size, size=batch_size)
    rows = data[ix[:, None] + np.arange(block_size + 1)]  # (B, T+1)
    if vocab_size:
        _check_ids(rows, vocab_size, getattr(data, 'filename', 'the data'))
    buf = torch.from_numpy(rows.astype(np.int64))
    if device.type == 'cuda':
        buf = buf.pin_memory().to(device, non_blocking=True)
    else:
        buf = buf.to(device)
    return buf[:, :-1], buf[:, 1:]  # (B, T) each


class _NoCode(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_meta(data_dir):
    """
    A character dataset's vocabulary, {'vocab_size', 'itos'} from meta.json, or None for
    GPT-2 BPE datasets. nanoGPT's meta.pkl is read too, with an unpickler that builds only
    plain dicts, lists and strings, so it cannot run code.
    """
    path = os.path.join(data_dir, 'meta.json')
    if os.path.isfile(path):
        try:
            with open(path, encoding='utf-8') as f:
                meta = json.load(f)
            itos = meta['itos']
            assert meta['vocab_size'] == len(itos) and all(isinstance(c, str) for c in itos)
        except (ValueError, KeyError, TypeError, AssertionError) as e:  # JSON and UTF-8 errors are ValueErrors
            why = 'not valid JSON' if isinstance(e, ValueError) else "not {'vocab_size': n, 'itos': [n strings]}"
            die(f"cannot read {path}: {why}; run python {os.path.join(data_dir, 'prepare.py')} again")
        return meta
    path = os.path.join(data_dir, 'meta.pkl')
    if os.path.isfile(path):
        try:
            with open(path, 'rb') as f:
                meta = _NoCode(f).load()
            itos = meta['itos']
            return {'vocab_size': meta['vocab_size'], 'itos': [itos[i] for i in range(len(itos))]}
        except Exception as e:
            die(f"cannot read {path}: {e}")
    return None


def get_tokenizer(meta):
    """(encode, decode) for a character vocabulary (meta) or, with meta None, GPT-2 BPE."""
    if meta is None:
        enc = gpt2_encoding()
        return (lambda s: enc.encode(s, allowed_special={'<|endoftext|>'})), enc.decode
    itos = meta['itos']
    stoi = {ch: i for i, ch in enumerate(itos)}

    def encode(s):
        bad = next((c for c in s if c not in stoi), None)
        if bad is not None:
            die(f"the prompt has the character {bad!r}, which is not in the model's vocabulary")
        return [stoi[c] for c in s]
    return encode, lambda ids: ''.join(itos[i] for i in ids)
