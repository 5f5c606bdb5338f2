"""
Any corpus into a dataset train.py reads: text files, JSON lines, Parquet or a Hub dataset, split by
document, tokenized on every core and streamed to {train,val}.bin and meta.json at bounded memory.
"""
import glob
import itertools
import json
import os
import time
from contextlib import ExitStack

import numpy as np
from tqdm import tqdm

from nanogpt.tokenizer import Tokenizer, train_bpe
from nanogpt.util import UsageError, write_error, written

TABLES = {'.jsonl': 'json', '.json': 'json', '.parquet': 'parquet'}  # read through datasets' packaged builders
CHUNK = 1 << 20  # characters of a text file read at a time
BATCH = 1 << 23  # characters tokenized at a time, across the threads


def find_files(inputs):
    """The files inputs name (files, globs, directories: recursive, hidden names skipped), sorted, each once."""
    files = []
    for spec in inputs:
        if os.path.isdir(spec):
            found = [os.path.join(d, f) for d, dirs, fs in os.walk(spec) for f in fs if not f.startswith('.')
                     if not any(p.startswith('.') for p in os.path.relpath(d, spec).split(os.sep) if p != '.')]
        else:
            found = [f for f in glob.glob(spec, recursive=True) if os.path.isfile(f)]
        if not found:
            raise UsageError(f"no files match {spec}" + (" (an empty directory)" if os.path.isdir(spec) else ""))
        files += sorted(found)
    return list(dict.fromkeys(files))


def _cut(text):
    """
    Where text may be cut without changing its GPT-2 pre-tokenization: after a newline or before a space
    that has a non-space on either side (no piece of the pattern spans either); 0 if nowhere.
    """
    for sep, after in (('\n', 1), (' ', 0)):
        j = len(text) - 1
        while True:
            j = text.rfind(sep, 1, j)
            if j < 1:
                break
            if not text[j - 1].isspace() and not text[j + 1].isspace():
                return j + after
    return 0


def file_chunks(path, errors='strict'):
    """A text file's text (UTF-8, newlines read as Python reads them) in pieces of about CHUNK characters."""
    with open(path, encoding='utf-8', errors=errors) as f:
        carry = ''
        while block := f.read(CHUNK):
            text = carry + block
            cut = _cut(text) if len(text) < 16 * CHUNK else len(text)  # a text with no place to cut, cut anyway
            carry = text[cut:]
            if cut:
                yield text[:cut]
        if carry:
            yield carry


def _scan(path, errors, chars):
    """The length of a text file's text, its characters added to chars (a set, or None)."""
    n = 0
    for c in file_chunks(path, errors):
        n += len(c)
        if chars is not None:
            chars.update(c)
    return n


class TextFiles:
    """Text files, one document each: a first pass finds their lengths, and those that are not UTF-8."""

    def __init__(self, files, non_utf8, chars=None):
        self.files, self.lengths, self.errors, bad = [], [], {}, []
        for path in tqdm(files, desc="reading", unit='file', delay=1):
            try:
                self.lengths.append(_scan(path, 'strict', chars))
            except UnicodeDecodeError:
                bad.append(path)
                if non_utf8 == 'skip':
                    continue
                self.errors[path] = 'replace'
                self.lengths.append(_scan(path, 'replace', chars))
            except OSError as e:
                raise UsageError(f"cannot read {path}: {e.strerror}")
            self.files.append(path)
        if bad:
            s = 's' if len(bad) > 1 else ''
            what = 'skipped' if non_utf8 == 'skip' else "read with U+FFFD for the bytes that are not UTF-8"
            other = 'replace' if non_utf8 == 'skip' else 'skip'
            print(f"{len(bad):,} file{s} not UTF-8, {what} (the first: {bad[0]}; --non_utf8={other} to {other} them)")
        self.bytes = sum(os.path.getsize(f) for f in self.files)

    def __len__(self):
        return len(self.files)

    def documents(self):
        for path in self.files:
            yield file_chunks(path, self.errors.get(path, 'strict'))


