"""
Zero-shot evals (nanogpt/tasks.py, eval.py, train.py's hellaswag_interval) on small fixture files:
HellaSwag and LAMBADA scores equal an independent computation from transformers' logits on
the same weights; a model with known preferences shows the context masking and where acc and
acc_norm disagree; padding endings of different lengths changes nothing; 2 DDP processes
add up to one. Run: python -m pytest tests/test_evals.py
"""
import json
import math
import os
import shutil

import pytest
import torch
from torch.nn import functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from model import GPT
from nanogpt import tasks
from nanogpt.util import gpt2_encoding
from conftest import REPO, make_repo, prepare_dataset, run

HELLASWAG = [
    {'ctx': 'A man is sitting on a roof. He', 'label': 3,
     'endings': ['is using wrap to wrap a pair of skis.', 'is ripping level tiles off.',
                 "is holding a rubik's cube.", 'starts pulling up roofing on a roof.']},
    {'ctx': 'A woman is outside with a bucket and a dog. The dog is running around trying to avoid a bath. She',
     'label': 2, 'endings': ['rinses the bucket off with soap and blow dry the dog\'s head.',
                             'uses a hose to keep it from getting soapy.', 'gets the dog wet, then it runs away again.',
                             'gets into a bath tub with the dog.']},
    {'ctx': 'Then, the man writes over the snow covering the window of a car, and a woman wearing winter clothes '
            'smiles. Then', 'label': 1,
     'endings': [', the man adds wax to the windshield and cuts it.',
                 ', the man continued removing the snow on his car.',
                 ', a person board a ski lift, while two men supporting the head of the person.',
                 ', a woman holds up a sign.']},
    {'ctx': 'A cartoon animation video is shown with people wandering around and rockets being shot. Two men',
     'label': 0, 'endings': ['fight robots of evil and ends with a to be continued.', 'are then shown in closeups.',
                             'go on to big sharks.', 'are water skiing.']},
    {'ctx': 'We see a fitness center sign. We', 'label': 3,
     'endings': ['see a man talking to the camera.', 'see a tree.', 'see a car.', 'then see a man exercising.']},
]
LAMBADA = [
    {'text': 'In my palm is a clear stone, and inside it is a small ivory statuette. A guardian angel. "Figured if '
             'you\'re going to be out at night getting hit by cars, you might as well have some backup." '
             'I look at him'},
    {'text': 'Give me a minute to change and I\'ll meet you at the docks." She\'d forced those words through her '
             'teeth. "No need to change. We won\'t be that long." Shane gripped her arm and started leading her '
             'to the dock'},
    {'text': 'The cat sat on the mat, and the dog sat on the rug. Every morning the cat looked at the dog and the dog '
             'looked back at the cat'},
    {'text': 'He opened the door and walked out into the rain without an umbrella'},
    {'text': 'She counted the coins twice before handing them over to the clerk'},
]


@pytest.fixture(scope='module')
def gpt2_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp('gpt2')
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64)).save_pretrained(path)
    return str(path)


@pytest.fixture(scope='module')
def fixtures(tmp_path_factory):
    path = tmp_path_factory.mktemp('fixtures')
    for name, rows in (('hellaswag.jsonl', HELLASWAG), ('lambada.jsonl', LAMBADA)):
        with open(path / name, 'w') as f:
            f.writelines(json.dumps(r) + '\n' for r in rows)
    return path


def hf_nll(hf, ctx_ids, target_ids):
    """Independent: transformers' logits, one unpadded sequence, the target tokens' losses and argmaxes."""
    ids = torch.tensor([ctx_ids + target_ids])
    with torch.no_grad():
        logits = hf(ids).logits[0, len(ctx_ids) - 1:-1]  # the predictions of the target tokens
    losses = F.cross_entropy(logits, torch.tensor(target_ids), reduction='none')
    return losses, logits.argmax(-1)


