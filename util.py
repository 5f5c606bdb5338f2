"""
What every script shares that needs no torch (so the data/*/prepare.py scripts start fast): one-line
errors, downloads written whole or not at all, and GPT-2's tokenizer.
"""
import os
import sys


def die(msg):
    """Bad input: one line on stderr and a non-zero exit, no traceback."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


def download(url, path):
    """
    path, fetched from url first unless it is already there (a copy put there by hand is used as it
    is), written whole or not at all; or exit with one line saying where to put the file.
    """
    if os.path.exists(path):
        return path
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            data = r.read()
    except OSError as e:
        die(f"could not download {url} ({e}); put the file at {path} and run this again")
    with open(path + '.tmp', 'wb') as f:
        f.write(data)
    os.replace(path + '.tmp', path)
    return path


def read_text(url, path):
    """The text of a corpus file (UTF-8), downloaded to path first if it is not there."""
    with open(download(url, path), encoding='utf-8') as f:
        return f.read()


def download_jsonl(url, path, field, rows):
    """An evaluation set of JSON lines, downloaded to path if it is not there, and a line counting it."""
    import json
    with open(download(url, path), encoding='utf-8') as f:
        n = sum(1 for line in f if line.strip() and json.loads(line)[field])
    print(f"{path}: {n:,} {rows}")


def gpt2_encoding():
    """GPT-2's BPE: tiktoken's r50k_base, the same ranks and pattern (<|endoftext|> = 50256)."""
    import tiktoken
    try:
        return tiktoken.get_encoding('r50k_base')
    except Exception as e:
        die(f"cannot load the GPT-2 tokenizer (tiktoken r50k_base: no network and no "
            f"TIKTOKEN_CACHE_DIR cache?): {type(e).__name__}")
