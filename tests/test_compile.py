"""
torch.compile on the CPU: the model compiles as one graph (fullgraph=True: no graph break) with every option,
with LoRA's adapters and with activation checkpointing, and gives eager's logits and gradients; maybe_compile
compiles it through Inductor without a word, and a model that will not compile as one graph runs eagerly after
one warning line that says where it stopped. No process-wide compiler setting is changed.
Run: python -m pytest tests/test_compile.py
"""
import pytest
import torch
import torch._dynamo

from model import GPT, GPTConfig
from nanogpt.device import maybe_compile

# every model option, LoRA and activation checkpointing, combined where they go together (a compile each costs)
OPTIONS = [{}, dict(tie_weights=False, bias=False, activation='gelu_tanh', pos_encoding='rotary', qk_norm=True,
                    norm='rmsnorm', zero_init_proj=True, logit_softcap=15.0),
           dict(activation='relu2', pos_encoding='alibi', spelled_out_keys=16, activation_checkpointing=True),
           dict(lora=True), dict(lora=True, pos_encoding='rotary', tie_weights=False, activation_checkpointing=True)]


def model_and_batch(lora=False, **options):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50, **options))
    if lora:
        from nanogpt.lora import add_adapters, lora_settings
        add_adapters(model, lora_settings(4, 16, 0.0, 'c_attn,c_proj,c_fc'))
    return model, torch.randint(0, 50, (2, 16))


def forward_backward(model, x):
    logits, loss = model(x, x)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    return logits.detach(), grads


@pytest.mark.parametrize('options', OPTIONS, ids=repr)
def test_the_model_compiles_as_one_graph(options):
    """Dynamo traces forward and backward whole (a graph break would raise under fullgraph=True); the graph is
    run by AOTAutograd's eager backend, whose numbers are eager's: Inductor's code generation is the next test."""
    model, x = model_and_batch(**options)
    eager = forward_backward(model, x)
    torch.compiler.reset()
    compiled = forward_backward(torch.compile(model, fullgraph=True, backend='aot_eager'), x)
    assert torch.allclose(compiled[0], eager[0], atol=1e-6)
    assert len(compiled[1]) == len(eager[1]) and all(torch.allclose(c, e, atol=1e-6) for c, e in zip(*compiled[1:],
                                                                                                        *eager[1:]))


@pytest.mark.filterwarnings('ignore:`torch.jit.script_method` is deprecated:DeprecationWarning')  # Inductor's own
def test_maybe_compile_compiles_through_inductor_silently(capfd):
    model, x = model_and_batch(pos_encoding='rotary', qk_norm=True, norm='rmsnorm', activation='relu2',
                               tie_weights=False, logit_softcap=15.0)
    suppress = torch._dynamo.config.suppress_errors
    torch.compiler.reset()
    compiled = maybe_compile(model, True, torch.device('cpu'))
    assert torch.allclose(compiled(x, x)[0], model(x, x)[0], atol=1e-5)
    assert 'warning' not in capfd.readouterr().err and torch._dynamo.config.suppress_errors == suppress
    assert list(compiled.parameters()) == list(model.parameters())
    assert set(compiled.state_dict()) == {f'_orig_mod.{k}' for k in model.state_dict()}  # as nanoGPT's compiled


class Breaks(torch.nn.Module):
    """A model Dynamo cannot trace as one graph: a print between two layers."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

    def forward(self, x):
        x = self.a(x)
        print("between the layers")
        return self.b(x)


def test_a_graph_break_is_one_warning_and_the_model_runs_eagerly(capfd):
    torch.manual_seed(0)
    model, x = Breaks(), torch.randn(3, 4)
    torch.compiler.reset()
    compiled = maybe_compile(model, True, torch.device('cpu'))
    assert torch.equal(compiled(x), model(x)) and torch.equal(compiled(x), model(x))
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('warning: torch.compile cannot compile the model as one graph (')
    assert 'test_compile.py:' in err[0] and err[0].endswith('the whole model runs eagerly, uncompiled')
    # a function (sample.py compiles a model's forward) the same way
    forward = maybe_compile(model.forward, True, torch.device('cpu'))
    assert torch.equal(forward(x), model(x)) and len(capfd.readouterr().err.strip().splitlines()) == 1
