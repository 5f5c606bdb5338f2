"""
Data: a dataset's token files (data/<dataset>/{train,val}.bin) and the batches drawn from them.
"""

import os

import numpy as np
import torch

from nanogpt.util import UsageError


def open_split(data_dir, split, block_size, dtype='uint16'):
    """data_dir/{split}.bin as a read-only array of token ids of dtype (meta.json's): a whole number, and enough."""
    path = os.path.join(data_dir, f'{split}.bin')
    if not os.path.isfile(path):
        how = os.path.join(data_dir, 'prepare.py')
        how = f"python {how}" if os.path.isfile(how) else \
            f"python data/prepare.py --input=<your files> --name={os.path.basename(data_dir)}"
        raise UsageError(f"no {path}: prepare the dataset first ({how})")
    size, item = os.path.getsize(path), np.dtype(dtype).itemsize
    if size % item:
        what = 'an odd number of bytes' if item == 2 else f'{size} bytes, not a multiple of {item}'
        raise UsageError(f"{path} has {what} ({size}): not a file of {dtype} token ids (damaged or cut short?)")
    data = np.memmap(path, dtype=dtype, mode='r') if size else np.zeros(0, dtype=dtype)
    if len(data) < block_size + 1:
        raise UsageError(f"{path} has {len(data)} tokens, fewer than block_size + 1 = {block_size + 1}")
    return data


def _check_ids(ids, vocab_size, path):
    """Every id in ids is below vocab_size, or one line naming the file they came from."""
    top = int(ids.max())
    if top >= vocab_size:
        raise UsageError(f"{path} holds token id {top}, beyond the vocabulary ({vocab_size} tokens): "
                         f"was it prepared for another dataset or tokenizer?")


def check_token_ids(data, vocab_size, path):
    """
    Every token id of a file up to 2^28 tokens (512 MB, read in full) is below vocab_size, or one
    line; the ids of larger files are checked batch by batch instead (get_batch with vocab_size).
    """
    if len(data) <= 2**28:
        for i in range(0, len(data), 2**24):
            _check_ids(data[i:i + 2**24], vocab_size, path)


def run_vocab_size(meta, model_vocab_size, data_dir, splits):
    """The vocabulary a run's token ids must stay below: the dataset's (meta.json's; GPT-2's is the model's, padded),
    which the model must hold; every id of the splits ({name: open_split's array}) is checked against it."""
    vocab_size = meta['vocab_size'] if meta['tokenizer'] != 'gpt2' else model_vocab_size
    if model_vocab_size < vocab_size:
        raise UsageError(f"the dataset has {vocab_size} tokens, the model only {model_vocab_size}")
    for split, data in splits.items():
        check_token_ids(data, vocab_size, os.path.join(data_dir, f'{split}.bin'))
    return vocab_size


def warn_if_data_is_small(n_params, train_tokens, dataset):
    """A model with over 20 parameters a training token can learn them by heart (nanoGPT's #97): a warning."""
    if n_params > 20 * train_tokens:
        print(f"warning: {n_params / 1e6:.2f}M parameters is over 20 a training token ({train_tokens:,} in {dataset}): "
              f"the model can learn them by heart (val loss rising as train loss falls); a smaller model, more dropout "
              f"or more data (data/prepare.py's last line suggests a size)")


PASSES_WARNED = 100  # passes over the training set past which a run warns: more than any recipe in config/ makes


def warn_if_passes_are_many(max_iters, tokens_per_iter, train_tokens, dataset):
    """A run that passes over its training set far more often than any recipe learns it by heart by construction."""
    passes = max_iters * tokens_per_iter / max(train_tokens, 1)
    if passes > PASSES_WARNED:
        fewer = max(1, round(20 * train_tokens / tokens_per_iter))
        print(f"warning: {max_iters:,} iterations of {tokens_per_iter:,} tokens pass over the {train_tokens:,} "
              f"training tokens of {dataset} {passes:,.0f} times: the model will learn them by heart, and the run "
              f"takes longer than it needs; --max_iters={fewer} --lr_decay_iters={fewer} is 20 passes (or more data)")


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


class BatchRamp:
    """
    The micro-steps of each iteration, shared by world processes, each micro-step a batch of row_tokens: steps
    (gradient_accumulation_steps) in all, or fewer over the first ramp_tokens tokens of training, rising linearly
    with the tokens trained from start (batch_ramp_start). Each process takes its share of them.
    """

    def __init__(self, ramp_tokens, start, steps, world, row_tokens):
        if steps % world:
            raise UsageError(f"gradient_accumulation_steps ({steps}) must be divisible by the number of processes "
                             f"({world})")
        self.full = steps // world  # this process's share: the global batch stays the same
        self.start = -(-start // world)  # rounded up to whole micro-steps
        if ramp_tokens and not 0 < self.start <= self.full:
            raise UsageError(f"batch_ramp_start ({start}) must be between 1 and gradient_accumulation_steps ({steps})")
        self.ramp_tokens = ramp_tokens
        self.micro_tokens = world * row_tokens  # of one micro-step on every process
        self.tokens_per_iter = self.full * self.micro_tokens

    def __str__(self):
        return (f"batch ramp: from {self.start * self.micro_tokens:,} tokens per iteration to {self.tokens_per_iter:,} "
                f"over the first {self.ramp_tokens:,} tokens; the learning rate schedule follows tokens")

    def micro_steps(self, tokens):
        """This process's micro-steps in an iteration that starts after tokens tokens."""
        if tokens >= self.ramp_tokens:
            return self.full
        return int(self.start + (self.full - self.start) * tokens / self.ramp_tokens)

    def tokens_before(self, it):
        """The tokens trained on before iteration it: fewer than it full batches while the ramp runs."""
        tokens, i = 0, 0
        while i < it and tokens < self.ramp_tokens:
            tokens += self.micro_steps(tokens) * self.micro_tokens
            i += 1
        return tokens + (it - i) * self.full * self.micro_tokens
