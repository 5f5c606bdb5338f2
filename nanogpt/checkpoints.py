"""
Checkpoints: ckpt.pt and the optimizer state beside it (one file, or DCP shards under FSDP), written
atomically so that a kill never leaves a broken pair, and read safely (no pickled code runs).
"""

import copy
import os
import pickle
import shutil
import sys
import warnings
from contextlib import nullcontext

import torch

from model import MODEL_OPTIONS
from nanogpt.util import UsageError, os_error, write_error, written


def strip_prefixes(state_dict):
    """Drop the '_orig_mod.' (torch.compile) and 'module.' (DDP) prefixes older checkpoints carry."""
    out = {}
    for k, v in state_dict.items():
        while k.startswith(('_orig_mod.', 'module.')):
            k = k.split('.', 1)[1]
        out[k] = v
    return out


def _atomic_save(obj, path):
    """torch.save whole or not at all (util.written): a failed write leaves path as it was and ends the run."""
    with written(path, note='the previous checkpoint is untouched') as f:
        torch.save(obj, f)


def save_checkpoint(out_dir, checkpoint, optimizer_state, merged=None):
    """
    out_dir/ckpt.pt holds the model and what describes it (about the size of the weights, all
    that sample.py and export.py read); the optimizer state, twice that size, goes to
    out_dir/optimizer-<iter>.pt, which ckpt.pt names. The optimizer file is written first and the
    previous one removed last, so a kill at any moment leaves a ckpt.pt whose optimizer file exists.
    If ckpt.pt cannot be written, the new optimizer file goes again and the old pair stays. (The
    caller defers Ctrl-C meanwhile: out_dir.ExitOnInterrupt.deferred.) A LoRA run passes merged
    (lora.merged's maker): called with the optimizer file's path once that file is written, its
    context gives ckpt.pt's 'model'.
    """
    name = f"optimizer-{checkpoint['iter_num']:08d}.pt"
    path = os.path.join(out_dir, name)
    existed = os.path.exists(path)  # a resumed run saving its first iteration again

    def discard():
        if not existed:
            os.remove(path)
    _save_pair(out_dir, checkpoint, name, lambda: _atomic_save(optimizer_state, path), discard,
               (lambda: merged(path)) if merged else None)


def starting_point(init_from, auto_resume, out_dir, master):
    """What a run starts from: 'resume' where auto_resume finds out_dir's checkpoint (a restarted run continues its
    own progress, not the run it started from), else init_from, whose first checkpoint replaces one there."""
    path = os.path.join(out_dir, 'ckpt.pt')
    if init_from == 'resume' or not os.path.isfile(path):
        return init_from
    if auto_resume:
        if master:
            print(f"auto_resume: {path} exists, so this run resumes it instead of starting from {init_from}")
        return 'resume'
    if master:
        print(f"warning: {path} exists and this run starts from {init_from}: its first checkpoint will replace "
              f"that one (--init_from=resume continues it instead)", file=sys.stderr)
    return init_from


def save_training(out_dir, model, optimizer, scaler, fsdp, master, adapters=None, **run):
    """
    A training run's checkpoint, from every process under FSDP, else the master's: the plain (or FSDP) model,
    its architecture, the run's state (run: iter_num, best_val_loss, config, ...; None values left out), and
    for a LoRA run (adapters: a lora.Adapters) the weights merged, the adapters and the frozen weights.
    """
    checkpoint = dict(model=None if fsdp or adapters else model.state_dict(),  # FSDP, LoRA: made by the save
                      model_args=model.config.model_args(), model_options=model.config.model_options(),
                      **{k: v for k, v in run.items() if v is not None},
                      **(adapters.checkpoint_entry() if adapters else {}))
    if master:
        print(f"saving checkpoint to {out_dir}")
    if fsdp:
        save_sharded_checkpoint(out_dir, checkpoint if master else None, model, optimizer)
    else:
        state = {'optimizer': optimizer.state_dict(), 'scaler': scaler.state_dict() if scaler.is_enabled() else None,
                 **(adapters.optimizer_entry() if adapters else {})}
        save_checkpoint(out_dir, checkpoint, state, adapters.merged if adapters else None)
        if adapters:
            adapters.saved()


