"""
Prepare tiny shakespeare for GPT-2: GPT-2 BPE token ids in train.bin and val.bin (uint16)
beside this file. Uses input.txt here if present, else downloads it.
"""
import os
import sys
import time

import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(here)))  # the repository root, for util.py
from util import gpt2_encoding, read_text, written  # noqa: E402

data = read_text('https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt',
                 os.path.join(here, 'input.txt'))
n = len(data)
train_data = data[:int(n * 0.9)]
val_data = data[int(n * 0.9):]

# encode with tiktoken's GPT-2 BPE, one thread per core
enc = gpt2_encoding()
t0 = time.time()
train_ids, val_ids = enc.encode_ordinary_batch([train_data, val_data], num_threads=os.cpu_count())
dt = time.time() - t0
print(f"train has {len(train_ids):,} tokens")
print(f"val has {len(val_ids):,} tokens")
total = len(train_ids) + len(val_ids)
print(f"tokenized {total:,} tokens in {dt:.2f}s ({total / dt:,.0f} tokens/s)")

# export to bin files
for split, ids in (('train', train_ids), ('val', val_ids)):
    with written(os.path.join(here, f'{split}.bin')) as f:  # whole or not at all
        np.array(ids, dtype=np.uint16).tofile(f)
