"""
Every model built from its weights: a checkpoint, a GPT-2 name or a local Hugging Face directory,
in each weight dtype, the weights reduced as they are read so that the float32 ones are never all
in memory. The one place that puts model.py, quantize.py, hf_gpt2.py and checkpoints.py together.
"""
import os
from dataclasses import replace

import torch

from model import GPT, GPTConfig
from nanogpt import hf_gpt2
from nanogpt.checkpoints import load_checkpoint, strip_prefixes
from nanogpt.quantize import WEIGHT_DTYPES, reduce_tensor, swap_in_low_precision
from nanogpt.tokenizer import GPT2, read_meta
from nanogpt.util import UsageError


def build_model(config, weights, weight_dtype='float32'):
    """
    A GPT of config from weights, (name, tensor) pairs in its state_dict's names that may
    arrive one at a time (read from a file), each weight of a reduced Linear reduced as it arrives:
    the model is built on the meta device and adopts the tensors, so no second copy is ever made.
    When reducing, the tensors may be views of a memory-mapped file: the reduced weights are read
    from it a block of rows at a time, and the tensors kept as they are get copied out in float32.
    Raises ValueError if the names do not match the model's.
    """
    assert weight_dtype in WEIGHT_DTYPES, weight_dtype
    with torch.device('meta'):
        model = GPT(config)
        layers = swap_in_low_precision(model, weight_dtype) if weight_dtype != 'float32' else {}
    state = {}
    for name, t in weights:
        if name == 'lm_head.weight' and config.tie_weights:
            continue  # the same tensor as wte's (or absent, as in Hugging Face's files)
        module, _, kind = name.rpartition('.')
        if module in layers and kind == 'weight':
            t = {f'{module}.{k}': v for k, v in reduce_tensor(t, weight_dtype, layers[module].mean is not None).items()}
        elif layers:  # a bias, a norm, an embedding: float32, in memory of its own
            t = {name: t.to(torch.float32 if t.is_floating_point() else t.dtype, copy=True)}
        else:  # adopted as it is, unless stored in another float dtype (the model computes in float32)
            t = {name: t.float() if t.is_floating_point() and t.dtype != torch.float32 else t}
        if name == 'transformer.wte.weight' and config.tie_weights and 'lm_head' in layers:
            t.update({f'lm_head.{k}': v for k, v in reduce_tensor(t[name], weight_dtype, center=True).items()})
        state.update({k: v for k, v in t.items() if v is not None})
    try:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as e:  # a shape that differs: its line, not the whole report
        raise ValueError(str(e).splitlines()[1].strip()) from None
    if config.tie_weights and 'lm_head' not in layers:
        missing = [k for k in missing if k != 'lm_head.weight']
        model.lm_head.weight = model.transformer.wte.weight  # re-tie after assign
    if missing or unexpected:
        raise ValueError(f"the weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    # the buffers GPT makes rather than saves (rotary's frequencies, ALiBi's slopes), from one without layers
    for name, b in GPT(replace(config, n_layer=0, vocab_size=1, block_size=1)).named_buffers():
        model.register_buffer(name, b, persistent=False)
    return model


def reduce_weights(model, weight_dtype):
    """A copy of the model (eval mode, for generation only) with its block Linears and head in weight_dtype."""
    return build_model(model.config, model.state_dict().items(), weight_dtype).eval()


def from_pretrained(name_or_dir, override_args=None, weight_dtype='float32'):
    """A GPT with GPT-2's weights (hf_gpt2.read_pretrained), its Linears in weight_dtype."""
    args, weights = hf_gpt2.read_pretrained(name_or_dir, override_args, views=weight_dtype != 'float32')
    try:
        return build_model(GPTConfig(**args), weights, weight_dtype)
    except ValueError as e:
        raise ValueError(f"{name_or_dir}: {e}") from None


def model_from_checkpoint(checkpoint, weight_dtype='float32', **overrides):
    """
    The GPT a checkpoint describes, with its weights, its Linears in weight_dtype; overrides (e.g.
    dropout) replace config fields.
    """
    args = {**checkpoint['model_args'], **checkpoint.get('model_options', {}), **overrides}
    unknown = set(args) - set(GPTConfig.__dataclass_fields__)
    if unknown:
        raise UsageError(f"the checkpoint's model has options this model.py does not know: "
                         f"{', '.join(sorted(unknown))}")
    try:
        return build_model(GPTConfig(**args), strip_prefixes(checkpoint['model']).items(), weight_dtype)
    except (RuntimeError, ValueError) as e:
        lines = str(e).splitlines()
        raise UsageError(f"checkpoint weights do not match its model_args: "
                         f"{lines[min(1, len(lines) - 1)].strip()[:200]}")


def starting_model(init_from, model_args, dropout=0.0, trust=False):
    """
    The GPT a run starts from, unless it resumes: init_from 'scratch' is new weights of model_args (GPTConfig's
    fields), a file is a checkpoint, anything else a GPT-2 name or a local Hugging Face GPT-2 directory.
    """
    try:
        if init_from == 'scratch':
            return GPT(GPTConfig(**model_args, dropout=dropout))
        if os.path.isfile(init_from):
            print(f"Initializing from the checkpoint {init_from}")
            return model_from_checkpoint(load_checkpoint(init_from, trust), dropout=dropout)
        print(f"Initializing from OpenAI GPT-2 weights: {init_from}")
        return from_pretrained(init_from, dict(dropout=dropout))
    except (ValueError, OSError) as e:
        raise UsageError(str(e))


def load_model(init_from, out_dir, trust=False, weight_dtype='float32'):
    """
    An eval-mode model to sample or evaluate with, its Linears in weight_dtype, and its tokenizer
    (tokenizer.read_meta's dict, with 'dataset'): init_from 'resume' reads out_dir/ckpt.pt, which
    carries its dataset's tokenizer (an older one: data/<dataset>'s); anything else is a GPT-2 name
    or a local Hugging Face GPT-2 directory, with GPT-2's BPE.
    """
    meta, dataset = dict(GPT2), None
    if init_from == 'resume':
        checkpoint = load_checkpoint(os.path.join(out_dir, 'ckpt.pt'), trust, mmap=True)
        model = model_from_checkpoint(checkpoint, weight_dtype, dropout=0.0)
        dataset = checkpoint.get('config', {}).get('dataset')
        if checkpoint.get('tokenizer'):
            meta = checkpoint['tokenizer']
        elif dataset:
            meta = read_meta(os.path.join('data', dataset))
    else:
        try:
            model = from_pretrained(init_from, dict(dropout=0.0), weight_dtype)
        except (ValueError, OSError) as e:
            raise UsageError(str(e))
    return model.eval(), {**meta, 'dataset': dataset}
