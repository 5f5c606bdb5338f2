"""
This training script can be run both on a single device in debug mode,
and also in a larger training run with distributed data parallel (ddp).

To run on a single GPU, CPU or Mac (the device, dtype and compile settings pick themselves):
$ python train.py --batch_size=32

To run with DDP on 4 gpus on 1 node, example:
$ torchrun --standalone --nproc_per_node=4 train.py
To shard the weights, gradients and optimizer state over them instead (FSDP2), add --parallelism=fsdp

To run with DDP on 4 gpus across 2 nodes, example:
- Run on the first (master) node with example IP 123.456.123.456:
$ torchrun --nproc_per_node=8 --nnodes=2 --node_rank=0 --master_addr=123.456.123.456 --master_port=1234 train.py
- Run on the worker node:
$ torchrun --nproc_per_node=8 --nnodes=2 --node_rank=1 --master_addr=123.456.123.456 --master_port=1234 train.py
(If your cluster does not have Infiniband interconnect prepend NCCL_IB_DISABLE=1)
"""

import math
import os
import sys
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import tasks
from checkpoints import load_checkpoint, load_optimizer_state, restore_optimizer
from checkpoints import save_checkpoint, save_sharded_checkpoint
from dataloader import check_token_ids, get_batch, open_split
from autotune import cpu_route
from device import autocast, exit_on_out_of_memory, maybe_compile, peak_flops as find_peak_flops, peak_memory
from device import return_freed_memory_at_once, setup_device
from distributed import ddp_ranks, end_ddp, shard_model, start_ddp
from loading import from_pretrained, model_from_checkpoint
from model import GPT, MODEL_OPTIONS, GPTConfig
from optim import optimizer_step, update_to_weight, weights_before_step
from out_dir import ExitOnInterrupt, MetricsLog, lock_out_dir
from tokenizer import from_meta, read_meta
from util import die

# -----------------------------------------------------------------------------
# default config values designed to train a gpt2 (124M) on OpenWebText
# I/O
out_dir = 'out'
eval_interval = 2000
log_interval = 1
eval_iters = 200
eval_only = False  # if True, script exits right after the first eval
always_save_checkpoint = True  # if True, always save a checkpoint after each eval
hellaswag_interval = 0  # zero-shot HellaSwag accuracy every this many iterations (0 = off; data/hellaswag/prepare.py)
hellaswag_limit = 0  # evaluate only the first hellaswag_limit examples (0 = all 10,042)
init_from = 'scratch'  # 'scratch' or 'resume' or 'gpt2*' or a local Hugging Face GPT-2 directory or a ckpt.pt
auto_resume = False  # if out_dir holds a checkpoint, resume it whatever init_from says (torchrun --max-restarts)
trust_checkpoint = False  # allow checkpoints holding arbitrary pickled objects (only for files you trust)
# wandb logging
wandb_log = False  # disabled by default
wandb_project = 'owt'
wandb_run_name = 'gpt2'  # 'run' + str(time.time())
# data
dataset = 'openwebtext'
gradient_accumulation_steps = 5 * 8  # used to simulate larger batch sizes
batch_size = 12  # if gradient_accumulation_steps > 1, this is the micro-batch size
block_size = 1024
batch_ramp_tokens = 0  # grow the batch linearly over this many tokens of training, up to the one above (0 = off)
batch_ramp_start = 1  # micro-batches per step (all processes together) at the start of the ramp
# model
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0  # for pretraining 0 is good, for finetuning try 0.1+
bias = False  # do we use bias inside LayerNorm and Linear layers?
activation = 'gelu'  # 'gelu' (exact), 'gelu_tanh' (GPT-2's approximation) or 'relu2' (ReLU squared)
# architecture options beyond GPT-2 (model.py's GPTConfig says what each does); the defaults are GPT-2
pos_encoding = 'learned'  # 'learned' (GPT-2), 'rotary' or 'alibi'
qk_norm = False
norm = 'layernorm'  # or 'rmsnorm'
tie_weights = True
zero_init_proj = False
logit_softcap = 0.0  # 0 = off
# LoRA finetuning (through peft): low-rank adapters train beside frozen weights
lora_rank = 0  # 0 = off (every weight trains); e.g. 8
lora_alpha = 16  # the adapters' output is scaled by lora_alpha / lora_rank
lora_dropout = 0.0  # dropout on the adapters' input
lora_targets = 'c_attn,c_proj,c_fc'  # the Linears that get adapters, by name: attention's and the MLP's projections
activation_checkpointing = False  # recompute each block's activations in the backward pass: less memory, more compute
# adamw optimizer
optimizer = 'adamw'  # 'adamw', or 'muon': Muon for the matrices inside the blocks, AdamW for the rest
muon_lr = 0.02  # Muon's max learning rate (the schedule scales it as it does learning_rate)
learning_rate = 6e-4  # max learning rate
max_iters = 600000  # total number of training iterations
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # clip gradients at this value, or disable if == 0.0
# learning rate decay settings
decay_lr = True  # whether to decay the learning rate
warmup_iters = 2000  # how many steps to warm up for
lr_decay_iters = 600000  # should be ~= max_iters per Chinchilla
min_lr = 6e-5  # minimum learning rate, should be ~= learning_rate/10 per Chinchilla
# system
device = 'auto'  # 'auto' (cuda, else mps, else cpu), or 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'auto'  # 'auto' (GPUs: bfloat16, float16 on older ones; CPUs: the faster at this run's shapes), or one
autotune = True  # on CPUs, time the exact speed choices at this run's shapes (cached on disk); False: defaults
compile = None  # use PyTorch 2.0 to compile the model to be faster; None: on for CUDA only
backend = 'auto'  # DDP backend: 'auto' (nccl on CUDA, gloo otherwise), 'nccl', 'gloo'
parallelism = 'ddp'  # under torchrun: 'ddp' (a whole copy per process) or 'fsdp' (FSDP2: each holds 1/N)
seed = 1337  # batches and dropout follow from (seed, iteration, rank), so resumes are exact
peak_flops = 0.0  # the device's peak FLOP/s for MFU; 0 looks it up (known GPUs, for dtype)
# -----------------------------------------------------------------------------
config_keys = [k for k, v in globals().items()
               if not k.startswith('_') and isinstance(v, (int, float, bool, str, type(None)))]
