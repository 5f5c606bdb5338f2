"""
Prepare your own corpus for train.py: text files of any kind (files, globs, directories), JSON lines or
Parquet with a text column, or a Hugging Face Hub dataset, as characters, GPT-2's BPE or a BPE trained
on it, into data/<name>/ (train.bin, val.bin, meta.json; tokenizer.json for a trained BPE).

$ python data/prepare.py --input='books/*.txt' --name=books --tokenizer=char
$ python data/prepare.py --input=notes/ --name=notes --tokenizer=bpe --vocab_size=4096
$ python data/prepare.py --input=corpus.jsonl --text_column=body --name=corpus    # GPT-2's BPE
$ python data/prepare.py --hub=roneneldan/TinyStories --name=tinystories
then: python train.py --dataset=books (the last line printed suggests a model that fits)

Settings are --key=value or a config file (plain assignments), as for every script. The bare paths
right after --input=... are more inputs (the shell's expansion of an unquoted glob), so a config file
goes before --input.
"""
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(here)
sys.path.insert(0, root)  # the repository root, for nanogpt/
from nanogpt.corpus import prepare  # noqa: E402
from nanogpt.util import UsageError, check_settings, report_usage_errors  # noqa: E402

report_usage_errors()  # library code's bad-input errors: one line

# -----------------------------------------------------------------------------
input = ''  # a file, a glob (quoted) or a directory, one document a file; bare paths after it are more inputs
hub = ''  # a Hugging Face Hub dataset id, instead of input
hub_config = ''  # the Hub dataset's configuration, e.g. sample-10BT
name = ''  # the dataset: written to data/<name>, trained with --dataset=<name>
tokenizer = 'gpt2'  # 'char', 'gpt2' (GPT-2's BPE) or 'bpe' (a byte-level BPE trained on the corpus)
vocab_size = 0  # tokens of a trained BPE (0: 4096)
text_column = 'text'  # the column of JSON lines, Parquet and Hub datasets
val_fraction = 0.1  # share of the documents (or of the text) held out
split = 'auto'  # 'document' (hold out whole documents), 'position' (the end of the text) or 'auto' (documents
# where there are enough)
non_utf8 = 'skip'  # text files that are not UTF-8: 'skip' or 'replace' (U+FFFD for the bad bytes)
seed = 2357  # the shuffle that picks the val documents
num_proc = 0  # tokenizing threads (0: every core)
# -----------------------------------------------------------------------------
# the shell's expansion of --input='a glob' left unquoted: the bare paths after it, up to the next --key=value
argv, more_inputs, in_input = [], [], False
for arg in sys.argv[1:]:
    if in_input and not arg.startswith('--'):
        more_inputs.append(arg)
        continue
    in_input = arg.startswith('--input=')
    argv.append(arg)
sys.argv[1:] = argv
exec(open(os.path.join(root, 'configurator.py')).read())  # overrides from command line or config file
# -----------------------------------------------------------------------------

inputs = [input] * bool(input) + more_inputs
if bool(inputs) == bool(hub):
    raise UsageError("give --input (files, globs, directories) or --hub (a Hub dataset id), one of them")
if not name:
    raise UsageError("give --name: the dataset's directory under data/, which train.py reads with --dataset=<name>")
if os.sep in name or name.startswith('.'):
    raise UsageError(f"--name is a directory name under data/, got {name!r}")
check_settings(globals(), non_negative=('vocab_size', 'num_proc'), choices={
    'tokenizer': ('char', 'gpt2', 'bpe'), 'split': ('auto', 'document', 'position'), 'non_utf8': ('skip', 'replace')})

prepare(os.path.join(here, name), tokenizer, inputs, hub or None, hub_config or None, text_column, vocab_size or None,
        val_fraction, split, seed, non_utf8, num_proc or None, dataset=name)