def resume_settings(checkpoint, model_config, config, asked, out_dir):
    """
    The LoRA settings a resumed run keeps, its checkpoint's (lora_rank 0: it trained every weight), as
    (lora_rank, lora_alpha, lora_dropout, lora_targets), after checking the settings asked for (their names;
    config holds all) against them and against the checkpoint's model (model_config, the model built from it):
    a disagreement is one line.
    """
    shape = {k: getattr(model_config, k) for k in ('n_layer', 'n_head', 'n_embd', 'bias', *MODEL_OPTIONS)}
    lora = {f'lora_{k}': ','.join(v) if k == 'targets' else v for k, v in checkpoint.get('lora', {}).items()
            if k in ('rank', 'alpha', 'dropout', 'targets')} or {'lora_rank': 0}
    for k, v in {**shape, **lora}.items():
        if k in asked and config[k] != v:
            hint = f" (to LoRA-finetune it, use --init_from={os.path.join(out_dir, 'ckpt.pt')} and a new out_dir)" \
                if k in lora and not lora['lora_rank'] else ""
            raise UsageError(f"the checkpoint in {out_dir} has {k}={v}, but {k}={config[k]} was asked{hint}")
    return tuple(lora.get(k, config[k]) for k in ('lora_rank', 'lora_alpha', 'lora_dropout', 'lora_targets'))


def save_sharded_checkpoint(out_dir, checkpoint, model, optimizer):
    """
    save_checkpoint for an FSDP run; every process calls it. ckpt.pt is today's file, with the
    whole weights gathered on rank 0 (checkpoint is None on the other ranks); the optimizer state
    is never gathered: each process writes its shard into the folder out_dir/optimizer-<iter>
    through torch.distributed.checkpoint (DCP), which reshards it for any number of processes on
    load (restore_optimizer). As with one file, the folder is complete before ckpt.pt names it and
    the previous one goes last. The folder's name is new at each save (rank 0 picks it), so a run
    saving the iteration it resumed from never writes into the folder its ckpt.pt names.
    """
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)
    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    seen = {}  # a weight under two names (wte and lm_head) is stored once, as state_dict() has it
    for n, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen and n in weights:
            weights[n] = weights[seen[id(p)]]
        seen.setdefault(id(p), n)
    name = [None]
    if checkpoint is not None:
        name[0] = f"optimizer-{checkpoint['iter_num']:08d}"
        k = 1
        while os.path.exists(os.path.join(out_dir, name[0])):
            name[0] = f"optimizer-{checkpoint['iter_num']:08d}-{k}"
            k += 1
    dist.broadcast_object_list(name, src=0)
    name = name[0]
    path = os.path.join(out_dir, name)

    def write():
        try:
            dcp.save({'optimizer': get_optimizer_state_dict(model, optimizer)}, checkpoint_id=path)
        except Exception as e:
            if checkpoint is not None:
                shutil.rmtree(path, ignore_errors=True)
            note = 'the previous checkpoint is untouched'
            raise UsageError(write_error(path, os_error(e), note) if os_error(e) else
                             f"cannot write {path}: {str(e).splitlines()[0][:200]}; {note}")

    def discard():
        shutil.rmtree(path, ignore_errors=True)
    _save_pair(out_dir, checkpoint and {**checkpoint, 'model': weights}, name, write, discard)


def _save_pair(out_dir, checkpoint, name, write_optimizer, discard, weights=None):
    """
    The optimizer state (name in out_dir), then ckpt.pt naming it (if checkpoint), then the old state
    goes. weights: a context manager giving ckpt.pt's 'model' while it is written.
    """
    write_optimizer()
    if checkpoint is not None:
        try:
            with weights() if weights else nullcontext(checkpoint['model']) as model:
                _atomic_save({**checkpoint, 'model': model, 'optimizer_file': name}, os.path.join(out_dir, 'ckpt.pt'))
        except BaseException:
            discard()
            raise
        for f in os.listdir(out_dir):
            if f.startswith('optimizer-') and f != name:
                old = os.path.join(out_dir, f)
                shutil.rmtree(old) if os.path.isdir(old) else os.remove(old)


