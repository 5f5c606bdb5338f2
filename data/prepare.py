"""
Prepare your own corpus for train.py: text files of any kind (files, globs, directories), JSON lines or
Parquet with a text column, or a Hugging Face Hub dataset, as characters, GPT-2's BPE or a BPE trained
on it, into data/<name>/ (train.bin, val.bin, meta.json; tokenizer.json for a trained BPE).

$ python data/prepare.py --input='books/*.txt' --name=books --tokenizer=char
$ python data/prepare.py --input=notes/ --name=notes --tokenizer=bpe --vocab_size=4096
$ python data/prepare.py --input=corpus.jsonl --text_column=body --name=corpus    # GPT-2's BPE
$ python data/prepare.py --hub=roneneldan/TinyStories --name=tinystories
then: python train.py --dataset=books (the last line printed suggests a model that fits)
"""
import argparse
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(here))  # the repository root, for corpus.py

parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument('--input', nargs='+', default=[], help='files, globs (quoted) or directories; one document a file')
parser.add_argument('more', nargs='*', help="more inputs: the shell's expansion of an unquoted --input=glob")
parser.add_argument('--hub', default=None, help='a Hugging Face Hub dataset id, instead of --input')
parser.add_argument('--hub_config', default=None, help="the Hub dataset's configuration, e.g. sample-10BT")
parser.add_argument('--name', required=True, help='the dataset: written to data/<name>, trained with --dataset=<name>')
parser.add_argument('--tokenizer', choices=('char', 'gpt2', 'bpe'), default='gpt2')
parser.add_argument('--vocab_size', type=int, default=None, help='tokens of a trained BPE (default 4096)')
parser.add_argument('--text_column', default='text', help='the column of JSON lines, Parquet and Hub datasets')
parser.add_argument('--val_fraction', type=float, default=0.1, help='share of the documents (or text) held out')
parser.add_argument('--split', choices=('auto', 'document', 'position'), default='auto',
                    help='hold out whole documents, or the end of the text (auto: documents where there are enough)')
parser.add_argument('--non_utf8', choices=('skip', 'replace'), default='skip', help='text files that are not UTF-8')
parser.add_argument('--seed', type=int, default=2357, help='the shuffle that picks the val documents')
parser.add_argument('--num_proc', type=int, default=None, help='tokenizing threads (default: every core)')
args = parser.parse_args()
args.input += args.more
if bool(args.input) == bool(args.hub):
    parser.error("give --input (files, globs, directories) or --hub (a Hub dataset id), one of them")
if not args.name or os.sep in args.name or args.name.startswith('.'):
    parser.error(f"--name is a directory name under data/, got {args.name!r}")

from corpus import prepare  # noqa: E402
from util import report_usage_errors  # noqa: E402

report_usage_errors()  # library code's bad-input errors: one line

prepare(os.path.join(here, args.name), args.tokenizer, args.input, args.hub, args.hub_config, args.text_column,
        args.vocab_size, args.val_fraction, args.split, args.seed, args.non_utf8, args.num_proc, dataset=args.name)
