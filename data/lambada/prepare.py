"""
Download OpenAI's LAMBADA test set (5,153 passages, field 'text'), the version GPT-2 was evaluated on.
$ python data/lambada/prepare.py
"""
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(here)))  # the repository root, for nanogpt/
from nanogpt.util import download_jsonl  # noqa: E402
from nanogpt.util import report_usage_errors  # noqa: E402

report_usage_errors()  # library code's bad-input errors: one line

download_jsonl('https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl',
               os.path.join(here, 'lambada_test.jsonl'), field='text', rows='passages')