exec(open('configurator.py').read())  # overrides from command line or config file
config = {k: globals()[k] for k in config_keys}  # will be useful for logging
# -----------------------------------------------------------------------------

# settings that would fail later, or silently do the wrong thing: one line now instead
for name in ('batch_size', 'block_size', 'gradient_accumulation_steps', 'eval_iters', 'eval_interval', 'log_interval',
             'n_layer', 'n_head', 'n_embd'):
    if globals()[name] <= 0:
        die(f"{name} must be positive, got {globals()[name]}")
for name in ('max_iters', 'warmup_iters', 'lr_decay_iters', 'hellaswag_interval', 'hellaswag_limit',
             'batch_ramp_tokens'):
    if globals()[name] < 0:
        die(f"{name} must be >= 0, got {globals()[name]}")
for name, ok, want in (('learning_rate', learning_rate > 0, 'finite and positive'),
                       ('min_lr', min_lr >= 0, 'finite and >= 0'),
                       ('weight_decay', weight_decay >= 0, 'finite and >= 0'),
                       ('grad_clip', grad_clip >= 0, 'finite and >= 0 (0 turns clipping off)'),
                       ('beta1', 0 <= beta1 < 1, 'in [0, 1)'), ('beta2', 0 <= beta2 < 1, 'in [0, 1)'),
                       ('dropout', 0 <= dropout < 1, 'in [0, 1)'), ('lora_dropout', 0 <= lora_dropout < 1, 'in [0, 1)'),
                       ('lora_alpha', lora_alpha > 0, 'finite and positive')):
    if not (ok and math.isfinite(globals()[name])):  # NaN fails every comparison
        die(f"{name} must be {want}, got {globals()[name]}")
if init_from == 'scratch' and n_embd % n_head:
    die(f"n_embd ({n_embd}) must be divisible by n_head ({n_head}): each head gets n_embd // n_head dimensions")
if optimizer not in ('adamw', 'muon'):
    die(f"optimizer must be 'adamw' or 'muon', got '{optimizer}'")
if parallelism not in ('ddp', 'fsdp'):
    die(f"parallelism must be 'ddp' or 'fsdp', got '{parallelism}'")
