# the CPU shakespeare_char model, trained faster: the same shape as train_shakespeare_char_cpu.py
# (4 layers, 128 wide, context 64, batch 12) with the modern options and Muon, for 500 iterations
# instead of 2000: best val loss 1.841 (nanoGPT's recipe: 1.886) in 38.6-43.8 s on a 2-core AMD
# EPYC Zen 4, where nanoGPT's code took 94.8-113.1 s for its recipe (README: the ablation)
# $ python data/shakespeare_char/prepare.py
# $ python train.py config/train_shakespeare_char_cpu_fast.py
# $ python sample.py --out_dir=out-shakespeare-char-fast

out_dir = 'out-shakespeare-char-fast'
eval_interval = 500  # once at the start and once at the end: evaluations cost time
eval_iters = 20
log_interval = 50
always_save_checkpoint = False

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 12
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
max_iters = 500
lr_decay_iters = 500
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 50
