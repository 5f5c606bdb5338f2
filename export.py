"""
Export a checkpoint as a Hugging Face GPT-2 directory that transformers loads:
$ python export.py --out_dir=out-shakespeare-char
writes out-shakespeare-char/hf (config.json, model.safetensors); then
GPT2LMHeadModel.from_pretrained('out-shakespeare-char/hf') gives the same logits.
A character-level model keeps its own vocabulary (data/<dataset>/meta.json), not GPT-2's tokenizer.
"""
import os

from checkpoints import load_checkpoint
from loading import model_from_checkpoint
from util import die

# -----------------------------------------------------------------------------
out_dir = 'out'  # the checkpoint to export is out_dir/ckpt.pt
export_dir = ''  # where to write the Hugging Face directory; '' means out_dir/hf
trust_checkpoint = False  # allow checkpoints holding arbitrary pickled objects (only for files you trust)
vocab_size = 0  # vocabulary to export; 0 cuts a padded 50304 back to GPT-2's 50257, else keeps it
# -----------------------------------------------------------------------------
exec(open('configurator.py').read())  # overrides from command line or config file
# -----------------------------------------------------------------------------

model = model_from_checkpoint(load_checkpoint(os.path.join(out_dir, 'ckpt.pt'), trust_checkpoint), dropout=0.0)
export_dir = export_dir or os.path.join(out_dir, 'hf')
try:
    model.save_pretrained(export_dir, vocab_size=vocab_size or None)
except (ValueError, OSError) as e:
    die(f"cannot export to {export_dir}: {e}")
print(f"wrote {export_dir} (config.json, model.safetensors): GPT2LMHeadModel.from_pretrained('{export_dir}')")