if lora_rank < 0 or (lora_rank and not lora_targets.replace(',', '').strip()):
    die(f"lora_rank must be >= 0 (0 = off) and lora_targets name a Linear, got {lora_rank} and '{lora_targets}'")
if decay_lr and lr_decay_iters <= warmup_iters:
    die(f"lr_decay_iters ({lr_decay_iters}) must be larger than warmup_iters ({warmup_iters}), or set decay_lr=False")

# various inits, derived attributes, I/O setup
ddp, ddp_rank, ddp_local_rank, ddp_world_size = ddp_ranks()  # is this a ddp run, and which process is this?
fsdp = ddp and parallelism == 'fsdp'  # one process alone holds the whole model whatever the setting
if ddp:
    if gradient_accumulation_steps % ddp_world_size:
        die(f"gradient_accumulation_steps ({gradient_accumulation_steps}) must be divisible "
            f"by the number of processes ({ddp_world_size})")
    # each process does its share of the micro-steps, so the global batch is unchanged
    gradient_accumulation_steps //= ddp_world_size
ramp_start = -(-batch_ramp_start // ddp_world_size)  # micro-steps per process, rounded up to whole ones
if batch_ramp_tokens and not 0 < ramp_start <= gradient_accumulation_steps:
    die(f"batch_ramp_start ({batch_ramp_start}) must be between 1 and gradient_accumulation_steps "
        f"({gradient_accumulation_steps * ddp_world_size})")
master_process = ddp_rank == 0  # this process will do logging, checkpointing etc.
device, dtype, ctx = setup_device(device, dtype, ddp_local_rank)  # on a CPU, 'auto' is measured below
if device.type == 'cpu':  # activations freed in the backward pass go back to the OS, not to a heap that keeps them
    return_freed_memory_at_once()
exit_on_out_of_memory(f"lower batch_size (more gradient_accumulation_steps keep the batch) or block_size, or set "
                      f"activation_checkpointing=True, a LoRA finetune (lora_rank=8, or a lower one) or dtype=bfloat16 "
                      f"(the last checkpoint in {out_dir} is untouched)")
if fsdp and dtype == 'float16':
    die("parallelism='fsdp' does not run float16 (its gradient scaler is DDP's): use --dtype=bfloat16 or float32")
if fsdp and lora_rank:
    die("LoRA runs under DDP, not FSDP (peft's adapters are not sharded): use --parallelism=ddp")
if ddp:
    start_ddp(device, backend)
micro_tokens = ddp_world_size * batch_size * block_size  # tokens of one micro-step on every process
tokens_per_iter = gradient_accumulation_steps * micro_tokens
if master_process:
    print(f"tokens per iteration will be: {tokens_per_iter:,}")
    if batch_ramp_tokens:
        print(f"batch ramp: from {ramp_start * micro_tokens:,} tokens per iteration to {tokens_per_iter:,} over the "
              f"first {batch_ramp_tokens:,} tokens; the learning rate schedule follows tokens")
# one run per out_dir (made if need be): a second one would overwrite this one's checkpoints
unlock_out_dir = lock_out_dir(out_dir) if master_process else None

# data: memory-mapped once, batches drawn from (seed, iteration, micro-step) alone
data_dir = os.path.join('data', dataset)
meta = read_meta(data_dir)  # its tokenizer (characters, GPT-2's BPE or its own) and token dtype
train_data = open_split(data_dir, 'train', block_size, meta['dtype'])
val_data = open_split(data_dir, 'val', block_size, meta['dtype'])


def train_batch(it, micro_step):
    # numbering micro-steps across ranks makes N processes see exactly the batches
    # one process would see with N times the gradient accumulation (whatever the ramp's size)
    return get_batch(train_data, batch_size, block_size,
                     (seed, 0, it, micro_step * ddp_world_size + ddp_rank), device, vocab_size)


def micro_steps(tokens):
    """This process's micro-steps in an iteration that starts after tokens tokens: the batch ramp."""
    if tokens >= batch_ramp_tokens:
        return gradient_accumulation_steps
    return int(ramp_start + (gradient_accumulation_steps - ramp_start) * tokens / batch_ramp_tokens)


def tokens_before(it):
    """The tokens trained on before iteration it: fewer than it full batches while the ramp runs."""
    tokens, i = 0, 0
    while i < it and tokens < batch_ramp_tokens:
        tokens += micro_steps(tokens) * micro_tokens
        i += 1
    return tokens + (it - i) * tokens_per_iter


# the vocab size comes from the dataset's metadata unless it is GPT-2's (padded to 50304 below)
meta_vocab_size = meta['vocab_size'] if meta['tokenizer'] != 'gpt2' else None

# zero-shot HellaSwag during training (BPE models only)
if hellaswag_interval:
    if meta['tokenizer'] == 'char':
        die(f"hellaswag_interval needs a BPE dataset; {dataset} is character-level")
    hellaswag_path = tasks.default_file('hellaswag')
    if not os.path.isfile(hellaswag_path):
        die(f"no {hellaswag_path}: python data/hellaswag/prepare.py")
    hellaswag_examples = tasks.read_jsonl(hellaswag_path, hellaswag_limit)
    encode = from_meta(meta).encode

# model init
torch.manual_seed(seed)
iter_num = 0
best_val_loss = 1e9
checkpoint = None
ckpt_path = os.path.join(out_dir, 'ckpt.pt')
saved_iter = None  # the iteration of the newest checkpoint in out_dir, if any
if auto_resume and init_from != 'resume' and os.path.isfile(ckpt_path):
    if master_process:
        print(f"auto_resume: {ckpt_path} exists, so this run resumes it instead of starting from {init_from}")
    init_from = 'resume'  # a restarted run continues its own progress, not the run it started from


def where_interrupted():
    saved = f"the last checkpoint is {ckpt_path} (iter {saved_iter}; continue with --init_from=resume)" \
        if saved_iter is not None else "no checkpoint was written"
    return f"at iter {iter_num}: {saved}"


interrupts = ExitOnInterrupt(where_interrupted if master_process else None)
if init_from != 'resume' and master_process and os.path.isfile(ckpt_path):
    print(f"warning: {ckpt_path} exists and this run starts from {init_from}: its first checkpoint will replace "
          f"that one (--init_from=resume continues it instead)", file=sys.stderr)
if init_from == 'scratch':
    if meta_vocab_size is None:
        print("defaulting to vocab_size of GPT-2 to 50304 (50257 rounded up for efficiency)")
    try:
        model = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, bias=bias,
                              vocab_size=meta_vocab_size or 50304, dropout=dropout,
                              **{k: globals()[k] for k in MODEL_OPTIONS}))
    except ValueError as e:
        die(str(e))
