"""
Download HellaSwag's validation set (10,042 examples: ctx, 4 endings, label) for eval.py.
$ python data/hellaswag/prepare.py
"""
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(here)))  # the repository root, for nanogpt/
from nanogpt.util import download_jsonl  # noqa: E402
from nanogpt.util import report_usage_errors  # noqa: E402

report_usage_errors()  # library code's bad-input errors: one line

download_jsonl('https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl',
               os.path.join(here, 'hellaswag_val.jsonl'), field='endings', rows='examples')
