"""
Full definition of a GPT language model, all of it in this single file: nanoGPT's (GPT-2's architecture),
name for name, with the GPT-2 speedruns' options as GPTConfig switches, off by default (with rotary or
ALiBi positions a token sees the last block_size tokens). It needs torch alone: methods reach nanogpt/.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint


def rotate(x, cos, sin):
    """Rotary positions: each pair of dimensions (i, i + hs/2) of x (B, nh, T, hs) turned by its position's angle."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


def alibi_slopes(n_head):
    """ALiBi's per-head slopes 2^(-8/n), 2^(-16/n), ...; for n not a power of 2, the paper's interleaving."""
    def series(n):
        return [2 ** (-8 * (i + 1) / n) for i in range(n)]
    closest = 2 ** math.floor(math.log2(n_head))
    return torch.tensor(series(closest) + series(2 * closest)[0::2][:n_head - closest])


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
        self.qk_norm = config.qk_norm

    def forward(self, x, cache=None, mask=None, rotary=None, spelled_out_keys=0):
        """
        mask: GPT.forward's (T, keys) boolean or (nh, T, keys) additive mask, or None: causal, or all the cache
        holds for one new token. rotary: the queries' (cos, sin), or None. spelled_out_keys: attention over up
        to this many keys as two matmuls, not SDPA.
        """
        B, T, C = x.size()  # batch size, sequence length, embedding dimensionality (n_embd)
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if self.qk_norm:  # unit-RMS queries and keys keep the attention logits in range
            q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
        if rotary is not None:
            q, k = rotate(q, *rotary), rotate(k, *rotary)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, nh, keys, hs): the past, then these T
        is_causal = mask is None and k.size(2) == T  # (is_causal would misalign a longer triangle)
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.to(q.dtype)  # an additive mask in the autocast dtype, as SDPA wants
        if k.size(2) <= spelled_out_keys:
            # attention spelled out: softmax(q k^T / sqrt(hs) + mask) v, the mask (0 or -inf) added by the matmul
            S = k.size(2)
            if is_causal:
                mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril()
            if mask is None or mask.dtype == torch.bool:
                bias = torch.zeros(T, S, dtype=q.dtype, device=x.device)
                if mask is not None:
                    bias.masked_fill_(~mask, float('-inf'))
            else:  # per head (ALiBi)
                bias = mask.repeat(B, 1, 1)  # (B * nh, T, S)
            att = torch.baddbmm(bias, q.flatten(0, 1), k.flatten(0, 1).transpose(1, 2),
                                alpha=1.0 / math.sqrt(k.size(-1)))  # (B * nh, T, S)
            att = F.dropout(F.softmax(att, dim=-1), self.dropout, self.training)
            y = (att @ v.flatten(0, 1)).view(B, self.n_head, T, C // self.n_head)  # (B, nh, T, hs)
        else:
            # flash attention where the backend has it
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                               dropout_p=self.dropout if self.training else 0.0)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.activation = config.activation

    def forward(self, x):
        x = self.c_fc(x)
        if self.activation == 'relu2':
            x = F.relu(x).square()
        else:
            x = F.gelu(x, approximate='tanh' if self.activation == 'gelu_tanh' else 'none')
        return self.dropout(self.c_proj(x))


def norm(config):
    """The norm before each sublayer and at the end: GPT-2's LayerNorm or RMSNorm (with a gain)."""
    if config.norm == 'rmsnorm':
        return nn.RMSNorm(config.n_embd, eps=1e-5)
    return nn.LayerNorm(config.n_embd, bias=config.bias)


class Block(nn.Module):

    def __init__(self, config, layer_idx=0):
        super().__init__()
        self.ln_1 = norm(config)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = norm(config)
        self.mlp = MLP(config)

    def forward(self, x, cache=None, mask=None, rotary=None, spelled_out_keys=0, checkpointed=False):
        if checkpointed and torch.is_grad_enabled():
            # only x is kept; the backward recomputes the rest, replaying the RNG (the same dropout masks)
            return checkpoint(self.sublayers, x, cache, mask, rotary, spelled_out_keys, use_reentrant=False)
        return self.sublayers(x, cache, mask, rotary, spelled_out_keys)

    def sublayers(self, x, cache, mask, rotary, spelled_out_keys):
        x = x + self.attn(self.ln_1(x), cache, mask, rotary, spelled_out_keys)
        x = x + self.mlp(self.ln_2(x))
        return x


# nanoGPT's seven architecture fields: what a checkpoint's 'model_args' holds, so that
# nanoGPT's own GPTConfig(**model_args) still accepts our checkpoints.
MODEL_ARGS = ('n_layer', 'n_head', 'n_embd', 'block_size', 'bias', 'vocab_size', 'dropout')
# the rest: what a checkpoint's 'model_options' holds, and train.py settings of the same names
MODEL_OPTIONS = ('activation', 'pos_encoding', 'qk_norm', 'norm', 'tie_weights', 'zero_init_proj', 'logit_softcap')


