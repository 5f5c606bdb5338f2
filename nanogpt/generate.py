"""
Generation: the KV cache GPT.forward takes, the token loop with its controls (temperature, top-k,
top-p, per-row seeds, a stop token), the sampling of one token and the timing of generation, as gpt-fast
keeps them beside its model.
"""

import time

import torch
from torch.nn import functional as F

from nanogpt.device import synchronize


class KVCache:
    """
    The keys and values of every layer for the positions seen so far, so that generation feeds
    the model one new token per step instead of the whole context again. generate_stream makes one
    and passes it down through GPT.forward -> Block -> CausalSelfAttention; pos counts the
    positions filled (GPT.forward moves it on). Buffers are allocated at the first write, with
    the device and dtype of the keys (so autocast works), for max_len positions. Past max_len
    (rotary and ALiBi only) it is a ring: position p lives in slot p % max_len, overwriting the
    key that just left the window; attention does not care about the order of its keys, and
    key_positions says where each slot's key came from. A write that wraps must be one token.
    """

    def __init__(self, n_layer, max_len):
        self.n_layer, self.max_len = n_layer, max_len
        self.k = self.v = None  # (n_layer, B, nh, max_len, hs)
        self.pos = 0

    def update(self, layer, k, v):
        """Store k, v (B, nh, T, hs) at positions pos..pos+T-1; return all keys and values held."""
        B, nh, T, hs = k.shape
        if self.k is None:
            self.k = k.new_empty(self.n_layer, B, nh, self.max_len, hs)  # only filled positions are read
            self.v = v.new_empty(self.n_layer, B, nh, self.max_len, hs)
        assert T == 1 or self.pos + T <= self.max_len, "only single tokens wrap around the window"
        slot, filled = self.pos % self.max_len, min(self.pos + T, self.max_len)
        self.k[layer, :, :, slot:slot + T] = k
        self.v[layer, :, :, slot:slot + T] = v
        return self.k[layer, :, :, :filled], self.v[layer, :, :, :filled]  # (B, nh, filled, hs)

    def key_positions(self, T, device):
        """The positions of the keys update returns once T more are written: slot s holds the latest
        p = s mod max_len."""
        last = self.pos + T - 1
        slots = torch.arange(min(last + 1, self.max_len), device=device)
        return last - (last - slots) % self.max_len


@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_token=None, seeds=None,
             use_cache=True):
    """idx (B, T) completed by max_new_tokens tokens (fewer if every row stops): (B, T + new); see generate_stream."""
    return torch.cat([idx, *generate_stream(model, idx, max_new_tokens, temperature, top_k, top_p, stop_token, seeds,
                                            use_cache)], dim=1)


@torch.no_grad()
def generate_stream(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_token=None,
                    seeds=None, use_cache=True):
    """
    Yield the next token of each sequence, (B, 1), max_new_tokens times, or until every
    sequence has produced stop_token. temperature 0 is greedy; top_k keeps the k likeliest
    tokens, top_p the smallest set whose probability reaches p. seeds (one per sequence)
    give each row its own random generator, so a batch draws what the rows would one by one.
    With use_cache, the prompt is run once into a KVCache and each step feeds one token.
    Once the context outgrows block_size, with learned positions the model conditions on the
    last block_size tokens, exactly as without the cache: every step is then a full recompute.
    With rotary or ALiBi positions each token sees the last block_size tokens (GPT.forward's
    window): the cache keeps going, one token per step, and without it the whole sequence is
    recomputed with that window, to the same logits.
    """
    block_size = model.config.block_size
    windowed = model.config.pos_encoding != 'learned'
    cache = KVCache(model.config.n_layer, block_size) if use_cache else None
    generators = None
    if seeds is not None:
        generators = [torch.Generator(idx.device).manual_seed(s) for s in seeds]
    done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    if cache is not None and windowed:
        # a prompt longer than the window: as much as fits at once, then one token at a time
        # (a write past the window's end must be a single token); its last token is the loop's
        while idx.size(1) - cache.pos > 1 and idx.size(1) > block_size:
            n = min(max(block_size - cache.pos, 1), idx.size(1) - cache.pos - 1)
            model(idx[:, cache.pos:cache.pos + n], cache=cache)
    for _ in range(max_new_tokens):
        if cache is not None and (windowed or idx.size(1) <= block_size):
            logits, _ = model(idx[:, cache.pos:], cache=cache)  # the prompt once, then one token per step
        else:
            logits, _ = model(idx if windowed else idx[:, -block_size:])  # recompute the (cropped) context
        idx_next = sample_next(logits[:, -1, :], temperature, top_k, top_p, generators)  # (B, 1)
        idx = torch.cat((idx, idx_next), dim=1)
        yield idx_next
        if stop_token is not None:
            done |= idx_next[:, 0] == stop_token
            if done.all():
                return


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generators=None):
    """(B, vocab) logits -> (B, 1) sampled token ids; temperature 0 means greedy (argmax)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits[logits < v[:, [-1]]] = -float('Inf')
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        # drop a token once the tokens before it already reach top_p (the likeliest always stays)
        sorted_logits[probs.cumsum(dim=-1) - probs >= top_p] = -float('Inf')
        logits = logits.scatter(1, order, sorted_logits)
    # inverse-CDF sampling: one uniform number per row (torch.multinomial draws one per vocabulary entry)
    cdf = F.softmax(logits, dim=-1).cumsum(dim=-1)  # (B, vocab)
    if generators is None:
        u = torch.rand(logits.size(0), 1, device=logits.device)
    else:
        u = torch.cat([torch.rand(1, 1, device=logits.device, generator=g) for g in generators])
    # right=True: the first entry whose cdf exceeds u * total, never a token of probability 0
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=logits.size(-1) - 1)  # (B, 1)


def generation_speed(run, x, n, device):
    """
    (tokens/s, seconds to the first token) of run(x, k), which generates k tokens after each row of the prompts x
    (ours or another library's): timed for n tokens, and apart for one (gpt-fast times its generation as well).
    """
    def seconds(k):
        t0 = time.perf_counter()
        run(x, k)
        synchronize(device)
        return time.perf_counter() - t0
    first = seconds(1)
    return x.size(0) * n / seconds(n), first
