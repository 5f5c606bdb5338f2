"""
A dataset's tokenizer, with no torch: its characters, GPT-2's BPE, or a byte-level BPE trained on the
corpus with Hugging Face tokenizers; what data/<dataset>/meta.json says, and its Hugging Face export.
"""
import json
import os

from nanogpt.util import UsageError, gpt2_encoding

EOT = '<|endoftext|>'
# GPT-2's pre-tokenization, tiktoken r50k_base's pattern (and tokenizers' ByteLevel regex)
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
KINDS = ('char', 'gpt2', 'bpe')
GPT2 = {'tokenizer': 'gpt2', 'vocab_size': 50257, 'dtype': 'uint16'}  # a dataset without meta.json


def byte_to_unicode():
    """
    GPT-2's printable stand-in for each byte, in which tokenizer.json writes byte-level tokens; written
    here because only transformers has it, and the preparer must start without importing transformers.
    """
    keep = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1), *range(ord('®'), ord('ÿ') + 1)]
    extra = iter(range(256, 512))
    return {b: chr(b if b in keep else next(extra)) for b in range(256)}


class Tokenizer:
    """
    kind ('char', 'gpt2' or 'bpe'), vocab_size, eot (the id of <|endoftext|>; None for characters),
    encode (a prompt: <|endoftext|> allowed), encode_batch (a corpus: plain text), decode.
    """

    def __init__(self, kind, vocab_size, itos=None, tokenizer_json=None):
        self.kind, self.vocab_size, self.tokenizer_json = kind, vocab_size, tokenizer_json
        if kind == 'char':
            import numpy as np
            self.itos, self.eot = itos, None
            self._stoi = {c: i for i, c in enumerate(itos)}
            self._lut = np.full(max(map(ord, itos)) + 1, -1, dtype=np.int64)  # code point -> id
            self._lut[[ord(c) for c in itos]] = np.arange(len(itos))
            return
        if kind == 'gpt2':
            self._enc = gpt2_encoding()
        else:  # tiktoken encodes with the trained merges: the ranks are the token ids, as in tiktoken's own files
            import tiktoken
            spec = json.loads(tokenizer_json)
            to_byte = {u: b for b, u in byte_to_unicode().items()}
            ranks = {bytes(to_byte[u] for u in token): i for token, i in spec['model']['vocab'].items()}
            special = {t['content']: t['id'] for t in spec['added_tokens']}
            self._enc = tiktoken.Encoding('bpe', pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=special)
        self.eot = self._enc.eot_token

    def encode(self, text):
        if self.kind != 'char':
            return self._enc.encode(text, allowed_special={EOT})
        bad = next((c for c in text if c not in self._stoi), None)
        if bad is not None:
            raise UsageError(f"the prompt has the character {bad!r}, which is not in the model's vocabulary")
        return [self._stoi[c] for c in text]

    def encode_batch(self, texts, num_threads):
        """The ids of each text (every character in the vocabulary), as numpy arrays; tiktoken uses num_threads."""
        import numpy as np
        if self.kind != 'char':
            batch = self._enc.encode_ordinary_batch(texts, num_threads=num_threads)
            return [np.array(ids, dtype=np.int64) for ids in batch]
        return [self._lut[np.frombuffer(t.encode('utf-32-le'), dtype=np.uint32)] for t in texts]

    def decode(self, ids):
        if self.kind == 'char':
            return ''.join(self.itos[i] for i in ids)
        return self._enc.decode(ids)

    def bpe_tables(self):
        """
        A BPE's tokens by id (bytes as GPT-2's printable stand-ins, as tokenizer.json and GGUF write them),
        <|endoftext|> last, and its merges ('a b', in rank order). tiktoken holds GPT-2's as ranks, not merges: each
        token's merge is the last split that byte-pair merging with the ranks below its own leaves (what transformers'
        tiktoken converter does, by hand here since that converter needs blobfile).
        """
        if self.kind == 'bpe':
            spec = json.loads(self.tokenizer_json)
            tokens = [None] * self.vocab_size
            for token, i in spec['model']['vocab'].items():
                tokens[i] = token
            for added in spec['added_tokens']:
                tokens[added['id']] = added['content']
            return tokens, [m if isinstance(m, str) else ' '.join(m) for m in spec['model']['merges']]
        to_unicode = byte_to_unicode()
        ranks = {self._enc.decode_single_token_bytes(i): i for i in range(self.eot)}
        tokens, merges = [], []
        for token, rank in ranks.items():  # in rank order
            tokens.append(''.join(to_unicode[b] for b in token))
            parts = [bytes([b]) for b in token]
            while len(parts) > 2:
                pairs = [(ranks.get(a + b, rank), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
                best, i = min(pairs)
                if best >= rank:
                    break
                parts[i:i + 2] = [parts[i] + parts[i + 1]]
            if len(parts) == 2:
                merges.append(' '.join(''.join(to_unicode[b] for b in p) for p in parts))
        return tokens + [EOT], merges

    def hf_tokenizer(self):
        """The same tokenizer for transformers (PreTrainedTokenizerFast), built offline (GPT-2's from its ranks)."""
        from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast
        if self.kind == 'char':  # a BPE without merges splits text into its characters
            tok = HFTokenizer(models.BPE(vocab={c: i for i, c in enumerate(self.itos)}, merges=[]))
            tok.decoder = decoders.Fuse()
            return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False)
        if self.kind == 'bpe':
            tok = HFTokenizer.from_str(self.tokenizer_json)
        else:
            tokens, merges = self.bpe_tables()
            tok = HFTokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens[:-1])},
                                         merges=[tuple(m.split(' ')) for m in merges]))
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)  # GPT-2's
            tok.decoder = decoders.ByteLevel()
            tok.add_special_tokens([EOT])
        return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT, bos_token=EOT, unk_token=EOT,
                                       clean_up_tokenization_spaces=False)


