"""
A run's out_dir: checkpoints written atomically and read safely, the model a checkpoint describes
(load_model: the one shared place that imports model.py), one run per out_dir, Ctrl-C that ends
the run cleanly, and metrics.jsonl.
"""

import json
import os
import pickle
import shutil
import sys
import warnings

import torch

from dataloader import load_meta
import hf_gpt2
from model import GPT, GPTConfig
from quantize import build_model
from util import die


# -----------------------------------------------------------------------------
# checkpoints

def strip_prefixes(state_dict):
    """Drop the '_orig_mod.' (torch.compile) and 'module.' (DDP) prefixes older checkpoints carry."""
    out = {}
    for k, v in state_dict.items():
        while k.startswith(('_orig_mod.', 'module.')):
            k = k.split('.', 1)[1]
        out[k] = v
    return out


def _os_error(e):
    """The OSError behind an exception, if any: torch.save reports a failed write as a RuntimeError."""
    while e is not None and not isinstance(e, OSError):
        e = e.__cause__ or e.__context__
    return e


def _atomic_save(obj, path):
    """
    Write to a temporary file beside path, then rename: path is always complete, old or new. A write
    that fails (a full disk) removes the temporary file and ends the run with one line naming path.
    """
    tmp = path + '.tmp'
    try:
        with open(tmp, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:  # Ctrl-C included: no temporary file is left behind
        if os.path.exists(tmp):
            os.remove(tmp)
        cause = _os_error(e)
        if cause is None:
            raise
        die(f"{(cause.strerror or str(cause)).lower()} writing {path}; the previous checkpoint is untouched")


def save_checkpoint(out_dir, checkpoint, optimizer_state):
    """
    out_dir/ckpt.pt holds the model and what describes it (about the size of the weights, all
    that sample.py and export.py read); the optimizer state, twice that size, goes to
    out_dir/optimizer-<iter>.pt, which ckpt.pt names. The optimizer file is written first and the
    previous one removed last, so a kill at any moment leaves a ckpt.pt whose optimizer file exists.
    If ckpt.pt cannot be written, the new optimizer file goes again and the old pair stays. A Ctrl-C
    meanwhile (exit_on_interrupt) takes effect once the save is complete.
    """
    name = f"optimizer-{checkpoint['iter_num']:08d}.pt"
    path = os.path.join(out_dir, name)
    existed = os.path.exists(path)  # a resumed run saving its first iteration again

    def discard():
        if not existed:
            os.remove(path)
    _save_pair(out_dir, checkpoint, name, lambda: _atomic_save(optimizer_state, path), discard)


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
            die(f"cannot write {path}: {str(e).splitlines()[0][:200]}; the previous checkpoint is untouched")

    def discard():
        shutil.rmtree(path, ignore_errors=True)
    _save_pair(out_dir, checkpoint and {**checkpoint, 'model': weights}, name, write, discard)


def _save_pair(out_dir, checkpoint, name, write_optimizer, discard):
    """The optimizer state (name in out_dir), then ckpt.pt naming it (if checkpoint), then the old state goes."""
    global _saving
    _saving = True
    try:
        write_optimizer()
        if checkpoint is not None:
            try:
                _atomic_save({**checkpoint, 'optimizer_file': name}, os.path.join(out_dir, 'ckpt.pt'))
            except BaseException:
                discard()
                raise
            for f in os.listdir(out_dir):
                if f.startswith('optimizer-') and f != name:
                    old = os.path.join(out_dir, f)
                    shutil.rmtree(old) if os.path.isdir(old) else os.remove(old)
    finally:
        _saving = False
    if _stop is not None:
        _stop()


def _load(path, trust, mmap=False):
    try:
        with warnings.catch_warnings():  # random bytes can look like an odd pickle protocol and warn first
            warnings.simplefilter('ignore', UserWarning)
            return torch.load(path, map_location='cpu', weights_only=not trust, mmap=mmap)
    except Exception as e:
        if mmap:  # a file of torch's legacy format cannot be memory-mapped, but can be read
            return _load(path, trust)
        if isinstance(e, pickle.UnpicklingError) and 'GLOBAL' in str(e):  # a class or function inside
            die(f"{path} holds Python objects besides tensors and plain values, which could run code "
                f"when loaded; if you trust the file, pass --trust_checkpoint=True")
        die(f"cannot read checkpoint {path} (truncated or corrupt?): {str(e).splitlines()[0][:200]}")


def load_checkpoint(path, trust=False, mmap=False):
    """
    A checkpoint dict, read safely (weights_only: tensors and plain values, no code runs), or a
    one-line error. trust=True allows arbitrary pickled objects, for old files one trusts; mmap=True
    leaves the tensors in the file's pages (page cache, copy-on-write) until they are read.
    """
    if not os.path.isfile(path):
        die(f"no checkpoint at {path} (train one first, or check --out_dir)")
    checkpoint = _load(path, trust, mmap)
    if not isinstance(checkpoint, dict) or 'model' not in checkpoint or 'model_args' not in checkpoint:
        die(f"{path} is not a GPT checkpoint (no 'model' and 'model_args')")
    return checkpoint


def load_optimizer_state(out_dir, checkpoint, trust=False):
    """The optimizer and grad-scaler state saved with a checkpoint: its own file, or inside it (nanoGPT)."""
    if 'optimizer_file' not in checkpoint:
        return {'optimizer': checkpoint['optimizer'], 'scaler': checkpoint.get('scaler')}
    path = os.path.join(out_dir, checkpoint['optimizer_file'])
    if not os.path.isfile(path):
        die(f"{path}, the optimizer state of {os.path.join(out_dir, 'ckpt.pt')}, is missing")
    return _load(path, trust)


def restore_optimizer(out_dir, checkpoint, model, optimizer, scaler, trust=False):
    """
    Put the optimizer (and fp16 scaler) state saved with checkpoint into optimizer, whatever the
    layout of the run that saved it and of this one: a folder written by an FSDP run is read
    through DCP, which reshards it to this run's processes (FSDP with any number, DDP or one
    process); a whole state (one process or DDP, or nanoGPT's) is loaded as it is, or, into an
    FSDP model, spread over its shards. model is the plain or FSDP module, not a DDP/compile wrapper.
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
                dcp.load(state, checkpoint_id=os.path.join(out_dir, name), no_dist=not torch.distributed.is_initialized())
        except Exception as e:
            die(f"cannot read {os.path.join(out_dir, name)}: {str(e).splitlines()[0][:200]}")
        set_optimizer_state_dict(model, optimizer, state['optimizer'])
        return
    state = load_optimizer_state(out_dir, checkpoint, trust)
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


def model_from_checkpoint(checkpoint, weight_dtype='float32', **overrides):
    """
    The GPT a checkpoint describes, with its weights, its Linears in weight_dtype (quantize.py);
    overrides (e.g. dropout) replace config fields.
    """
    args = {**checkpoint['model_args'], **checkpoint.get('model_options', {}), **overrides}
    unknown = set(args) - set(GPTConfig.__dataclass_fields__)
    if unknown:
        die(f"the checkpoint's model has options this model.py does not know: {', '.join(sorted(unknown))}")
    config = GPTConfig(**args)
    try:
        if weight_dtype != 'float32':
            return build_model(config, strip_prefixes(checkpoint['model']).items(), weight_dtype)
        model = GPT(config)
        model.load_state_dict(strip_prefixes(checkpoint['model']))
    except (RuntimeError, ValueError) as e:
        lines = str(e).splitlines()
        die(f"checkpoint weights do not match its model_args: {lines[min(1, len(lines) - 1)].strip()[:200]}")
    return model


def load_model(init_from, out_dir, trust=False, weight_dtype='float32'):
    """
    An eval-mode model to sample or evaluate with, its Linears in weight_dtype (reduced as they are
    read: the float32 weights are never all in memory), and the character vocabulary it needs (or
    None for GPT-2 BPE): init_from 'resume' reads out_dir/ckpt.pt, anything else is a GPT-2 name or
    a local Hugging Face GPT-2 directory.
    """
    meta = None
    if init_from == 'resume':
        checkpoint = load_checkpoint(os.path.join(out_dir, 'ckpt.pt'), trust, mmap=True)
        model = model_from_checkpoint(checkpoint, weight_dtype, dropout=0.0)
        dataset = checkpoint.get('config', {}).get('dataset')
        if dataset:  # a character-level model comes with its dataset's vocabulary
            meta = load_meta(os.path.join('data', dataset))
            if meta is not None:
                meta['dataset'] = dataset
    else:
        try:
            model = hf_gpt2.from_pretrained(init_from, dict(dropout=0.0), weight_dtype)
        except (ValueError, OSError) as e:
            die(str(e))
    return model.eval(), meta


# -----------------------------------------------------------------------------
# a run's out_dir: one run at a time, Ctrl-C, and the record of its losses

def lock_out_dir(out_dir):
    """
    Hold out_dir/lock for the life of this process, or exit with one line naming the run that holds
    it: two runs writing the same checkpoints would destroy each other's. The lock is the kernel's
    (flock), so a run killed with kill -9 leaves a file but no lock, and the next run simply takes
    it. Where there is no flock (Windows), runs are not locked. Returns the function that releases
    the lock (atexit calls it too), for a process that ends without atexit (common.end_ddp).
    """
    try:
        import fcntl
    except ImportError:
        return None
    path = os.path.join(out_dir, 'lock')
    while True:
        f = open(path, 'a+')
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or 'unknown'
            die(f"{out_dir} is in use by another training run (PID {holder}); wait for it, stop it, or "
                f"choose another --out_dir")
        try:  # the file may have been removed by the run that held it just before: lock the current one
            if os.fstat(f.fileno()).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        f.close()
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()

    def release():
        if not f.closed:
            os.remove(path)  # before the lock goes, so a waiting run never locks a removed file
            f.close()
    import atexit
    atexit.register(release)
    return release


def exit_on_interrupt(where=None):
    """
    Ctrl-C (SIGINT) ends the script with one line on stderr, 'interrupted ' + where() (nothing where
    where is None: the other DDP ranks), and exit status 130, instead of a KeyboardInterrupt traceback.
    It raises SystemExit, at once, or once the checkpoint being written is complete: stopping a
    torch.save midway leaves its writer in a state that fails again on the way out.
    """
    import signal

    def stop():
        if where is not None:
            print(f"\ninterrupted {where()}", file=sys.stderr, flush=True)
        raise SystemExit(130)

    def handler(signum, frame):
        global _stop
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while stopping changes nothing
        if _saving:
            _stop = stop  # save_checkpoint calls it when the files are in place
        else:
            stop()
    signal.signal(signal.SIGINT, handler)


_saving = False  # save_checkpoint is writing files
_stop = None  # a Ctrl-C that came while it was


class MetricsLog:
    """
    out_dir/metrics.jsonl: one JSON object per log line and per evaluation, each with its 'iter',
    so a run can be read or plotted without wandb. A run started at iteration iter_num (a resume)
    keeps the entries of the iterations before it and drops the rest, which it is about to redo:
    the record never holds an iteration twice.
    """

    def __init__(self, path, iter_num):
        self.path = path
        kept = []
        if iter_num > 0 and os.path.isfile(path):
            with open(path, encoding='utf-8') as f:
                for line in f:
                    try:
                        if json.loads(line)['iter'] < iter_num:
                            kept.append(line if line.endswith('\n') else line + '\n')
                    except (ValueError, KeyError, TypeError):
                        pass  # a line cut short by a kill
        try:
            with open(path + '.tmp', 'w', encoding='utf-8') as f:
                f.writelines(kept)
            os.replace(path + '.tmp', path)
            self.file = open(path, 'a', encoding='utf-8')
        except OSError as e:
            die(f"{e.strerror.lower()} writing {path}")

    def log(self, **entry):
        try:
            self.file.write(json.dumps(entry) + '\n')
            self.file.flush()
        except OSError as e:
            die(f"{e.strerror.lower()} writing {self.path}")
