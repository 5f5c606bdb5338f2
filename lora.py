"""
LoRA finetuning through peft (Hu et al. 2021, arXiv:2106.09685): low-rank adapters beside frozen
weights, the merged weights a checkpoint holds, and the adapter directory peft loads onto Hugging
Face's GPT-2 (our module names are its names).
"""
import json
import os
from contextlib import contextmanager

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer

from util import written


def lora_settings(rank, alpha, dropout, targets):
    """What a checkpoint records of a LoRA run, and what add_adapters takes."""
    return dict(rank=rank, alpha=alpha, dropout=dropout, targets=[t.strip() for t in targets.split(',') if t.strip()])


def add_adapters(model, settings, base_dtype=None):
    """
    Put a float32 adapter (rank r: B @ A, B starting at zero) beside every Linear whose name ends in
    one of the targets, and freeze everything else: only the adapters get gradients and optimizer
    state. base_dtype (torch.bfloat16) stores the frozen weights of those Linears in it, half the
    bytes. Raises ValueError if no module matches the targets.
    """
    config = LoraConfig(r=settings['rank'], lora_alpha=settings['alpha'], lora_dropout=settings['dropout'],
                        target_modules=settings['targets'])
    inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad = '.lora_' in name
    if base_dtype is not None:
        for _, layer in lora_layers(model):
            layer.base_layer.weight.data = layer.base_layer.weight.data.to(base_dtype)
    return model


def lora_layers(model):
    """(name, layer) of each Linear that carries an adapter."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]


def adapter_weights(model):
    """The adapters' tensors, in peft's names without the adapter's ('...c_attn.lora_A.weight')."""
    return get_peft_model_state_dict(model)


def load_adapters(model, weights):
    """Set the adapters from adapter_weights' output."""
    result = set_peft_model_state_dict(model, weights)
    unexpected = getattr(result, 'unexpected_keys', [])
    if unexpected:
        raise ValueError(f"adapter weights the model has no place for: {unexpected[:3]}")


def base_weights(model):
    """The frozen weights that merging changes, in our model's names: what resuming needs besides ckpt.pt."""
    return {f'{name}.weight': layer.base_layer.weight for name, layer in lora_layers(model)}


def restore_base(model, weights):
    """Put back the frozen weights base_weights gave (read from a file), bit for bit."""
    with torch.no_grad():
        for name, layer in lora_layers(model):
            layer.base_layer.weight.copy_(weights[f'{name}.weight'])


def plain_state_dict(model):
    """The model's state_dict in plain GPT names: the base Linears' tensors under their own names, no adapters."""
    return {k.replace('.base_layer.', '.'): v for k, v in model.state_dict().items() if '.lora_' not in k}


@contextmanager
def merged(model, base_file):
    """
    Inside, the model's frozen weights hold W + B @ A * alpha / r and it yields plain_state_dict: the
    model a checkpoint stores, which needs no peft to read. Merging in place makes no second copy of
    the weights; on the way out the base weights come back exactly from base_file (a torch file
    holding base_weights, memory-mapped), since subtracting the adapters again would round.
    """
    try:
        with torch.no_grad():
            for _, layer in lora_layers(model):
                w = layer.base_layer.weight
                w.add_(layer.get_delta_weight(layer.active_adapters[0]).to(w.dtype))
        yield plain_state_dict(model)
    finally:
        restore_base(model, torch.load(base_file, map_location='cpu', weights_only=True, mmap=True)['lora_base'])


def save_adapter_dir(lora, directory):
    """
    A peft adapter directory (adapter_config.json, adapter_model.safetensors) for transformers'
    GPT2LMHeadModel: its Conv1D layers store (in, out), hence fan_in_fan_out; the adapters' own
    matrices are the same either way. lora is a checkpoint's 'lora' entry.
    """
    from safetensors.torch import save
    config = LoraConfig(r=lora['rank'], lora_alpha=lora['alpha'], lora_dropout=lora['dropout'],
                        target_modules=lora['targets'], fan_in_fan_out=True, base_model_name_or_path=lora.get('base'))
    os.makedirs(directory, exist_ok=True)
    weights = {f'base_model.model.{k}': v.float().contiguous() for k, v in lora['adapters'].items()}
    with written(os.path.join(directory, 'adapter_model.safetensors')) as f:
        f.write(save(weights))  # in memory first: the adapters are small
    with written(os.path.join(directory, 'adapter_config.json')) as f:
        f.write(json.dumps(config.to_dict(), indent=2, default=list).encode())
