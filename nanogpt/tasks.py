"""
Zero-shot tasks, shared by eval.py and train.py: HellaSwag (pick the likeliest of 4 endings)
and LAMBADA (predict the last word of a passage). Examples are token ids; models are GPTs
(anything whose forward(idx, targets) returns (logits, loss) with logits at every position).
"""
import json
import math
import os

import torch
from torch.nn import functional as F

# what the task's prepare.py downloads into data/<task>/
DEFAULT_FILES = {'hellaswag': 'hellaswag_val.jsonl', 'lambada': 'lambada_test.jsonl'}


def read_jsonl(path, limit=0):
    with open(path, encoding='utf-8') as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows[:limit] if limit else rows


def token_losses(model, tokens, mask):
    """Cross-entropy of each token given the ones before it, (B, T-1), zero where mask[:, 1:] is 0."""
    targets = tokens[:, 1:].masked_fill(mask[:, 1:] == 0, -1)
    logits, _ = model(tokens[:, :-1], targets)  # (B, T-1, vocab)
    losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1, reduction='none')
    return losses.view(targets.shape), logits


def pad(rows, block_size):
    """(tokens, mask) of right-padded rows, each row (ids, scored) cropped to its last block_size + 1 tokens."""
    rows = [(ids[-(block_size + 1):], scored[-(block_size + 1):]) for ids, scored in rows]
    T = max(len(ids) for ids, _ in rows)
    tokens = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, (ids, scored) in enumerate(rows):
        tokens[i, :len(ids)] = torch.tensor(ids)
        mask[i, :len(ids)] = torch.tensor(scored)
    return tokens, mask


# -----------------------------------------------------------------------------
# HellaSwag: https://arxiv.org/abs/1905.07830, the validation set's 10,042 examples

def hellaswag_example(example, encode):
    """(context ids, [4 ending ids], label): each ending joined to the context with one space."""
    return encode(example['ctx']), [encode(' ' + e) for e in example['endings']], int(example['label'])


@torch.no_grad()
def score_endings(model, ctx_ids, endings_ids, block_size, device):
    """
    Loss of each ending given the context, (sum over its tokens, mean over its tokens), the
    context masked out: the four rows go through the model as one batch.
    """
    rows = [(ctx_ids + e, [0] * len(ctx_ids) + [1] * len(e)) for e in endings_ids]
    tokens, mask = pad(rows, block_size)
    losses, _ = token_losses(model, tokens.to(device), mask.to(device))
    n = mask[:, 1:].sum(dim=1).to(device)
    total = losses.sum(dim=1)
    return total, total / n


def evaluate_hellaswag(model, examples, encode, block_size, device, ctx, rank=0, world_size=1, lockstep=False):
    """
    Counts {'examples', 'correct', 'correct_norm', 'tokens'} over this rank's share of examples.
    lockstep (FSDP, where each forward is a collective): every rank takes as many forwards, those
    short of a share scoring one more example that they do not count.
    """
    counts = dict(examples=0, correct=0, correct_norm=0, tokens=0)
    end = -(-len(examples) // world_size) * world_size if lockstep else len(examples)
    for i in range(rank, end, world_size):
        ctx_ids, endings, label = hellaswag_example(examples[i % len(examples)], encode)
        with ctx:
            total, mean = score_endings(model, ctx_ids, endings, block_size, device)
        if i >= len(examples):
            continue
        counts['examples'] += 1
        counts['correct'] += int(total.argmin().item() == label)
        counts['correct_norm'] += int(mean.argmin().item() == label)
        counts['tokens'] += sum(len(ctx_ids) + len(e) for e in endings)
    return counts


def hellaswag_results(counts):
    n = max(counts['examples'], 1)
    return {'task': 'hellaswag', 'examples': counts['examples'], 'acc': counts['correct'] / n,
            'acc_norm': counts['correct_norm'] / n}


# -----------------------------------------------------------------------------
# LAMBADA, OpenAI's version (lambada_test.jsonl, 5,153 passages): predict the last word

def lambada_example(example, encode):
    """(context ids, target ids): the target is the last word with its leading space."""
    text = example['text'].strip()
    context, word = text.rsplit(' ', 1)
    return encode(context), encode(' ' + word)


@torch.no_grad()
def evaluate_lambada(model, examples, encode, block_size, device, ctx, batch_size=8, rank=0, world_size=1):
    """
    Counts {'examples', 'correct', 'nll', 'target_tokens', 'tokens'}: correct when greedy decoding
    would produce exactly the target's tokens (each one the argmax given the ones before it);
    nll summed over target tokens, for the target perplexity.
    """
    counts = dict(examples=0, correct=0, nll=0.0, target_tokens=0, tokens=0)
    mine = [lambada_example(examples[i], encode) for i in range(rank, len(examples), world_size)]
    for b in range(0, len(mine), batch_size):
        batch = mine[b:b + batch_size]
        tokens, mask = pad([(c + t, [0] * len(c) + [1] * len(t)) for c, t in batch], block_size)
        tokens, mask = tokens.to(device), mask.to(device)
        with ctx:
            losses, logits = token_losses(model, tokens, mask)
        scored = mask[:, 1:].bool()
        hit = (logits.argmax(dim=-1) == tokens[:, 1:]) | ~scored
        counts['examples'] += len(batch)
        counts['correct'] += int(hit.all(dim=1).sum().item())
        counts['nll'] += losses.sum().item()
        counts['target_tokens'] += int(scored.sum().item())
        counts['tokens'] += sum(len(c) + len(t) for c, t in batch)
    return counts


def lambada_results(counts):
    return {'task': 'lambada', 'examples': counts['examples'], 'acc': counts['correct'] / max(counts['examples'], 1),
            'perplexity': math.exp(counts['nll'] / max(counts['target_tokens'], 1))}


def all_reduce_counts(counts, device):
    """Sum each process's counts across a DDP group (a no-op without one)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return counts
    keys = sorted(counts)
    summed = torch.tensor([float(counts[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(summed)
    return {k: (v if isinstance(counts[k], float) else int(v)) for k, v in zip(keys, summed.tolist())}


def default_file(task):
    return os.path.join('data', task, DEFAULT_FILES[task])


def hellaswag_during_training(model, hellaswag, block_size, device, ctx, rank, world_size, fsdp):
    """HellaSwag's results for model (in eval mode meanwhile) over hellaswag_for_training's examples, shared by
    all processes (FSDP: in lockstep)."""
    model.eval()
    counts = evaluate_hellaswag(model, hellaswag['examples'], hellaswag['encode'], block_size, device, ctx, rank,
                                world_size, lockstep=fsdp)
    model.train()
    return hellaswag_results(all_reduce_counts(counts, device))


def hellaswag_for_training(meta, dataset, limit=0):
    """HellaSwag's first limit examples (0: all) and the encoder of dataset (meta: its meta.json), for zero-shot
    accuracy during training: one line if the dataset is character-level or HellaSwag is not prepared."""
    from nanogpt.tokenizer import from_meta
    from nanogpt.util import UsageError
    if meta['tokenizer'] == 'char':
        raise UsageError(f"hellaswag_interval needs a BPE dataset; {dataset} is character-level")
    path = default_file('hellaswag')
    if not os.path.isfile(path):
        raise UsageError(f"no {path}: python data/hellaswag/prepare.py")
    return dict(examples=read_jsonl(path, limit), encode=from_meta(meta).encode)
