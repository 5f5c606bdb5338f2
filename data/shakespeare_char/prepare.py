"""
Prepare the Shakespeare dataset for character-level language modeling.
Instead of encoding with GPT-2 BPE tokens, we map characters to ints.
Writes train.bin and val.bin (uint16 token ids) and meta.json (the vocabulary)
beside this file. Uses input.txt here if present, else downloads tinyshakespeare.
"""
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(here)))  # the repository root, for nanogpt/
from nanogpt.corpus import prepare  # noqa: E402
from nanogpt.util import download  # noqa: E402
from nanogpt.util import report_usage_errors  # noqa: E402

report_usage_errors()  # library code's bad-input errors: one line

path = download('https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt',
                os.path.join(here, 'input.txt'))
# the first 90% of the characters train, the last 10% validate
prepare(here, 'char', [path], val_fraction=0.1, split='position')