def independent(gpt2_dir, task):
    """The task's scores on its fixture by transformers' logits: hellaswag (acc, acc_norm), lambada (acc,
    perplexity)."""
    hf = GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    enc = gpt2_encoding()
    if task == 'hellaswag':
        correct = correct_norm = 0
        for ex in HELLASWAG:
            ctx = enc.encode(ex['ctx'])
            losses = [hf_nll(hf, ctx, enc.encode(' ' + e))[0] for e in ex['endings']]
            correct += int(min(range(4), key=lambda i: losses[i].sum()) == ex['label'])
            correct_norm += int(min(range(4), key=lambda i: losses[i].mean()) == ex['label'])
        return correct / 5, correct_norm / 5
    correct, nll, n = 0, 0.0, 0
    for ex in LAMBADA:
        context, word = ex['text'].rsplit(' ', 1)
        target = enc.encode(' ' + word)
        losses, argmax = hf_nll(hf, enc.encode(context), target)
        correct += int(argmax.tolist() == target)
        nll, n = nll + losses.sum().item(), n + len(target)
    return correct / 5, math.exp(nll / n)


def test_hellaswag_equals_independent_computation(gpt2_dir, fixtures, tmp_path):
    run(REPO, 'eval.py', f'--init_from={gpt2_dir}', '--task=hellaswag', f'--data_file={fixtures / "hellaswag.jsonl"}',
        f'--out_dir={tmp_path}', '--device=cpu', '--dtype=float32')
    got = json.loads((tmp_path / 'eval_hellaswag.json').read_text())
    acc, acc_norm = independent(gpt2_dir, 'hellaswag')
    assert got['task'] == 'hellaswag' and got['examples'] == 5
    assert got['acc'] == acc and got['acc_norm'] == acc_norm


def test_lambada_equals_independent_computation(gpt2_dir, fixtures, tmp_path):
    run(REPO, 'eval.py', f'--init_from={gpt2_dir}', '--task=lambada', f'--data_file={fixtures / "lambada.jsonl"}',
        f'--out_dir={tmp_path}', '--device=cpu', '--dtype=float32', '--batch_size=2')
    got = json.loads((tmp_path / 'eval_lambada.json').read_text())
    acc, perplexity = independent(gpt2_dir, 'lambada')
    assert got['examples'] == 5 and got['acc'] == acc
    assert got['perplexity'] == pytest.approx(perplexity, rel=1e-5)
    # what int8 weights cost on the task: close to float32's, and recorded
    run(REPO, 'eval.py', f'--init_from={gpt2_dir}', '--task=lambada', f'--data_file={fixtures / "lambada.jsonl"}',
        f'--out_dir={tmp_path}', '--device=cpu', '--dtype=float32', '--batch_size=2', '--weight_dtype=int8')
    int8 = json.loads((tmp_path / 'eval_lambada.json').read_text())
    assert got['weight_dtype'] == 'float32' and int8['weight_dtype'] == 'int8'
    assert int8['perplexity'] == pytest.approx(got['perplexity'], rel=0.02)


class Unigram(torch.nn.Module):
    """A model with known preferences: the same next-token distribution after any context."""

    def __init__(self, probs):
        super().__init__()
        self.logp = torch.log(torch.tensor(probs))

    def forward(self, idx, targets=None):
        return self.logp.expand(*idx.shape, -1), None


def test_context_masked_and_acc_vs_acc_norm():
    model = Unigram([0.01, 0.5, 0.3, 0.01, 0.18])
    ctx = [0, 3, 0, 3]  # unlikely tokens: they must not count
    endings = [[2], [1, 1, 1], [4, 4], [1, 4]]
    total, mean = tasks.score_endings(model, ctx, endings, block_size=16, device='cpu')
    expected = [[-math.log([0.01, 0.5, 0.3, 0.01, 0.18][t]) for t in e] for e in endings]
    assert total.tolist() == pytest.approx([sum(e) for e in expected], rel=1e-5)
    assert mean.tolist() == pytest.approx([sum(e) / len(e) for e in expected], rel=1e-5)
    assert total.argmin().item() == 0 and mean.argmin().item() == 1  # sum likes short, mean likes likely tokens


