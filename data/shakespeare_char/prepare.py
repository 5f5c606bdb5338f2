"""
Prepare the Shakespeare dataset for character-level language modeling.
Instead of encoding with GPT-2 BPE tokens, we map characters to ints.
Writes train.bin and val.bin (uint16 token ids) and meta.json (the vocabulary)
beside this file. Uses input.txt here if present, else downloads tinyshakespeare.
"""
import json
import os
import sys

import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(here)))  # the repository root, for util.py
from util import read_text, written  # noqa: E402

data = read_text('https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt',
                 os.path.join(here, 'input.txt'))
print(f"length of dataset in characters: {len(data):,}")

# get all the unique characters that occur in this text
chars = sorted(set(data))
vocab_size = len(chars)
print("all the unique characters:", ''.join(chars))
print(f"vocab size: {vocab_size:,}")

stoi = {ch: i for i, ch in enumerate(chars)}

# create the train and test splits
n = len(data)
train_data = data[:int(n * 0.9)]
val_data = data[int(n * 0.9):]

# encode both to integers
train_ids = np.array([stoi[c] for c in train_data], dtype=np.uint16)
val_ids = np.array([stoi[c] for c in val_data], dtype=np.uint16)
print(f"train has {len(train_ids):,} tokens")
print(f"val has {len(val_ids):,} tokens")

# the vocabulary as JSON, readable without pickle; itos[i] is the character of token i (first: the
# token files without it would read as GPT-2 BPE)
with written(os.path.join(here, 'meta.json')) as f:
    f.write(json.dumps({'vocab_size': vocab_size, 'itos': chars}, ensure_ascii=False).encode('utf-8'))
for split, ids in (('train', train_ids), ('val', val_ids)):
    with written(os.path.join(here, f'{split}.bin')) as f:  # whole or not at all
        ids.tofile(f)
