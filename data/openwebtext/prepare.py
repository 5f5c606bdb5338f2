"""
Tokenize OpenWebText (or another corpus with a 'text' column) with GPT-2 BPE into train.bin and
val.bin (uint16 token ids, each document followed by <|endoftext|>), written through a memmap so
the corpus never has to fit in memory.

$ python data/openwebtext/prepare.py                               # Skylion007/openwebtext from the Hub
$ python data/openwebtext/prepare.py --dataset=some-user/some-text  # another Hub dataset
$ python data/openwebtext/prepare.py --data_files='corpus/*.jsonl'  # local .jsonl/.json/.parquet/.txt files
(data/fineweb_edu/prepare.py runs this script for FineWeb-Edu.)
"""
import argparse
import os
import sys
import time

import numpy as np
from tqdm import tqdm

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(here)))  # the repository root, for util.py
from util import die, gpt2_encoding, written  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
parser.add_argument('--dataset', default='Skylion007/openwebtext', help='Hugging Face Hub dataset id')
parser.add_argument('--name', default=None, help="the dataset's configuration, e.g. sample-10BT")
parser.add_argument('--data_files', default=None, help='local files (a glob) to use instead of the Hub')
parser.add_argument('--out_dir', default=here, help='where train.bin and val.bin go')
parser.add_argument('--val_fraction', type=float, default=0.0005, help='share of documents held out for val')
parser.add_argument('--num_proc', type=int, default=os.cpu_count(), help='tokenizing processes')
parser.add_argument('--seed', type=int, default=2357)
args = parser.parse_args()

from datasets import load_dataset  # noqa: E402  (slow import: after the arguments are checked)

if args.data_files:
    # the packaged builders work offline; a .txt file is one document
    ext = args.data_files.rsplit('.', 1)[-1]
    builder = {'jsonl': 'json', 'json': 'json', 'parquet': 'parquet', 'txt': 'text'}.get(ext)
    if builder is None:
        die(f"--data_files must end in .jsonl, .json, .parquet or .txt, got {args.data_files}")
    kwargs = dict(sample_by='document') if builder == 'text' else {}
    try:
        dataset = load_dataset(builder, data_files=args.data_files, split='train', **kwargs)
    except FileNotFoundError as e:
        die(f"no files match {args.data_files}: {e}")
else:
    try:
        try:
            dataset = load_dataset(args.dataset, name=args.name, split='train', num_proc=args.num_proc)
        except RuntimeError as e:
            if 'scripts are no longer supported' not in str(e):
                raise
            # a dataset still published with a loading script: its Parquet export on the Hub loads
            print(f"{args.dataset} has a loading script, which datasets no longer runs; using its Parquet export")
            dataset = load_dataset(args.dataset, name=args.name, split='train', revision='refs/convert/parquet',
                                   num_proc=args.num_proc)
    except (ConnectionError, OSError, RuntimeError, ValueError) as e:
        die(f"could not load {args.dataset} from the Hugging Face Hub ({type(e).__name__}: {str(e).splitlines()[0]}); "
            f"with the files at hand, use --data_files")
if 'text' not in dataset.column_names:
    die(f"the dataset has no 'text' column (columns: {', '.join(dataset.column_names)})")

# hold out a small val split (at least one document)
n_val = max(1, round(len(dataset) * args.val_fraction))
split_dataset = dataset.train_test_split(test_size=n_val, seed=args.seed, shuffle=True)
split_dataset['val'] = split_dataset.pop('test')  # rename the test split to val

enc = gpt2_encoding()


def process(example):
    ids = enc.encode_ordinary(example['text'])  # encode_ordinary ignores any special tokens
    ids.append(enc.eot_token)  # add the end of text token, 50256 for gpt2 bpe
    return {'ids': ids, 'len': len(ids)}


t0 = time.time()
tokenized = split_dataset.map(process, remove_columns=dataset.column_names, desc="tokenizing the splits",
                              num_proc=args.num_proc)
n_tokens = sum(int(np.sum(tokenized[s]['len'], dtype=np.uint64)) for s in tokenized)
dt = time.time() - t0
print(f"tokenized {n_tokens:,} tokens in {dt:.1f}s ({n_tokens / dt:,.0f} tokens/s, {args.num_proc} processes)")

# concatenate all the ids in each dataset into one large file we can use for training
os.makedirs(args.out_dir, exist_ok=True)
for split, dset in tokenized.items():
    arr_len = np.sum(dset['len'], dtype=np.uint64)
    filename = os.path.join(args.out_dir, f'{split}.bin')
    with written(filename, mode=None) as tmp:  # renamed when complete: a half-written file never looks finished
        with open(tmp, 'wb') as f:  # the disk space first: a memory map past a full disk's end faults (SIGBUS)
            if hasattr(os, 'posix_fallocate') and arr_len:
                os.posix_fallocate(f.fileno(), 0, int(arr_len) * 2)
        arr = np.memmap(tmp, dtype=np.uint16, mode='r+' if arr_len else 'w+', shape=(arr_len,))
        total_batches = min(1024, len(dset))
        idx = 0
        for batch_idx in tqdm(range(total_batches), desc=f'writing {filename}'):
            # batch together samples for faster write
            batch = dset.shard(num_shards=total_batches, index=batch_idx, contiguous=True).with_format('numpy')
            arr_batch = np.concatenate(batch['ids'])
            if arr_batch.max() >= 2**16:
                die(f"token id {arr_batch.max()} does not fit in uint16")
            arr[idx: idx + len(arr_batch)] = arr_batch
            idx += len(arr_batch)
        arr.flush()
        del arr
    print(f"{split}: {arr_len:,} tokens")

# to read the bin files later, e.g. with numpy:
# m = np.memmap('train.bin', dtype=np.uint16, mode='r')
