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
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from model import MODEL_OPTIONS
from nanogpt import tasks
from nanogpt.autotune import cpu_route, measured_run
from nanogpt.checkpoints import load_checkpoint, load_optimizer_state, restore_optimizer, resume_settings, save_training
from nanogpt.checkpoints import starting_point
from nanogpt.dataloader import BatchRamp, get_batch, open_split, run_vocab_size, warn_if_data_is_small
from nanogpt.dataloader import warn_if_passes_are_many
from nanogpt.device import autocast, exit_on_out_of_memory, maybe_compile, peak_flops as find_peak_flops, peak_memory
from nanogpt.device import return_freed_memory_at_once, setup_device
from nanogpt.distributed import ddp_ranks, end_ddp, shard_model, start_ddp
from nanogpt.loading import model_from_checkpoint, starting_model
from nanogpt.optim import FiniteLosses, StepHealth, optimizer_step
from nanogpt.out_dir import ExitOnInterrupt, lock_out_dir
from nanogpt.report import Report
from nanogpt.tokenizer import read_meta
from nanogpt.util import check_settings, die, report_usage_errors

report_usage_errors()  # library code's bad-input errors: one line, as die says them

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
lora_targets = 'c_attn,c_proj,c_fc'  # the Linears that get adapters, by name
activation_checkpointing = False  # recompute each block's activations in the backward: less memory, more compute
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
autotune = True  # on CPUs, time the exact speed choices at this run's shapes (cached); False: defaults
autotune_share = 0.02  # ... within this share of the run's measured time
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
check_settings(config, positive=('batch_size', 'block_size', 'gradient_accumulation_steps', 'eval_iters',
                                'eval_interval', 'log_interval', 'n_layer', 'n_head', 'n_embd', 'learning_rate',
                                'lora_alpha', 'autotune_share'),
               non_negative=('max_iters', 'warmup_iters', 'lr_decay_iters', 'hellaswag_interval', 'hellaswag_limit',
                             'batch_ramp_tokens', 'min_lr', 'weight_decay', 'grad_clip'),
               below_one=('beta1', 'beta2', 'dropout', 'lora_dropout'),
               choices=dict(optimizer=('adamw', 'muon'), parallelism=('ddp', 'fsdp')))
if init_from == 'scratch' and n_embd % n_head:
    die(f"n_embd ({n_embd}) must be divisible by n_head ({n_head}): each head gets n_embd // n_head dimensions")
if lora_rank < 0 or (lora_rank and not lora_targets.replace(',', '').strip()):
    die(f"lora_rank must be >= 0 (0 = off) and lora_targets name a Linear, got {lora_rank} and '{lora_targets}'")
if decay_lr and lr_decay_iters <= warmup_iters:
    die(f"lr_decay_iters ({lr_decay_iters}) must be larger than warmup_iters ({warmup_iters}), or set decay_lr=False")

# various inits, derived attributes, I/O setup
ddp, ddp_rank, ddp_local_rank, ddp_world_size = ddp_ranks()  # is this a ddp run, and which process is this?
fsdp = ddp and parallelism == 'fsdp'  # one process alone holds the whole model whatever the setting
# each process does its share of the micro-steps, so the global batch is unchanged (with a ramp, it grows)
ramp = BatchRamp(batch_ramp_tokens, batch_ramp_start, gradient_accumulation_steps, ddp_world_size,
                 batch_size * block_size)
tokens_per_iter = ramp.tokens_per_iter
master_process = ddp_rank == 0  # this process will do logging, checkpointing etc.
device, dtype, ctx = setup_device(device, dtype, ddp_local_rank)  # on a CPU, 'auto' is measured below
if device.type == 'cpu':  # freed activations go back to the OS, not to a heap that keeps them
    return_freed_memory_at_once()
exit_on_out_of_memory(f"lower batch_size (more gradient_accumulation_steps keep the batch) or block_size, or set "
                      f"activation_checkpointing=True, lora_rank=8 or dtype=bfloat16 (the last checkpoint in {out_dir} "
                      f"is untouched)")
if fsdp and dtype == 'float16':
    die("parallelism='fsdp' does not run float16 (its gradient scaler is DDP's): use --dtype=bfloat16 or float32")
if ddp:
    start_ddp(device, backend)
if master_process:
    print(f"tokens per iteration will be: {tokens_per_iter:,}" + (f"\n{ramp}" if batch_ramp_tokens else ""))
# one run per out_dir (made if need be): a second would overwrite this one's checkpoints
unlock_out_dir = lock_out_dir(out_dir) if master_process else None

