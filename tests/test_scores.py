"""Pruning scores: each formula against an independent float64 computation,
chunked scoring equal to whole-tensor scoring, movement's accumulation, and
every score driving GradualPruner on a 1.07M-parameter MLP to its target.

Formulas (docs/algorithms.md, DESIGN.md): m, v are Adam's exp_avg and
exp_avg_sq, eps is SCORE_EPS, t the step. Scores are "higher = keep"; masks
are bool and zero the weight and every optimizer moment where pruned.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lib.config import load_settings
from lib.optim import build_optimizer
from lib.pruning import SCORES, STATE_SCORES, GradualPruner, measure_sparsity, prunable_parameters
from lib.pruning.scores import SCORE_EPS, ScoreInputs
from lib.pruning.threshold import SAMPLE_SIZE

EPS = SCORE_EPS
BETA1, STEP = 0.9, 3


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One thread: on 2 shared cores, intra-op threads waiting on each other cost more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- formulas -------------------------------------------------------------------------------


def score_inputs(n=301, seed=0):
    """float32 weights and moments as training holds them, with zeros of every kind mixed in."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=gen) * 0.05
    m = torch.randn(n, generator=gen) * 1e-3
    v = torch.rand(n, generator=gen) ** 4 * 1e-4 + 1e-3 * torch.rand(n, generator=gen) ** 8
    w[::17] = 0.0  # pruned weights
    m[5::13] = 0.0
    v[7::11] = 0.0
    w0 = w + torch.randn(n, generator=gen) * 0.01
    movement = torch.randn(n, generator=gen) * 1e-4
    return w, m, v, w0, movement


def expected_score(name, w, m, v, w0, movement):
    """The documented formula of `name`, in float64 NumPy from the float32 inputs."""
    w, m, v, w0, movement = (t.double().numpy() for t in (w, m, v, w0, movement))
    aw = np.abs(w)
    formulas = {
        "magnitude": lambda: aw,
        "movement": lambda: movement,
        "movement-upstream": lambda: w * (w - w0),
        "bitter0": lambda: np.abs(w * m) * aw / (np.sqrt(v) + EPS),
        "bitter1": lambda: aw / (np.abs(m) + EPS),
        "bitter2": lambda: aw * np.sqrt(v) / (np.abs(m) + EPS),
        "bitter3": lambda: aw * np.sqrt(np.abs(m) + EPS),
        "bitter7": lambda: aw * (np.abs(v) + EPS) ** 0.25,
        "bitter8": lambda: aw * np.sqrt(np.abs(m) / (1.0 - BETA1 ** STEP)),
        "bitter9": lambda: aw * (np.abs(v) + EPS) ** 0.25,
        "bitter1-upstream": lambda: aw,
        "bitter2-upstream": lambda: aw,
        "bitter8-upstream": lambda: aw * (np.abs(v) + EPS) ** 0.25,
    }
    return formulas[name]()


FP16_SCORES = ("bitter9", "bitter8-upstream")


def fp16_bitter7(w, v):
    """bitter7 as upstream computes it in half precision: each operation rounded to fp16 once."""
    half = lambda a: np.asarray(a, dtype=np.float32).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore"):
        x = half(half(v.numpy()) + np.float32(EPS))
        root = half(np.float32(1) / np.sqrt(half(np.float32(1) / np.sqrt(x))))
    return np.abs(half(root * half(w.numpy())))


def fp16_ulps(a, b):
    """Distance of a from b in units of b's last fp16 place."""
    b16 = np.asarray(b, dtype=np.float16)
    return np.abs(np.asarray(a, dtype=np.float64) - b16.astype(np.float64)) / np.spacing(np.abs(b16)).astype(np.float64)


def run_score(name, inputs, n):
    out = torch.full((n,), float("nan"))
    SCORES[name].fn(inputs, out)
    return out


