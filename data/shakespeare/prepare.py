"""
Prepare tiny shakespeare for GPT-2: GPT-2 BPE token ids in train.bin and val.bin (uint16)
beside this file. Uses input.txt here if present, else downloads it.
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
# the first 90% of the text trains, the last 10% validates
prepare(here, 'gpt2', [path], val_fraction=0.1, split='position')
