"""
Generation: the KV cache GPT.forward takes, the token loop with its controls (temperature, top-k,
top-p, per-row seeds, a stop token), the sampling of one token and the timing of generation, as gpt-fast
keeps them beside its model; and gpt-fast's compiled decoding step for CPUs: a KV cache of fixed shape and
the whole step (every block and the head) as one Inductor program.
"""

import time

import torch
from torch.nn import functional as F

from nanogpt.device import load_inductor, synchronize


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


class StaticKVCache:
    """
    The keys and values of every layer in buffers of max_len slots that never change shape, so that one compiled
    program serves every decoding step: index (a tensor, so that a step reads no Python number) is the position
    of the next token, which goes to slot index % max_len; attention gets every slot, and forward_static's mask
    hides the ones not written yet and, past the window, the keys that left it. Buffers are allocated at the first
    write (the keys' dtype and device); grown() copies them into more slots.
    """

    def __init__(self, n_layer, max_len, device):
        self.n_layer, self.max_len = n_layer, max_len
        self.k = self.v = None  # per layer (B, nh, max_len, hs): a buffer apiece, so that a write touches its own
        self.index = torch.zeros((), dtype=torch.long, device=device)

    def update(self, layer, k, v):
        """Write k, v (B, nh, T, hs) at positions index..index+T-1 (T <= max_len); return every slot's."""
        B, nh, T, hs = k.shape
        if self.k is None:
            self.k = [k.new_zeros(B, nh, self.max_len, hs) for _ in range(self.n_layer)]
            self.v = [v.new_zeros(B, nh, self.max_len, hs) for _ in range(self.n_layer)]
        slots = (self.index + torch.arange(T, device=k.device)) % self.max_len
        self.k[layer][:, :, slots] = k  # in place, as Inductor keeps it (an index_copy_ would copy the buffer)
        self.v[layer][:, :, slots] = v
        return self.k[layer], self.v[layer]

    def grown(self, max_len):
        """A cache of max_len slots holding this one's positions (which have not wrapped around)."""
        new = StaticKVCache(self.n_layer, max_len, self.index.device)
        new.index.copy_(self.index)
        if self.k is not None:
            pad = lambda t: torch.cat([t, t.new_zeros(*t.shape[:2], max_len - self.max_len, t.size(-1))], dim=2)
            new.k, new.v = [pad(t) for t in self.k], [pad(t) for t in self.v]
        return new


def forward_static(model, idx, cache):
    """
    GPT.forward's inference for the tokens idx (B, T) that follow cache's (a StaticKVCache): the last position's
    logits (B, 1, vocab). The same blocks and head, with positions and the attention mask computed from the
    cache's index tensor, so that nothing here depends on a Python number that changes from step to step.
    """
    config, t = model.config, idx.size(1)
    window, slots = config.block_size, torch.arange(cache.max_len, device=idx.device)
    pos = cache.index + torch.arange(t, device=idx.device)  # (T,)
    x = model.transformer.wte(idx)
    if config.pos_encoding == 'learned':
        x = x + model.transformer.wpe(pos)
    last = pos[-1]
    keys = last - (last - slots) % cache.max_len  # the position in each slot once these are written; < 0: none yet
    distance = pos[:, None] - keys[None, :]  # (T, S)
    mask = (distance >= 0) & (distance < window) & (keys >= 0)
    if config.pos_encoding == 'alibi':
        mask = (-model.slopes[:, None, None] * distance).masked_fill(~mask, float('-inf'))  # (nh, T, S)
    rotary = None
    if config.pos_encoding == 'rotary':
        angles = pos[:, None].float() * model.inv_freq[None, :]
        rotary = angles.cos(), angles.sin()
    for block in model.transformer.h:
        x = block(x, cache, mask, rotary, config.spelled_out_keys)
    logits = model.lm_head(model.transformer.ln_f(x[:, [-1], :]))
    if config.logit_softcap:
        logits = config.logit_softcap * torch.tanh(logits.float() / config.logit_softcap)
    cache.index.add_(t)
    return logits