def test_padding_endings_changes_nothing(gpt2_dir):
    model = GPT.from_pretrained(gpt2_dir).eval()
    enc = gpt2_encoding()
    ctx = enc.encode(HELLASWAG[1]['ctx'])
    endings = [enc.encode(' ' + e) for e in HELLASWAG[1]['endings']]
    assert len({len(e) for e in endings}) > 1
    total, mean = tasks.score_endings(model, ctx, endings, 64, 'cpu')
    for i, e in enumerate(endings):
        alone, alone_mean = tasks.score_endings(model, ctx, [e], 64, 'cpu')
        assert abs(alone.item() - total[i].item()) < 1e-4 and abs(alone_mean.item() - mean[i].item()) < 1e-5


@pytest.mark.parametrize('task', ['hellaswag', 'lambada'])
def test_ddp_counts_add_up(gpt2_dir, fixtures, tmp_path, task):
    """Two processes share the examples and add up to the one-process scores (the independent computation's)."""
    data = f'--data_file={fixtures / (task + ".jsonl")}'
    run(REPO, 'torchrun', '--standalone', '--nproc_per_node=2', 'eval.py', f'--init_from={gpt2_dir}', f'--task={task}',
        data, f'--out_dir={tmp_path / "two"}', '--device=cpu', '--dtype=float32')
    two = json.loads((tmp_path / 'two' / f'eval_{task}.json').read_text())
    acc, second = independent(gpt2_dir, task)
    assert two['examples'] == 5 and two['acc'] == acc
    metric = 'acc_norm' if task == 'hellaswag' else 'perplexity'
    assert two[metric] == pytest.approx(second, rel=1e-5)


def test_eval_limit_and_missing_data_file_is_one_line(gpt2_dir, fixtures, tmp_path):
    run(REPO, 'eval.py', f'--init_from={gpt2_dir}', f'--data_file={fixtures / "hellaswag.jsonl"}', '--limit=2',
        f'--out_dir={tmp_path}', '--device=cpu', '--dtype=float32')
    assert json.loads((tmp_path / 'eval_hellaswag.json').read_text())['examples'] == 2
    p = run(REPO, 'eval.py', f'--init_from={gpt2_dir}', '--data_file=nope.jsonl', check=False)
    assert p.returncode == 1 and p.stderr.strip().startswith('error: no nope.jsonl')


def test_hellaswag_during_training(gpt2_dir, fixtures, tmp_path):
    repo = make_repo(tmp_path)
    prepare_dataset(repo, 'shakespeare', 'shakespeare')  # GPT-2 BPE
    os.makedirs(os.path.join(repo, 'data', 'hellaswag'))
    shutil.copy(fixtures / 'hellaswag.jsonl', os.path.join(repo, 'data', 'hellaswag', 'hellaswag_val.jsonl'))
    args = [f'--init_from={gpt2_dir}', '--dataset=shakespeare', '--block_size=32', '--batch_size=2',
            '--gradient_accumulation_steps=2', '--max_iters=4', '--eval_interval=4', '--eval_iters=1',
            '--hellaswag_interval=2', '--device=cpu']
    out = run(repo, 'train.py', *args, '--out_dir=out').stdout
    lines = [l for l in out.splitlines() if 'hellaswag' in l]
    assert [l.split(':')[0] for l in lines] == ['step 0', 'step 2', 'step 4']
    assert all('(5 examples)' in l for l in lines)
    # FSDP: 5 examples over 2 processes, whose forwards must pair up (one scores a sixth, uncounted)
    fsdp = run(repo, 'torchrun', '--standalone', '--nproc_per_node=2', 'train.py', *args, '--parallelism=fsdp',
               '--out_dir=fsdp').stdout
    fsdp_lines = [l for l in fsdp.splitlines() if 'hellaswag' in l]
    assert fsdp_lines[0] == lines[0] and len(fsdp_lines) == 3 and all('(5 examples)' in l for l in fsdp_lines)
