"""
Sampling speed beside llama.cpp's, on this machine, in one command: llama.cpp is built from the source that the
llama-cpp-python source distribution vendors (into a cache directory, once), a GPT-2-shaped Hugging Face
directory is made with random weights and GPT-2's tokenizer (built offline from tiktoken's ranks), llama.cpp's own
convert_hf_to_gguf.py converts it to F32, BF16 and Q8_0, and then llama-bench and our bench.py --mode=generate
decode from it in turn, round after round, at the same thread count and batch 1. One table of tokens/s and
ratios, each the best of its rounds: llama-bench -p 0 times the decoding steps alone, so ours is given both as
bench.py measures it (its 4-token prompt included) and for the steps after the prompt. For benchmarks by hand,
not for CI (it builds for ~10 minutes the first time).
$ python tools/vs_llama_cpp.py                                   # GPT-2 124M: float32, bfloat16, int8
$ python tools/vs_llama_cpp.py --n_layer=48 --n_head=25 --n_embd=1600 --types=int8 --new_tokens=64  # GPT-2 XL
$ python tools/vs_llama_cpp.py --llama_cpp=~/src/llama.cpp       # an existing checkout (built there if need be)
"""
import glob
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# -----------------------------------------------------------------------------
n_layer = 12  # the model's shape (GPT-2 124M's; GPT-2 XL: 48, 25, 1600)
n_head = 12
n_embd = 768
types = 'float32,bfloat16,int8'  # our weight dtypes, each beside llama.cpp's F32, BF16, Q8_0
new_tokens = 128  # tokens decoded per timed run (llama-bench -n)
rounds = 3  # each side runs this many times, alternating; the best counts
threads = 0  # both sides' threads; 0: the CPUs this process may use
llama_cpp = ''  # a llama.cpp source directory; '' builds the one llama-cpp-python vendors, in the cache
llama_cpp_python = '0.3.36'  # the llama-cpp-python release whose source is downloaded
cache = ''  # where the build, the model and its GGUF files are kept; '' is ~/.cache/nanogpt/vs_llama_cpp
# -----------------------------------------------------------------------------
os.chdir(ROOT)
exec(open('configurator.py').read())  # overrides from command line or config file
# -----------------------------------------------------------------------------

GGUF_TYPES = {'float32': 'f32', 'bfloat16': 'bf16', 'int8': 'q8_0'}
ENV = {**os.environ, 'HF_HUB_OFFLINE': '1'}


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


def sh(cmd, **kw):
    """Run cmd, its output on ours; fail in one line if it fails."""
    print('$ ' + ' '.join(cmd), flush=True)
    if subprocess.run(cmd, env=kw.pop('env', ENV), **kw).returncode:
        fail(f"{os.path.basename(cmd[0])} failed (its output is above)")


def out(cmd, env=ENV):
    """cmd's stdout; fail in one line with the end of its stderr if it fails."""
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode:
        fail(f"{' '.join(cmd[:3])} ... failed: {(r.stderr.strip().splitlines() or ['no output'])[-1]}")
    return r.stdout


def llama_source(cache_dir):
    """llama.cpp's source: the one named, or the one llama-cpp-python's sdist vendors (downloaded once)."""
    if llama_cpp:
        return os.path.expanduser(llama_cpp)
    found = glob.glob(os.path.join(cache_dir, f'llama_cpp_python-{llama_cpp_python}', 'vendor', 'llama.cpp'))
    if found:
        return found[0]
    sh([sys.executable, '-m', 'pip', 'download', '--no-deps', '--no-binary', ':all:',
        f'llama-cpp-python=={llama_cpp_python}', '-d', cache_dir])
    sdist, = glob.glob(os.path.join(cache_dir, f'llama_cpp_python-{llama_cpp_python}.tar.gz'))
    with tarfile.open(sdist) as tar:
        tar.extractall(cache_dir, filter='data')
    return os.path.join(cache_dir, f'llama_cpp_python-{llama_cpp_python}', 'vendor', 'llama.cpp')


def llama_bench_binary(src):
    """llama-bench, built natively (-DGGML_NATIVE=ON) in src/build unless it is there already."""
    binary = os.path.join(src, 'build', 'bin', 'llama-bench')
    if not os.path.isfile(binary):
        sh(['cmake', '-B', 'build', '-DGGML_NATIVE=ON', '-DLLAMA_CURL=OFF', '-DCMAKE_BUILD_TYPE=Release'], cwd=src)
        sh(['cmake', '--build', 'build', '-j', str(os.cpu_count()), '--target', 'llama-bench'], cwd=src)
    return binary


def hf_directory(path):
    """A GPT-2-shaped Hugging Face directory with random weights and GPT-2's tokenizer, made once."""
    if not os.path.isfile(os.path.join(path, 'tokenizer.json')):
        import shutil
        import torch
        from model import GPT, GPTConfig
        from nanogpt.tokenizer import GPT2, from_meta
        torch.manual_seed(0)
        model = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=50257, bias=True))
        tmp = path + '.tmp'
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        from_meta(GPT2).hf_tokenizer().save_pretrained(tmp)  # GPT-2's, from tiktoken's ranks (offline)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    return path


