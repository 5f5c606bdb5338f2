# LoRA-finetune GPT-2 XL on tiny shakespeare (GPT-2 BPE tokens) where full finetuning does not fit:
# rank-8 adapters train beside the frozen 1.56B weights, which get no gradients and no optimizer state,
# and each block's activations are recomputed in the backward pass instead of kept
# $ python data/shakespeare/prepare.py
# $ python train.py config/finetune_shakespeare_lora.py
# $ python export.py --out_dir=out-shakespeare-lora --adapter=True
import time

# the model: GPT-2 XL, frozen, with LoRA adapters on every matmul in its blocks
init_from = 'gpt2-xl'  # or a local Hugging Face GPT-2 directory, or one of our ckpt.pt files
lora_rank = 8
lora_alpha = 16
lora_dropout = 0.05
activation_checkpointing = True  # one block's activations at a time: what lets batch 1 x 1024 fit beside the weights

out_dir = 'out-shakespeare-lora'
eval_interval = 5
eval_iters = 40
always_save_checkpoint = False  # only save checkpoints if the validation loss improves
wandb_log = False  # feel free to turn on
wandb_project = 'shakespeare'
wandb_run_name = 'lora-' + str(time.time())
dataset = 'shakespeare'

# 1 batch_size * 32 grad_accum * 1024 tokens = 32,768 tokens/iter; shakespeare has 301,966 tokens,
# so 1 epoch ~= 9.2 iters
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20

# the adapters are small and start at zero: they take a larger learning rate than full finetuning
learning_rate = 3e-4
decay_lr = False
