"""
Download OpenAI's LAMBADA test set (5,153 passages, field 'text'), the version GPT-2 was evaluated on.
$ python data/lambada/prepare.py
"""
import json
import os
import sys
import urllib.request

here = os.path.dirname(os.path.abspath(__file__))
url = 'https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl'
path = os.path.join(here, 'lambada_test.jsonl')
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
    n = sum(1 for line in f if line.strip() and json.loads(line)['text'])
print(f"{path}: {n:,} passages")