def test_every_score_has_a_formula_here():
    w, m, v, w0, movement = score_inputs(5)
    for name in SCORES:
        expected_score(name, w, m, v, w0, movement)  # KeyError names a score without a test
    assert set(STATE_SCORES) == {name for name in SCORES if name.startswith("bitter")}


@pytest.mark.parametrize("name", sorted(SCORES))
def test_score_matches_its_formula(name):
    """float32 scores equal the float64 formula (fp16 scores to fp16 precision where v is representable)."""
    w, m, v, w0, movement = score_inputs()
    inputs = ScoreInputs(w, m, v, w0 if SCORES[name].tracks == "initial" else movement, 1.0 - BETA1 ** STEP)
    got = run_score(name, inputs, w.numel()).double().numpy()
    expected = expected_score(name, w, m, v, w0, movement)
    if name in FP16_SCORES:
        normal = v.numpy() > 1e-4  # fp16 holds v and v+eps to 3 digits here; below, the flush is the point
        assert normal.sum() > 50
        np.testing.assert_allclose(got[normal], expected[normal], rtol=3e-3, atol=0)
        # torch's CPU half rsqrt is not always correctly rounded (its scalar tail loop differs from the
        # vector body by an ulp), so: exact against the same torch fp16 ops, within 2 ulps of NumPy's.
        fp16_torch = torch.rsqrt(torch.rsqrt(v.half() + EPS)).mul(w.half()).abs().double().numpy()
        np.testing.assert_array_equal(got, fp16_torch)
        assert fp16_ulps(got, fp16_bitter7(w, v)).max() <= 2
        assert (got[v.numpy() == 0] == 0).all()  # v + 1e-8 flushes to 0 in fp16 and the score with it
    else:
        np.testing.assert_allclose(got, expected, rtol=2e-6, atol=0)
    if not SCORES[name].signed:
        assert (got >= 0).all() and (got[w.numpy() == 0] == 0).all()


@pytest.mark.parametrize("name", sorted(SCORES))
def test_chunked_scoring_equals_whole_and_take_gathers(name):
    """Scoring views chunk by chunk gives the whole-tensor scores; take(index) scores those positions."""
    w, m, v, w0, movement = score_inputs()
    shape = (7, 43)
    tracked = w0 if SCORES[name].tracks == "initial" else movement
    inputs = ScoreInputs(w.view(shape), m.view(shape), v.view(shape), tracked.view(shape), 1.0 - BETA1 ** STEP)
    n = w.numel()
    whole = run_score(name, ScoreInputs(w, m, v, tracked, 1.0 - BETA1 ** STEP), n)
    for size in (1, 10, 64, 300):
        pieces = [run_score(name, inputs.chunk(start, min(start + size, n)), min(size, n - start))
                  for start in range(0, n, size)]
        if name in FP16_SCORES:  # the ulp of torch's half rsqrt depends on an entry's place in the chunk
            assert fp16_ulps(torch.cat(pieces).numpy(), whole.numpy()).max() <= 2, f"chunk size {size}"
        else:
            assert torch.equal(torch.cat(pieces), whole), f"chunk size {size}"
    index = torch.tensor([0, 5, 7, 17, 42, 43, 299, 300, 5])
    taken = inputs.take(index)
    assert torch.equal(taken.weight, w[index]) and torch.equal(taken.exp_avg_sq, v[index])
    assert taken.bias_correction1 == inputs.bias_correction1
    if name in FP16_SCORES:
        assert fp16_ulps(run_score(name, taken, index.numel()).numpy(), whole[index].numpy()).max() <= 2
    else:
        assert torch.equal(run_score(name, taken, index.numel()), whole[index])


def test_chunk_is_a_view_not_a_copy():
    w, m, v, _, _ = score_inputs()
    chunk = ScoreInputs(w, m, v).chunk(10, 20)
    assert chunk.weight.data_ptr() == w[10:].data_ptr() and chunk.exp_avg.data_ptr() == m[10:].data_ptr()
    assert chunk.tracked is None


# --- the pruner ranks by these formulas, globally -------------------------------------------


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


