"""
Export a checkpoint as a Hugging Face GPT-2 directory that transformers loads:
$ python export.py --out_dir=out-shakespeare-char
writes out-shakespeare-char/hf (config.json, model.safetensors and the tokenizer: characters, GPT-2's BPE
built offline from tiktoken's ranks, or a BPE trained by data/prepare.py); then
GPT2LMHeadModel.from_pretrained('out-shakespeare-char/hf') gives the same logits, and
AutoTokenizer.from_pretrained('out-shakespeare-char/hf') its tokenizer, with no network. Or as one GGUF file
for llama.cpp, Ollama and LM Studio, in llama.cpp's gpt2 architecture:
$ python export.py --out_dir=out-shakespeare-char --format=gguf --gguf_type=q8_0
writes out-shakespeare-char/model-q8_0.gguf (f32, bf16 or q8_0 weights, and the tokenizer).
A LoRA run's checkpoint holds the merged weights, exported as above; --adapter=True writes its
adapters instead, as a peft adapter directory (out_dir/adapter) for the GPT-2 it was trained on:
PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(base), 'out-shakespeare-lora/adapter').
"""
import os
import shutil
import tempfile

from nanogpt import hf_gpt2
from nanogpt.checkpoints import load_checkpoint
from nanogpt.gguf_export import TYPES, check_expressible, save_gguf
from nanogpt.loading import model_from_checkpoint
from nanogpt.tokenizer import GPT2, from_meta, read_meta
from nanogpt.util import die, report_usage_errors, write_error

report_usage_errors()  # library code's bad-input errors: one line, as die says them

# -----------------------------------------------------------------------------
out_dir = 'out'  # the checkpoint to export is out_dir/ckpt.pt
export_dir = ''  # where to write the Hugging Face directory; '' means out_dir/hf (out_dir/adapter with adapter)
trust_checkpoint = False  # allow checkpoints holding arbitrary pickled objects (only for files you trust)
vocab_size = 0  # vocabulary to export; 0 cuts a padded 50304 back to GPT-2's 50257, else keeps it
adapter = False  # a LoRA run: write its adapters as a peft adapter directory instead of the merged model
format = 'hf'  # 'hf' (a Hugging Face directory) or 'gguf' (one file for llama.cpp, Ollama, LM Studio)
gguf_type = 'f32'  # the GGUF's weights: 'f32', 'bf16' or 'q8_0' (8-bit blocks, as llama.cpp's Q8_0)
# -----------------------------------------------------------------------------
exec(open('configurator.py').read())  # overrides from command line or config file
# -----------------------------------------------------------------------------

if format not in ('hf', 'gguf'):
    die(f"format must be 'hf' or 'gguf', got {format!r}")
if format == 'gguf' and gguf_type not in TYPES:
    die(f"gguf_type must be {' or '.join(repr(t) for t in TYPES)}, got {gguf_type!r}")
checkpoint = load_checkpoint(os.path.join(out_dir, 'ckpt.pt'), trust_checkpoint)
if adapter:
    if 'lora' not in checkpoint:
        die(f"{os.path.join(out_dir, 'ckpt.pt')} is not a LoRA run's (train with --lora_rank=8, say); "
            f"without --adapter it exports as a whole model")
    from nanogpt.lora import save_adapter_dir
    export_dir = export_dir or os.path.join(out_dir, 'adapter')
    save_adapter_dir(checkpoint['lora'], export_dir)  # whole files or a one-line error
    base = checkpoint['lora']['base']
    print(f"wrote {export_dir} (adapter_config.json, adapter_model.safetensors), the adapters for {base}: "
          f"PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained('{base}'), '{export_dir}')")
else:
    model = model_from_checkpoint(checkpoint, dropout=0.0)
    dataset = checkpoint.get('config', {}).get('dataset')
    meta = checkpoint.get('tokenizer') or (read_meta(os.path.join('data', dataset)) if dataset else GPT2)
    tokenizer = from_meta(meta)
    if format == 'gguf':
        check_expressible(model.config)  # before anything is written
        path = os.path.join(export_dir or out_dir, f'model-{gguf_type}.gguf')
        os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
        save_gguf(model, tokenizer, path, gguf_type, name=os.path.basename(os.path.abspath(out_dir)))
        print(f"wrote {path} ({os.path.getsize(path) / 1e6:,.1f} MB, llama.cpp's gpt2 architecture, {gguf_type} "
              f"weights, {'character' if tokenizer.kind == 'char' else 'BPE'} tokenizer): llama-cli -m {path}")
    else:
        export_dir = export_dir or os.path.join(out_dir, 'hf')
        hf_tokenizer = tokenizer.hf_tokenizer()
        try:
            hf_gpt2.save_pretrained(model, export_dir, vocab_size or None, tokenizer.eot)
            # the tokenizer's files written beside, then moved in: each whole or not at all
            tmp = tempfile.mkdtemp(dir=export_dir, prefix='.tokenizer-')
            try:
                hf_tokenizer.save_pretrained(tmp)
                for f in sorted(os.listdir(tmp)):
                    os.replace(os.path.join(tmp, f), os.path.join(export_dir, f))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        except ValueError as e:
            die(f"cannot export to {export_dir}: {e}")
        except OSError as e:
            die(write_error(export_dir, e))
        print(f"wrote {export_dir} (config.json, model.safetensors, tokenizer.json): "
              f"GPT2LMHeadModel.from_pretrained('{export_dir}'), AutoTokenizer.from_pretrained('{export_dir}')")
