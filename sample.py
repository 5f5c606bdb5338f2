"""
Sample from a trained model
$ python sample.py --out_dir=out-shakespeare-char
$ python sample.py --init_from=gpt2-xl --start="What is the answer to life, the universe, and everything?"
All num_samples are drawn as one batch (sample i with seed + i, so it is the same text whatever
num_samples is); a single sample is printed token by token as it is generated.
"""
import sys

import torch
from tqdm import tqdm

from nanogpt.device import exit_on_out_of_memory, maybe_compile, setup_device
from nanogpt.generate import generate_stream
from nanogpt.loading import load_model
from nanogpt.out_dir import ExitOnInterrupt
from nanogpt.quantize import for_sampling, weight_dtype_error
from nanogpt.tokenizer import from_meta
from nanogpt.util import die, report_usage_errors

report_usage_errors()  # library code's bad-input errors: one line, as die says them

# -----------------------------------------------------------------------------
init_from = 'resume'  # either 'resume' (from an out_dir) or a gpt2 variant (e.g. 'gpt2-xl') or a local GPT-2 directory
out_dir = 'out'  # ignored if init_from is not 'resume'
trust_checkpoint = False  # allow checkpoints holding arbitrary pickled objects (only for files you trust)
start = "\n"  # or "<|endoftext|>" or etc. Can also specify a file, use as: "FILE:prompt.txt"
num_samples = 10  # number of samples to draw
max_new_tokens = 500  # number of tokens generated in each sample
temperature = 0.8  # 1.0 = no change, < 1.0 = less random, > 1.0 = more random, 0 = greedy
top_k = 200  # retain only the top_k most likely tokens, clamp others to have 0 probability
top_p = 1.0  # nucleus sampling: keep the likeliest tokens whose probability adds up to top_p (1.0 = all)
stop_at_eot = True  # BPE: end a sample at <|endoftext|>
stream = True  # print a single sample token by token as it is generated
kv_cache = True  # False recomputes the whole context for every token, as nanoGPT does
seed = 1337
device = 'auto'  # 'auto' (cuda, else mps, else cpu), or 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'auto'  # 'auto' (bfloat16 where fast, float16 on older GPUs, else float32), or one of those
compile = False  # torch.compile would recompile for every new cache length: no gain when sampling
weight_dtype = 'float32'  # 'bfloat16' or 'int8' (CPU, CUDA): weights in fewer bytes, faster decoding
# -----------------------------------------------------------------------------
exec(open('configurator.py').read())  # overrides from command line or config file
# -----------------------------------------------------------------------------

if max_new_tokens <= 0:
    die(f"max_new_tokens must be positive, got {max_new_tokens}")
if num_samples <= 0:
    die(f"num_samples must be positive, got {num_samples}")
if temperature < 0:
    die(f"temperature must be >= 0, got {temperature}")
if top_k <= 0:
    die(f"top_k must be positive, got {top_k}")
if not 0.0 < top_p <= 1.0:
    die(f"top_p must be in (0, 1], got {top_p}")

ExitOnInterrupt(lambda: "while sampling")
torch.manual_seed(seed)
device, dtype, ctx = setup_device(device, dtype)
exit_on_out_of_memory("lower num_samples or max_new_tokens, or use weight_dtype=bfloat16 or int8 "
                      "(fewer bytes a weight)")
if weight_dtype_error(weight_dtype, device):
    die(weight_dtype_error(weight_dtype, device))

# model, and the tokenizer of the data it was trained on
model, meta = load_model(init_from, out_dir, trust_checkpoint, weight_dtype)
vocab_size = meta['vocab_size'] if meta['tokenizer'] != 'gpt2' else model.config.vocab_size
if top_k > vocab_size and 'top_k' in set_keys:  # the default 200 means "all" for a 65-character vocabulary
    die(f"top_k={top_k} is larger than the vocabulary ({vocab_size} tokens)")
model.to(device)
model, decoder = for_sampling(model, device, dtype, num_samples, max_new_tokens)
model.forward = maybe_compile(model.forward, compile, device)  # generate() calls forward

# tokenizer: the dataset's characters, its own trained BPE, or GPT-2's
if meta['tokenizer'] == 'char':
    print(f"Loading character vocabulary of {meta['dataset']} ({meta['vocab_size']} characters)")
elif meta['tokenizer'] == 'bpe':
    print(f"Loading the BPE tokenizer trained on {meta['dataset']} ({meta['vocab_size']:,} tokens)")
else:
    print("No meta.json found, assuming GPT-2 encodings...")
tokenizer = from_meta(meta)
encode, decode = tokenizer.encode, tokenizer.decode

# encode the beginning of the prompt
if start.startswith('FILE:'):
    path = start[5:]
    try:
        with open(path, 'r', encoding='utf-8') as f:
            start = f.read()
    except FileNotFoundError:
        die(f"prompt file {path} does not exist")
    except UnicodeDecodeError:
        die(f"prompt file {path} is not UTF-8 text")
    except OSError as e:
        die(f"cannot read prompt file {path}: {e.strerror}")
if not start:
    die("the prompt is empty (give --start=... some text)")
start_ids = encode(start)
x = torch.tensor(start_ids, dtype=torch.long, device=device)[None, ...].repeat(num_samples, 1)  # one batch
stop_token = tokenizer.eot if stop_at_eot else None  # <|endoftext|> (BPE)
controls = dict(temperature=temperature, top_k=top_k, top_p=top_p, stop_token=stop_token,
                seeds=[seed + i for i in range(num_samples)], use_cache=kv_cache, decoder=decoder)

# run generation
with torch.no_grad():
    with ctx:
        if stream and num_samples == 1:
            print(start, end='', flush=True)
            pending = []  # a BPE token can end inside a UTF-8 character: print whole characters only
            for token in generate_stream(model, x, max_new_tokens, **controls):
                if token.item() == stop_token:
                    break
                pending.append(token.item())
                text = decode(pending)
                if not text.endswith('\ufffd'):
                    print(text, end='', flush=True)
                    pending = []
            print(decode(pending))
            print('---------------')
        else:
            # the whole batch at once, its progress on stderr so that stdout holds only the samples
            steps = tqdm(generate_stream(model, x, max_new_tokens, **controls), total=max_new_tokens,
                         desc=f"sampling {num_samples} x {max_new_tokens} tokens", unit='tok', file=sys.stderr)
            y = torch.cat([x, *steps], dim=1)
            for row in y.tolist():
                new = row[len(start_ids):]
                if stop_token in new:
                    new = new[:new.index(stop_token)]
                print(decode(start_ids + new))
                print('---------------')