def converted(src, hf_dir, gguf_type):
    """hf_dir converted to gguf_type by llama.cpp's own convert_hf_to_gguf.py, once."""
    path = os.path.join(hf_dir + f'-{gguf_type}.gguf')
    if not os.path.isfile(path):
        env = {**ENV, 'PYTHONPATH': os.path.join(src, 'gguf-py')}
        sh([sys.executable, os.path.join(src, 'convert_hf_to_gguf.py'), hf_dir, '--outtype', gguf_type,
            '--outfile', path + '.tmp'], env=env, stdout=subprocess.DEVNULL)
        os.replace(path + '.tmp', path)
    return path


def llama_speed(binary, gguf, n_threads):
    """llama-bench's tokens/s decoding new_tokens at batch 1 (no prompt), one repetition."""
    rows = json.loads(out([binary, '-m', gguf, '-p', '0', '-n', str(new_tokens), '-t', str(n_threads), '-r', '1',
                           '-o', 'json']))
    return rows[0]['avg_ts']


def our_speed(hf_dir, weight_dtype, n_threads):
    """(tokens/s, tokens/s of the steps after the prompt) of bench.py --mode=generate at batch 1, from the same
    directory, in a process of its own: the first is bench.py's (the 4-token prompt included), the second what
    llama-bench's -p 0 measures, the steps alone (the time of the first token, the prompt, taken off)."""
    env = {**ENV, 'OMP_NUM_THREADS': str(n_threads)}
    text = out([sys.executable, 'bench.py', '--mode=generate', f'--init_from={hf_dir}', '--num_samples=1',
                f'--max_new_tokens={new_tokens}', f'--weight_dtype={weight_dtype}', '--repeats=1', '--no_cache=False',
                '--transformers_row=False', '--quality_positions=0', '--device=cpu'], env=env)
    match = re.search(rf'^\s*1 ours, {weight_dtype}, KV cache\s+([\d.]+)\s+([\d.]+)ms', text, re.M)
    if not match:
        fail(f"bench.py printed no {weight_dtype} row:\n{text}")
    tps, first = float(match.group(1)), float(match.group(2)) / 1000
    return tps, (new_tokens - 1) / (new_tokens / tps - first)


def main():
    wanted = [t.strip() for t in types.split(',') if t.strip()]
    if not wanted or any(t not in GGUF_TYPES for t in wanted):
        fail(f"types must be some of {', '.join(GGUF_TYPES)}, got {types!r}")
    n_threads = threads or len(os.sched_getaffinity(0))
    cache_dir = os.path.expanduser(cache or os.path.join(os.environ.get('NANOGPT_CACHE_DIR') or
                                                         os.path.join('~', '.cache', 'nanogpt'), 'vs_llama_cpp'))
    os.makedirs(cache_dir, exist_ok=True)
    src = llama_source(cache_dir)
    binary = llama_bench_binary(src)
    hf_dir = hf_directory(os.path.join(cache_dir, f'gpt2-{n_layer}x{n_embd}'))
    ggufs = {t: converted(src, hf_dir, GGUF_TYPES[t]) for t in wanted}
    best = {(side, t): 0.0 for side in ('llama.cpp', 'ours', 'ours, steps') for t in wanted}
    for r in range(rounds):
        for t in wanted:  # alternately, so that a machine's slow minute falls on both sides alike
            best['llama.cpp', t] = max(best['llama.cpp', t], llama_speed(binary, ggufs[t], n_threads))
            ours, steps = our_speed(hf_dir, t, n_threads)
            best['ours', t], best['ours, steps', t] = max(best['ours', t], ours), max(best['ours, steps', t], steps)
            print(f"round {r + 1}/{rounds} {t}: llama.cpp {best['llama.cpp', t]:.1f}, ours {best['ours', t]:.1f} "
                  f"({best['ours, steps', t]:.1f} after the prompt) tokens/s (best so far)", flush=True)
    import torch
    cpu = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), 'CPU')
    print(f"\n{cpu}, {n_threads} threads, torch {torch.__version__}, llama.cpp from llama-cpp-python "
          f"{llama_cpp_python if not llama_cpp else '(' + src + ')'}; GPT-2-shaped {n_layer}x{n_embd}, batch 1, "
          f"{new_tokens} new tokens, best of {rounds} alternating rounds")
    print("| weights | llama.cpp tokens/s | ours, prompt included | ours, steps alone (as llama-bench) | ratio, "
          "steps alone | ratio, prompt included |\n|---|---|---|---|---|---|")
    for t in wanted:
        lc, ours, steps = best['llama.cpp', t], best['ours', t], best['ours, steps', t]
        print(f"| {t} ({GGUF_TYPES[t].upper()}) | {lc:.1f} | {ours:.1f} | {steps:.1f} | {steps / lc:.2f} | "
              f"{ours / lc:.2f} |")


if __name__ == '__main__':
    main()