@dataclass
class GPTConfig:
    block_size: int = 1024  # longest context the model can see (positions in wpe)
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for efficiency
    n_layer: int = 12  # number of transformer blocks
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # width of the residual stream
    dropout: float = 0.0  # dropout on embeddings, attention and residual branches
    bias: bool = True  # biases in Linears and LayerNorms, like GPT-2; False is a bit better and faster
    activation: str = 'gelu'  # 'gelu' (exact, nanoGPT), 'gelu_tanh' (GPT-2's own) or 'relu2' (ReLU squared)
    pos_encoding: str = 'learned'  # 'learned' (GPT-2's wpe), 'rotary' (turned queries, keys) or 'alibi' (distances)
    qk_norm: bool = False  # RMS-normalise each head's queries and keys (no parameters)
    norm: str = 'layernorm'  # 'layernorm' (GPT-2) or 'rmsnorm' (no mean subtraction, no bias)
    tie_weights: bool = True  # lm_head is wte, as in GPT-2; False gives the head its own weights
    zero_init_proj: bool = False  # start every projection into the residual stream (and an untied head) at zero
    logit_softcap: float = 0.0  # logits become cap * tanh(logits / cap); 0 = off
    # how it runs, not what it computes (not saved in checkpoints):
    spelled_out_keys: int = 0  # attention over up to this many keys as two matmuls, not SDPA (autotune picks)
    activation_checkpointing: bool = False  # recompute each block's activations in the backward: less memory

    def model_args(self):
        """The nanoGPT-compatible part of the config (see MODEL_ARGS)."""
        return {k: getattr(self, k) for k in MODEL_ARGS}

    def model_options(self):
        """The rest, beside model_args in checkpoints: the activation and the options not at their defaults."""
        return {k: getattr(self, k) for k in MODEL_OPTIONS
                if k == 'activation' or getattr(self, k) != self.__dataclass_fields__[k].default}


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.vocab_size is not None and config.block_size is not None
        self.config = config

        for name, allowed in (('activation', ('gelu', 'gelu_tanh', 'relu2')), ('norm', ('layernorm', 'rmsnorm')),
                              ('pos_encoding', ('learned', 'rotary', 'alibi'))):
            if getattr(config, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(config, name)!r}")
        if config.pos_encoding == 'rotary' and (config.n_embd // config.n_head) % 2:
            raise ValueError(f"rotary positions need an even head size, got {config.n_embd // config.n_head}")

        # (nanoGPT's order: a checkpoint's optimizer state numbers the parameters)
        positions = {'wpe': nn.Embedding(config.block_size, config.n_embd)} if config.pos_encoding == 'learned' else {}
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            **positions,
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=norm(config),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            # weight tying: the output projection is the token embedding (GPT-2 does this)
            self.transformer.wte.weight = self.lm_head.weight
        hs = config.n_embd // config.n_head
        if config.pos_encoding == 'rotary':  # dimension pair i turns by 10000^(-2i/hs) radians per position
            self.register_buffer('inv_freq', 10000.0 ** -(torch.arange(0, hs, 2).float() / hs), persistent=False)
        if config.pos_encoding == 'alibi':
            self.register_buffer('slopes', alibi_slopes(config.n_head), persistent=False)

        self.apply(self._init_weights)
        # GPT-2 scales the init of the projections into the residual stream by 1/sqrt(2 * n_layer)
        for pn, p in self.named_parameters():
            if pn.endswith('c_proj.weight'):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
                if config.zero_init_proj:
                    torch.nn.init.zeros_(p)
        if config.zero_init_proj and not config.tie_weights:
            torch.nn.init.zeros_(self.lm_head.weight)

    def get_num_params(self, non_embedding=True):
        """Number of parameters; non_embedding leaves out the position embeddings (wte doubles as lm_head)."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding and 'wpe' in self.transformer:
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
        idx (B, T) -> (logits, loss): with targets (B, T), every position's logits and the mean cross-entropy
        (-1 ignored); without, the last position's (B, 1, vocab) and None. With a KVCache, idx follow its pos.
        """
        b, t = idx.size()
        start = cache.pos if cache is not None else 0
        window, learned = self.config.block_size, self.config.pos_encoding == 'learned'
        assert start + t <= window or not learned, \
            f"Cannot forward sequence of length {start + t}, block size is only {window}"
        pos = torch.arange(start, start + t, dtype=torch.long, device=idx.device)  # (T,)

        x = self.transformer.wte(idx)  # (B, T, C)
        if learned:
            x = x + self.transformer.wpe(pos)  # (T, C) position embeddings
        x = self.transformer.drop(x)
        # each query sees the last block_size positions up to its own: None where SDPA's causal mask (or the
        # whole cache, for one new token) is that
        mask = None
        if self.config.pos_encoding == 'alibi' or (t > 1 and (start > 0 or t > window)):
            keys = cache.key_positions(t, idx.device) if cache is not None else pos  # (S,)
            distance = pos[:, None] - keys[None, :]  # (T, S)
            mask = (distance >= 0) & (distance < window)
            if self.config.pos_encoding == 'alibi':  # additive: -slope * distance, -inf where not seen
                mask = (-self.slopes[:, None, None] * distance).masked_fill(~mask, float('-inf'))  # (nh, T, S)
        rotary = None
        if self.config.pos_encoding == 'rotary':
            angles = pos[:, None].float() * self.inv_freq[None, :]  # (T, hs/2)
            rotary = angles.cos(), angles.sin()
        for block in self.transformer.h:
            x = block(x, cache, mask, rotary, self.config.spelled_out_keys, self.config.activation_checkpointing)
        x = self.transformer.ln_f(x)
        if cache is not None:
            cache.pos += t

        if targets is None:
            x = x[:, [-1], :]  # only the last position's logits: the list index keeps the time dim
        logits = self.lm_head(x)  # (B, T, vocab)
        if self.config.logit_softcap:
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits.float() / cap)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def crop_block_size(self, block_size):
        """Model surgery: shrink the context, e.g. GPT-2's 1024 to a finetune's."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        if 'wpe' in self.transformer:
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    @classmethod
    def from_pretrained(cls, name_or_dir, override_args=None):
        """GPT-2 by name or a local Hugging Face directory, as in nanoGPT (nanogpt/loading.py)."""
        from nanogpt.loading import from_pretrained
        return from_pretrained(name_or_dir, override_args)

    def save_pretrained(self, directory, vocab_size=None):
        """This model as a Hugging Face GPT-2 directory that transformers loads (nanogpt/hf_gpt2.py)."""
        from nanogpt import hf_gpt2
        hf_gpt2.save_pretrained(self, directory, vocab_size)

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type=None, *, optimizer='adamw',
                             muon_lr=0.02):
        """nanoGPT's: AdamW, weight decay on 2D weights only, fused wherever torch has it (device_type is unused);
        optimizer='muon': Muon at muon_lr for the blocks' matrices, AdamW for the rest (nanogpt/optim.py)."""
        if optimizer == 'muon':
            from nanogpt.optim import MuonAdamW
            return MuonAdamW.for_model(self, weight_decay, learning_rate, betas, muon_lr)
        params = [p for p in self.parameters() if p.requires_grad]
        optim_groups = [
            {'params': [p for p in params if p.dim() >= 2], 'weight_decay': weight_decay},
            {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0},
        ]
        try:  # the fused kernel does the whole update in one pass
            return torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas, fused=True)
        except (RuntimeError, TypeError):
            return torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas)

    def flops_per_token(self):
        """Training FLOPs per token (forward and backward at block_size) as the step does them: per matmul weight 2,
        2 more for its input's gradient (if anything before it trains), 2 for its own (if it trains); 12LTC for
        attention (PaLM's); none for embedding lookups or checkpointing's recomputation."""
        T, flops, flowing = self.config.block_size, 0, False  # flowing: gradients reach this far
        for m in self.modules():  # in the order the forward meets them (LoRA's Linears included)
            if isinstance(m, CausalSelfAttention):
                grad = flowing or any(p.requires_grad for p in m.c_attn.parameters())
                flops += 4 * T * m.n_embd * (1 + 2 * grad)
            elif isinstance(m, nn.Linear):
                flops += 2 * m.weight.numel() * (1 + flowing + m.weight.requires_grad)
            flowing = flowing or any(p.requires_grad for p in m.parameters(recurse=False))
        return flops

    def estimate_mfu(self, fwdbwd_per_iter, dt, peak_flops=312e12):
        """Model FLOPs utilization against peak_flops (nanoGPT's A100 figure unless given; None if unknown)."""
        if not peak_flops:
            return None
        return self.flops_per_token() * self.config.block_size * fwdbwd_per_iter / dt / peak_flops

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, **controls):
        """nanoGPT's: idx (B, T) completed to (B, T + max_new_tokens), by nanogpt/generate.py (a KV cache,
        more controls) or, where model.py is alone, by nanoGPT's loop."""
        try:
            from nanogpt.generate import generate
            return generate(self, idx, max_new_tokens, temperature, top_k, **controls)
        except ModuleNotFoundError as e:
            if e.name not in ('nanogpt', 'nanogpt.generate') or controls:
                raise
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.config.block_size:])[0][:, -1, :]
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float('Inf')
            next_id = logits.argmax(-1, keepdim=True) if temperature == 0 else \
                torch.multinomial(F.softmax(logits / temperature, dim=-1), num_samples=1)
            idx = torch.cat((idx, next_id), dim=1)
        return idx
