"""
Speed choices made by measurement: candidates that give their reference's numbers are timed at the
run's own shapes, the fastest is kept and stated in one line, and the decision is cached on disk by
machine, torch version and shape. Holds the race itself and the CPU training route it decides.
"""
import json
import os
import sys
import time
from dataclasses import dataclass, replace

import torch

from nanogpt.util import written

PROBE_SECONDS = 1.0  # the most a probe takes, unless a race needs more and the run's share covers it
PROBE_SHARE = 0.02  # ... and at most this share of the run's estimated time, unless told another


def cache_path():
    """Where decisions are kept: $NANOGPT_CACHE_DIR/choices.json, by default $XDG_CACHE_HOME/nanogpt (~/.cache)."""
    root = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(os.environ.get('NANOGPT_CACHE_DIR') or os.path.join(root, 'nanogpt'), 'choices.json')


def read_cache():
    try:
        with open(cache_path()) as f:
            cache = json.load(f)
        return cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):  # none yet, or unreadable: probe again
        return {}


def write_cache(key, entry):
    path = cache_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError:
        return  # a read-only home: the choice holds for this run only
    cache = read_cache()
    cache[key] = entry
    with written(path, 'w') as f:
        json.dump(cache, f, indent=1, sort_keys=True)


def machine(device):
    """The machine a measurement holds for: the GPU's name, or the CPU's model (and its family and model numbers)."""
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    fields = {}
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                k, _, v = line.partition(':')
                fields.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    import platform
    name = fields.get('model name') or platform.processor() or platform.machine()
    numbers = f" (family {fields['cpu family']} model {fields['model']})" if 'cpu family' in fields else ''
    return f"{name}{numbers}, {os.cpu_count()} CPUs"


def time_rounds(candidates, run, budget):
    """
    Seconds per call of each candidate, the fastest of its timed calls: every candidate is called once
    untimed (its result kept), then all are timed in turn, round after round, while budget seconds last
    (two rounds at least), so that a drift of the machine's speed falls on every candidate alike.
    """
    results = {c: run(c) for c in candidates}
    best = {c: float('inf') for c in candidates}
    start, rounds = time.perf_counter(), 0
    while rounds < 2 or time.perf_counter() - start < budget:
        for c in candidates:
            t0 = time.perf_counter()
            run(c)
            best[c] = min(best[c], time.perf_counter() - t0)
        rounds += 1
    return best, results


def cached(what, key, candidates, log=print):
    """The choice a race at key made before on this machine and torch (stated in one line), or None."""
    entry = read_cache().get(f"{what} | {key} | torch {torch.__version__}")
    if not (isinstance(entry, dict) and entry.get('choice') in candidates):
        return None
    log(f"{what}: {entry['choice']} ({entry.get('note', '')}; cached in {cache_path()})")
    return entry['choice']


def race(what, key, candidates, run, exact, budget=PROBE_SECONDS, timer=time_rounds, log=print):
    """
    The fastest of candidates (names, the reference first) at key (the machine and shape), from the cache
    or measured: run(name) computes with that candidate and returns its result, exact(name, reference's
    result, its result) says whether it may enter, and timer(candidates, run, budget) -> ({name: seconds},
    {name: result}) measures them (tests inject timings there). States the choice in one line.
    """
    choice = cached(what, key, candidates, log)
    if choice is not None:
        return choice
    seconds, results = timer(candidates, run, budget)
    reference = results[candidates[0]]
    refused = [c for c in candidates[1:] if not exact(c, reference, results[c])]
    fair = {c: s for c, s in seconds.items() if c not in refused}
    order = sorted(fair, key=fair.get)
    choice = order[0]
    note = f"{fair[order[1]] / fair[choice]:.2f}x faster than {order[1]}" if len(order) > 1 else "the only exact one"
    if refused:
        note += f"; {', '.join(refused)} refused: not the reference's numbers"
    log(f"{what}: {choice} ({note}; measured)")
    write_cache(f"{what} | {key} | torch {torch.__version__}",
                {'choice': choice, 'note': note, 'seconds': {c: round(s, 6) for c, s in seconds.items()}})
    return choice


def relative_error(reference, got):
    """The largest difference of any tensor from its reference, over the largest reference value."""
    return max(((g.float() - r.float()).abs().max() / r.float().abs().max().clamp(min=1e-30)).item()
               for r, g in zip(reference, got))


# -----------------------------------------------------------------------------
# the CPU training route: the compute dtype (under dtype='auto'), where float32 matmuls go, and how
# attention is spelled, raced on one block of the run's model at its own width and sequence length

