"""
The GPU check: one command that runs the GPU measurements this repository reports, the most valuable first,
within one deadline for the whole check, each row in a process of its own limited to the time left (a row that
cannot fit is skipped, and the table says so). Every finished row is printed and appended to a file at once, so
a check that is killed keeps what it measured. It needs no network.
$ python tools/gpu_check.py                           # on one CUDA GPU, from the repository root: 7 minutes at most
$ python tools/gpu_check.py --deadline=1200           # a longer window: more of the sweep
$ python tools/gpu_check.py --out=/tmp/gpu_check.md   # where the rows go as they finish (default: gpu_check.md)
$ python tools/gpu_check.py --float8=True             # ... with torchao's float8 training row too
$ python tools/gpu_check.py --dry_run=True            # every row at a tiny size on the CPU (the test suite runs this)
Options that win here become defaults only once measured here.
"""
import hashlib
import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# -----------------------------------------------------------------------------
dry_run = False  # every row at a tiny size on the CPU, to show that the check itself works
float8 = False  # add torchao's float8 training row (torchao must be installed)
batch_sizes = '12,8,16'  # micro-batches of the 124M training sweep (x 1024 tokens); the first is nanoGPT's bench.py's
deadline = 420  # seconds for the whole check: each row gets what is left, and one that cannot fit is skipped
out = 'gpu_check.md'  # each finished row is appended here at once
# -----------------------------------------------------------------------------
os.chdir(ROOT)
exec(open('configurator.py').read())  # overrides from command line or config file
# -----------------------------------------------------------------------------

if dry_run:  # tiny shapes, CPU, float32 (the CPU's bfloat16 may be emulated)
    SHAPE = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=64', '--batch_size=2']
    XL = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=64', '--batch_size=1']
    DEVICE = ['--device=cpu', '--dtype=float32']
    STEPS = ['--num_steps=2']
else:
    SHAPE = ['--n_layer=12', '--n_head=12', '--n_embd=768', '--block_size=1024']
    XL = ['--n_layer=48', '--n_head=25', '--n_embd=1600', '--block_size=1024', '--batch_size=1']
    DEVICE = ['--device=cuda', '--dtype=bfloat16']
    STEPS = ['--num_steps=20']
sizes = [int(b) for b in batch_sizes.split(',')]
B = sizes[0]
PY = sys.executable
ENV = {**os.environ, 'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1'}  # nothing here needs the network


def tiktoken_cache():
    """A directory holding GPT-2's BPE as tiktoken caches it (the file named by the SHA-1 of its address), where
    tiktoken looks or beside the repository (../shared/tiktoken_cache); None if there is none."""
    name = hashlib.sha1(b'https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken').hexdigest()
    places = [os.environ.get('TIKTOKEN_CACHE_DIR'), os.environ.get('DATA_GYM_CACHE_DIR'),
              os.path.join(tempfile.gettempdir(), 'data-gym-cache'), os.path.join(os.path.dirname(ROOT), 'shared',
                                                                                   'tiktoken_cache')]
    return next((p for p in places if p and os.path.isfile(os.path.join(p, name))), None)


rows = []  # (what, seconds it needs here, steps: [(command, parser, directory)], combine(results) -> result, why not)


def row(what, needs, *steps, combine=None, missing=None):
    """A row to measure: each step's command is run in turn and parse(stdout) gives its result (None: failed);
    combine makes the row's one result of them (by default, the first). needs: about the seconds the row takes
    on a GPU (a dry run's rows need a tenth); missing: why it cannot run at all, or None."""
    rows.append((what, needs / 10 if dry_run else needs, steps, combine or (lambda results: results[0]), missing))