elif init_from == 'resume':
    print(f"Resuming training from {out_dir}")
    checkpoint = load_checkpoint(os.path.join(out_dir, 'ckpt.pt'), trust_checkpoint)
    # the checkpoint decides the model's shape; one asked for explicitly must agree with it
    saved = {**{k: GPTConfig.__dataclass_fields__[k].default for k in MODEL_OPTIONS}, **checkpoint['model_args'],
             **checkpoint.get('model_options', {})}
    for k in ('n_layer', 'n_head', 'n_embd', 'bias', *MODEL_OPTIONS):
        if k in _set_keys and globals()[k] != saved[k]:
            die(f"the checkpoint in {out_dir} has {k}={saved[k]}, but {k}={globals()[k]} was asked")
    model = model_from_checkpoint(checkpoint, dropout=dropout)
    iter_num = saved_iter = checkpoint['iter_num']
    best_val_loss = float(checkpoint['best_val_loss'])
    # a LoRA run resumes as one, with its own settings; any other without adapters
    saved = {f'lora_{k}': ','.join(v) if k == 'targets' else v for k, v in checkpoint.get('lora', {}).items()
             if k in ('rank', 'alpha', 'dropout', 'targets')} or {'lora_rank': 0}
    for k, v in saved.items():
        if k in _set_keys and globals()[k] != v:
            die(f"the checkpoint in {out_dir} has {k}={v}, but {k}={globals()[k]} was asked" + ("" if saved['lora_rank']
                else f" (to LoRA-finetune it, use --init_from={ckpt_path} and a new out_dir)"))
    globals().update(saved)
    if fsdp and lora_rank:
        die("LoRA runs under DDP, not FSDP (peft's adapters are not sharded): use --parallelism=ddp")
