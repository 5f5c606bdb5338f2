"""
A GGUF file of llama.cpp's gpt2 architecture read back with the gguf package and run greedy in a few lines of
torch, as llama.cpp computes it (LayerNorm, causal attention, GELU, the tied or own head), with the file's own
tokenizer: the reference tests/test_export.py holds export.py's GGUF to, and tools can run beside llama.cpp.
$ python tests/gguf_reference.py FILE PROMPT N [gelu|gelu_tanh]   prints the prompt and N greedy tokens' text
"""
import sys

import gguf
import numpy as np
import torch
import torch.nn.functional as F

BYTES = None  # GPT-2's printable stand-in of each byte, reversed: {stand-in: byte}


def _byte_of():
    global BYTES
    if BYTES is None:
        keep = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1), *range(ord('®'), ord('ÿ') + 1)]
        extra = iter(range(256, 512))
        BYTES = {chr(b if b in keep else next(extra)): b for b in range(256)}
    return BYTES


def _unescape(token):
    """llama.cpp's rwkv vocabulary entry as bytes: \\t \\n \\r \\xhh and \\ before any other character."""
    out, i = bytearray(), 0
    while i < len(token):
        c = token[i]
        if c == '\\' and i + 1 < len(token):
            nxt = token[i + 1]
            if nxt == 'x':
                out.append(int(token[i + 2:i + 4], 16))
                i += 4
                continue
            out += {'t': b'\t', 'n': b'\n', 'r': b'\r'}.get(nxt, nxt.encode())
            i += 2
            continue
        out += c.encode()
        i += 1
    return bytes(out)


class GGUFModel:
    def __init__(self, path):
        reader = gguf.GGUFReader(path)
        self.fields = {k: f.contents() for k, f in reader.fields.items()}
        assert self.fields['general.architecture'] == 'gpt2'
        self.w, self.types = {}, {t.name: t.tensor_type.name for t in reader.tensors}
        for t in reader.tensors:
            data = gguf.quants.dequantize(t.data, t.tensor_type)
            self.w[t.name] = torch.from_numpy(np.array(data, dtype=np.float32)).reshape(
                tuple(int(n) for n in reversed(t.shape)))
        self.n_layer = self.fields['gpt2.block_count']
        self.n_head = self.fields['gpt2.attention.head_count']
        self.tokens = self.fields['tokenizer.ggml.tokens']
        self.kind = self.fields['tokenizer.ggml.model']
        self.eos = self.fields.get('tokenizer.ggml.eos_token_id')

    def encode(self, text):
        if self.kind == 'rwkv':  # a character vocabulary: each character its own token
            ids = {_unescape(t).decode('utf-8', 'replace'): i for i, t in enumerate(self.tokens)}
            return [ids[c] for c in text]
        from tokenizers import Tokenizer, models, pre_tokenizers
        n = len(self.tokens)
        merges = [tuple(m.split(' ')) for m in self.fields['tokenizer.ggml.merges']]
        tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(self.tokens[:n])}, merges=merges))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        return tok.encode(text).ids

    def decode(self, ids):
        if self.kind == 'rwkv':
            data = b''.join(_unescape(self.tokens[i]) for i in ids)
        else:
            data = bytes(_byte_of()[c] for i in ids for c in self.tokens[i])
        return data.decode('utf-8', 'replace')

    @torch.no_grad()
    def logits(self, ids, activation):
        w, T = self.w, len(ids)
        x = w['token_embd.weight'][ids] + w['position_embd.weight'][:T]
        C = x.size(-1)
        for i in range(self.n_layer):
            p = f'blk.{i}.'
            h = F.layer_norm(x, (C,), w[p + 'attn_norm.weight'], w[p + 'attn_norm.bias'], 1e-5)
            q, k, v = (h @ w[p + 'attn_qkv.weight'].T + w[p + 'attn_qkv.bias']).split(C, dim=-1)
            q, k, v = (t.view(T, self.n_head, -1).transpose(0, 1) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(0, 1).reshape(T, C)
            x = x + y @ w[p + 'attn_output.weight'].T + w[p + 'attn_output.bias']
            h = F.layer_norm(x, (C,), w[p + 'ffn_norm.weight'], w[p + 'ffn_norm.bias'], 1e-5)
            h = F.gelu(h @ w[p + 'ffn_up.weight'].T + w[p + 'ffn_up.bias'],
                       approximate='tanh' if activation == 'gelu_tanh' else 'none')
            x = x + h @ w[p + 'ffn_down.weight'].T + w[p + 'ffn_down.bias']
        x = F.layer_norm(x[-1], (C,), w['output_norm.weight'], w['output_norm.bias'], 1e-5)
        return x @ w.get('output.weight', w['token_embd.weight']).T

    def greedy(self, ids, n, activation='gelu'):
        """ids and up to n greedy tokens after them (stopping before the end-of-text token, as llama.cpp does)."""
        ids = list(ids)
        for _ in range(n):
            token = int(self.logits(ids, activation).argmax())
            if token == self.eos:
                break
            ids.append(token)
        return ids


if __name__ == '__main__':
    model = GGUFModel(sys.argv[1])
    prompt = model.encode(sys.argv[2])
    print(model.decode(model.greedy(prompt, int(sys.argv[3]), *sys.argv[4:5])), end='')
