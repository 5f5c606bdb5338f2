# the CPU shakespeare_char model, trained faster: the shape of train_shakespeare_char_cpu.py (4 layers,
# 128 wide, context 64) with the modern options and Muon, at batch 24 for 250 iterations instead of
# batch 12 for 2000: a lower best val loss in about a third of the time (docs/model_options.md: the
# ablation; docs/benchmarks.md: the times)
# $ python data/shakespeare_char/prepare.py
# $ python train.py config/train_shakespeare_char_cpu_fast.py
# $ python sample.py --out_dir=out-shakespeare-char-fast

out_dir = 'out-shakespeare-char-fast'
eval_interval = 250  # once at the start and once at the end: evaluations cost time
eval_iters = 20
log_interval = 25
always_save_checkpoint = False

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 24  # twice the CPU recipe's: Muon's step costs the same for any batch
block_size = 64

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
# the three that carry the gain at this size (docs/model_options.md: the ablation), then the rest
pos_encoding = 'rotary'
qk_norm = True
optimizer = 'muon'
muon_lr = 0.02
learning_rate = 3e-3  # AdamW's, for the embeddings, the head and the gains
activation = 'relu2'
norm = 'rmsnorm'
zero_init_proj = True
tie_weights = False
logit_softcap = 15.0

max_iters = 250
lr_decay_iters = 250
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 25
