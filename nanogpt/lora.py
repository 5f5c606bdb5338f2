"""
LoRA finetuning through peft (Hu et al. 2021, arXiv:2106.09685): low-rank adapters beside frozen
weights, the merged weights a checkpoint holds, and the adapter directory peft loads onto Hugging
Face's GPT-2 (our module names are its names).
"""
import json
import os
import shutil
import tempfile
from contextlib import contextmanager

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer

from nanogpt.util import UsageError, write_error, written


def lora_settings(rank, alpha, dropout, targets):
    """What a checkpoint records of a LoRA run, and what add_adapters takes."""
    return dict(rank=rank, alpha=alpha, dropout=dropout, targets=[t.strip() for t in targets.split(',') if t.strip()])


class Adapters:
    """
    A LoRA run's adapters on model, new on the model of init_from or as a resumed run left them (its checkpoint
    and optimizer_state), and what its checkpoints hold besides the merged weights. Targets that match no Linear
    are one line. Where the run computes in bfloat16 (dtype), the frozen weights are kept in it, half the bytes;
    their full precision then waits in a file of out_dir (the master process's: the one that saves), named in
    the checkpoints, for the merged weights to be the base's own plus the adapters.
    """

    def __init__(self, model, rank, alpha, dropout, targets, init_from, dtype, out_dir=None, checkpoint=None,
                 optimizer_state=None):
        self.model, self.out_dir, self.full_base = model, out_dir, None
        self.settings = {**lora_settings(rank, alpha, dropout, targets),  # and what the adapters go onto (export.py)
                         'base': checkpoint['lora']['base'] if checkpoint else init_from}
        try:
            add_adapters(model, self.settings)
        except ValueError as e:
            raise UsageError(f"lora_targets '{targets}': {str(e).splitlines()[0][:200]}")
        if dtype == 'bfloat16':
            name = checkpoint['lora'].get('full_base') if checkpoint else f"lora_base-{os.urandom(4).hex()}.pt"
            if out_dir and not checkpoint:
                with written(os.path.join(out_dir, name)) as f:
                    torch.save(base_weights(model), f)
            if out_dir and name and os.path.isfile(os.path.join(out_dir, name)):  # (older runs kept no such file)
                self.full_base = torch.load(os.path.join(out_dir, name), weights_only=True, mmap=True)
                self.settings['full_base'] = name
            round_base(model, torch.bfloat16)
        if checkpoint:  # the frozen weights as they were (ckpt.pt holds them merged), and the adapters
            restore_base(model, optimizer_state.pop('lora_base'))
            load_adapters(model, checkpoint['lora']['adapters'])

    def __str__(self):
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return (f"LoRA adapters (rank {self.settings['rank']}) train {trainable:,} "
                f"({trainable / self.model.get_num_params():.2%})")

    def checkpoint_entry(self):
        """ckpt.pt's 'lora': the settings, the base and the adapters."""
        return {'lora': {**self.settings, 'adapters': adapter_weights(self.model)}}

    def optimizer_entry(self):
        """What the optimizer file holds besides the optimizer: the frozen weights, for an exact resume."""
        return {'lora_base': base_weights(self.model)}

    def merged(self, base_file):
        """ckpt.pt's weights, inside: merged() on this model, or merged_into() its full-precision base."""
        if self.full_base is None:
            return merged(self.model, base_file)
        return merged_into(self.model, self.full_base, self.out_dir)

    def saved(self):
        """After a checkpoint is written: the full-precision bases no checkpoint names any more go."""
        if self.full_base is None:
            return
        for f in os.listdir(self.out_dir):
            if f.startswith('lora_base-') and f != self.settings['full_base']:
                os.remove(os.path.join(self.out_dir, f))


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
        round_base(model, base_dtype)
    return model


def round_base(model, dtype):
    """Keep the frozen weights of the Linears that carry adapters in dtype."""
    for _, layer in lora_layers(model):
        layer.base_layer.weight.data = layer.base_layer.weight.data.to(dtype)


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


@contextmanager
def merged_into(model, full_base, scratch_dir):
    """
    Inside, plain_state_dict with each adapted weight full_base's (base_weights at full precision, by name) plus
    B @ A * alpha / r, in float32 whatever the frozen copy's dtype: the model a checkpoint stores. The merged
    tensors live in files of scratch_dir (page cache the kernel can write out, not this process's memory),
    allocated first so that a full disk fails there, in one line, not as a fault while they are written.
    """
    state, tmp = plain_state_dict(model), tempfile.mkdtemp(prefix='merging-', dir=scratch_dir)
    try:
        with torch.no_grad():
            for name, layer in lora_layers(model):
                base = full_base[f'{name}.weight']
                path = os.path.join(tmp, name)
                try:
                    with open(path, 'wb') as f:
                        os.posix_fallocate(f.fileno(), 0, base.nbytes)
                except OSError as e:
                    raise UsageError(write_error(path, e, 'the previous checkpoint is untouched'))
                out = torch.from_file(path, shared=True, size=base.numel(), dtype=base.dtype).view(base.shape)
                delta = layer.get_delta_weight(layer.active_adapters[0]).to(base.dtype)
                state[f'{name}.weight'] = torch.add(base, delta, out=out)
        yield state
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