elif os.path.isfile(init_from):
    print(f"Initializing from the checkpoint {init_from}")
    model = model_from_checkpoint(load_checkpoint(init_from, trust_checkpoint), dropout=dropout)
else:
    print(f"Initializing from OpenAI GPT-2 weights: {init_from}")
    try:
        model = from_pretrained(init_from, dict(dropout=dropout))
    except (ValueError, OSError) as e:
        die(str(e))
# crop down the model block size if desired, using model surgery
if block_size < model.config.block_size:
    model.crop_block_size(block_size)
elif block_size > model.config.block_size:
    die(f"block_size {block_size} is larger than the model's {model.config.block_size}")
# on a CPU: the fastest exact route at this run's shapes (a resume keeps its run's, for a bit-exact continuation)
route = None
if device.type == 'cpu':
    route = cpu_route(model.config, batch_size, block_size, config['dtype'],
                      model.flops_per_token() * tokens_per_iter * max(max_iters - iter_num, 1),
                      autotune and master_process, checkpoint and checkpoint.get('speed_choices'), ddp)
    route.apply(model)
    dtype, ctx = route.dtype, autocast(device, route.dtype)
if master_process:
    sharding = f", FSDP over {ddp_world_size} process{'es' if ddp_world_size > 1 else ''}" if fsdp else ""
    print(f"device: {device}, dtype: {dtype}{sharding}" + (f" ({route.name})" if route else ""))
if meta_vocab_size and model.config.vocab_size < meta_vocab_size:
    die(f"the dataset has {meta_vocab_size} tokens, the model only {model.config.vocab_size}")
vocab_size = meta_vocab_size or model.config.vocab_size  # no token id in the data may reach it
for split, data in (('train', train_data), ('val', val_data)):
    check_token_ids(data, vocab_size, os.path.join(data_dir, f'{split}.bin'))
if init_from == 'scratch' and master_process and model.get_num_params() > 20 * len(train_data):  # nanoGPT's #97
    print(f"warning: {model.get_num_params() / 1e6:.2f}M parameters is over 20 a training token ({len(train_data):,} "
          f"in {dataset}): the model can learn them by heart (val loss rising as train loss falls); a smaller "
          f"model, more dropout or more data (data/prepare.py's last line suggests a size)")
lora = optimizer_state = None
if lora_rank:
    from lora import add_adapters, adapter_weights, base_weights, load_adapters, lora_settings, merged, restore_base
    lora = lora_settings(lora_rank, lora_alpha, lora_dropout, lora_targets)
    lora['base'] = checkpoint['lora']['base'] if checkpoint else init_from  # what the adapters go onto (export.py)
    try:  # where the device computes in bfloat16, the frozen weights are kept in it too: half their bytes
        add_adapters(model, lora, torch.bfloat16 if dtype == 'bfloat16' else None)
    except ValueError as e:
        die(f"lora_targets '{lora_targets}': {str(e).splitlines()[0][:200]}")
    if checkpoint:  # the frozen weights as they were (ckpt.pt holds them merged), the adapters and their optimizer
        optimizer_state = load_optimizer_state(out_dir, checkpoint, trust_checkpoint, mmap=True)
        restore_base(model, optimizer_state.pop('lora_base'))
        load_adapters(model, checkpoint['lora']['adapters'])
model.config.activation_checkpointing = activation_checkpointing
model.to(device)
trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
print(f"number of parameters: {model.get_num_params() / 1e6:.2f}M" + (
    f", of which LoRA adapters (rank {lora_rank}) train {trainable:,} ({trainable / model.get_num_params():.2%})"
    if lora else ""))
if fsdp:
    shard_model(model, device, dtype)  # in place, before the optimizer: it must hold the shards

# initialize a GradScaler. If enabled=False scaler is a no-op
scaler = torch.amp.GradScaler(device.type, enabled=(dtype == 'float16'))

# optimizer
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), optimizer, muon_lr)
if checkpoint is not None:
    restore_optimizer(out_dir, checkpoint, model, optimizer, scaler, trust_checkpoint, optimizer_state)
