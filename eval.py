"""
Zero-shot evaluation of any checkpoint on HellaSwag or LAMBADA.
$ python data/hellaswag/prepare.py && python eval.py --init_from=gpt2 --task=hellaswag
$ python data/lambada/prepare.py && python eval.py --init_from=gpt2 --task=lambada
$ python eval.py --init_from=resume --out_dir=out --task=hellaswag --limit=1000
$ python eval.py --init_from=gpt2 --task=lambada --weight_dtype=int8   # what int8 weights cost
$ torchrun --standalone --nproc_per_node=8 eval.py --init_from=gpt2-xl   # examples shared across processes
Prints a small table and writes it to out_dir/eval_<task>.json. See nanogpt/tasks.py for the method.
"""
import json
import os
import time

from nanogpt import tasks
from nanogpt.autotune import cpu_route, measured_run
from nanogpt.device import autocast, exit_on_out_of_memory, setup_device
from nanogpt.distributed import ddp_ranks, end_ddp, start_ddp
from nanogpt.loading import load_model
from nanogpt.quantize import weight_dtype_error
from nanogpt.tokenizer import from_meta
from nanogpt.util import die, report_usage_errors, written

report_usage_errors()  # library code's bad-input errors: one line, as die says them

# -----------------------------------------------------------------------------
init_from = 'resume'  # 'resume' (from out_dir) or a gpt2 variant (e.g. 'gpt2-xl') or a local GPT-2 directory
out_dir = 'out'  # the checkpoint for 'resume', and where eval_<task>.json goes
task = 'hellaswag'  # 'hellaswag' or 'lambada'
data_file = ''  # a local file in the task's format; '' means data/<task>/ as prepare.py writes it
limit = 0  # evaluate only the first limit examples (0 = all)
batch_size = 8  # lambada: passages per forward pass (hellaswag batches the 4 endings of one example)
trust_checkpoint = False  # allow checkpoints holding arbitrary pickled objects (only for files you trust)
device = 'auto'  # 'auto' (cuda, else mps, else cpu), or 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'auto'  # 'auto' (GPUs: bfloat16, float16 on older ones; CPUs: the faster at this model's shapes), or one
autotune = True  # on CPUs, time the exact speed choices at this model's shapes (cached on disk); False: defaults
weight_dtype = 'float32'  # 'bfloat16' or 'int8': what those weights (sample.py's setting) cost on the task
# -----------------------------------------------------------------------------
exec(open('configurator.py').read())  # overrides from command line or config file
# -----------------------------------------------------------------------------

# reference points, printed beside the results
REFERENCE = {
    'hellaswag': "GPT-2 124M: acc_norm 0.2955 (acc 0.2859) by this method; llm.c's 124M reproduction 29.9%; "
                 "GPT-3 124M 33.7%",
    'lambada': "GPT-2 paper (table 3): 124M acc 45.99%, ppl 35.13; 355M 55.48%, 15.60; 774M 60.12%, 10.87; "
               "1.5B 63.24%, 8.63",
}
if task not in tasks.DEFAULT_FILES:
    die(f"unknown task '{task}' (use hellaswag or lambada)")
if limit < 0 or batch_size <= 0:
    die("limit must be >= 0 and batch_size positive")
path = data_file or tasks.default_file(task)
if not os.path.isfile(path):
    die(f"no {path}: download it with python data/{task}/prepare.py, or point --data_file at a local copy")

ddp, rank, local_rank, world_size = ddp_ranks()
config_dtype = dtype
device, dtype, ctx = setup_device(device, dtype, local_rank)
exit_on_out_of_memory("lower batch_size (lambada), or use weight_dtype=bfloat16 or int8 (fewer bytes a weight)")
if weight_dtype_error(weight_dtype, device):
    die(weight_dtype_error(weight_dtype, device))
if ddp:
    start_ddp(device)

model, meta = load_model(init_from, out_dir, trust_checkpoint, weight_dtype)
if meta['tokenizer'] == 'char':
    die(f"the model was trained on characters ({meta['dataset']}); the zero-shot tasks need a BPE model")
model.to(device)
if device.type == 'cpu':  # the fastest exact route for a forward at this model's shapes
    route = cpu_route(model.config, batch_size, model.config.block_size, config_dtype,
                      measured_run(model, batch_size, model.config.block_size, 4 * (limit or 10_000) // batch_size + 1,
                                   backward=False), autotune and rank == 0, ddp=ddp)
    route.apply(model)
    dtype, ctx = route.dtype, autocast(device, route.dtype)
encode = from_meta(meta).encode  # GPT-2's BPE, or the one the model was trained with

try:
    examples = tasks.read_jsonl(path, limit)
except (ValueError, UnicodeDecodeError) as e:
    die(f"{path} is not a JSON-lines file: {e}")
t0 = time.time()
try:
    if task == 'hellaswag':
        counts = tasks.evaluate_hellaswag(model, examples, encode, model.config.block_size, device, ctx, rank,
                                          world_size)
    else:
        counts = tasks.evaluate_lambada(model, examples, encode, model.config.block_size, device, ctx, batch_size,
                                        rank, world_size)
except (KeyError, TypeError, ValueError) as e:
    die(f"{path} does not look like {task} data ({type(e).__name__}: {e})")
counts = tasks.all_reduce_counts(counts, device)  # add up every process's share
dt = time.time() - t0
results = tasks.hellaswag_results(counts) if task == 'hellaswag' else tasks.lambada_results(counts)
results.update(tokens_per_s=counts['tokens'] / dt, model=init_from if init_from != 'resume' else out_dir,
               data_file=path, weight_dtype=weight_dtype)

if rank == 0:
    metric = 'acc_norm' if task == 'hellaswag' else 'perplexity'
    print(f"{'task':<10} {'examples':>8} {'acc':>7} {metric:>10} {'tokens/s':>9}")
    print(f"{task:<10} {results['examples']:>8} {results['acc']:>7.4f} {results[metric]:>10.4f} "
          f"{results['tokens_per_s']:>9.0f}")
    print(f"reference: {REFERENCE[task]}")
    os.makedirs(out_dir, exist_ok=True)
    with written(os.path.join(out_dir, f'eval_{task}.json')) as f:
        f.write(json.dumps(results, indent=2).encode())
    print(f"wrote {os.path.join(out_dir, f'eval_{task}.json')}")
if ddp:
    end_ddp()
