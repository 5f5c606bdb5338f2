"""
Download HellaSwag's validation set (10,042 examples: ctx, 4 endings, label) for eval.py.
$ python data/hellaswag/prepare.py
"""
import json
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(here)))  # the repository root, for util.py
from util import download  # noqa: E402

path = os.path.join(here, 'hellaswag_val.jsonl')
if not os.path.exists(path):
    download('https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl', path)
with open(path, encoding='utf-8') as f:
    n = sum(1 for line in f if line.strip() and json.loads(line)['endings'])
print(f"{path}: {n:,} examples")
