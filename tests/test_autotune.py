"""
The speed choices made by measurement (nanogpt/autotune.py): the race picks the faster candidate from injected
timings and refuses one whose numbers differ from its reference's; its choice is cached on disk and
used again; train.py states its choice in one line, uses the cache on a second run, takes a forced
dtype, and a resume keeps the choices its checkpoint recorded even with the cache gone; a run gives the same
losses, bit for bit, whether it probed or read the cache, straight or resumed (full model and LoRA): the probe
draws nothing from the run's random stream.
Timings are injected or whatever the machine gives: no test asserts a wall time.
Run: python -m pytest tests/test_autotune.py
"""
import json
import os
import re

import pytest
import torch

from model import GPT, GPTConfig
from nanogpt import autotune
from nanogpt.autotune import Route
from conftest import TINY, iter_losses, losses, run


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv('NANOGPT_CACHE_DIR', str(tmp_path / 'cache'))
    return tmp_path / 'cache'


def injected(seconds):
    """A timer that measures nothing: each candidate's result is its run, its time the given one."""
    def timer(candidates, run, budget):
        return {c: seconds[c] for c in candidates}, {c: run(c) for c in candidates}
    return timer


def test_race_picks_the_faster_exact_candidate_and_caches_it(cache_dir):
    results = {'reference': [torch.ones(3)], 'close': [torch.ones(3) + 1e-7], 'fast but wrong': [torch.zeros(3)]}
    exact = lambda name, ref, got: autotune.relative_error(ref, got) < 1e-5
    lines = []
    timer = injected({'reference': 2.0, 'close': 1.0, 'fast but wrong': 0.1})
    choice = autotune.race('kernel', 'shape 1', list(results), results.get, exact, timer=timer, log=lines.append)
    assert choice == 'close'
    assert lines == ["kernel: close (2.00x faster than reference; fast but wrong refused: not the reference's "
                     "numbers; measured)"]
    with open(autotune.cache_path()) as f:
        cache = json.load(f)
    (key, entry), = cache.items()
    assert 'shape 1' in key and torch.__version__ in key and entry['choice'] == 'close'
    # a second race at the same key reads the cache, and measures nothing
    def no_timer(*a):
        raise AssertionError("measured again")
    lines.clear()
    assert autotune.race('kernel', 'shape 1', list(results), results.get, exact, timer=no_timer,
                         log=lines.append) == 'close'
    assert 'cached in' in lines[0]
    # another shape is measured anew, and there the reference is the faster
    timer = injected({'reference': 0.5, 'close': 1.0, 'fast but wrong': 0.1})
    assert autotune.race('kernel', 'shape 2', list(results), results.get, exact, timer=timer, log=lines.append) \
        == 'reference'


def test_training_route_race_over_real_blocks(cache_dir, restore_matmul_precision, monkeypatch):
    """choose_cpu_route runs every candidate on a real block: injected timings decide among the exact ones;
    a forced dtype keeps bfloat16 out of the race, and without probing the defaults hold."""
    monkeypatch.setattr(autotune, 'onednn_float32_exact', lambda: False)  # the oneDNN route: the next test
    config = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=11)
    names = [r.name for r in autotune.route_candidates('auto', 16, onednn=False)]
    assert names == ['float32, SDPA attention', 'float32, attention spelled out', 'bfloat16, SDPA attention',
                     'bfloat16, attention spelled out']
    times = dict(zip(names, (3.0, 2.0, 1.5, 1.0)))
    lines = []
    torch.manual_seed(0)
    stream = torch.get_rng_state()
    route = autotune.choose_cpu_route(config, 4, 16, 'auto', 1e15, log=lines.append, timer=injected(times))
    assert route == Route('bfloat16', 'default', 128) and 'measured' in lines[-1]
    assert torch.equal(torch.get_rng_state(), stream)  # the probe's block drew nothing from the run's stream
    forced = autotune.choose_cpu_route(config, 4, 16, 'float32', 1e15, log=lines.append, timer=injected(times))
    assert forced == Route('float32', 'default', 128)  # bfloat16 not raced: float32 was asked
    assert autotune.choose_cpu_route(config, 4, 16, 'auto', 1e15, probe=False) == Route('float32')
    # spelled-out attention only where the keys are few; the long context races dtypes alone
    assert [r.spelled_out_keys for r in autotune.route_candidates('auto', 1024, onednn=False)] == [0, 0]


def test_an_inexact_route_is_refused(cache_dir, restore_matmul_precision, monkeypatch):
    """A float32 route whose numbers are bfloat16's (oneDNN's 'medium' precision on AMX) cannot win, however fast."""
    config = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=11)
    real_apply = Route.apply

    def apply(route, model):  # this 'oneDNN' route computes in bfloat16: a wrong float32
        real_apply(route, model)
        for p in model.parameters():
            if route.matmuls == 'onednn':
                p.data = p.data.bfloat16().float()
    monkeypatch.setattr(Route, 'apply', apply)
    monkeypatch.setattr(autotune, 'onednn_float32_exact', lambda: True)
    names = [r.name for r in autotune.route_candidates('float32', 16, onednn=True)]
    times = {n: (0.1 if 'oneDNN' in n else 1.0) for n in names}
    lines = []
    route = autotune.choose_cpu_route(config, 4, 16, 'float32', 1e15, log=lines.append, timer=injected(times))
    assert route.matmuls == 'default' and 'oneDNN matmuls, SDPA attention' in lines[-1] and 'refused' in lines[-1]


