# the CPU shakespeare_char model, trained faster: the shape of train_shakespeare_char_cpu.py (4 layers,
# 128 wide, context 64) with the modern options and Muon, at batch 24 for 250 iterations instead of
# batch 12 for 2000: best val loss 1.852 (nanoGPT's recipe: 1.886) in 37.3-42.9 s on a 2-core AMD EPYC
# Zen 4, where nanoGPT's code took 108.8-131.9 s for its recipe, side by side (README: the ablation)
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
pos_encoding = 'rotary'
qk_norm = True
activation = 'relu2'
norm = 'rmsnorm'
tie_weights = False
zero_init_proj = True
logit_softcap = 15.0

optimizer = 'muon'
muon_lr = 0.02
learning_rate = 3e-3  # AdamW's, for the embeddings, the head and the gains
max_iters = 250
lr_decay_iters = 250
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 25
