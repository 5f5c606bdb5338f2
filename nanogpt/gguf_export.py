"""
A model as one GGUF file in llama.cpp's 'gpt2' architecture, the file llama.cpp, Ollama and LM Studio load,
written with the gguf package (llama.cpp's own writer): the weights in f32, bf16 or q8_0 and the model's
tokenizer: GPT-2's BPE or a BPE trained by data/prepare.py (GPT-2's pre-tokenization, declared as such), or a
character vocabulary (llama.cpp's longest-match 'rwkv' tokenizer, which takes a vocabulary of plain strings).
"""
import os

import numpy as np
import torch

from nanogpt.util import UsageError, os_error, write_error

TYPES = ('f32', 'bf16', 'q8_0')


def check_expressible(config):
    """One line naming the first option llama.cpp's gpt2 architecture cannot compute as this model does, if any."""
    for option, gpt2 in (('pos_encoding', 'learned'), ('norm', 'layernorm'), ('qk_norm', False),
                         ('logit_softcap', 0.0)):
        if getattr(config, option) != gpt2:
            raise UsageError(f"llama.cpp's gpt2 architecture cannot express {option}={getattr(config, option)!r} "
                             f"(it has {gpt2!r}): export this model with --format=hf instead")
    if config.activation == 'relu2':
        raise UsageError("llama.cpp's gpt2 architecture cannot express activation='relu2' (it has GELU): "
                         "export this model with --format=hf instead")


def _escaped(text):
    """A string as llama.cpp's rwkv vocabulary writes it: \\t \\n \\r \\\\ and \\xhh for the other control bytes."""
    out = []
    for c in text:
        if c in '\t\n\r\\':
            out.append({'\t': '\\t', '\n': '\\n', '\r': '\\r', '\\': '\\\\'}[c])
        elif ord(c) < 32 or ord(c) == 127:
            out.append(f'\\x{ord(c):02x}')
        else:
            out.append(c)
    return ''.join(out)


def _tokenizer_fields(writer, tokenizer, n_vocab):
    """The tokenizer's keys: its tokens (padded with unused ones to the model's rows), merges and special ids."""
    import gguf
    if tokenizer.kind == 'char':
        writer.add_tokenizer_model('rwkv')
        tokens = [_escaped(c) for c in tokenizer.itos]
        types = [gguf.TokenType.NORMAL] * len(tokens)
    else:
        tokens, merges = tokenizer.bpe_tables()
        writer.add_tokenizer_model('gpt2')
        writer.add_tokenizer_pre('gpt-2')  # GPT-2's pre-tokenization: declared, so llama.cpp needs no hash lookup
        writer.add_token_merges(merges)
        types = [gguf.TokenType.NORMAL] * (len(tokens) - 1) + [gguf.TokenType.CONTROL]
        writer.add_bos_token_id(tokenizer.eot)
        writer.add_eos_token_id(tokenizer.eot)
    tokens += [f'[PAD{i}]' for i in range(len(tokens), n_vocab)]
    types += [gguf.TokenType.UNUSED] * (n_vocab - len(types))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_add_bos_token(False)  # as sample.py: the prompt's tokens alone


def save_gguf(model, tokenizer, path, gguf_type='f32', name='nanoGPT'):
    """
    model (a GPT) and its Tokenizer as the GGUF file path, whole or not at all: written beside it, then renamed.
    The vocabulary keeps the tokenizer's tokens (a model padded past them is cut back, as GPT-2's 50304 to 50257).
    """
    import gguf
    cfg = model.config
    check_expressible(cfg)
    if gguf_type not in TYPES:
        raise UsageError(f"gguf_type must be {' or '.join(repr(t) for t in TYPES)}, got {gguf_type!r}")
    n_vocab = min(cfg.vocab_size, tokenizer.vocab_size)
    qtype = {'f32': gguf.GGMLQuantizationType.F32, 'bf16': gguf.GGMLQuantizationType.BF16,
             'q8_0': gguf.GGMLQuantizationType.Q8_0}[gguf_type]
    file_type = {'f32': gguf.LlamaFileType.ALL_F32, 'bf16': gguf.LlamaFileType.MOSTLY_BF16,
                 'q8_0': gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type]
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    C = cfg.n_embd

    def bias(key, width):  # a model without biases: zeros, which compute the same thing
        return sd.get(key, torch.zeros(width))

    tensors = [('token_embd.weight', sd['transformer.wte.weight'][:n_vocab]),
               ('position_embd.weight', sd['transformer.wpe.weight'])]
    for i in range(cfg.n_layer):
        p, b = f'transformer.h.{i}.', f'blk.{i}.'
        tensors += [(b + 'attn_norm.weight', sd[p + 'ln_1.weight']), (b + 'attn_norm.bias', bias(p + 'ln_1.bias', C)),
                    (b + 'attn_qkv.weight', sd[p + 'attn.c_attn.weight']),
                    (b + 'attn_qkv.bias', bias(p + 'attn.c_attn.bias', 3 * C)),
                    (b + 'attn_output.weight', sd[p + 'attn.c_proj.weight']),
                    (b + 'attn_output.bias', bias(p + 'attn.c_proj.bias', C)),
                    (b + 'ffn_norm.weight', sd[p + 'ln_2.weight']), (b + 'ffn_norm.bias', bias(p + 'ln_2.bias', C)),
                    (b + 'ffn_up.weight', sd[p + 'mlp.c_fc.weight']),
                    (b + 'ffn_up.bias', bias(p + 'mlp.c_fc.bias', 4 * C)),
                    (b + 'ffn_down.weight', sd[p + 'mlp.c_proj.weight']),
                    (b + 'ffn_down.bias', bias(p + 'mlp.c_proj.bias', C))]
    tensors += [('output_norm.weight', sd['transformer.ln_f.weight']),
                ('output_norm.bias', bias('transformer.ln_f.bias', C))]
    if not cfg.tie_weights:  # llama.cpp's gpt2 reads its own output matrix where the file has one
        tensors.append(('output.weight', sd['lm_head.weight'][:n_vocab]))

    tmp = path + '.tmp'
    try:
        writer = gguf.GGUFWriter(tmp, 'gpt2')
        writer.add_name(name)
        writer.add_block_count(cfg.n_layer)
        writer.add_context_length(cfg.block_size)
        writer.add_embedding_length(C)
        writer.add_feed_forward_length(4 * C)
        writer.add_head_count(cfg.n_head)
        writer.add_layer_norm_eps(1e-5)
        writer.add_file_type(file_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _tokenizer_fields(writer, tokenizer, n_vocab)
        for key, t in tensors:
            data = t.contiguous().numpy().astype(np.float32)
            # llama.cpp keeps norms, biases and the position table in float32, as its converter writes them
            kind = qtype if data.ndim == 2 and key != 'position_embd.weight' else gguf.GGMLQuantizationType.F32
            try:
                data = gguf.quants.quantize(data, kind)
            except gguf.QuantError:  # rows not a multiple of q8_0's block of 32: this one stays float32
                kind = gguf.GGMLQuantizationType.F32
            writer.add_tensor(key, data, raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=True)
        writer.close()
        os.replace(tmp, path)
    except Exception as e:  # a failed write, as an OSError or inside another error
        if os_error(e) is None:
            raise
        raise UsageError(write_error(path, os_error(e)))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
