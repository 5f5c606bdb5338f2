"""
Tokenize OpenWebText (or another corpus with a 'text' column) with GPT-2 BPE into train.bin and
val.bin (uint16 token ids, each document followed by <|endoftext|>) through data/prepare.py's code,
which streams the corpus: it never has to fit in memory.

$ python data/openwebtext/prepare.py                               # Skylion007/openwebtext from the Hub
$ python data/openwebtext/prepare.py --dataset=some-user/some-text  # another Hub dataset
$ python data/openwebtext/prepare.py --data_files='corpus/*.jsonl'  # local .jsonl/.json/.parquet/.txt files
(data/fineweb_edu/prepare.py runs this script for FineWeb-Edu.)
"""
import argparse
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(here)))  # the repository root, for corpus.py
from corpus import prepare  # noqa: E402
from util import report_usage_errors  # noqa: E402

report_usage_errors()  # library code's bad-input errors: one line

parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
parser.add_argument('--dataset', default='Skylion007/openwebtext', help='Hugging Face Hub dataset id')
parser.add_argument('--name', default=None, help="the dataset's configuration, e.g. sample-10BT")
parser.add_argument('--data_files', default=None, help='local files (a glob) to use instead of the Hub')
parser.add_argument('--out_dir', default=here, help='where train.bin and val.bin go')
parser.add_argument('--val_fraction', type=float, default=0.0005, help='share of documents held out for val')
parser.add_argument('--num_proc', type=int, default=os.cpu_count(), help='tokenizing threads')
parser.add_argument('--seed', type=int, default=2357)
args = parser.parse_args()

# data/prepare.py's work, with this corpus's defaults: whole documents held out, shuffled by seed
prepare(args.out_dir, 'gpt2', [args.data_files] if args.data_files else (), None if args.data_files else args.dataset,
        args.name, val_fraction=args.val_fraction, split='document', seed=args.seed, num_proc=args.num_proc,
        dataset=os.path.basename(os.path.abspath(args.out_dir)))
