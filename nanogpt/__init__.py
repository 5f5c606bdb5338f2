"""
The machinery behind the scripts at the top (train.py, sample.py, eval.py, export.py, bench.py, plot.py),
one concern a module, each imported by name (from nanogpt.checkpoints import load_checkpoint). model.py
stays beside the scripts and needs none of it; nothing here imports a script. Importing the package
imports nothing: the data/*/prepare.py scripts read nanogpt.util and nanogpt.corpus without torch.
"""