def measure(what, needs, steps, combine, missing, left):
    """The row's result, each of its processes limited to the time left."""
    if missing:
        return f"skipped: {missing}"
    if left < needs:
        return f"skipped: needs about {needs:.0f} s, {max(left, 0):.0f} s left"
    t0, results = time.time(), []
    for cmd, parse, cwd in steps:
        limit = left - (time.time() - t0)
        try:
            p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=max(limit, 1), env=ENV)
        except subprocess.TimeoutExpired:
            return f"FAILED: stopped at the deadline, after {time.time() - t0:.0f} s"
        result = parse(p.stdout) if p.returncode == 0 else None
        if result is None:
            last = [l for l in (p.stdout + p.stderr).strip().splitlines() if l.strip()][-1:] or ['no output']
            return f"FAILED (exit {p.returncode}): {last[0][:100]}"
        results.append(result)
    return combine(results)


def grab(pattern, fmt):
    """A parser: the first match of pattern in the output, formatted by fmt(match), else None."""
    def parse(out):
        m = re.search(pattern, out)
        return fmt(m) if m else None
    return parse


train_result = grab(r'time per iteration: ([\d.]+)ms, tokens/s: ([\d,]+), MFU: (\S+)',
                    lambda m: f"{m.group(2)} tokens/s, {m.group(1)} ms/iter, MFU {m.group(3)}")
base = [PY, 'bench.py', '--dataset=none', *SHAPE, *DEVICE, *STEPS]
compiled = [] if dry_run else ['--compile=True']
batch = [] if dry_run else [f'--batch_size={B}']

# 1. GPT-2 124M training in bfloat16 beside nanoGPT's own bench.py (tools/nanoGPT, its code unchanged) at the
# same shape and batch; its bench.py needs CUDA (it calls torch.cuda.synchronize), so a dry run only builds its
# model and trains a step there
nano_dir = os.path.join(ROOT, 'tools', 'nanoGPT')
ours = ([*base, *compiled, *batch], train_result, ROOT)
if dry_run:
    nano = ([PY, '-c', (
        "import torch; from model import GPT, GPTConfig; m = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, "
        "block_size=64, vocab_size=50304)); x = torch.randint(50304, (2, 64)); m(x, x)[1].backward(); print('ran')")],
        grab(r'\bran\b', lambda m: "nanoGPT's model builds and trains a step"), nano_dir)
    row(f"124M train, batch {B}, compiled: ours beside nanoGPT's", 200, ours, nano,
        combine=lambda r: f"ours {r[0]}; {r[1]}")
else:
    nano = ([PY, 'bench.py', '--real_data=False', f'--batch_size={B}'],
            grab(r'time per iteration: ([\d.]+)ms', lambda m: B * 1024 / float(m.group(1)) * 1000), nano_dir)
    row(f"124M train, batch {B}, compiled: ours beside nanoGPT's", 200, ours, nano,
        combine=lambda r: f"ours {r[0]}; nanoGPT's bench.py {r[1]:,.0f} tokens/s: ours "
                          f"{int(r[0].split(' ')[0].replace(',', '')) / r[1]:.2f}x")

# 2. the sweep: micro-batch, attention backends, compile modes, float8
for size in sizes[1:2] if dry_run else sizes[1:]:  # (a dry run shows one: the rest are the same command)
    row(f"124M train, batch {size}, compiled, SDPA auto", 100,
        ([*base, *compiled, *([] if dry_run else [f'--batch_size={size}'])], train_result, ROOT))
for backend in ('flash', 'math') if dry_run else ('flash', 'efficient', 'cudnn'):  # (a CPU has two)
    row(f"124M train, batch {B}, compiled, SDPA {backend}", 100,
        ([*base, *compiled, *batch, f'--sdpa_backend={backend}'], train_result, ROOT))
row(f"124M train, batch {B}, uncompiled", 50, ([*base, '--compile=False', *batch], train_result, ROOT))
if not dry_run:
    row(f"124M train, batch {B}, compile max-autotune", 300,
        ([*base, *batch, '--compile=True', '--compile_mode=max-autotune-no-cudagraphs'], train_result, ROOT))
if float8:
    row(f"124M train, batch {B}, torchao float8", 100, ([*base, *compiled, *batch, '--float8=True'], train_result,
                                                         ROOT))

