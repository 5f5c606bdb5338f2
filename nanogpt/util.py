"""
What every script shares that needs no torch (so the data/*/prepare.py scripts start fast): one-line
errors, files and downloads written whole or not at all, and GPT-2's tokenizer.
"""
import errno
import math
import os
import sys
from contextlib import contextmanager


class UsageError(Exception):
    """Bad input that library code meets (a setting, a path, a file): its message is one line, which a script
    prints as 'error: ...' (report_usage_errors); a notebook gets it as an exception."""


def die(msg):
    """A script's bad input: one line on stderr and a non-zero exit, no traceback."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


def report_usage_errors():
    """
    For a script: from here on, a UsageError that nothing catches ends it as die does, with its one line
    on stderr and exit status 1, not a traceback. Anything else is reported as before.
    """
    report = sys.excepthook

    def hook(kind, e, tb):
        if not isinstance(e, UsageError):
            return report(kind, e, tb)
        print(f"error: {e}", file=sys.stderr)
    sys.excepthook = hook


def check_settings(config, positive=(), non_negative=(), below_one=(), choices=None):
    """
    One line and exit for the first setting of config out of its range: positive (> 0), non_negative (>= 0),
    below_one (in [0, 1)), choices ({name: the values it may take}); a float must also be finite (NaN fails
    every comparison).
    """
    for name, allowed in (choices or {}).items():
        if config[name] not in allowed:
            raise UsageError(f"{name} must be {' or '.join(repr(a) for a in allowed)}, got {config[name]!r}")
    for names, ok, want in ((positive, lambda v: v > 0, 'positive'), (non_negative, lambda v: v >= 0, '>= 0'),
                            (below_one, lambda v: 0 <= v < 1, 'in [0, 1)')):
        for name in names:
            value = config[name]
            if not (ok(value) and math.isfinite(value)):
                finite = 'finite and ' if isinstance(value, float) and want != 'in [0, 1)' else ''
                raise UsageError(f"{name} must be {finite}{want}, got {value}")


def os_error(e):
    """The OSError behind an exception, if any (torch.save, for one, reports a failed write as a RuntimeError)."""
    while e is not None and not isinstance(e, OSError):
        e = e.__cause__ or e.__context__
    return e


def write_error(path, e, note=''):
    """The one line for a write that failed: what failed, the file, what to do."""
    line = f"{(e.strerror or str(e)).lower()} writing {path}" + (f"; {note}" if note else "")
    return line + ("; free some space there, or write elsewhere" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "")


@contextmanager
def written(path, mode='wb', note=''):
    """
    Write path whole or not at all: the block writes path + '.tmp' (a file object in mode; mode None
    gives the temporary path itself, for a library that opens it), which replaces path once complete.
    A write that fails (a full disk) removes the temporary file and ends the script with one line
    naming path, followed by note; path, if it was there, is untouched.
    """
    tmp = path + '.tmp'
    try:
        if mode is None:
            yield tmp
        else:
            with open(tmp, mode) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:  # Ctrl-C included: no temporary file is left behind
        if os.path.exists(tmp):
            os.remove(tmp)
        cause = os_error(e)
        if cause is None or isinstance(e, (SystemExit, UsageError)):  # an exit or a usage error said why already
            raise
        raise UsageError(write_error(path, cause, note))


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
        raise UsageError(f"could not download {url} ({e}); put the file at {path} and run this again")
    with written(path) as f:
        f.write(data)
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
        raise UsageError(f"cannot load the GPT-2 tokenizer (tiktoken r50k_base: no network and no "
                         f"TIKTOKEN_CACHE_DIR cache?): {type(e).__name__}")
