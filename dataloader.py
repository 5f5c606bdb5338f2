"""
Data: a dataset's token files (data/<dataset>/{train,val}.bin) and the batches drawn from them.
"""

import os

import numpy as np
import torch

from util import die


def open_split(data_dir, split, block_size, dtype='uint16'):
    """data_dir/{split}.bin as a read-only array of token ids of dtype (meta.json's): a whole number, and enough."""
    path = os.path.join(data_dir, f'{split}.bin')
    if not os.path.isfile(path):
        how = os.path.join(data_dir, 'prepare.py')
        how = f"python {how}" if os.path.isfile(how) else \
            f"python data/prepare.py --input=<your files> --name={os.path.basename(data_dir)}"
        die(f"no {path}: prepare the dataset first ({how})")
    size, item = os.path.getsize(path), np.dtype(dtype).itemsize
    if size % item:
        what = 'an odd number of bytes' if item == 2 else f'{size} bytes, not a multiple of {item}'
        die(f"{path} has {what} ({size}): not a file of {dtype} token ids (damaged or cut short?)")
    data = np.memmap(path, dtype=dtype, mode='r') if size else np.zeros(0, dtype=dtype)
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