@pytest.mark.parametrize("name", ["magnitude", "movement-upstream", "bitter0", "bitter2", "bitter7", "bitter8"])
def test_pruner_prunes_the_globally_lowest_formula_scores(name):
    """update_masks prunes exactly the k lowest float64 formula scores over all layers, read from Adam's state."""
    model = tiny_model()
    initial = {n: p.detach().clone() for n, p in prunable_parameters(model).items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05, betas=(BETA1, 0.999))
    pruner = GradualPruner(model, optimizer, name, 0.9, warmup_steps=0, ramp_end_step=10, frequency=1,
                           chunk_size=7, sample_size=16)
    gen = torch.Generator().manual_seed(5)
    for _ in range(STEP):
        optimizer.zero_grad()
        model(torch.randn(4, 6, generator=gen)).square().sum().backward()
        optimizer.step()
    params = prunable_parameters(model)
    expected = np.concatenate([expected_score(name, p.detach().reshape(-1), optimizer.state[p]["exp_avg"].reshape(-1),
                                              optimizer.state[p]["exp_avg_sq"].reshape(-1),
                                              initial[n].reshape(-1), torch.zeros(p.numel()))
                               for n, p in params.items()])
    k = round(0.6 * expected.size)
    order = np.sort(expected)
    assert order[k] - order[k - 1] > 1e-5 * abs(order[k])  # no near-tie at the cut: the ranking is unambiguous
    pruner.update_masks(0.6)
    pruned = np.concatenate([(~pruner.masks[n]).reshape(-1).numpy() for n in params])
    np.testing.assert_array_equal(pruned, expected <= order[k - 1])
    assert 0 < pruned[:30].sum() and 0 < pruned[30:].sum()  # both layers lose weights: one global cut


# --- movement bookkeeping in GradualPruner -------------------------------------------------


def test_movement_accumulates_minus_gradient_times_weight():
    """pruner.tracked after 3 steps is sum over steps of -g*w, w taken before each optimizer step."""
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    pruner = GradualPruner(model, optimizer, "movement", 0.5, warmup_steps=100, ramp_end_step=200, frequency=1)
    gen = torch.Generator().manual_seed(2)
    expected = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in prunable_parameters(model).items()}
    for step in range(3):
        optimizer.zero_grad()
        model(torch.randn(4, 6, generator=gen)).square().sum().backward()
        for name, p in prunable_parameters(model).items():
            expected[name] -= p.grad.double() * p.detach().double()
        pruner.before_optimizer_step()
        optimizer.step()
        pruner.after_optimizer_step(step)
    for name, tracked in pruner.tracked.items():
        assert expected[name].abs().max() > 0
        torch.testing.assert_close(tracked.double(), expected[name], rtol=1e-5, atol=1e-9)


def test_movement_upstream_keeps_the_initial_weights():
    """movement-upstream tracks w0, which training leaves untouched while w moves."""
    model = tiny_model()
    initial = {name: p.detach().clone() for name, p in prunable_parameters(model).items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    pruner = GradualPruner(model, optimizer, "movement-upstream", 0.5, warmup_steps=100, ramp_end_step=200,
                           frequency=1)
    for step in range(3):
        optimizer.zero_grad()
        model(torch.randn(4, 6)).square().sum().backward()
        pruner.before_optimizer_step()
        optimizer.step()
        pruner.after_optimizer_step(step)
    for name, p in prunable_parameters(model).items():
        assert torch.equal(pruner.tracked[name], initial[name])
        assert not torch.equal(p.detach(), initial[name])


# --- every score on a 1.07M-parameter MLP --------------------------------------------------

SPARSITIES = (0.5, 0.7, 0.9, 0.95, 0.99)
WARMUP, RAMP_END, TOTAL_STEPS = 1, 4, 7  # masks at steps 2, 3, 4; steps 5, 6 run on them


@pytest.fixture(scope="module")
def mlp_setup(tmp_path_factory):
    """Initial weights of a 784-1024-256-10 MLP, a batch stream, and AdamWPrune's default settings."""
    config = tmp_path_factory.mktemp("scores") / ".config"
    config.write_text("CONFIG_MODEL_MODE_SINGLE=y\nCONFIG_MODEL_SELECT_LENET5=y\nCONFIG_OPTIMIZER_MODE_SINGLE=y\n"
                      "CONFIG_OPTIMIZER_SELECT_ADAMWPRUNE=y\nCONFIG_PRUNING_MODE_SINGLE=y\n"
                      "CONFIG_PRUNING_SELECT_STATE=y\n")
    params = load_settings(config, warn=lambda message: None).optimizer_params["adamwprune"]
    torch.manual_seed(0)
    initial = mlp().state_dict()
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 784, generator=gen), torch.randint(0, 10, (16,), generator=gen))
            for _ in range(TOTAL_STEPS)]
    return initial, data, params


