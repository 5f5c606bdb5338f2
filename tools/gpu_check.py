"""
The GPU check: one command that runs every GPU measurement this repository reports and prints one
table, each row in a process of its own with its own time limit, so a failing row costs only itself.
$ python tools/gpu_check.py                  # on one CUDA GPU, from the repository root (about 8 minutes)
$ python tools/gpu_check.py --float8=True    # ... with torchao's float8 training row too
$ python tools/gpu_check.py --dry_run=True   # every row at a tiny size on the CPU (the test suite runs this)
"""
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# -----------------------------------------------------------------------------
dry_run = False  # every row at a tiny size on the CPU, to show that the check itself works
float8 = False  # add torchao's float8 training row (torchao must be installed)
batch_sizes = '8,12,16'  # micro-batches of the 124M training sweep (x 1024 tokens)
row_timeout = 240  # seconds a row may take before it counts as failed
# -----------------------------------------------------------------------------
os.chdir(ROOT)
exec(open('configurator.py').read())  # overrides from command line or config file
# -----------------------------------------------------------------------------

if dry_run:  # tiny shapes, CPU, float32 (the CPU's bfloat16 may be emulated)
    SHAPE = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=64', '--batch_size=2']
    XL = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=64', '--batch_size=1']
    DEVICE = ['--device=cpu', '--dtype=float32']
    STEPS = ['--num_steps=2']
    sizes = [int(batch_sizes.split(',')[0])]
else:
    SHAPE = ['--n_layer=12', '--n_head=12', '--n_embd=768', '--block_size=1024']
    XL = ['--n_layer=48', '--n_head=25', '--n_embd=1600', '--block_size=1024', '--batch_size=1']
    DEVICE = ['--device=cuda', '--dtype=bfloat16']
    STEPS = ['--num_steps=20']
    sizes = [int(b) for b in batch_sizes.split(',')]
PY = sys.executable
rows = []  # (what, command, parser, directory), measured at the end


def run_row(what, cmd, parse, cwd=ROOT):
    """A row to measure: cmd's output, parse(stdout) its result (None: failed)."""
    rows.append((what, cmd, parse, cwd))


def measure(row):
    """(what, result, seconds) of a row; a failure or a time-out is a result too, with the row's last line."""
    what, cmd, parse, cwd = row
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=row_timeout)
        result = parse(p.stdout) if p.returncode == 0 else None
        if result is None:
            last = [l for l in (p.stdout + p.stderr).strip().splitlines() if l.strip()][-1:] or ['no output']
            result = f"FAILED (exit {p.returncode}): {last[0][:100]}"
    except subprocess.TimeoutExpired:
        result = f"FAILED: over {row_timeout} s"
    print(f"{what:<52} {result}  [{time.time() - t0:.0f} s]", flush=True)
    return what, result, time.time() - t0


def grab(pattern, fmt):
    """A parser: the first match of pattern in the output, formatted by fmt(match), else None."""
    def parse(out):
        m = re.search(pattern, out)
        return fmt(m) if m else None
    return parse


train_result = grab(r'time per iteration: ([\d.]+)ms, tokens/s: ([\d,]+), MFU: (\S+)',
                    lambda m: f"{m.group(2)} tokens/s, {m.group(1)} ms/iter, MFU {m.group(3)}")

# 1. the GPU tests (a dry run only collects them: there is no GPU)
tests = [PY, '-m', 'pytest', '-m', 'cuda', 'tests/test_cuda.py', '-q', '-p', 'no:cacheprovider']
tests += ['--collect-only'] if dry_run else []
run_row('python -m pytest -m cuda', tests,
        grab(r'(\d+ passed.*|\d+(/\d+)? tests? collected.*|\d+ failed.*)', lambda m: m.group(1).strip('= ')))

# 2. GPT-2 124M training: micro-batch, attention backends, compile modes, cross-entropy, float8
base = [PY, 'bench.py', '--dataset=none', *SHAPE, *DEVICE, *STEPS]
compiled = [] if dry_run else ['--compile=True']
for B in sizes:
    sized = [] if dry_run else [f'--batch_size={B}']
    run_row(f"124M train, batch {B}, compiled, SDPA auto", [*base, *compiled, *sized], train_result)