def train_bpe(texts, vocab_size, length=None):
    """
    A byte-level BPE of vocab_size tokens trained on texts (an iterable of strings, length of them), with
    GPT-2's pre-tokenization and <|endoftext|> as its last token, as tokenizer.json's text.
    """
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=True)
    tok.train_from_iterator(texts, trainer, length=length)
    tok.add_special_tokens([EOT])  # after the merges: the last id, as 50256 is GPT-2's
    return tok.to_str()


def read_meta(data_dir):
    """
    data_dir/meta.json as {'tokenizer', 'vocab_size', 'dtype', ...}: a character vocabulary ('itos'),
    GPT-2's BPE, or a trained BPE (beside it, tokenizer.json); no meta.json means GPT-2's BPE in uint16,
    as nanoGPT's openwebtext is. nanoGPT's meta.pkl is read too, with an unpickler that builds only
    plain dicts, lists and strings, so it cannot run code.
    """
    path, meta = os.path.join(data_dir, 'meta.json'), None
    prepare = os.path.join(data_dir, 'prepare.py')
    again = f"run python {prepare} again" if os.path.isfile(prepare) else "prepare the dataset again"
    if os.path.isfile(path):
        try:
            with open(path, encoding='utf-8') as f:
                meta = json.load(f)
            if 'itos' in meta:
                meta.setdefault('tokenizer', 'char')
                assert meta['vocab_size'] == len(meta['itos']) and all(isinstance(c, str) for c in meta['itos'])
            assert meta['tokenizer'] in KINDS and isinstance(meta['vocab_size'], int)
            meta.setdefault('dtype', 'uint16')
            assert meta['dtype'] in ('uint16', 'uint32')
        except (ValueError, KeyError, TypeError, AssertionError) as e:  # JSON and UTF-8 errors are ValueErrors
            why = 'not valid JSON' if isinstance(e, ValueError) else \
                "not {'vocab_size': n, 'itos': [n strings]}" if isinstance(meta, dict) and 'itos' in meta else \
                "not {'tokenizer': 'gpt2' or 'bpe', 'vocab_size': n, 'dtype': 'uint16' or 'uint32'}"
            raise UsageError(f"cannot read {path}: {why}; {again}")
        if meta['tokenizer'] == 'bpe':
            try:
                with open(os.path.join(data_dir, 'tokenizer.json'), encoding='utf-8') as f:
                    meta['tokenizer_json'] = f.read()
            except OSError as e:
                raise UsageError(f"cannot read {os.path.join(data_dir, 'tokenizer.json')} ({e.strerror}); {again}")
        return meta
    path = os.path.join(data_dir, 'meta.pkl')
    if os.path.isfile(path):
        import pickle

        class NoCode(pickle.Unpickler):
            def find_class(self, module, name):
                raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        try:
            with open(path, 'rb') as f:
                meta = NoCode(f).load()
            itos = meta['itos']
            return {'tokenizer': 'char', 'vocab_size': meta['vocab_size'], 'dtype': 'uint16',
                    'itos': [itos[i] for i in range(len(itos))]}
        except Exception as e:
            raise UsageError(f"cannot read {path}: {e}")
    return dict(GPT2)


def from_meta(meta):
    """The Tokenizer a read_meta dict describes."""
    return Tokenizer(meta['tokenizer'], meta['vocab_size'], meta.get('itos'), meta.get('tokenizer_json'))