def mlp():
    return nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 256), nn.ReLU(), nn.Linear(256, 10))


def train_and_prune(setup, score, sparsity, optimizer_params=None, sample_size=1 << 16):
    initial, data, default_params = setup
    model = mlp()
    model.load_state_dict(initial)
    if score in STATE_SCORES:
        optimizer = build_optimizer("adamwprune", model, 1e-3, optimizer_params or default_params)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    # A sample of 64k (not the default 1M, about N here) keeps 70 runs affordable; the threshold stays exact.
    pruner = GradualPruner(model, optimizer, score, sparsity, warmup_steps=WARMUP, ramp_end_step=RAMP_END,
                           frequency=1, schedule="cubic", sample_size=sample_size)
    masks = []
    for step, (x, y) in enumerate(data):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        pruner.before_optimizer_step()
        optimizer.step()
        pruner.after_optimizer_step(step)
        if len(pruner.history) > len(masks):
            masks.append({name: mask.clone() for name, mask in pruner.masks.items()})
    return model, optimizer, pruner, masks


def check_pruned_run(model, optimizer, pruner, masks, sparsity):
    params = prunable_parameters(model)
    assert sum(p.numel() for p in params.values()) >= 1_000_000
    measured, _, zeros, total = measure_sparsity(params)
    assert abs(measured - 100 * sparsity) <= 0.5
    assert len(masks) == RAMP_END - WARMUP  # the ramp's updates (the first, at 0%, prunes nothing), none after
    for before, after in zip(masks, masks[1:]):
        for name in after:
            assert not (after[name] & ~before[name]).any(), f"{name} revived a pruned weight"
    pruned_total = 0
    for name, param in params.items():
        mask = pruner.masks[name]
        assert mask.dtype == torch.bool and mask.shape == param.shape
        pruned_total += int((~mask).sum())
        assert not param[~mask].any(), f"{name}: pruned weight nonzero"
        state = optimizer.state[param]
        moments = [key for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if key in state]
        assert moments[:2] == ["exp_avg", "exp_avg_sq"]
        if any(g.get("amsgrad") for g in optimizer.param_groups):
            assert "max_exp_avg_sq" in moments
        for key in moments:
            assert not state[key][~mask].any(), f"{name}: {key} nonzero where pruned"
            # (global pruning at 99% may keep nothing of a layer: |w| of 2.weight is below the cut)
            assert state[key][mask].any() or not mask.any(), f"{name}: {key} zero everywhere kept"
    assert pruned_total == round(sparsity * total)  # exact count: ties are broken to hit k


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("score", sorted(SCORES))
def test_every_score_reaches_its_target_and_keeps_pruned_entries_zero(mlp_setup, score, sparsity):
    """Gradual pruning to 50-99% on >1M weights: within 0.5 points, zero weights and moments, no revival."""
    check_pruned_run(*train_and_prune(mlp_setup, score, sparsity), sparsity)


@pytest.mark.parametrize("base, score", [("adamw", "bitter7"), ("adam", "bitter0"), ("adamwadv", "bitter9"),
                                         ("adamwspam", "bitter8")])
