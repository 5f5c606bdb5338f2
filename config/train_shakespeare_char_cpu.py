# the small character-level shakespeare model for a CPU (a laptop, a 2-core server):
# nanoGPT's README gives this recipe as a long command line; best val loss ~1.89 in a minute or two
# (docs/benchmarks.md: times by CPU)
# $ python data/shakespeare_char/prepare.py
# $ python train.py config/train_shakespeare_char_cpu.py
# $ python sample.py --out_dir=out-shakespeare-char

out_dir = 'out-shakespeare-char'
eval_interval = 250
eval_iters = 20
log_interval = 1
always_save_checkpoint = False

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 12
block_size = 64

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

learning_rate = 1e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100