# 3. two processes on the one GPU: DDP and FSDP (gloo: NCCL wants a GPU per process)
for parallelism in ('ddp', 'fsdp'):
    one_gpu = ['--device=cpu'] if dry_run else ['--device=cuda:0']
    row(f"2-process {parallelism.upper()} on one device, memory per process", 90,
        ([PY, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'bench.py', '--mode=memory',
          f'--parallelism={parallelism}', '--backend=gloo', *SHAPE, '--batch_size=1', *one_gpu,
          f"--dtype={'float32' if dry_run else 'bfloat16'}"],
         grab(r'measured on rank 0 of 2 \(\w+\): (.*)', lambda m: m.group(1)), ROOT))

# 4. decoding at batch 1, in each weight dtype, in one process
gen = [PY, 'bench.py', '--mode=generate', '--num_samples=1', '--no_cache=False', '--quality_positions=0',
       '--weight_dtype=all', '--repeats=1' if dry_run else '--repeats=3', *DEVICE[:1]]
gen += ['--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=64', '--max_new_tokens=8'] if dry_run else []
row("124M decoding, batch 1, float32, bfloat16 and int8 weights", 90, (gen, lambda out: ', '.join(
    f"{w} {t} tokens/s (limit {limit}, first token {first})" for w, t, first, limit in
    re.findall(r'1 ours, (\w+), KV cache\s+([\d.]+)\s+([\d.]+ms)\s+\S+\s+([\d.]+)', out)) or None, ROOT))

# 5. GPT-2 XL LoRA with activation checkpointing: peak memory
row("GPT-2 XL shape, LoRA r=8 + AC, peak memory", 120,
    ([PY, 'bench.py', '--mode=memory', '--memory_rows=lora+ac', *XL, *DEVICE],
     grab(r'LoRA r=8 \+ AC\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)',
          lambda m: f"peak {m.group(1)} GiB: weights {m.group(2)} + {m.group(3)}, {m.group(4)} s/step"), ROOT))

# 6. the GPU tests (a dry run only collects them: there is no GPU); some use GPT-2's BPE
bpe = tiktoken_cache()
if bpe:
    ENV['TIKTOKEN_CACHE_DIR'] = bpe
tests = [PY, '-m', 'pytest', '-m', 'cuda', 'tests/test_cuda.py', '-q', '-p', 'no:cacheprovider']
tests += ['--collect-only'] if dry_run else []
row('python -m pytest -m cuda', 300,
    (tests, grab(r'(\d+ passed.*|\d+(/\d+)? tests? collected.*|\d+ failed.*)', lambda m: m.group(1).strip('= ')),
     ROOT), missing=None if bpe else "needs GPT-2's BPE in a tiktoken cache (TIKTOKEN_CACHE_DIR), and there is no "
                                     "network")

name = subprocess.run([PY, '-c', 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() '
                       'else "")'], capture_output=True, text=True, env=ENV).stdout.strip()  # (CUDA in a child only)
name = name or ('no GPU (dry run on the CPU)' if dry_run else 'no GPU')
heading = (f"| {name}, torch {importlib.metadata.version('torch')}, {time.strftime('%Y-%m-%d')}, deadline {deadline} s "
           f"| result | s |\n| --- | --- | --- |")
print(heading, flush=True)
with open(out, 'a') as f:
    f.write(heading + '\n')
start, appending = time.time(), threading.Lock()


def run_row(i):
    """Row i's result, printed and appended to out at once: a check killed later keeps it."""
    t0 = time.time()
    result = measure(*rows[i], deadline - (t0 - start))
    line = f"| {rows[i][0]} | {result} | {time.time() - t0:.0f} |"
    with appending:
        print(line, flush=True)
        with open(out, 'a') as f:
            f.write(line + '\n')
    return result


# one row at a time on the GPU, so that none slows another; two at a time on a dry run's CPU cores
with ThreadPoolExecutor(2 if dry_run else 1) as pool:
    table = list(pool.map(run_row, range(len(rows))))
failed, skipped = sum(r.startswith('FAILED') for r in table), sum(r.startswith('skipped') for r in table)
print(f"{len(table) - failed - skipped} rows measured, {skipped} skipped, {failed} failed in "
      f"{time.time() - start:.0f} s (the table is in {out})")
sys.exit(1 if failed else 0)