def test_pruned_moments_stay_zero_for_every_adamwprune_base(mlp_setup, base, score):
    """With AMSGrad (max_exp_avg_sq) or another base, pruned moments stay exactly zero too."""
    params = dict(mlp_setup[2], base=base, amsgrad=base != "adamwspam")
    params["spam"] = dict(params["spam"], interval=3, warmup_steps=2, theta=50.0)
    check_pruned_run(*train_and_prune(mlp_setup, score, 0.9, params, sample_size=SAMPLE_SIZE), 0.9)


# --- ties ---------------------------------------------------------------------------------


def tied_model(levels):
    """Weights drawn from a handful of magnitudes (both signs): massive exact ties."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(40, 50), nn.Linear(50, 30))
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for layer in model:
            choice = torch.randint(0, len(levels), layer.weight.shape, generator=gen)
            sign = torch.randint(0, 2, layer.weight.shape, generator=gen) * 2.0 - 1.0
            layer.weight.copy_(torch.tensor(levels)[choice] * sign)
    return model


@pytest.mark.parametrize("levels", [(0.5,), (0.1, 0.2, 0.3), (0.25, 0.5, 0.5, 0.5, 1.0)])
@pytest.mark.parametrize("sample_size", [64, 1 << 20])
def test_ties_prune_exactly_k_and_never_revive(levels, sample_size):
    """With many equal scores, each update prunes exactly round(f*N) and keeps every pruned entry pruned."""
    model = tied_model(levels)
    total = sum(p.numel() for p in prunable_parameters(model).values())
    pruner = GradualPruner(model, torch.optim.SGD(model.parameters(), lr=0.1), "magnitude", 0.9, warmup_steps=0,
                           ramp_end_step=10, frequency=1, chunk_size=97, sample_size=sample_size)
    previous = None
    for fraction in (0.1, 0.3333, 0.5, 0.5, 0.77, 0.9):
        pruner.update_masks(fraction)
        pruned = sum(int((~m).sum()) for m in pruner.masks.values())
        assert pruned == round(fraction * total)
        _, _, zeros, _ = measure_sparsity(pruner.params)
        assert zeros == pruned
        if previous is not None:
            for name, mask in pruner.masks.items():
                assert not (mask & ~previous[name]).any(), f"{name} revived at {fraction}"
        previous = {name: mask.clone() for name, mask in pruner.masks.items()}


def test_ties_at_zero_score_keep_live_weights_first():
    """Live weights whose score drops to 0 (bitter0 with m == 0) tie with pruned ones; pruned stay pruned."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(40, 50), nn.Linear(50, 30))  # weights 2000 (first in order) + 1500
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(8, 40)).sum().backward()
    optimizer.step()
    params = prunable_parameters(model)
    with torch.no_grad():
        model[0].weight.fill_(0.1)
        model[1].weight.fill_(0.5)
        for p in params.values():
            optimizer.state[p]["exp_avg"].fill_(1e-3)
            optimizer.state[p]["exp_avg_sq"].fill_(1e-6)
    pruner = GradualPruner(model, optimizer, "bitter0", 0.9, warmup_steps=0, ramp_end_step=10, frequency=1,
                           chunk_size=128, sample_size=50)
    pruner.update_masks(0.2)  # 700 of the first layer's 0.1s
    first = {name: mask.clone() for name, mask in pruner.masks.items()}
    assert int((~first["0.weight"]).sum()) == 700 and first["1.weight"].all()
    with torch.no_grad():
        optimizer.state[model[1].weight]["exp_avg"].view(-1)[::2] = 0.0  # 750 live scores become 0
    pruner.update_masks(0.3)  # k = 1050 among 1450 zero scores, 700 of them already pruned
    assert sum(int((~m).sum()) for m in pruner.masks.values()) == 1050
    assert torch.equal(pruner.masks["0.weight"], first["0.weight"]), "a pruned weight was revived"
    assert int((~pruner.masks["1.weight"]).sum()) == 350