@dataclass(frozen=True)
class Route:
    dtype: str = 'float32'  # 'float32' or 'bfloat16' (autocast)
    matmuls: str = 'default'  # float32 matmuls: 'default' (PyTorch's choice: MKL on x86) or 'onednn'
    spelled_out_keys: int = 0  # attention over up to this many keys as two matmuls instead of SDPA

    @property
    def name(self):
        parts = [self.dtype] + (['oneDNN matmuls'] if self.matmuls == 'onednn' else [])
        return ', '.join(parts + ['attention spelled out' if self.spelled_out_keys else 'SDPA attention'])

    def as_dict(self):
        return {'dtype': self.dtype, 'matmuls': self.matmuls, 'spelled_out_keys': self.spelled_out_keys}

    def apply(self, model):
        """Take this route for model: the process's float32 matmuls, and how model spells attention."""
        if self.matmuls == 'onednn':  # (the default route leaves the precision as it is)
            torch.set_float32_matmul_precision('medium')
        model.config.spelled_out_keys = self.spelled_out_keys


def onednn_float32_exact():
    """
    Whether float32 matmuls stay float32-exact on oneDNN. PyTorch sends them there at the 'medium'
    precision, which also lets oneDNN round operands to bfloat16 where it has kernels for that (AMX):
    a probe product tells. Only where the precision is still PyTorch's default ('highest').
    """
    if not (hasattr(torch.backends.mkldnn, 'matmul') and torch.backends.mkldnn.is_available()):
        return False  # torch < 2.9: no way to tell where matmuls go
    try:
        if torch.get_float32_matmul_precision() != 'highest':
            return False  # someone else's choice stands
    except RuntimeError:  # backends set apart through the newer per-backend API
        return False
    a, b = torch.randn(2, 96, 96, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.set_float32_matmul_precision('medium')
    try:
        on = torch.backends.mkldnn.matmul.fp32_precision == 'bf16'
        err = ((a.float() @ b.float()).double() - a @ b).abs().max() / (a.abs() @ b.abs()).max()
    finally:
        torch.set_float32_matmul_precision('highest')
    return on and err <= 1e-6


def route_candidates(dtype, block_size, onednn):
    """The routes to race: float32 (on oneDNN too where exact), bfloat16 under 'auto'; attention spelled out
    over up to 128 keys."""
    spellings = (0, 128) if block_size <= 128 else (0,)
    routes = [Route('float32', 'default', k) for k in spellings]
    routes += [Route('float32', 'onednn', k) for k in spellings] if onednn else []
    routes += [Route('bfloat16', 'default', k) for k in spellings] if dtype == 'auto' else []
    return routes


def probe_shape(config, batch_size, block_size):
    """(B, T) of the probe: the run's sequence length (at most 256), as many of its sequences as about
    4 GFLOP a step of one block allows."""
    T = min(block_size, 256)
    per_row = 72 * config.n_embd ** 2  # a block's forward and backward: 6 x its 12 C^2 weights per row
    rows = max(T, min(batch_size * block_size, int(4e9 / per_row)))
    return max(1, min(batch_size, rows // T)), T


def probe_block(config, B, T):
    """One block of the run's model (its width and options) and a (B, T) input for it, drawn from generators of
    their own: a measurement leaves the run's random stream as it found it, so a run is the same probed or not."""
    from model import GPT
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        probe = GPT(replace(config, n_layer=1, vocab_size=64, block_size=T, dropout=0.0))
    x = torch.randn(B, T, config.n_embd, generator=torch.Generator().manual_seed(0))
    return probe, x


def measured_run(model, batch_size, block_size, passes, backward=True):
    """
    The run's expected wall time, as choose_cpu_route takes it: a callable that times one forward (and backward)
    pass of model itself at batch_size x block_size, as PyTorch runs it by default, and counts passes of them. The
    whole model is timed, not its FLOPs counted, so a small model's per-step overhead is in it. Its second pass is
    timed (the first pays one-time costs) unless the first took over a second, or already puts the run under
    at_least. Its tokens come from a generator of its own; the run's random streams and the model's gradients are
    left as they were.
    """
    def seconds(at_least=0.0):
        x = torch.randint(model.config.vocab_size, (batch_size, block_size), generator=torch.Generator().manual_seed(0))
        grads = [p.grad for p in model.parameters()]
        took = []
        with torch.random.fork_rng(devices=[]), torch.set_grad_enabled(backward):
            # the first pass overstates a step: where even it puts the run under at_least, one pass is enough
            while len(took) < 2 and sum(took) <= 1.0 and not (took and took[0] * passes < at_least):
                t0 = time.perf_counter()
                loss = model(x, x)[1]
                if backward:
                    loss.backward()
                took.append(time.perf_counter() - t0)
        for p, g in zip(model.parameters(), grads):
            p.grad = g
        return took[-1] * passes
    return seconds


def choose_cpu_route(config, batch_size, block_size, dtype, run_seconds, probe=True, log=print, timer=time_rounds,
                     share=PROBE_SHARE):
    """
    The fastest exact training route on this CPU for a model of config trained at batch_size x block_size:
    dtype is the setting ('auto' races bfloat16 against float32; any other is kept), run_seconds the run's
    expected wall time (a number, or measured_run's callable, called only when a probe is to run), which keeps
    the probe within share of it. Without probe, or for a run too short to probe, PyTorch's defaults.
    Returns a Route.
    """
    fixed = 'float32' if dtype == 'auto' else dtype
    if fixed not in ('float32', 'bfloat16'):  # float16 on a CPU: nothing to race
        return Route(fixed)
    if not probe:
        return Route(fixed)
    onednn = onednn_float32_exact() if fixed == 'float32' else False
    candidates = route_candidates(dtype, block_size, onednn)
    if fixed == 'bfloat16':
        candidates = [replace(c, dtype='bfloat16') for c in candidates]
    if len(candidates) == 1:
        return candidates[0]
    B, T = probe_shape(config, batch_size, block_size)
    key = (f"{machine(torch.device('cpu'))} | train dtype={dtype} n_embd={config.n_embd} n_head={config.n_head} "
           f"bias={config.bias} activation={config.activation} norm={config.norm} qk_norm={config.qk_norm} {B}x{T}")
    by_name = {c.name: c for c in candidates}
    choice = cached('speed choices', key, list(by_name), log)
    if choice is not None:
        return by_name[choice]
    model, x = probe_block(config, B, T)
    block = model.transformer.h[0]
    params = list(block.parameters())

    baseline = torch.get_float32_matmul_precision()

    def run(route):
        torch.set_float32_matmul_precision(baseline)
        route.apply(model)
        x.grad = None
        for p in params:
            p.grad = None
        xr = x.detach().requires_grad_()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=route.dtype == 'bfloat16'):
            y = block(xr, spelled_out_keys=model.config.spelled_out_keys)
        y.float().square().mean().backward()
        return [y.detach(), xr.grad] + [p.grad for p in params]

    def exact(route, reference, got):  # float32 routes: float32's rounding; bfloat16: its own, and finite
        tolerance = 1e-4 if route.dtype == 'float32' else 0.1
        return all(torch.isfinite(g).all() for g in got) and relative_error(reference, got) <= tolerance

    # what a race needs: three rounds of each candidate, at the reference's speed (the faster of its second and
    # third calls: the first pays one-time costs, and a call slowed by the machine's load would overstate it); it
    # runs where share of the run's measured time covers that
    run(candidates[0])
    step = float('inf')
    for _ in range(2):
        t0 = time.perf_counter()
        run(candidates[0])
        step = min(step, time.perf_counter() - t0)
    need = 3 * step * len(candidates)
    allowed = share * (run_seconds(need / share) if callable(run_seconds) else run_seconds)
    budget = min(allowed, max(PROBE_SECONDS, need))
    if timer is time_rounds and budget < need:
        log(f"speed choices: the run is too short to probe them; {candidates[0].name}")
        torch.set_float32_matmul_precision(baseline)
        return candidates[0]
    chosen = race('speed choices', key, list(by_name), lambda n: run(by_name[n]),
                  lambda n, r, g: exact(by_name[n], r, g), budget - step, timer, log)
    torch.set_float32_matmul_precision(baseline)
    return by_name[chosen]


def cpu_route(config, batch_size, block_size, dtype, run_seconds, probe=True, saved=None, ddp=False, share=PROBE_SHARE):
    """The route of a run on CPUs: its checkpoint's (saved, for a bit-exact resume), else choose_cpu_route's,
    measured on rank 0 (probe there alone) and taken by every rank under DDP."""
    route = restore_route(saved, dtype)
    if route is None:
        route = choose_cpu_route(config, batch_size, block_size, dtype, run_seconds, probe, share=share)
        if ddp:
            from nanogpt.distributed import broadcast_object
            route = broadcast_object(route)
    return route


def restore_route(saved, dtype):
    """A checkpoint's Route (its 'speed_choices'), which a resume keeps so that it stays bit-exact; a dtype
    forced now overrides the saved one. None if the checkpoint has none."""
    if not saved:
        return None
    route = Route(**saved)
    if dtype != 'auto' and dtype != route.dtype:
        print(f"warning: the checkpoint trained in {route.dtype}; {dtype} as asked (not a bit-exact continuation)",
              file=sys.stderr)
        route = replace(route, dtype=dtype)
    print(f"speed choices: {route.name} (the checkpoint's)")
    return route
