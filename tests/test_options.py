"""
The architecture options beyond GPT-2 (rotary and ALiBi positions, QK-norm, ReLU^2, RMSNorm, an
untied head, zero-initialised projections, a logit soft-cap) and the Muon optimizer: each trains;
rotary scores depend only on the distance between tokens; ALiBi's bias is the paper's; cached and
uncached generation agree for every position encoding, past block_size too; a run with options
resumes bit for bit and samples; export refuses what Hugging Face GPT-2 cannot represent.
Run: python -m pytest tests/test_options.py
"""
import glob
import os

import pytest
import torch

from model import GPT, GPTConfig, alibi_slopes, rotate
from conftest import TINY, char_samples_ok, iter_losses, one_line_error, run
from nanogpt.generate import KVCache
from nanogpt.optim import MuonAdamW, orthogonalize

OPTIONS = [dict(pos_encoding='rotary'), dict(pos_encoding='alibi'), dict(qk_norm=True), dict(activation='relu2'),
           dict(norm='rmsnorm'), dict(tie_weights=False), dict(tie_weights=False, zero_init_proj=True),
           dict(logit_softcap=15.0)]


@pytest.mark.parametrize('options', OPTIONS, ids=lambda o: ','.join(f'{k}={v}' for k, v in o.items()))
@pytest.mark.parametrize('optimizer', ['adamw', 'muon'])
def test_each_option_trains(options, optimizer):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=29, **options))
    opt = model.configure_optimizers(0.1, 3e-3, (0.9, 0.95), optimizer=optimizer, muon_lr=0.02)
    x = torch.randint(29, (8, 17))
    losses = []
    for _ in range(15):
        _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3, losses
    # the option took effect: the same weights in a GPT-2 model compute another loss
    plain = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=29))
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k in plain.state_dict()}, strict=False)
    assert abs(plain(x[:, :-1], x[:, 1:])[1].item() - model(x[:, :-1], x[:, 1:])[1].item()) > 1e-3
    block_matrix = model.transformer.h[0].attn.c_attn.weight
    assert ('momentum_buffer' in opt.state[block_matrix]) == (optimizer == 'muon')
    if options.get('zero_init_proj'):
        assert GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=5, **options)).lm_head.weight.abs().sum() == 0


def test_default_parameters_keep_nanogpts_order():
    """A checkpoint's optimizer state numbers the parameters: a default model lists them as nanoGPT's does."""
    names = [n for n, _ in GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=5, block_size=4)).named_parameters()]
    assert names[:4] == ['transformer.wte.weight', 'transformer.wpe.weight', 'transformer.h.0.ln_1.weight',
                         'transformer.h.0.ln_1.bias']
    assert names[-2:] == ['transformer.ln_f.weight', 'transformer.ln_f.bias']


def test_rotary_scores_depend_only_on_distance():
    torch.manual_seed(0)
    hs = 16
    inv_freq = 10000.0 ** -(torch.arange(0, hs, 2).float() / hs)
    q, k = torch.randn(1, 1, 1, hs), torch.randn(1, 1, 1, hs)

    def score(i, j):
        ai, aj = torch.tensor([[i * 1.0]]) * inv_freq, torch.tensor([[j * 1.0]]) * inv_freq
        return (rotate(q, ai.cos(), ai.sin()) * rotate(k, aj.cos(), aj.sin())).sum().item()
    for i, j in [(5, 2), (9, 9), (3, 0)]:
        assert score(i, j) == pytest.approx(score(i + 37, j + 37), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)  # ... and does depend on it


def test_alibi_bias_is_the_papers():
    assert alibi_slopes(2).tolist() == [2 ** -4, 2 ** -8]
    assert alibi_slopes(8).tolist() == [2 ** -(i + 1) for i in range(8)]
    assert alibi_slopes(3).tolist() == [2 ** -4, 2 ** -8, 2 ** -2]  # 2 heads' slopes, then 4 heads' odd ones
    # one head, three tokens: attention weights softmax(q.k / sqrt(hs) - slope * distance), causal
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=4, block_size=8, vocab_size=5, pos_encoding='alibi', bias=False))
    attn = model.transformer.h[0].attn
    x = torch.randn(1, 3, 4)
    q, k, v = attn.c_attn(x).split(4, dim=2)
    scores = q[0] @ k[0].T / 2 - 2 ** -8 * torch.tensor([[0., 1, 2], [1, 0, 1], [2, 1, 0]])
    scores = scores.masked_fill(torch.ones(3, 3).triu(1).bool(), float('-inf'))
    expected = attn.c_proj(scores.softmax(-1) @ v[0])
    mask = (-model.slopes[:, None, None] * torch.tensor([[0, -1, -2], [1, 0, -1], [2, 1, 0]])).masked_fill(
        torch.ones(3, 3).triu(1).bool(), float('-inf'))
    assert torch.allclose(attn(x, mask=mask)[0], expected, atol=1e-6)