class Rows:
    """A table's text column (a datasets Dataset, memory-mapped), one document a row."""

    def __init__(self, dataset, column, chars=None):
        if column not in dataset.column_names:
            raise UsageError(f"the dataset has no '{column}' column (columns: {', '.join(dataset.column_names)}); "
                             f"name the text's with --text_column")
        self.dataset, self.column, self.lengths, self.bytes = dataset.select_columns([column]), column, None, None
        if chars is not None:  # the characters need a pass of their own
            self.lengths = []
            for text in self.texts():
                chars.update(text)
                self.lengths.append(len(text))

    def __len__(self):
        return len(self.dataset)

    def texts(self):
        for batch in self.dataset.iter(batch_size=1024):
            yield from (t or '' for t in batch[self.column])

    def documents(self):
        for text in self.texts():
            yield (text,)


def load_table(files=None, hub=None, hub_config=None, num_proc=None):
    """A datasets Dataset from local JSON lines/Parquet files or the Hub, or one line saying why not."""
    from datasets import load_dataset  # slow to import: only for tables
    if files:
        builders = {TABLES[os.path.splitext(f)[1].lower()] for f in files}
        if len(builders) > 1:
            raise UsageError("give JSON lines or Parquet files, not both (a glob such as --input='dir/*.parquet' "
                             "picks one kind)")
        return load_dataset(builders.pop(), data_files=files, split='train')
    try:
        try:
            return load_dataset(hub, name=hub_config, split='train', num_proc=num_proc)
        except RuntimeError as e:
            if 'scripts are no longer supported' not in str(e):
                raise
            # a dataset still published with a loading script: its Parquet export on the Hub loads
            print(f"{hub} has a loading script, which datasets no longer runs; using its Parquet export")
            return load_dataset(hub, name=hub_config, split='train', revision='refs/convert/parquet',
                                num_proc=num_proc)
    except (ConnectionError, OSError, RuntimeError, ValueError) as e:
        raise UsageError(f"could not load {hub} from the Hugging Face Hub ({type(e).__name__}: "
                         f"{str(e).splitlines()[0]}); with the files at hand, name them instead")


def suggest(tokens, vocab_size):
    """The largest of a few shapes with at most 20 parameters a training token: (n_layer, n_head, n_embd), or None."""
    shapes = [(2, 2, 64), (4, 4, 128), (6, 6, 384), (8, 8, 512)]
    fits = [s for s in shapes if params(*s, vocab_size) <= 20 * tokens]
    return fits[-1] if fits else None


def params(n_layer, n_head, n_embd, vocab_size):
    """About the parameters of a GPT of this shape (nanoGPT's count: the blocks and the tied embedding)."""
    return 12 * n_layer * n_embd ** 2 + vocab_size * n_embd


def copy(src, dst, offset, size, block=1 << 26):
    """size bytes of the file src from offset onto the end of dst, a block at a time."""
    while size > 0:
        data = os.pread(src.fileno(), min(size, block), offset)
        dst.write(data)
        offset, size = offset + len(data), size - len(data)


