"""
Prepare the Shakespeare dataset for character-level language modeling.
Instead of encoding with GPT-2 BPE tokens, we map characters to ints.
Writes train.bin and val.bin (uint16 token ids) and meta.json (the vocabulary)
beside this file. Uses input.txt here if present, else downloads tinyshakespeare.
"""
import json
import os
import sys
import urllib.request

import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
input_file_path = os.path.join(here, 'input.txt')
if not os.path.exists(input_file_path):
    data_url = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
    try:
        with urllib.request.urlopen(data_url, timeout=30) as r:
            text = r.read().decode('utf-8')
    except OSError as e:
        sys.exit(f"error: could not download tinyshakespeare ({e}); "
                 f"put the file at {input_file_path} and run this again")
    with open(input_file_path, 'w', encoding='utf-8') as f:
        f.write(text)

with open(input_file_path, encoding='utf-8') as f:
    data = f.read()
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

train_ids.tofile(os.path.join(here, 'train.bin'))
val_ids.tofile(os.path.join(here, 'val.bin'))

# the vocabulary as JSON, readable without pickle; itos[i] is the character of token i
with open(os.path.join(here, 'meta.json'), 'w', encoding='utf-8') as f:
    json.dump({'vocab_size': vocab_size, 'itos': chars}, f, ensure_ascii=False)
