"""
Tokenize OpenWebText (or another corpus with a 'text' column) with GPT-2 BPE into train.bin and
val.bin (uint16 token ids, each document followed by <|endoftext|>) through data/prepare.py's code,
which streams the corpus: it never has to fit in memory.

$ python data/openwebtext/prepare.py                               # Skylion007/openwebtext from the Hub
$ python data/openwebtext/prepare.py --dataset=some-user/some-text  # another Hub dataset
$ python data/openwebtext/prepare.py --data_files='corpus/*.jsonl'  # local .jsonl/.json/.parquet/.txt files
(data/fineweb_edu/prepare.py runs this script for FineWeb-Edu.)
"""
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(os.path.dirname(here))
sys.path.insert(0, root)  # the repository root, for nanogpt/
from nanogpt.corpus import prepare  # noqa: E402
from nanogpt.util import check_settings, report_usage_errors  # noqa: E402

report_usage_errors()  # library code's bad-input errors: one line

# -----------------------------------------------------------------------------
dataset = 'Skylion007/openwebtext'  # Hugging Face Hub dataset id
name = ''  # the dataset's configuration, e.g. sample-10BT
data_files = ''  # local files (a glob) to use instead of the Hub
out_dir = here  # where train.bin and val.bin go
val_fraction = 0.0005  # share of documents held out for val
num_proc = 0  # tokenizing threads (0: every core)
seed = 2357  # the shuffle that picks the val documents
# -----------------------------------------------------------------------------
exec(open(os.path.join(root, 'configurator.py')).read())  # overrides from command line or config file
# -----------------------------------------------------------------------------
check_settings(globals(), non_negative=('num_proc',))

# data/prepare.py's work, with this corpus's defaults: whole documents held out, shuffled by seed
prepare(out_dir, 'gpt2', [data_files] if data_files else (), None if data_files else dataset, name or None,
        val_fraction=val_fraction, split='document', seed=seed, num_proc=num_proc or None,
        dataset=os.path.basename(os.path.abspath(out_dir)))
