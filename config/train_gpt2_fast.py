# GPT-2 (124M) with the GPT-2 speedruns' changes: rotary positions, QK-norm, ReLU², RMSNorm, an
# untied zero-initialised head, zero-initialised output projections, a logit soft-cap of 15, and
# Muon for the block matrices. On 8 GPUs (~0.5M tokens a step, as train_gpt2.py):
# $ python data/fineweb_edu/prepare.py
# $ torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_fast.py
# What to expect, from modded-nanogpt's public records (FineWeb, 3.28 val loss, the same batch):
# llm.c's GPT-2 needed 10B tokens; Muon 3.25B (#4); + ReLU², QK-norm, zero-init 2.67B (#5);
# + the untied head 2.40B (#8), which is about these options, so ~5,000 iterations here. Train
# config/train_gpt2.py on the same data for the baseline (docs/model_options.md).

out_dir = 'out-gpt2-fast'
wandb_log = True
wandb_project = 'fineweb-edu'
wandb_run_name = 'gpt2-124M-fast'

dataset = 'fineweb_edu'
# 16 batch size * 1024 block size * 4 gradaccum * 8 GPUs = 524,288 tokens a step
batch_size = 16
block_size = 1024
gradient_accumulation_steps = 4 * 8

pos_encoding = 'rotary'
qk_norm = True
activation = 'relu2'
norm = 'rmsnorm'
tie_weights = False
zero_init_proj = True
logit_softcap = 15.0

optimizer = 'muon'
muon_lr = 0.02  # nanochat's for the block matrices
learning_rate = 6e-3  # AdamW's, for the embeddings, the head and the gains
min_lr = 6e-4
weight_decay = 0.0
beta2 = 0.95
warmup_iters = 200
max_iters = 5000  # 2.6B tokens
lr_decay_iters = 5000

eval_interval = 250
eval_iters = 100
log_interval = 10