@pytest.mark.parametrize('pos_encoding', ['learned', 'rotary', 'alibi'])
@pytest.mark.parametrize('spelled_out', [0, 128])
def test_cached_and_uncached_generation_agree(pos_encoding, spelled_out):
    """Greedy tokens agree for prompts shorter and longer than block_size, and 3x past it."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=3, n_embd=48, block_size=16, vocab_size=37, pos_encoding=pos_encoding,
                          qk_norm=pos_encoding == 'rotary')).eval()
    model.config.spelled_out_keys = spelled_out
    for prompt in (5, 40):
        idx = torch.randint(37, (2, prompt))
        cached = model.generate(idx, 30, temperature=0)
        assert torch.equal(cached, model.generate(idx, 30, temperature=0, use_cache=False))
    if pos_encoding != 'learned':
        # the ring cache, one token at a time, gives the logits of the whole sequence's windowed forward
        x = torch.randint(37, (1, 50))
        cache = KVCache(2, 16)
        stepped = torch.cat([model(x[:, i:i + 1], cache=cache)[0] for i in range(50)], dim=1)
        assert torch.allclose(stepped, model(x, x)[0], atol=1e-5)


def test_muon_update_is_orthogonal():
    torch.manual_seed(0)
    for shape in [(64, 32), (32, 96)]:
        s = torch.linalg.svdvals(orthogonalize(torch.randn(shape), torch.float32))
        assert s.min() > 0.6 and s.max() < 1.25, s  # the quintic iteration's band around 1
    w = torch.nn.Parameter(torch.randn(16, 8))
    opt = MuonAdamW([{'params': [w], 'muon': True}], lr=0.1, betas=(0.9, 0.95), momentum=0.0)
    before = w.detach().clone()
    w.grad = torch.randn(16, 8)
    opt.step()
    step = (before - w.detach()) / (0.1 * 2 ** 0.5)  # lr scaled by sqrt(rows / cols)
    assert torch.allclose(step, orthogonalize(w.grad, torch.float32), atol=1e-6)
    assert opt.state[w]['momentum_buffer'].shape == w.shape


def test_muon_matrices_take_no_weight_decay_and_adamws_do():
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=5, block_size=4))
    opt = model.configure_optimizers(0.5, 0.1, (0.9, 0.95), optimizer='muon', muon_lr=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: only weight decay could move a weight
    opt.step()
    after = dict(model.named_parameters())
    assert torch.equal(after['transformer.h.0.attn.c_attn.weight'], before['transformer.h.0.attn.c_attn.weight'])
    assert torch.allclose(after['transformer.wte.weight'], before['transformer.wte.weight'] * (1 - 0.1 * 0.5))


def test_options_resume_exactly_sample_and_refuse_export(repo):
    args = [*TINY, '--pos_encoding=rotary', '--qk_norm=True', '--activation=relu2', '--norm=rmsnorm',
            '--tie_weights=False', '--zero_init_proj=True', '--logit_softcap=15.0', '--optimizer=muon',
            '--gradient_accumulation_steps=2', '--eval_interval=4', '--dropout=0.1']
    straight = run(repo, 'train.py', *args, '--max_iters=8', '--out_dir=a').stdout
    run(repo, 'train.py', *args, '--max_iters=4', '--out_dir=b')
    resumed = run(repo, 'train.py', *args, '--max_iters=8', '--out_dir=b', '--init_from=resume').stdout
    a, b = iter_losses(straight), iter_losses(resumed)
    assert sorted(b) == list(range(4, 9)) and all(a[i] == b[i] for i in b)
    ckpt = torch.load(os.path.join(repo, 'b', 'ckpt.pt'), weights_only=True)
    assert ckpt['model_options']['pos_encoding'] == 'rotary' and 'transformer.wpe.weight' not in ckpt['model']
    assert not torch.equal(ckpt['model']['lm_head.weight'], ckpt['model']['transformer.wte.weight'])
    wa = torch.load(os.path.join(repo, 'a', 'ckpt.pt'), weights_only=True)['model']
    assert all(torch.equal(wa[k], ckpt['model'][k]) for k in wa)
    opt = torch.load(glob.glob(os.path.join(repo, 'b', 'optimizer-*.pt'))[0], weights_only=True)['optimizer']
    assert any('momentum_buffer' in s for s in opt['state'].values())
    sample = run(repo, 'sample.py', '--out_dir=b', '--device=cpu', '--num_samples=1', '--max_new_tokens=40').stdout
    assert char_samples_ok(sample, 1, 40), sample  # past block_size: the rotary window
    one_line_error(run(repo, 'export.py', '--out_dir=b', check=False), "cannot represent")
    one_line_error(run(repo, 'train.py', *TINY, '--pos_encoding=rope', check=False),
                   "pos_encoding must be one of learned, rotary, alibi; got 'rope'")
    one_line_error(run(repo, 'train.py', *TINY, '--optimizer=sgd', check=False), "optimizer must be 'adamw' or 'muon'")