class CompiledDecoding:
    """
    model's decoding steps (one token per row after a prompt) each as one program that torch.compile's Inductor
    writes for the CPU, with a StaticKVCache of SLOTS slots at a time (grown by as many when full, one compilation
    per size, which Inductor caches on disk); the prompt runs eagerly through the same forward_static. Inductor is
    told to write an activation out before the products that read it, rather than recompute a norm in every row.
    """
    SLOTS = 256

    def __init__(self, model):
        self.model = model
        load_inductor()
        self.step = torch.compile(forward_static, fullgraph=True, dynamic=False,
                                  options={'realize_cpu_opcount_threshold': 4})
        self.compiled = set()  # the cache sizes a step has run at
        self.tokens = {}  # the input of a step, by shape: one tensor, so that its strides never differ

    def fits(self, prompt_length, max_new_tokens):
        """Whether it decodes this: the prompt within the window, and learned positions no further than it."""
        window = self.model.config.block_size
        return prompt_length <= min(window, self.SLOTS) and (
            self.model.config.pos_encoding != 'learned' or prompt_length + max_new_tokens <= window)

    def start(self, idx):
        """(logits of the prompt idx's last position, its cache)."""
        cache = StaticKVCache(self.model.config.n_layer, min(self.SLOTS, self.model.config.block_size), idx.device)
        return forward_static(self.model, idx, cache), cache

    def next(self, token, cache, position):
        """(logits after token (B, 1), which goes at position, the cache it went into)."""
        if position >= cache.max_len and cache.max_len < self.model.config.block_size:
            cache = cache.grown(min(cache.max_len + self.SLOTS, self.model.config.block_size))
        token = self.tokens.setdefault(tuple(token.shape), torch.empty_like(token)).copy_(token)
        if cache.max_len not in self.compiled:  # the first step of a size checks every guard (and compiles)
            self.compiled.add(cache.max_len)
            return self.step(self.model, token, cache), cache
        # later ones only those that tell the sizes' programs apart: the model, the input and the cache's kind
        # are the same; were a guard to fail all the same, Dynamo raises before the step runs, and it compiles
        try:
            with torch.compiler.set_stance('default', skip_guard_eval_unsafe=True):
                return self.step(self.model, token, cache), cache
        except RuntimeError as e:
            if 'skip_guard_eval_unsafe' not in str(e):
                raise
        return self.step(self.model, token, cache), cache


@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_token=None, seeds=None,
             use_cache=True, decoder=None):
    """idx (B, T) completed by max_new_tokens tokens (fewer if every row stops): (B, T + new); see generate_stream."""
    return torch.cat([idx, *generate_stream(model, idx, max_new_tokens, temperature, top_k, top_p, stop_token, seeds,
                                            use_cache, decoder)], dim=1)


@torch.no_grad()
def generate_stream(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_token=None,
                    seeds=None, use_cache=True, decoder=None):
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
    recomputed with that window, to the same logits. decoder (a CompiledDecoding of model) decodes with the
    cache where it fits the lengths.
    """
    if use_cache and decoder is not None and decoder.fits(idx.size(1), max_new_tokens):
        yield from _decode_compiled(decoder, idx, max_new_tokens, temperature, top_k, top_p, stop_token, seeds)
        return
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


def _decode_compiled(decoder, idx, max_new_tokens, temperature, top_k, top_p, stop_token, seeds):
    """generate_stream's loop through a CompiledDecoding."""
    generators = None if seeds is None else [torch.Generator(idx.device).manual_seed(s) for s in seeds]
    done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    logits, cache = decoder.start(idx)
    for i in range(max_new_tokens):
        idx_next = sample_next(logits[:, -1, :], temperature, top_k, top_p, generators)  # (B, 1)
        yield idx_next
        if stop_token is not None:
            done |= idx_next[:, 0] == stop_token
            if done.all():
                return
        if i + 1 < max_new_tokens:
            logits, cache = decoder.next(idx_next, cache, idx.size(1) + i)


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