# data: memory-mapped once, batches drawn from (seed, iteration, micro-step) alone
data_dir = os.path.join('data', dataset)
meta = read_meta(data_dir)  # its tokenizer (characters, GPT-2's BPE or its own) and token dtype
train_data = open_split(data_dir, 'train', block_size, meta['dtype'])
val_data = open_split(data_dir, 'val', block_size, meta['dtype'])
# the vocab size comes from the dataset's metadata unless it is GPT-2's (padded below)
meta_vocab_size = meta['vocab_size'] if meta['tokenizer'] != 'gpt2' else None
hellaswag = tasks.hellaswag_for_training(meta, dataset, hellaswag_limit) if hellaswag_interval else None


def train_batch(it, micro_step):
    # micro-steps numbered across ranks: N processes see the batches of one with N times the accumulation
    return get_batch(train_data, batch_size, block_size,
                     (seed, 0, it, micro_step * ddp_world_size + ddp_rank), device, vocab_size)


# model init
torch.manual_seed(seed)
iter_num = 0
best_val_loss = 1e9
checkpoint = None  # the one resumed, if any
ckpt_path = os.path.join(out_dir, 'ckpt.pt')
saved_iter = None  # the iteration of out_dir's newest checkpoint
init_from = starting_point(init_from, auto_resume, out_dir, master_process)


def where_interrupted():
    return f"at iter {iter_num}: " + (f"the last checkpoint is {ckpt_path} (iter {saved_iter}; continue with "
                                      f"--init_from=resume)" if saved_iter is not None else "no checkpoint was written")


interrupts = ExitOnInterrupt(where_interrupted if master_process else None)
if init_from == 'resume':
    print(f"Resuming training from {out_dir}")
    checkpoint = load_checkpoint(ckpt_path, trust_checkpoint)
    model = model_from_checkpoint(checkpoint, dropout=dropout)
    iter_num = saved_iter = checkpoint['iter_num']
    best_val_loss = float(checkpoint['best_val_loss'])
    # the checkpoint decides the model's shape and the LoRA settings; those asked for must agree with it
    lora_rank, lora_alpha, lora_dropout, lora_targets = resume_settings(checkpoint, model.config, config, set_keys,
                                                                        out_dir)
else:
    if init_from == 'scratch' and meta_vocab_size is None:
        print("defaulting to vocab_size of GPT-2 to 50304 (50257 rounded up for efficiency)")
    model = starting_model(init_from, dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                                           bias=bias, vocab_size=meta_vocab_size or 50304,
                                           **{k: config[k] for k in MODEL_OPTIONS}), dropout, trust_checkpoint)
if fsdp and lora_rank:
    die("LoRA runs under DDP, not FSDP (peft's adapters are not sharded): use --parallelism=ddp")
# crop down the model block size if desired (model surgery)
if block_size < model.config.block_size:
    model.crop_block_size(block_size)
elif block_size > model.config.block_size:
    die(f"block_size {block_size} is larger than the model's {model.config.block_size}")
model.config.activation_checkpointing = activation_checkpointing
# on a CPU: the fastest exact route at this run's shapes (a resume keeps its run's, for a bit-exact continuation)
route = None
if device.type == 'cpu':
    passes = gradient_accumulation_steps // ddp_world_size * max(max_iters - iter_num, 1)
    route = cpu_route(model.config, batch_size, block_size, config['dtype'],
                      measured_run(model, batch_size, block_size, passes),
                      autotune and master_process, checkpoint and checkpoint.get('speed_choices'), ddp, autotune_share)
    route.apply(model)
    dtype, ctx = route.dtype, autocast(device, route.dtype)
if master_process:
    sharding = f", FSDP over {ddp_world_size} process{'es' if ddp_world_size > 1 else ''}" if fsdp else ""
    print(f"device: {device}, dtype: {dtype}{sharding}" + (f" ({route.name})" if route else ""))
vocab_size = run_vocab_size(meta, model.config.vocab_size, data_dir, dict(train=train_data, val=val_data))
if init_from == 'scratch' and master_process:
    warn_if_data_is_small(model.get_num_params(), len(train_data), dataset)
if master_process and not eval_only:
    warn_if_passes_are_many(max_iters, tokens_per_iter, len(train_data), dataset)
adapters = optimizer_state = None
if lora_rank:  # LoRA: adapters train beside frozen weights
    from nanogpt.lora import Adapters
    if checkpoint:  # the frozen weights as they were (ckpt.pt holds them merged), the adapters' optimizer
        optimizer_state = load_optimizer_state(out_dir, checkpoint, trust_checkpoint, mmap=True)
    adapters = Adapters(model, lora_rank, lora_alpha, lora_dropout, lora_targets, init_from, dtype,
                        out_dir if master_process else None, checkpoint, optimizer_state)
model.to(device)
print(f"number of parameters: {model.get_num_params() / 1e6:.2f}M" + (f", of which {adapters}" if adapters else ""))
if fsdp:
    shard_model(model, device, dtype)  # in place, before the optimizer: it must hold the shards

# initialize a GradScaler. If enabled=False scaler is a no-op
scaler = torch.amp.GradScaler(device.type, enabled=(dtype == 'float16'))

