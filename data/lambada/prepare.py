"""
Download OpenAI's LAMBADA test set (5,153 passages, field 'text'), the version GPT-2 was evaluated on.
$ python data/lambada/prepare.py
"""
import json
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(here)))  # the repository root, for util.py
from util import download  # noqa: E402

path = os.path.join(here, 'lambada_test.jsonl')
if not os.path.exists(path):
    download('https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl', path)
with open(path, encoding='utf-8') as f:
    n = sum(1 for line in f if line.strip() and json.loads(line)['text'])
print(f"{path}: {n:,} passages")