wandb_run_id = checkpoint.get('wandb_run_id') if checkpoint else None
checkpoint = None  # free up memory

# raw_model is the plain (or FSDP) module: it is what gets saved, so checkpoints carry no prefixes
raw_model = model
model = maybe_compile(model, compile, device)
if ddp and not fsdp:
    model = DDP(model, device_ids=[ddp_local_rank] if device.type == 'cuda' else None)
peak = find_peak_flops(device, dtype, peak_flops)


@torch.no_grad()
def estimate_loss():
    """Mean loss over eval_iters batches per split: the same batches at every eval."""
    out = {}
    model.eval()
    for split, data in (('train', train_data), ('val', val_data)):
        losses = torch.zeros(eval_iters, device=device)  # on device: one sync for both splits, not one per batch
        for k in range(eval_iters):
            X, Y = get_batch(data, batch_size, block_size, (seed, 1, k), device, vocab_size)
            with ctx:
                logits, loss = model(X, Y)
            losses[k] = loss.float()
        out[split] = losses.mean()
    model.train()
    means = torch.stack([out['train'], out['val']])
    if fsdp:  # every process saw the same batches; rank 0's figures decide for all (whether to save)
        dist.broadcast(means, 0)
    return dict(zip(('train', 'val'), means.tolist()))