# optimizer (the setting 'optimizer' names its kind)
opt = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), optimizer=optimizer, muon_lr=muon_lr)
if checkpoint is not None:
    restore_optimizer(out_dir, checkpoint, model, opt, scaler, trust_checkpoint, optimizer_state)
wandb_run_id = checkpoint.get('wandb_run_id') if checkpoint else None
checkpoint = optimizer_state = None  # free up memory

# raw_model is the plain (or FSDP) module: it is what gets saved, so checkpoints carry no prefixes
raw_model = model
model = maybe_compile(model, compile, device)
if ddp and not fsdp:
    model = DDP(model, device_ids=[device.index] if device.type == 'cuda' else None)
peak = find_peak_flops(device, dtype, peak_flops) if master_process else None  # MFU is the master's to report


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


# training loop
report = Report(config, iter_num, wandb_run_id, peak) if master_process else None  # log lines, metrics.jsonl, wandb
losses_seen = FiniteLosses(device, out_dir)  # NaN/Inf training losses stop the run
X, Y = train_batch(iter_num, 0)  # fetch the very first batch
t0 = time.time()
local_iter_num = 0  # number of iterations in the lifetime of this process
best_iter = None  # the iteration of best_val_loss, when this process saw it
tokens_seen = ramp.tokens_before(iter_num)  # the batch ramp and the schedule that follows it count tokens
health = StepHealth(device, grad_clip, scaler)  # the gradient norms since the last log line
while True:

    # determine and set the learning rate for this iteration (in full batches of tokens, with a ramp)
    lr = get_lr(tokens_seen / tokens_per_iter if batch_ramp_tokens else iter_num) if decay_lr else learning_rate
    for param_group in opt.param_groups:
        param_group['lr'] = lr * param_group.get('lr_scale', 1.0)

    # evaluate the loss on train/val sets and write checkpoints (under FSDP every process takes part:
    # its forwards and the gathering of the weights are collectives; all see the same batches)
    if iter_num % eval_interval == 0 and (master_process or fsdp):
        losses_seen.check()
        losses = estimate_loss()
        if master_process:
            report.evaluation(iter_num, losses, lr)
        losses_seen.check_val(losses['val'], iter_num)
        if losses['val'] < best_val_loss:
            best_iter = iter_num
        if losses['val'] < best_val_loss or always_save_checkpoint:
            best_val_loss = min(best_val_loss, losses['val'])
            if iter_num > 0:
                saved_iter = iter_num  # already: a Ctrl-C during the save takes effect once it is complete
                with interrupts.deferred():
                    save_training(out_dir, raw_model, opt, scaler, fsdp, master_process, adapters, iter_num=iter_num,
                                  best_val_loss=best_val_loss, config=config, tokenizer=meta,
                                  speed_choices=route and route.as_dict(), wandb_run_id=report and report.wandb_run_id)
    # zero-shot HellaSwag, shared across all processes
    if hellaswag and iter_num % hellaswag_interval == 0:
        result = tasks.hellaswag_during_training(raw_model, hellaswag, block_size, device, ctx, ddp_rank,
                                                 ddp_world_size, fsdp)
        if master_process:
            report.hellaswag(iter_num, result)
    if iter_num == 0 and eval_only:
        break

    # dropout masks, like the batches, depend only on (seed, iteration, rank)
    torch.manual_seed(hash((seed, iter_num, ddp_rank)) % 2**63)
    # forward backward update, with optional gradient accumulation to simulate larger batch size
    loss_accum = torch.zeros((), device=device)
    n_micro = ramp.micro_steps(tokens_seen)  # this process's share of gradient_accumulation_steps (fewer in a ramp)
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
    losses_seen.add(iter_num, loss_accum)
    # clip the gradient, step the optimizer (and the fp16 scaler), flush the gradients
    log_now = iter_num % log_interval == 0
    grad_norm = optimizer_step(model, opt, scaler, grad_clip, measure=log_now)  # before clipping
    health.count(grad_norm)
    batch_tokens = n_micro * ramp.micro_tokens
    tokens_seen += batch_tokens

    # timing and logging
    t1 = time.time()
    dt = t1 - t0
    t0 = t1
    if log_now:
        losses_seen.check()
        # the loss and the training's health, read from the device at once (one sync, only every log_interval)
        figures = health.read(opt, loss_accum, grad_norm, ddp, fsdp, master_process)
        if master_process:
            report.step(iter_num, local_iter_num, dt, lr, figures, batch_tokens,
                        raw_model.estimate_mfu(batch_size * n_micro, dt, peak), peak_memory(device))
    iter_num += 1
    local_iter_num += 1

    # termination conditions
    if iter_num > max_iters:
        break

if master_process:
    if not eval_only:
        report.summary(iter_num - local_iter_num, iter_num, best_val_loss, best_iter, saved_iter)
    report.finish()
if ddp:
    end_ddp(before_exit=unlock_out_dir)
