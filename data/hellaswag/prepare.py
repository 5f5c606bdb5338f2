"""
Download HellaSwag's validation set (10,042 examples: ctx, 4 endings, label) for eval.py.
$ python data/hellaswag/prepare.py
"""
import json
import os
import sys
import urllib.request

here = os.path.dirname(os.path.abspath(__file__))
url = 'https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl'
path = os.path.join(here, 'hellaswag_val.jsonl')
if not os.path.exists(path):
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            data = r.read()
    except OSError as e:
        sys.exit(f"error: could not download {url} ({e}); put the file at {path} and run this again")
    with open(path + '.tmp', 'wb') as f:
        f.write(data)
    os.replace(path + '.tmp', path)
with open(path, encoding='utf-8') as f:
    n = sum(1 for line in f if line.strip() and json.loads(line)['endings'])
print(f"{path}: {n:,} examples")