def _load(path, trust, mmap=False):
    try:
        with warnings.catch_warnings():  # random bytes can look like an odd pickle protocol and warn first
            warnings.simplefilter('ignore', UserWarning)
            return torch.load(path, map_location='cpu', weights_only=not trust, mmap=mmap)
    except Exception as e:
        if mmap:  # a file of torch's legacy format cannot be memory-mapped, but can be read
            return _load(path, trust)
        if isinstance(e, pickle.UnpicklingError) and 'GLOBAL' in str(e):  # a class or function inside
            raise UsageError(f"{path} holds Python objects besides tensors and plain values, which could run code "
                             f"when loaded; if you trust the file, pass --trust_checkpoint=True")
        raise UsageError(f"cannot read checkpoint {path} (truncated or corrupt?): {str(e).splitlines()[0][:200]}")


def load_checkpoint(path, trust=False, mmap=False):
    """
    A checkpoint dict, read safely (weights_only: tensors and plain values, no code runs), or a
    one-line error. trust=True allows arbitrary pickled objects, for old files one trusts; mmap=True
    leaves the tensors in the file's pages (page cache, copy-on-write) until they are read.
    """
    if not os.path.isfile(path):
        raise UsageError(f"no checkpoint at {path} (train one first, or check --out_dir)")
    checkpoint = _load(path, trust, mmap)
    if not isinstance(checkpoint, dict) or 'model' not in checkpoint or 'model_args' not in checkpoint:
        raise UsageError(f"{path} is not a GPT checkpoint (no 'model' and 'model_args')")
    return checkpoint


def load_optimizer_state(out_dir, checkpoint, trust=False, mmap=False):
    """
    The optimizer and grad-scaler state saved with a checkpoint: its own file, or inside it (nanoGPT).
    mmap: the file's other tensors (a LoRA run's frozen weights) stay in its pages until read; the
    optimizer's own are copied out, since the file goes at the next save.
    """
    if 'optimizer_file' not in checkpoint:
        return {'optimizer': checkpoint['optimizer'], 'scaler': checkpoint.get('scaler')}
    path = os.path.join(out_dir, checkpoint['optimizer_file'])
    if not os.path.isfile(path):
        raise UsageError(f"{path}, the optimizer state of {os.path.join(out_dir, 'ckpt.pt')}, is missing")
    state = _load(path, trust, mmap)
    if mmap:
        state['optimizer'] = copy.deepcopy(state['optimizer'])
    return state


def restore_optimizer(out_dir, checkpoint, model, optimizer, scaler, trust=False, state=None):
    """
    Put the optimizer (and fp16 scaler) state saved with checkpoint into optimizer, whatever the
    layout of the run that saved it and of this one: a folder written by an FSDP run is read
    through DCP, which reshards it to this run's processes (FSDP with any number, DDP or one
    process); a whole state (one process or DDP, or nanoGPT's) is loaded as it is, or, into an
    FSDP model, spread over its shards. model is the plain or FSDP module, not a DDP/compile wrapper.
    state: load_optimizer_state's result, where the caller has read it already.
    """
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                         set_optimizer_state_dict)
    name = checkpoint.get('optimizer_file')
    if name and os.path.isdir(os.path.join(out_dir, name)):
        import torch.distributed.checkpoint as dcp
        state = {'optimizer': get_optimizer_state_dict(model, optimizer)}  # this run's layout, to load into
        try:
            with warnings.catch_warnings():  # one process reading shards is what we mean (torch warns even so)
                warnings.filterwarnings('ignore', 'torch.distributed is disabled')
                dcp.load(state, checkpoint_id=os.path.join(out_dir, name),
                         no_dist=not torch.distributed.is_initialized())
        except Exception as e:
            raise UsageError(f"cannot read {os.path.join(out_dir, name)}: {str(e).splitlines()[0][:200]}")
        set_optimizer_state_dict(model, optimizer, state['optimizer'])
        return
    state = state or load_optimizer_state(out_dir, checkpoint, trust)
    if any(hasattr(p, 'device_mesh') for p in model.parameters()):  # sharded by FSDP (DTensors)
        # torch's state_dict API names parameters where optimizer.state_dict() numbers them
        names = {id(p): n for n, p in model.named_parameters()}
        order = [names[id(p)] for group in optimizer.param_groups for p in group['params']]
        whole = {'state': {order[i]: v for i, v in state['optimizer']['state'].items()},
                 'param_groups': [{**g, 'params': [order[i] for i in g['params']]}
                                  for g in state['optimizer']['param_groups']]}
        set_optimizer_state_dict(model, optimizer, whole, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state['optimizer'])
    if state.get('scaler'):
        scaler.load_state_dict(state['scaler'])