B = sizes[len(sizes) // 2]
batch = [f'--batch_size={B}'] if not dry_run else []
for backend in ('flash', 'math') if dry_run else ('flash', 'efficient', 'cudnn'):  # (a CPU has two)
    run_row(f"124M train, batch {B}, compiled, SDPA {backend}",
            [*base, *compiled, *batch, f'--sdpa_backend={backend}'], train_result)
run_row(f"124M train, batch {B}, uncompiled", [*base, '--compile=False', *batch], train_result)
if not dry_run:
    run_row(f"124M train, batch {B}, compile max-autotune", [*base, *batch, '--compile=True',
                                                           '--compile_mode=max-autotune-no-cudagraphs'], train_result)
if float8:
    run_row(f"124M train, batch {B}, torchao float8", [*base, *compiled, *batch, '--float8=True'], train_result)

# 3. nanoGPT's own bench.py (tools/nanogpt, its code unchanged) at the same shape; it needs CUDA (it calls
# torch.cuda.synchronize), so a dry run only builds its model and runs a step there
nano_dir = os.path.join(ROOT, 'tools', 'nanogpt')
if dry_run:
    run_row("nanoGPT's model (its bench.py needs CUDA)", [PY, '-c', (
        "import torch; from model import GPT, GPTConfig; m = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, "
        "block_size=64, vocab_size=50304)); x = torch.randint(50304, (2, 64)); m(x, x)[1].backward(); print('ran')")],
        grab(r'\bran\b', lambda m: 'builds and trains a step'), cwd=nano_dir)
else:
    run_row(f"nanoGPT's bench.py, batch {B}, compiled", [PY, 'bench.py', '--real_data=False', f'--batch_size={B}'],
            grab(r'time per iteration: ([\d.]+)ms', lambda m: f"{B * 1024 / float(m.group(1)) * 1000:,.0f} tokens/s, "
                                                          f"{float(m.group(1)):.2f} ms/iter"), cwd=nano_dir)

# 4. two processes on the one GPU: DDP and FSDP (gloo: NCCL wants a GPU per process)
for parallelism in ('ddp', 'fsdp'):
    one_gpu = ['--device=cpu'] if dry_run else ['--device=cuda:0']
    run_row(f"2-process {parallelism.upper()} on one device, memory per process",
            [PY, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'bench.py', '--mode=memory',
             f'--parallelism={parallelism}', '--backend=gloo', *SHAPE, '--batch_size=1', *one_gpu,
             f"--dtype={'float32' if dry_run else 'bfloat16'}"],
            grab(r'measured on rank 0 of 2 \(\w+\): (.*)', lambda m: m.group(1)))

# 5. GPT-2 XL LoRA with activation checkpointing: peak memory
run_row("GPT-2 XL shape, LoRA r=8 + AC, peak memory",
        [PY, 'bench.py', '--mode=memory', '--memory_rows=lora+ac', *XL, *DEVICE],
        grab(r'LoRA r=8 \+ AC\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)',
             lambda m: f"peak {m.group(1)} GiB: weights {m.group(2)} + {m.group(3)}, {m.group(4)} s/step"))

# 6. decoding at batch 1: bfloat16 and int8 weights
for weight_dtype in ('bfloat16', 'int8'):
    gen = [PY, 'bench.py', '--mode=generate', '--num_samples=1', '--no_cache=False', '--quality_positions=0',
           f'--weight_dtype={weight_dtype}', '--repeats=1' if dry_run else '--repeats=3', *DEVICE[:1]]
    gen += ['--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=64', '--max_new_tokens=8'] if dry_run else []
    run_row(f"124M decoding, batch 1, {weight_dtype} weights", gen,
            grab(rf'1 ours, {weight_dtype}, KV cache\s+([\d.]+)\s+([\d.]+ms)\s+\S+\s+([\d.]+)',
                 lambda m: f"{m.group(1)} tokens/s (limit {m.group(3)}), first token {m.group(2)}"))

# one row at a time on the GPU, so that none slows another; two at a time on a dry run's CPU cores
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
with ThreadPoolExecutor(2 if dry_run else 1) as pool:
    results = list(pool.map(measure, rows))
print()
import torch  # noqa: E402  (only for the heading: the rows ran in processes of their own)
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU (dry run on the CPU)'
print(f"| {gpu}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')} | result | s |")
print("| --- | --- | --- |")
for what, result, seconds in results:
    print(f"| {what} | {result} | {seconds:.0f} |")
failed = sum('FAILED' in r for _, r, _ in results)
print(f"{len(results) - failed} rows measured, {failed} failed")
sys.exit(1 if failed else 0)