def prepare(out_dir, tokenizer='gpt2', inputs=(), hub=None, hub_config=None, text_column='text', vocab_size=None,
            val_fraction=0.1, split='auto', seed=2357, non_utf8='skip', num_proc=None, dataset=None):
    """
    Write out_dir/{train,val}.bin (token ids, uint16 while the vocabulary fits, else uint32) and meta.json
    (and tokenizer.json for a trained BPE) from inputs (files, globs, directories) or a Hub dataset, each
    file whole or not at all. split 'document' holds out val_fraction of the documents (shuffled by seed,
    as datasets' train_test_split does), 'position' the last val_fraction of the text, 'auto' the first
    where there are enough documents. Every whole document ends with <|endoftext|> (BPE). Ends with a
    line of advice naming dataset.
    """
    num_proc = num_proc or len(os.sched_getaffinity(0))
    if tokenizer == 'bpe':
        vocab_size = vocab_size or 4096
        if not 257 <= vocab_size <= 2**20:
            raise UsageError(f"vocab_size must be between 257 (the 256 bytes and <|endoftext|>) and {2**20:,} for "
                             f"--tokenizer=bpe, got {vocab_size}")
    elif vocab_size is not None:
        fixed = "the corpus's characters" if tokenizer == 'char' else "GPT-2's 50,257 tokens"
        raise UsageError(f"vocab_size applies to --tokenizer=bpe; --tokenizer={tokenizer} has {fixed}")
    if not 0 < val_fraction < 1:
        raise UsageError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    t0 = time.time()

    # the documents, and what a first pass learns of them: lengths (text files), characters (char)
    chars = set() if tokenizer == 'char' else None
    files = find_files(inputs)
    tables = [f for f in files if os.path.splitext(f)[1].lower() in TABLES]
    if tables and len(tables) < len(files):
        raise UsageError(f"give text files or JSON lines/Parquet files, not both ({tables[0]} and "
                         f"{next(f for f in files if f not in tables)}); a glob such as --input='dir/*.txt' picks "
                         f"one kind")
    if files and not tables:
        source = TextFiles(files, non_utf8, chars)
    else:
        source = Rows(load_table(files, hub, hub_config, num_proc), text_column, chars)
    n_docs = len(source)
    if split == 'auto':
        split = 'document' if n_docs >= 2 and round(n_docs * val_fraction) >= 1 else 'position'
    lengths = source.lengths
    if split == 'position' and lengths is None:
        lengths = [len(t) for t in source.texts()]
    if n_docs == 0 or (lengths is not None and sum(lengths) == 0):
        raise UsageError(f"the corpus is empty ({n_docs:,} document{'s' if n_docs != 1 else ''}, no text)")

    # the split: which documents are held out (document), or where the text is cut (position)
    if split == 'document':
        n_val = max(1, round(n_docs * val_fraction))
        order = np.random.default_rng(seed).permutation(n_docs)  # as datasets' train_test_split shuffles
        is_val = np.zeros(n_docs, dtype=bool)
        is_val[order[:n_val]] = True
        cut_doc, cut_at = n_docs, 0
    else:
        order = np.arange(n_docs)
        cum = np.cumsum(lengths)
        at = int(int(cum[-1]) * (1 - val_fraction))
        cut_doc = int(np.searchsorted(cum, at, side='right'))  # the document holding character at
        cut_at = at - (int(cum[cut_doc - 1]) if cut_doc else 0)
        is_val = np.arange(n_docs) > cut_doc
        if cut_at == 0:
            is_val[cut_doc] = True

    def pieces():
        """(text chunks, split, whole document?) of each document in input order; the cut one in two."""
        for i, chunks in enumerate(source.documents()):
            if i != cut_doc or cut_at == 0:
                yield chunks, bool(is_val[i]), True
                continue
            chunks, rest = iter(chunks), ['']

            def head():  # up to the cut, lazily: a document may be larger than memory
                seen = 0
                for c in chunks:
                    if seen + len(c) >= cut_at:
                        rest[0] = c[cut_at - seen:]
                        yield c[:cut_at - seen]
                        return
                    seen += len(c)
                    yield c
            yield head(), False, False
            yield itertools.chain(rest, chunks), True, False

    # the tokenizer: characters, GPT-2's, or a BPE trained on the train split
    if tokenizer == 'char':
        itos = sorted(chars)
        tok = Tokenizer('char', len(itos), itos)
        print(f"all the unique characters: {''.join(itos)!r}"[:300])
    elif tokenizer == 'gpt2':
        tok = Tokenizer('gpt2', 50257)
    else:
        text = (c for chunks, val, _ in pieces() if not val for c in chunks)
        tok_json = train_bpe(text, vocab_size)
        trained = json.loads(tok_json)
        tok = Tokenizer('bpe', len(trained['model']['vocab']) + len(trained['added_tokens']), tokenizer_json=tok_json)
        if tok.vocab_size < vocab_size:
            print(f"the corpus has merges for {tok.vocab_size:,} tokens, fewer than the {vocab_size:,} asked")
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.uint32
    print(f"vocab size: {tok.vocab_size:,}")

    # tokenize every piece in input order into one file, then copy them out in split order
    made = not os.path.isdir(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    all_path = os.path.join(out_dir, 'tokens.tmp')
    counts, vals = [], []  # each piece's token count and split
    bar = tqdm(total=source.bytes or n_docs, unit='B' if source.bytes else 'doc', unit_scale=bool(source.bytes),
               desc='tokenizing', delay=1)  # shown for work that takes a while
    eot = np.array([tok.eot or 0], dtype=dtype)  # after each whole document (BPE)
    try:
        try:
            with open(all_path, 'wb') as out:
                batch, owners, size = [], [], 0  # texts to encode (None: <|endoftext|>) and their pieces

                def flush():
                    texts = [c for c in batch if c is not None]
                    encoded = iter(tok.encode_batch(texts, num_proc))
                    for c, p in zip(batch, owners):
                        ids = next(encoded).astype(dtype) if c is not None else eot
                        out.write(ids.tobytes())
                        counts[p] += len(ids)
                    bar.update(sum(len(c.encode('utf-8')) for c in texts) if source.bytes else len(texts))
                    batch.clear()
                    owners.clear()
                for p, (chunks, val, whole) in enumerate(pieces()):
                    counts.append(0)
                    vals.append(val)
                    for c in chunks:
                        batch.append(c)
                        owners.append(p)
                        size += len(c)
                        if size >= BATCH:
                            flush()
                            size = 0
                    if whole and tok.eot is not None:
                        batch.append(None)
                        owners.append(p)
                flush()
        except OSError as e:
            bar.close()
            raise UsageError(write_error(all_path, e, 'no dataset was written'))
        bar.update(bar.total - bar.n)  # newlines read as \n count fewer bytes than the files hold
        bar.close()
        counts, vals = np.array(counts, dtype=np.int64), np.array(vals, dtype=bool)
        starts = np.cumsum(counts) - counts
        n_tokens = {s: int(counts[vals == (s == 'val')].sum()) for s in ('train', 'val')}
        for s, n in n_tokens.items():
            if n == 0:
                raise UsageError(f"the {s} split is empty ({n_docs:,} document{'s' if n_docs != 1 else ''}, "
                                 f"val_fraction={val_fraction}, split by {split}): give more text, or another "
                                 f"val_fraction")

        meta = {'vocab_size': tok.vocab_size, 'itos': tok.itos} if tokenizer == 'char' else \
            {'tokenizer': tokenizer, 'vocab_size': tok.vocab_size}
        if tokenizer != 'char' or dtype != np.uint16:  # a character vocabulary's meta.json is nanoGPT's
            meta['dtype'] = np.dtype(dtype).name
        item = np.dtype(dtype).itemsize
        # the document order of each split: shuffled (document), as read (position)
        piece_order = order if split == 'document' else range(len(counts))
        with ExitStack() as outputs, open(all_path, 'rb') as src:  # all put in place at the end, once whole
            f = outputs.enter_context(written(os.path.join(out_dir, 'meta.json')))
            f.write(json.dumps(meta, ensure_ascii=False).encode('utf-8'))
            if tokenizer == 'bpe':
                f = outputs.enter_context(written(os.path.join(out_dir, 'tokenizer.json')))
                f.write(tok.tokenizer_json.encode('utf-8'))
            for s in ('train', 'val'):
                f = outputs.enter_context(written(os.path.join(out_dir, f'{s}.bin')))
                if hasattr(os, 'posix_fallocate'):
                    os.posix_fallocate(f.fileno(), 0, n_tokens[s] * item)  # a full disk fails here, at once
                for p in piece_order:
                    if vals[p] == (s == 'val'):
                        copy(src, f, int(starts[p]) * item, int(counts[p]) * item)
                print(f"{s} has {n_tokens[s]:,} tokens")
        stale = os.path.join(out_dir, 'tokenizer.json')
        if tokenizer != 'bpe' and os.path.exists(stale):
            os.remove(stale)  # a BPE's, from an earlier preparation: not this dataset's
    finally:
        bar.close()
        if os.path.exists(all_path):
            os.remove(all_path)
        if made and not os.listdir(out_dir):  # a run that failed leaves no empty dataset behind
            os.rmdir(out_dir)

    n, dt = sum(n_tokens.values()), time.time() - t0
    rate = f", {source.bytes / 1e6 / dt:,.1f} MB/s" if source.bytes else ""
    threads = f"{num_proc} thread{'s' if num_proc > 1 else ''}"
    print(f"prepared {n:,} tokens in {dt:.1f}s ({n / dt:,.0f} tokens/s{rate}, {threads})")
    shape, name = suggest(n_tokens['train'], tok.vocab_size), dataset or os.path.basename(os.path.abspath(out_dir))
    line = f"{n_docs:,} documents, {n:,} tokens, vocabulary {tok.vocab_size:,}: "
    if shape is None:
        smaller = ", or a smaller vocabulary (--tokenizer=char or bpe)" if tokenizer != 'char' else ""
        print(line + f"too few tokens for a model of {params(2, 2, 64, tok.vocab_size) / 1e6:.2g}M params (20 a "
              f"token); give more text{smaller}")
    else:
        print(line + advice(name, n_tokens['train'], tok.vocab_size, shape, _has_cuda()))


# the recipes the advice starts from: (config file, tokens an iteration, most iterations, largest shape)
RECIPES = {'cpu': ('config/train_shakespeare_char_cpu.py', 12 * 64, 2000, (4, 4, 128)),
           'cuda': ('config/train_shakespeare_char.py', 64 * 256, 5000, (8, 8, 512))}
PASSES = 10  # over the training tokens: enough to learn them, far from learning them by heart


def advice(name, train_tokens, vocab_size, shape, cuda):
    """
    A model that fits the data (shape, at most the recipe's) and a command that trains it in minutes on this
    machine: the CPU recipe, or on a CUDA GPU the GPU one, for PASSES passes over the training tokens (at least
    200 iterations, at most the recipe's own), evaluated four times or every 250 iterations, the last at the end.
    """
    config, tokens_per_iter, most, largest = RECIPES['cuda' if cuda else 'cpu']
    shape = min(shape, largest)
    iters = max(200, min(most, round(PASSES * train_tokens / tokens_per_iter)))
    interval = min(250, -(-iters // 4))  # four evaluations (each may save a checkpoint), the last one at the end
    iters = interval * -(-iters // interval)
    shape_args = '' if shape == largest and not cuda else \
        f" --n_layer={shape[0]} --n_head={shape[1]} --n_embd={shape[2]}"
    return (f"a model of about {params(*shape, vocab_size) / 1e6:.2g}M params fits; python train.py {config} "
            f"--dataset={name} --out_dir=out-{name}{shape_args} --max_iters={iters} --lr_decay_iters={iters} "
            f"--eval_interval={interval}")


def _has_cuda():
    """Whether this machine has an NVIDIA GPU the run can use: the driver's list of GPUs, read without importing torch
    (the preparers start fast and need none); CUDA_VISIBLE_DEVICES set empty hides them, as from torch."""
    if os.environ.get('CUDA_VISIBLE_DEVICES') in ('', '-1'):
        return False
    try:
        return bool(os.listdir('/proc/driver/nvidia/gpus'))
    except OSError:
        return False