def format_duration(seconds):
    """1h02m, 3m05s, 42s: a duration the way a progress line shows it."""
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def get_lr(it):
    """Linear warmup (non-zero at 0), cosine decay to min_lr at lr_decay_iters, then min_lr."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    assert 0 <= decay_ratio <= 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # coeff ranges 0..1
    return min_lr + coeff * (learning_rate - min_lr)


# logging: out_dir/metrics.jsonl always, wandb if asked
metrics = MetricsLog(os.path.join(out_dir, 'metrics.jsonl'), iter_num) if master_process else None
if wandb_log and master_process:
    import wandb
    # a resumed run continues the wandb run its checkpoint names
    wandb_run_id = wandb.init(project=wandb_project, name=wandb_run_name, config=config,
                              id=wandb_run_id, resume='allow' if wandb_run_id else None).id


def stop_if_not_finite():
    """A NaN/Inf training loss stops the run before it can reach a checkpoint (a sync: call rarely)."""
    bad = int(first_bad_iter)
    if bad >= 0:
        die(f"the training loss is not finite at iter {bad}; stopping (the last checkpoint in {out_dir} is untouched)")


# training loop
first_bad_iter = torch.tensor(-1, device=device)  # the first iteration whose loss was NaN/Inf, kept on device
X, Y = train_batch(iter_num, 0)  # fetch the very first batch
t0 = t_start = time.time()
local_iter_num = 0  # number of iterations in the lifetime of this process
best_iter = None  # the iteration of best_val_loss, when this process saw it
running_mfu = -1.0
tokens_seen = tokens_before(iter_num)  # the batch ramp and the schedule that follows it count tokens
clipped_steps = torch.zeros((), device=device)  # steps whose gradient norm was clipped, since the last log line
steps_since_log = 0
while True:

    # determine and set the learning rate for this iteration (in full batches of tokens, with a ramp)
    lr = get_lr(tokens_seen / tokens_per_iter if batch_ramp_tokens else iter_num) if decay_lr else learning_rate
    for param_group in optimizer.param_groups:
        param_group['lr'] = lr * param_group.get('lr_scale', 1.0)

    # evaluate the loss on train/val sets and write checkpoints (under FSDP every process takes part:
    # its forwards and the gathering of the weights are collectives; all see the same batches)
    if iter_num % eval_interval == 0 and (master_process or fsdp):
        stop_if_not_finite()
        losses = estimate_loss()
        if master_process:
            print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            metrics.log(iter=iter_num, train_loss=losses['train'], val_loss=losses['val'], lr=lr,
                        time_s=time.time() - t_start)
        if wandb_log and master_process:
            wandb.log({"iter": iter_num, "train/loss": losses['train'], "val/loss": losses['val'],
                       "lr": lr, "mfu": running_mfu * 100}, step=iter_num)
        if not math.isfinite(losses['val']):
            die(f"val loss is {losses['val']} at iter {iter_num}; stopping "
                f"(the last checkpoint in {out_dir} is untouched)")
        if losses['val'] < best_val_loss:
            best_iter = iter_num
        if losses['val'] < best_val_loss or always_save_checkpoint:
            best_val_loss = min(best_val_loss, losses['val'])
            if iter_num > 0:
                checkpoint = dict(model=None if fsdp or lora else raw_model.state_dict(),  # FSDP, LoRA: by the save
                                  model_args=raw_model.config.model_args(),
                                  model_options=raw_model.config.model_options(),
                                  iter_num=iter_num, best_val_loss=best_val_loss, config=config, tokenizer=meta,
                                  **({'speed_choices': route.as_dict()} if route else {}),
                                  **({'wandb_run_id': wandb_run_id} if wandb_run_id else {}),
                                  **({'lora': {**lora, 'adapters': adapter_weights(raw_model)}} if lora else {}))
                if master_process:
                    print(f"saving checkpoint to {out_dir}")
                saved_iter = iter_num  # already: a Ctrl-C during the save takes effect once it is complete
                with interrupts.deferred():
                    if fsdp:
                        save_sharded_checkpoint(out_dir, checkpoint if master_process else None, raw_model, optimizer)
                    else:  # LoRA: ckpt.pt holds the merged weights, the optimizer file the frozen ones besides
                        state = {'optimizer': optimizer.state_dict(),
                                 'scaler': scaler.state_dict() if scaler.is_enabled() else None,
                                 **({'lora_base': base_weights(raw_model)} if lora else {})}
                        merge = (lambda path: merged(raw_model, path)) if lora else None
                        save_checkpoint(out_dir, checkpoint, state, merge)
                checkpoint = None
    # zero-shot HellaSwag, shared across all processes
    if hellaswag_interval and iter_num % hellaswag_interval == 0:
        raw_model.eval()
        counts = tasks.evaluate_hellaswag(raw_model, hellaswag_examples, encode, block_size, device, ctx,
                                          ddp_rank, ddp_world_size, lockstep=fsdp)
        raw_model.train()
        result = tasks.hellaswag_results(tasks.all_reduce_counts(counts, device))
        if master_process:
            print(f"step {iter_num}: hellaswag acc_norm {result['acc_norm']:.4f}, acc {result['acc']:.4f} "
                  f"({result['examples']} examples)")
            metrics.log(iter=iter_num, hellaswag_acc_norm=result['acc_norm'], hellaswag_acc=result['acc'],
                        hellaswag_examples=result['examples'])
            if wandb_log:
                wandb.log({"iter": iter_num, "hellaswag/acc_norm": result['acc_norm'],
                           "hellaswag/acc": result['acc']}, step=iter_num)
    if iter_num == 0 and eval_only:
        break

    # dropout masks, like the batches, depend only on (seed, iteration, rank)
    torch.manual_seed(hash((seed, iter_num, ddp_rank)) % 2**63)
    # forward backward update, with optional gradient accumulation to simulate larger batch size
    loss_accum = torch.zeros((), device=device)
    n_micro = micro_steps(tokens_seen)  # gradient_accumulation_steps, or fewer during the batch ramp
    for micro_step in range(n_micro):
        # under DDP, sync gradients only at the last micro step (FSDP: reduce-scatter them only then)
        last = micro_step == n_micro - 1
        if fsdp:
            raw_model.set_requires_gradient_sync(last)
        with (model.no_sync() if ddp and not fsdp and not last else nullcontext()):
            with ctx:
                logits, loss = model(X, Y)
                loss = loss / n_micro  # scale the loss to account for gradient accumulation
            # immediately async prefetch next batch while model is doing the forward pass on the GPU
            X, Y = train_batch(iter_num + last, 0 if last else micro_step + 1)
            # backward pass, with gradient scaling if training in fp16
            scaler.scale(loss).backward()
        loss_accum += loss.detach()
    first_bad_iter = torch.where((first_bad_iter < 0) & ~loss_accum.isfinite(), iter_num, first_bad_iter)
    # clip the gradient, step the optimizer (and the fp16 scaler), flush the gradients; at a log
    # iteration the weights from before the step are kept, to measure the step's size
    log_now = iter_num % log_interval == 0
    before = weights_before_step(optimizer) if log_now and (master_process or fsdp) else None
    grad_norm = optimizer_step(model, optimizer, scaler, grad_clip, measure=before is not None)  # before clipping
    if grad_clip != 0.0 and master_process:
        clipped_steps += grad_norm > grad_clip
    steps_since_log += 1
    batch_tokens = n_micro * micro_tokens
    tokens_seen += batch_tokens

    # timing and logging
    t1 = time.time()
    dt = t1 - t0
    t0 = t1
    if log_now:
        if ddp:  # the loss of the whole batch: the mean over ranks
            dist.all_reduce(loss_accum)
            loss_accum /= ddp_world_size
        stop_if_not_finite()
        if fsdp:  # the weights are sharded: every process adds its part of the update's size
            update, group_updates = update_to_weight(optimizer, before, sharded=True)
        elif master_process:
            update, group_updates = update_to_weight(optimizer, before)
        if master_process:
            # the loss and the training's health, read from the device at once (one sync, only every log_interval)
            lossf, norm, clipped, update, *group_updates = torch.stack(
                [loss_accum, grad_norm, clipped_steps / steps_since_log, update, *group_updates]).float().tolist()
            before = None
            clipped_steps.zero_()
            if local_iter_num >= 5:  # let the training loop settle a bit
                mfu = raw_model.estimate_mfu(batch_size * n_micro, dt, peak)  # per device
                if mfu is not None:
                    running_mfu = mfu if running_mfu == -1.0 else 0.9 * running_mfu + 0.1 * mfu
            mfu_str = f"{running_mfu * 100:.2f}%" if peak else "n/a"  # unknown device: set peak_flops
            health = dict(grad_norm=norm, clipped=clipped if grad_clip != 0.0 else None, update_to_weight=update,
                          tokens_per_s=batch_tokens / dt, batch_tokens=batch_tokens,
                          peak_mem_mb=peak_memory(device) / 2**20)
            # progress, and the time left at this process's pace so far (evaluations included)
            left = (t1 - t_start) / (local_iter_num + 1) * (max_iters - iter_num)
            done = int(1000 * iter_num / max(max_iters, 1)) / 10  # rounded down: 100% only at the end
            clip_str = f" (clipped {clipped:.0%})" if grad_clip != 0.0 else ""
            ramp_str = f", batch {batch_tokens:,} tokens" if batch_ramp_tokens else ""
            print(f"iter {iter_num}: loss {lossf:.4f}, time {dt * 1000:.2f}ms, mfu {mfu_str}, grad norm {norm:.3f}"
                  f"{clip_str}, update/weight {update:.2e}, {health['tokens_per_s']:,.0f} tok/s{ramp_str}, "
                  f"peak mem {health['peak_mem_mb']:,.0f}MB, {done:.1f}%, {format_duration(left)} left")
            metrics.log(iter=iter_num, loss=lossf, time_ms=dt * 1000, mfu=running_mfu * 100 if peak else None, lr=lr,
                        time_s=t1 - t_start, **health)
            if wandb_log:
                wandb.log({"iter": iter_num, "train/loss_step": lossf, **{f"health/{k}": v for k, v in health.items()},
                           **{f"health/update_to_weight/group{i}": u for i, u in enumerate(group_updates)}},
                          step=iter_num)
        steps_since_log = 0
    iter_num += 1
    local_iter_num += 1

    # termination conditions
    if iter_num > max_iters:
        break

# the summary: what was done, the best val loss, and where the model is
if master_process and not eval_only:
    best = "no evaluation" if best_val_loss == 1e9 else f"best val loss {best_val_loss:.4f}" + \
        (f" at iter {best_iter}" if best_iter is not None else "")
    print(f"training done: {local_iter_num} iterations (iter {iter_num - local_iter_num} to {iter_num - 1}) in "
          f"{format_duration(time.time() - t_start)}, {best}")
    if saved_iter is not None:
        print(f"checkpoint: {ckpt_path} (iter {saved_iter}); sample from it with: python sample.py --out_dir={out_dir}")
    else:
        print(f"no checkpoint written: one is saved at each evaluation after iter 0 (eval_interval={eval_interval})")
if wandb_log and master_process:
    wandb.finish()
if ddp:
    end_ddp(before_exit=unlock_out_dir)