def test_the_probe_budget_comes_from_the_runs_measured_time(cache_dir, restore_matmul_precision):
    """measured_run times the whole model (a small model's per-step overhead included, which a FLOP count misses),
    leaving the run's random stream and the gradients alone; a run of an hour gets its probe, one of a moment not."""
    config = GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=16, vocab_size=64)
    model = GPT(config)
    torch.manual_seed(1)
    stream = torch.get_rng_state()
    one, many = autotune.measured_run(model, 4, 16, 1)(), autotune.measured_run(model, 4, 16, 10 ** 6)
    assert one > 0 and torch.equal(torch.get_rng_state(), stream) and all(p.grad is None for p in model.parameters())
    lines = []
    autotune.choose_cpu_route(config, 4, 16, 'auto', 1e-3, log=lines.append)
    assert lines and 'too short to probe' in lines[-1]
    lines = []
    autotune.choose_cpu_route(config, 4, 16, 'auto', 3600.0, log=lines.append)
    assert lines and 'measured' in lines[-1]
    assert many() > 100 * one  # a million steps of it: long enough for a probe by any measure


def test_onednn_float32_route_only_where_exact(restore_matmul_precision):
    torch.set_float32_matmul_precision('highest')
    if autotune.onednn_float32_exact():  # then float32 products there carry float32's precision, not bfloat16's
        torch.set_float32_matmul_precision('medium')
        a, b = torch.randn(2, 256, 256, dtype=torch.float64)
        err = ((a.float() @ b.float()).double() - a @ b).abs().max() / (a.abs() @ b.abs()).max()
        assert err < 1e-6
    torch.set_float32_matmul_precision('high')  # a precision someone else set is left alone
    assert autotune.onednn_float32_exact() is False and torch.get_float32_matmul_precision() == 'high'


def test_train_states_its_choice_caches_it_and_a_resume_keeps_it(repo, tmp_path):
    env = {'NANOGPT_CACHE_DIR': str(tmp_path / 'cache')}
    # the probe may take the whole run's time: it is then measured whatever the machine's speed
    long = [*TINY, '--dtype=auto', '--out_dir=out', '--eval_interval=600', '--log_interval=100', '--max_iters=600',
            '--lr_decay_iters=700', '--always_save_checkpoint=True', '--autotune_share=1']
    first = run(repo, 'train.py', *long, env=env).stdout
    line = next(l for l in first.splitlines() if l.startswith('speed choices: '))
    assert line.endswith('measured)'), line
    chosen = line.split(': ', 1)[1].split(' (')[0]
    assert f"dtype: {chosen.split(',')[0]} ({chosen})" in first
    assert os.path.isfile(tmp_path / 'cache' / 'choices.json')
    second = run(repo, 'train.py', *long, '--out_dir=out2', env=env).stdout
    assert f'speed choices: {chosen} (' in second and 'cached in' in second
    # forcing: no race, the asked dtype
    forced = run(repo, 'train.py', *long, '--out_dir=out3', '--dtype=float32', '--autotune=False', '--max_iters=2',
                 env=env).stdout
    assert 'speed choices' not in forced and 'dtype: float32 (float32, SDPA attention)' in forced
    # a resume with the cache gone keeps the checkpoint's choices
    ckpt = torch.load(os.path.join(repo, 'out', 'ckpt.pt'), weights_only=True)
    assert Route(**ckpt['speed_choices']).name == chosen
    os.remove(tmp_path / 'cache' / 'choices.json')
    resumed = run(repo, 'train.py', *long, '--init_from=resume', '--max_iters=1200', '--lr_decay_iters=1300',
                  env=env).stdout
    assert f"speed choices: {chosen} (the checkpoint's)" in resumed
    assert not os.path.exists(tmp_path / 'cache' / 'choices.json')


def test_route_apply_tells_the_model(restore_matmul_precision):
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=11))
    Route('float32', 'default', 128).apply(model)
    assert model.config.spelled_out_keys == 128
    Route('bfloat16', 'default', 0).apply(model)
    assert model.config.spelled_out_keys == 0


@pytest.mark.parametrize('lora', [False, True], ids=['full', 'lora'])
def test_a_run_is_the_same_whether_it_probed_or_not(trained_copy, tmp_path, lora):
    """The same command, with the choices cache empty (the probe runs) and then filled (stopped at iter 10 and
    resumed), gives the same losses bit for bit: LoRA's adapters are drawn after the probe. 32 micro-steps per
    iteration, with the whole run's time the probe's to take (--autotune_share=1), get it probed on any machine."""
    env = {'NANOGPT_CACHE_DIR': str(tmp_path / 'cache')}
    common = [*TINY, '--batch_size=1', '--gradient_accumulation_steps=32', '--eval_interval=10', '--dropout=0.1',
              '--eval_iters=1', '--autotune_share=1']
    common += ['--init_from=out/ckpt.pt', '--lora_rank=4', '--learning_rate=1e-2'] if lora else []
    probed = run(trained_copy, 'train.py', *common, '--max_iters=20', '--out_dir=probed', env=env).stdout
    assert re.search(r'^speed choices: .*measured\)$', probed, re.M), probed
    stopped = run(trained_copy, 'train.py', *common, '--max_iters=10', '--out_dir=cached', env=env).stdout
    assert 'cached in' in stopped
    resumed = run(trained_copy, 'train.py', *common, '--max_iters=20', '--out_dir=cached', '--init_from=resume',
                  env=env).stdout
    assert losses(os.path.join(trained_copy, 'probed')) == losses(os.path.join(trained_copy, 'cached'))
    assert iter_losses(resumed) == {i: l for i, l in iter_losses(probed).items() if i >= 10}
