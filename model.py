"""
Full definition of a GPT language model, all of it in this single file.

References:
1) the official GPT-2 TensorFlow implementation released by OpenAI:
   https://github.com/openai/gpt-2/blob/master/src/model.py
2) Hugging Face transformers' PyTorch implementation:
   https://github.com/huggingface/transformers/blob/main/src/transformers/models/gpt2/modeling_gpt2.py
3) nanoGPT, whose model this is, parameter name for parameter name:
   https://github.com/karpathy/nanoGPT/blob/master/model.py

Where this model differs from GPT-2 (each is a GPTConfig switch):
- bias=False drops the biases of every Linear and LayerNorm (GPT-2 has them).
- activation='gelu' (the default, as in nanoGPT) is the exact erf GELU; GPT-2 itself
  uses the tanh approximation ('gelu_tanh', Hugging Face's "gelu_new"). Models loaded
  from GPT-2 weights use 'gelu_tanh', so their logits equal Hugging Face's.
- vocab_size may be padded (50304 instead of 50257) for faster matmuls.
Linear weights are stored (out, in) as in torch; GPT-2 checkpoints store them (in, out)
(its "Conv1D"), so loading and exporting (hf_gpt2.py) transposes those four matrices per block.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


class KVCache:
    """
    The keys and values of every layer for the positions seen so far, so that generation feeds
    the model one new token per step instead of the whole context again. GPT.generate makes one
    and passes it down through GPT.forward -> Block -> CausalSelfAttention; pos counts the
    positions filled (GPT.forward moves it on). Buffers are allocated at the first write, with
    the device and dtype of the keys (so autocast works), for up to max_len positions.
    """

    def __init__(self, n_layer, max_len):
        self.n_layer, self.max_len = n_layer, max_len
        self.k = self.v = None  # (n_layer, B, nh, max_len, hs)
        self.pos = 0

    def update(self, layer, k, v):
        """Store k, v (B, nh, T, hs) at positions pos..pos+T-1; return all keys and values so far."""
        B, nh, T, hs = k.shape
        if self.k is None:
            self.k = k.new_empty(self.n_layer, B, nh, self.max_len, hs)  # only filled positions are read
            self.v = v.new_empty(self.n_layer, B, nh, self.max_len, hs)
        end = self.pos + T
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]  # (B, nh, pos + T, hs)


class CausalSelfAttention(nn.Module):

    def __init__(self, config, layer_idx=0):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        # key, query, value projections for all heads, in one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.layer_idx = layer_idx  # which of the cache's layers is ours
        self.spelled_out_keys = 0  # attention over up to this many keys skips SDPA (GPT.spell_out_attention)

    def forward(self, x, cache=None):
        B, T, C = x.size()  # batch size, sequence length, embedding dimensionality (n_embd)
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        mask, is_causal = None, True
        if cache is not None:
            pos = cache.pos
            k, v = cache.update(self.layer_idx, k, v)  # (B, nh, pos + T, hs): the past, then these T
            if pos > 0:
                # query t sees keys 0..pos+t (is_causal would align the triangle to the wrong corner);
                # a single new token sees them all
                is_causal = False
                if T > 1:
                    mask = torch.ones(T, pos + T, dtype=torch.bool, device=x.device).tril(diagonal=pos)
        if k.size(2) <= self.spelled_out_keys:
            # attention spelled out: softmax(q k^T / sqrt(hs) + mask) v, the mask (0 or -inf) added by the matmul
            S = k.size(2)
            if is_causal:
                mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril()
            bias = torch.zeros(T, S, dtype=q.dtype, device=x.device)
            if mask is not None:
                bias.masked_fill_(~mask, float('-inf'))
            att = torch.baddbmm(bias, q.flatten(0, 1), k.flatten(0, 1).transpose(1, 2),
                                alpha=1.0 / math.sqrt(k.size(-1)))  # (B * nh, T, S)
            att = F.dropout(F.softmax(att, dim=-1), self.dropout, self.training)
            y = (att @ v.flatten(0, 1)).view(B, self.n_head, T, C // self.n_head)  # (B, nh, T, hs)
        else:
            # flash attention where the backend has it
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
                                               is_causal=is_causal)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.approximate = {'gelu': 'none', 'gelu_tanh': 'tanh'}[config.activation]

    def forward(self, x):
        x = F.gelu(self.c_fc(x), approximate=self.approximate)
        return self.dropout(self.c_proj(x))


class Block(nn.Module):

    def __init__(self, config, layer_idx=0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln_1(x), cache)
        x = x + self.mlp(self.ln_2(x))
        return x


# nanoGPT's seven architecture fields: what a checkpoint's 'model_args' holds, so that
# nanoGPT's own GPTConfig(**model_args) still accepts our checkpoints.
MODEL_ARGS = ('n_layer', 'n_head', 'n_embd', 'block_size', 'bias', 'vocab_size', 'dropout')


@dataclass
class GPTConfig:
    block_size: int = 1024  # longest context the model can see (positions in wpe)
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for efficiency
    n_layer: int = 12  # number of transformer blocks
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # width of the residual stream
    dropout: float = 0.0  # dropout on embeddings, attention and residual branches
    bias: bool = True  # biases in Linears and LayerNorms, like GPT-2; False is a bit better and faster
    activation: str = 'gelu'  # 'gelu' (exact, nanoGPT) or 'gelu_tanh' (GPT-2's own, for its weights)

    def model_args(self):
        """The nanoGPT-compatible part of the config (see MODEL_ARGS)."""
        return {k: getattr(self, k) for k in MODEL_ARGS}

    def model_options(self):
        """Everything else: stored beside model_args in checkpoints."""
        return {k: v for k, v in vars(self).items() if k not in MODEL_ARGS}


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.vocab_size is not None
        assert config.block_size is not None
        self.config = config

        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying: the output projection is the token embedding (GPT-2 does this)
        self.transformer.wte.weight = self.lm_head.weight

        self.apply(self._init_weights)
        # GPT-2 scales the init of the projections into the residual stream by 1/sqrt(2 * n_layer)
        for pn, p in self.named_parameters():
            if pn.endswith('c_proj.weight'):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def spell_out_attention(self, max_keys):
        """
        Compute attention over up to max_keys keys as two plain matmuls instead of calling
        scaled_dot_product_attention (0: never). The same numbers; which is faster depends on the
        device's matmul library, so the caller decides (common.fast_cpu_matmuls).
        """
        for block in self.transformer.h:
            block.attn.spelled_out_keys = max_keys

    def get_num_params(self, non_embedding=True):
        """
        Number of parameters. The non-embedding count (default) leaves out the position
        embeddings; the token embeddings stay in because they double as the lm_head.
        """
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None, cache=None):
        """
        idx (B, T) token ids -> (logits, loss). With targets (B, T), logits cover every
        position and loss is the mean cross-entropy (targets of -1 are ignored); without,
        only the last position's logits are computed (B, 1, vocab) and loss is None.
        With a KVCache, idx are the tokens after the cache's pos positions (see generate).
        """
        b, t = idx.size()
        start = cache.pos if cache is not None else 0
        assert start + t <= self.config.block_size, f"Cannot forward sequence of length {start + t}, block size is only {self.config.block_size}"
        pos = torch.arange(start, start + t, dtype=torch.long, device=idx.device)  # (T,)

        tok_emb = self.transformer.wte(idx)  # (B, T, C)
        pos_emb = self.transformer.wpe(pos)  # (T, C)
        x = self.transformer.drop(tok_emb + pos_emb)
        for block in self.transformer.h:
            x = block(x, cache)
        x = self.transformer.ln_f(x)
        if cache is not None:
            cache.pos += t

        if targets is not None:
            logits = self.lm_head(x)  # (B, T, vocab)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        else:
            logits = self.lm_head(x[:, [-1], :])  # (B, 1, vocab): the list index keeps the time dim
            loss = None
        return logits, loss

    def crop_block_size(self, block_size):
        """Model surgery: shrink the context, e.g. GPT-2's 1024 down to what a finetune uses."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    @classmethod
    def from_pretrained(cls, name_or_dir, override_args=None):
        """GPT-2 by name (gpt2 ... gpt2-xl) or from a local Hugging Face directory: see hf_gpt2.py."""
        import hf_gpt2
        return hf_gpt2.from_pretrained(name_or_dir, override_args)

    def save_pretrained(self, directory, vocab_size=None):
        """This model as a Hugging Face GPT-2 directory that transformers loads: see hf_gpt2.py."""
        import hf_gpt2
        hf_gpt2.save_pretrained(self, directory, vocab_size)

    def configure_optimizers(self, weight_decay, learning_rate, betas):
        """AdamW with weight decay on the matmul and embedding weights only (2D tensors)."""
        params = [p for p in self.parameters() if p.requires_grad]
        optim_groups = [
            {'params': [p for p in params if p.dim() >= 2], 'weight_decay': weight_decay},
            {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0},
        ]
        # the fused kernel does the whole update in one pass; torch has it for cpu, cuda and mps
        try:
            return torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas, fused=True)
        except (RuntimeError, TypeError):
            return torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas)

    def flops_per_token(self):
        """Training FLOPs per token (forward and backward), PaLM paper appendix B."""
        N = self.get_num_params()
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        return 6 * N + 12 * L * H * Q * T

    def estimate_mfu(self, fwdbwd_per_iter, dt, peak_flops):
        """Model FLOPs utilization: achieved FLOP/s over peak_flops (None if the peak is unknown)."""
        if not peak_flops:
            return None
        flops_per_iter = self.flops_per_token() * self.config.block_size * fwdbwd_per_iter
        return flops_per_iter / dt / peak_flops

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_token=None,
                 seeds=None, use_cache=True):
        """
        Take a conditioning sequence of indices idx (LongTensor of shape (B, T)) and complete
        the sequence max_new_tokens times, feeding the predictions back into the model each
        time. Most likely you'll want to make sure to be in model.eval() mode for this.
        Returns (B, T + new tokens); see generate_stream for the controls.
        """
        return torch.cat([idx, *self.generate_stream(idx, max_new_tokens, temperature, top_k, top_p, stop_token,
                                                     seeds, use_cache)], dim=1)

    @torch.no_grad()
    def generate_stream(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_token=None,
                        seeds=None, use_cache=True):
        """
        Yield the next token of each sequence, (B, 1), max_new_tokens times, or until every
        sequence has produced stop_token. temperature 0 is greedy; top_k keeps the k likeliest
        tokens, top_p the smallest set whose probability reaches p. seeds (one per sequence)
        give each row its own random generator, so a batch draws what the rows would one by one.
        With use_cache, the prompt is run once into a KVCache and each step feeds one token.
        Once the context outgrows block_size, the model conditions on the last block_size tokens,
        exactly as without the cache: with absolute positions every step is then a full recompute.
        """
        block_size = self.config.block_size
        cache = KVCache(self.config.n_layer, block_size) if use_cache else None
        generators = None
        if seeds is not None:
            generators = [torch.Generator(idx.device).manual_seed(s) for s in seeds]
        done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            if cache is not None and idx.size(1) <= block_size:
                logits, _ = self(idx[:, cache.pos:], cache=cache)  # the prompt once, then one token per step
            else:
                logits, _ = self(idx[:, -block_size:])  # recompute the (cropped) context
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
