"""
Hugging Face's GPT-2 format, read and written: names, Conv1D transposes and config.json, for a local
directory or one of OpenAI's four GPT-2s from the Hub cache (loading.py builds the model from it).
"""
import json
import os
import re

import torch
from safetensors import safe_open

# Hugging Face stores the four matmul weights of a block as Conv1D, (in, out); nn.Linear keeps
# (out, in), so those are transposed each way
CONV1D = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')


def hub_snapshot(name):
    """Download (or find in the Hub cache) the files of one of OpenAI's four GPT-2s."""
    if name not in ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl'):
        raise ValueError(f"{name!r} is neither a directory nor one of gpt2, gpt2-medium, gpt2-large, gpt2-xl")
    from huggingface_hub import snapshot_download
    try:
        return snapshot_download(f'openai-community/{name}', allow_patterns=['config.json', 'model.safetensors'])
    except Exception as e:
        raise ValueError(f"could not fetch {name} weights from the Hugging Face Hub "
                         f"(no network, and not in the cache?): {type(e).__name__}") from None


def read_weights(path, views=False):
    """
    (name, float32 tensor) pairs of a Hugging Face GPT-2 directory, one at a time, Conv1D weights
    transposed to (out, in). The safetensors file is memory-mapped (page cache, which the kernel
    can drop) and each tensor copied once out of it into memory of its own, the transposed ones a
    block of rows at a time: one copy of the weights in the process's own memory. views: the
    tensors as views of the memory map instead (in the file's dtype), for a reader that converts them.
    """
    st = os.path.join(path, 'model.safetensors')
    if not os.path.exists(st):
        sd = torch.load(os.path.join(path, 'pytorch_model.bin'), map_location='cpu', weights_only=True, mmap=True)
        for k, v in sd.items():
            v = v.t() if k.endswith(CONV1D) else v
            yield k, v if views else v.float().contiguous() if v.is_floating_point() else v
        return
    with safe_open(st, framework='pt') as f:
        for name in f.keys():
            if views:
                t = f.get_tensor(name)
                yield name, t.t() if name.endswith(CONV1D) else t
                continue
            if name.endswith(CONV1D):
                part = f.get_slice(name)
                rows, cols = part.get_shape()
                t = torch.empty(cols, rows, dtype=torch.float32)
                step = max(1, 2**20 // cols)
                for r in range(0, rows, step):
                    t[:, r:r + step] = part[r:r + step].t()
            else:  # a copy of its own: safetensors hands out views of the memory map
                t = f.get_tensor(name)
                t = t.to(torch.float32 if t.is_floating_point() else t.dtype, copy=True)
            yield name, t


def read_pretrained(name_or_dir, override_args=None, views=False):
    """
    (GPTConfig arguments, weights) of a GPT-2, its shape from config.json and weights as (name,
    float32 tensor) pairs in our model's names, read one at a time (views: see read_weights); only
    dropout may be overridden.
    """
    override_args = override_args or {}
    assert all(k == 'dropout' for k in override_args), "only dropout can be overridden"
    path = name_or_dir if os.path.isdir(name_or_dir) else hub_snapshot(name_or_dir)
    with open(os.path.join(path, 'config.json')) as f:
        hf = json.load(f)
    act = hf.get('activation_function', 'gelu_new')
    if act not in ('gelu_new', 'gelu_pytorch_tanh', 'gelu'):
        raise ValueError(f"{path}: activation_function {act!r} is not supported")
    config = dict(n_layer=hf['n_layer'], n_head=hf['n_head'], n_embd=hf['n_embd'], block_size=hf['n_positions'],
                  vocab_size=hf['vocab_size'], bias=True, dropout=override_args.get('dropout', 0.0),
                  activation='gelu' if act == 'gelu' else 'gelu_tanh')

    def weights():
        for k, v in read_weights(path, views):
            k = k.removeprefix('transformer.')
            if k.endswith(('.attn.bias', '.attn.masked_bias')) or k == 'lm_head.weight':
                continue  # causal-mask buffers of old checkpoints; lm_head is tied to wte
            yield 'transformer.' + k, v
    return config, weights()


def save_pretrained(model, directory, vocab_size=None, eot=None):
    """
    Write model as a Hugging Face GPT-2 directory (config.json, model.safetensors). A vocabulary
    padded for speed (50304) is cut back to GPT-2's 50257 (or to vocab_size); a model without
    biases gets zero biases, which compute the same thing. eot is the id of <|endoftext|> (the
    BOS and EOS token): by default GPT-2's, where the vocabulary has it.
    """
    cfg = model.config
    if cfg.activation not in ('gelu', 'gelu_tanh'):
        raise ValueError(f"Hugging Face GPT-2 cannot represent activation={cfg.activation!r}")
    for option, gpt2 in (('pos_encoding', 'learned'), ('qk_norm', False), ('norm', 'layernorm'), ('tie_weights', True),
                         ('logit_softcap', 0.0)):
        if getattr(cfg, option) != gpt2:
            raise ValueError(f"Hugging Face GPT-2 cannot represent {option}={getattr(cfg, option)!r} (it has {gpt2!r})")
    vocab = vocab_size or (50257 if cfg.vocab_size == 50304 else cfg.vocab_size)
    if vocab > cfg.vocab_size:
        raise ValueError(f"vocab_size {vocab} is larger than the model's {cfg.vocab_size}")
    sd = {}
    for k, v in model.state_dict().items():
        if k == 'lm_head.weight':
            continue  # tied to wte
        if k.endswith(CONV1D):
            v = v.t()
        sd[k] = (v[:vocab] if k == 'transformer.wte.weight' else v).detach().cpu().contiguous()
    if not cfg.bias:
        C = cfg.n_embd
        widths = {'ln_1': C, 'ln_2': C, 'attn.c_attn': 3 * C, 'attn.c_proj': C, 'mlp.c_fc': 4 * C, 'mlp.c_proj': C}
        for i in range(cfg.n_layer):
            for name, width in widths.items():
                sd[f'transformer.h.{i}.{name}.bias'] = torch.zeros(width)
        sd['transformer.ln_f.bias'] = torch.zeros(C)
    hf = dict(architectures=['GPT2LMHeadModel'], model_type='gpt2', vocab_size=vocab,
              n_positions=cfg.block_size, n_ctx=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
              n_head=cfg.n_head, n_inner=None, layer_norm_epsilon=1e-5, initializer_range=0.02,
              activation_function='gelu_new' if cfg.activation == 'gelu_tanh' else 'gelu',
              resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
              scale_attn_weights=True, tie_word_embeddings=True, use_cache=True)
    if eot is None:
        eot = 50256 if vocab > 50256 else None  # GPT-2's <|endoftext|>, if the vocabulary has it
    hf.update(bos_token_id=eot, eos_token_id=eot)
    from safetensors.torch import save_file
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, 'model.safetensors')
    try:  # each file whole or not at all (a full disk): written beside, then renamed
        try:
            save_file(sd, path + '.tmp', metadata={'format': 'pt'})
        except Exception as e:  # safetensors reports a failed write as its own error, with the OS's number
            number = re.search(r'os error (\d+)', str(e))
            if number is None:
                raise
            raise OSError(int(number[1]), os.strerror(int(number[1]))) from None
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(path + '.tmp', 0o666 & ~umask)  # safetensors writes 0600; ckpt.pt and config.json follow the umask
        os.replace(path + '.tmp', path)
        with open(os.path.join(directory, 'config.json.tmp'), 'w') as f:
            json.dump(hf, f, indent=2)
        os.replace(os.path.join(directory, 'config.json.tmp'), os.path.join(directory, 'config.json'))
    finally:
        for tmp in (path + '.tmp', os.path.join(directory, 'config.json.tmp')):
            if os.path.exists(tmp):
                os.remove(tmp)
