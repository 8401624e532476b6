"""Pruning scores: each formula against an independent float64 computation,
chunked scoring equal to whole-tensor scoring, movement's accumulation,
bitter4's layer-adaptive targets, non-finite scores stopping the update, and
every score driving GradualPruner on a 1.07M-parameter MLP to its target.

Formulas (docs/algorithms.md; sources: the seeds, upstream's
docs/adamwprune_variants.md and its code): m, v are Adam's exp_avg and
exp_avg_sq, eps = 1e-8 (1e-5 in the upstream fp16 forms), t the step.
Scores are "higher = keep"; masks are bool and zero the weight and every
optimizer moment where pruned.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from lib.config import BITTER_VARIANTS, load_settings
from lib.errors import NonFiniteError, UserError
from lib.optim import build_optimizer
from lib.pruning import SCORES, STATE_SCORES, GradualPruner, layer_fractions, measure_sparsity, prunable_parameters
from lib.pruning.scores import ScoreInputs
from lib.pruning.threshold import SAMPLE_SIZE

EPS = 1e-8  # written out, not imported: the tests check the code's constants too
FP16_EPS = 1e-5
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
    """float32 weights and moments as training holds them, with zeros of every kind and tiny v mixed in."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=gen) * 0.05
    m = torch.randn(n, generator=gen) * 1e-3
    v = torch.rand(n, generator=gen) ** 4 * 1e-4 + 1e-3 * torch.rand(n, generator=gen) ** 8
    w[::17] = 0.0  # pruned weights
    m[5::13] = 0.0
    v[7::11] = 0.0
    v[3::23] = 1e-30  # far below fp16 and below eps
    v[4::29] = 1e-40  # a float32 subnormal
    m[6::31] = 1e-30
    w0 = w + torch.randn(n, generator=gen) * 0.01
    movement = torch.randn(n, generator=gen) * 1e-4
    return w, m, v, w0, movement


def expected_terms(name, w, m, v, w0, movement):
    """The terms whose sum is the documented formula of `name`, in float64 NumPy from the float32 inputs.

    Transcribed from the sources, not from lib/pruning/scores.py. Signed scores are sums of terms of
    either sign; the test's tolerance is relative to the sum of their magnitudes.
    """
    w, m, v, w0, movement = (t.double().numpy() for t in (w, m, v, w0, movement))
    aw = np.abs(w)
    # upstream docs, "Variance-Based Scoring (bitter5-9)", and upstream code
    movement_to_zero = -(np.sign(w) * m) / (np.sqrt(v) + EPS)
    bitter3 = aw * np.sqrt(np.abs(m) + EPS)
    bitter8_upstream = aw * (np.abs(v) + FP16_EPS) ** 0.25
    formulas = {
        "magnitude": lambda: [aw],
        "movement": lambda: [movement],
        "movement-upstream": lambda: [w * (w - w0)],
        "bitter0": lambda: [np.abs(w * m) * aw / (np.sqrt(v) + EPS)],
        "bitter1": lambda: [aw / (np.abs(m) + EPS)],  # seed 003
        "bitter2": lambda: [aw * np.sqrt(v) / (np.abs(m) + EPS)],  # seed 003
        "bitter3": lambda: [bitter3],
        "bitter4": lambda: [bitter3],  # and layer-adaptive targets, tested below
        "bitter5": lambda: [-movement_to_zero, 0.1 * aw],
        "bitter6": lambda: [aw * np.sqrt(np.abs(m) + EPS) * np.sqrt(m ** 2 / (v + EPS))],
        "bitter7": lambda: [aw * (np.abs(v) + EPS) ** 0.25],
        "bitter8": lambda: [aw * np.sqrt(np.abs(m / (1 - BETA1 ** STEP + EPS)) + EPS)],
        "bitter9": lambda: [bitter3, -0.1 * movement_to_zero],
        "bitter1-upstream": lambda: [aw],
        "bitter2-upstream": lambda: [aw],
        "bitter4-upstream": lambda: [bitter3],
        "bitter8-upstream": lambda: [bitter8_upstream],  # computed in fp16: compared below
        "bitter9-upstream": lambda: [bitter8_upstream],
    }
    return formulas[name]()


def expected_score(name, *inputs):
    return np.sum(expected_terms(name, *inputs), axis=0)


FP16_SCORES = ("bitter8-upstream", "bitter9-upstream")
SIGNED = ("movement", "movement-upstream", "bitter5", "bitter9")


def fp16_bitter7(w, v):
    """bitter7 as upstream computes it in half precision: each operation rounded to fp16 once."""
    half = lambda a: np.asarray(a, dtype=np.float32).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore"):
        x = half(half(np.abs(v.numpy())) + np.float32(FP16_EPS))
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
        expected_terms(name, w, m, v, w0, movement)  # KeyError names a score without a test
    assert set(STATE_SCORES) == {name for name in SCORES if name.startswith("bitter")}
    assert set(BITTER_VARIANTS) == set(STATE_SCORES)  # what Kconfig accepts is what the pruner knows
    assert {name for name in SCORES if SCORES[name].signed} == set(SIGNED)


@pytest.mark.parametrize("name", sorted(SCORES))
def test_score_matches_its_formula(name):
    """float32 scores equal the float64 formula (fp16 scores to fp16 precision), tiny and zero v included."""
    w, m, v, w0, movement = score_inputs()
    inputs = ScoreInputs(w, m, v, w0 if SCORES[name].tracks == "initial" else movement, 1.0 - BETA1 ** STEP)
    got = run_score(name, inputs, w.numel()).double().numpy()
    terms = expected_terms(name, w, m, v, w0, movement)
    expected, scale = np.sum(terms, axis=0), np.sum(np.abs(terms), axis=0)
    assert np.isfinite(got).all()
    if name in FP16_SCORES:
        normal = v.numpy() > 1e-4  # fp16 holds v and v+eps to 3 digits here
        assert normal.sum() > 50
        np.testing.assert_allclose(got[normal], expected[normal], rtol=3e-3, atol=0)
        # torch's CPU half rsqrt is not always correctly rounded (its scalar tail loop differs from the
        # vector body by an ulp), so: exact against the same torch fp16 ops, within 2 ulps of NumPy's.
        fp16_torch = torch.rsqrt(torch.rsqrt(v.half().abs() + FP16_EPS)).mul(w.half()).abs().double().numpy()
        np.testing.assert_array_equal(got, fp16_torch)
        assert fp16_ulps(got, fp16_bitter7(w, v)).max() <= 2
        # below fp16's range v + 1e-5 is held, so the score is about 0.056*|w|: no live weight scores 0
        np.testing.assert_allclose(got[v.numpy() < 1e-20], expected[v.numpy() < 1e-20], rtol=1e-2)
        assert (got[w.numpy() != 0] > 0).all()
    else:
        assert (np.abs(got - expected) <= 2e-6 * scale).all(), np.max(np.abs(got - expected) / scale)
    if not SCORES[name].signed:
        assert (got >= 0).all() and (got[w.numpy() == 0] == 0).all()


def test_signed_scores_are_negative_for_some_live_weights():
    """bitter5 and bitter9 are signed (the pruner must force pruned entries to -inf): live weights go below 0."""
    w, m, v, _, _ = score_inputs()
    m = -torch.sign(w) * 1e-2  # Adam growing every weight away from zero (its update is -lr*m/sqrt(v))
    v = torch.full_like(w, 1e-4)
    for name in ("bitter5", "bitter9"):
        got = run_score(name, ScoreInputs(w, m, v), w.numel())
        assert (got[(w != 0) & (w.abs() < 0.05)] < 0).all(), name
        assert (got[w == 0] == 0).all()


def test_fp16_scores_keep_live_weights_above_zero_where_1e8_eps_did_not():
    """bitter8-upstream (eps 1e-5): no live weight scores 0 for v >= 0; upstream's 1e-8 rounds to 0 in fp16."""
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(4096, generator=gen) * 0.02
    w[w.abs() < 1e-5] = 1e-5  # fp16 holds |w| and 0.056*|w| (smallest normal 6.1e-5, subnormal 6e-8)
    v = torch.cat([torch.zeros(1024), torch.full((1024,), 1e-12), torch.rand(1024, generator=gen) * 1e-7,
                   torch.rand(1024, generator=gen) * 1e-2])
    assert torch.tensor(1e-8).half() == 0  # why upstream's eps did not survive
    upstream_eps_scores = torch.rsqrt(torch.rsqrt(v.half().abs() + 1e-8)).mul(w.half()).abs()
    assert (upstream_eps_scores == 0).float().mean() > 0.4  # most live weights tied with pruned ones
    for name in FP16_SCORES:
        got = run_score(name, ScoreInputs(w, torch.zeros_like(w), v), w.numel())
        assert (got > 0).all(), name
        assert run_score(name, ScoreInputs(torch.zeros(3), torch.zeros(3), torch.ones(3)), 3).eq(0).all()


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


@pytest.mark.parametrize("name", ["magnitude", "movement-upstream", "bitter0", "bitter2", "bitter5", "bitter6",
                                  "bitter7", "bitter8", "bitter9"])
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


# --- bitter4: layer-adaptive targets, each tensor by its own threshold ----------------------


def layered_model():
    """Conv2d then three Linear layers (module order = depth order): 144 + 8192 + 3072 + 480 weights."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(2, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(128, 64), nn.ReLU(),
                         nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))


def upstream_layer_sparsity(base, index, count):
    """Upstream docs, "Layer-Adaptive Distribution (bitter4 only)"."""
    position = index / (count - 1)
    scale = 0.7 + 0.6 * position  # 0.7x to 1.3x
    return min(0.95, base * scale)


def normalised_layer_sparsity(base, sizes):
    """bitter4's per-layer fractions min(cap, b*scale_i) with sum n_i*fraction_i = base*N, cap = max(0.95, base).

    Solved exactly (not by bisection as the code does): try the c layers of largest scale at the cap,
    c = 0, 1, ..., and solve the linear equation for b with the rest uncapped.
    """
    count, cap = len(sizes), max(0.95, base)
    scales = [0.7 + 0.6 * i / (count - 1) for i in range(count)]
    by_scale = sorted(range(count), key=lambda i: -scales[i])
    for capped in range(count + 1):
        top, rest = by_scale[:capped], by_scale[capped:]
        remaining = base * sum(sizes) - cap * sum(sizes[i] for i in top)
        if not rest:
            return [cap] * count, None
        b = remaining / sum(sizes[i] * scales[i] for i in rest)
        if all(b * scales[i] <= cap for i in rest) and all(b * scales[i] >= cap for i in top):
            return [min(cap, b * s) for s in scales], b
    raise AssertionError("no solution")


def adam_trained(model, steps=STEP, shape=(4, 2, 6, 6)):
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, betas=(BETA1, 0.999))
    gen = torch.Generator().manual_seed(5)
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(*shape, generator=gen)).square().sum().backward()
        optimizer.step()
    return optimizer


def bitter3_scores(model, optimizer):
    return {name: expected_score("bitter3", p.detach().reshape(-1), optimizer.state[p]["exp_avg"].reshape(-1),
                                 optimizer.state[p]["exp_avg_sq"].reshape(-1), p.detach().reshape(-1),
                                 p.detach().reshape(-1))
            for name, p in prunable_parameters(model).items()}


@pytest.mark.parametrize("name", ["bitter4", "bitter4-upstream"])
def test_bitter4_prunes_each_layer_to_its_target_by_its_own_threshold(name):
    """Per-layer sparsity follows upstream's formula (bitter4-upstream) or its normalised form (bitter4, whose
    global sparsity is the target to the entry); each layer loses its own lowest bitter3 scores."""
    model = layered_model()
    optimizer = adam_trained(model)
    params = prunable_parameters(model)
    names, sizes = list(params), [p.numel() for p in params.values()]
    assert names == ["0.weight", "3.weight", "5.weight", "7.weight"]
    pruner = GradualPruner(model, optimizer, name, 0.9, warmup_steps=0, ramp_end_step=10, frequency=1,
                           chunk_size=1000, sample_size=256)
    previous = None
    for step, base in enumerate((0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99)):
        scores = bitter3_scores(model, optimizer)  # before this update: what it ranks by
        pruner.update_masks(base, step)
        pruned = {n: int((~pruner.masks[n]).sum()) for n in names}
        if name == "bitter4-upstream":
            for i, n in enumerate(names):
                assert abs(pruned[n] - upstream_layer_sparsity(base, i, len(names)) * sizes[i]) <= 1, (base, n)
        else:
            assert sum(pruned.values()) == round(base * sum(sizes))  # global = target exactly
            fractions, b = normalised_layer_sparsity(base, sizes)
            for i, n in enumerate(names):
                assert abs(pruned[n] - fractions[i] * sizes[i]) <= 2, (base, n)
            if b is not None:  # the uncapped layers follow 0.7 -> 1.3: fraction_i / scale_i is one b
                uncapped = [i for i in range(len(names)) if fractions[i] < max(0.95, base)]
                for i in uncapped:
                    assert pruned[names[i]] / sizes[i] / (0.7 + 0.6 * i / 3) == pytest.approx(b, abs=3 / sizes[i])
                assert pruned[names[0]] / sizes[0] < base < pruned[names[-1]] / sizes[-1] or base >= 0.95
        entry = pruner.history[-1]
        assert entry["layer_target_pct"] == pytest.approx({n: 100 * pruned[n] / params[n].numel() for n in names})
        assert entry["layer_measured_pct"] == pytest.approx(entry["layer_target_pct"])
        for n in names:  # its own threshold: every pruned score <= every kept score, within the layer
            mask = pruner.masks[n].reshape(-1).numpy()
            if 0 < mask.sum() < mask.size:
                assert scores[n][~mask].max() <= scores[n][mask].min(), (base, n)
            if previous is not None:
                assert not (pruner.masks[n] & ~previous[n]).any(), f"{n} revived at {base}"
            assert not params[n][~pruner.masks[n]].any()
        previous = {n: m.clone() for n, m in pruner.masks.items()}


def test_layer_fractions_solve_for_the_target_exactly():
    """The code's bisection agrees with the exact solve above, for many layer sizes and targets."""
    gen = np.random.default_rng(0)
    for _ in range(200):
        sizes = [int(n) for n in gen.integers(1, 10_000, size=gen.integers(2, 12))]
        base = float(gen.choice([gen.uniform(0, 1), 0.5, 0.9, 0.95, 0.99]))
        expected, _ = normalised_layer_sparsity(base, sizes)
        got = layer_fractions(base, sizes, "normalised")
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
        assert sum(f * n for f, n in zip(got, sizes)) == pytest.approx(base * sum(sizes), rel=1e-12)
        assert layer_fractions(base, sizes, "upstream") == [upstream_layer_sparsity(base, i, len(sizes))
                                                            for i in range(len(sizes))]


def test_bitter4_upstream_global_sparsity_is_below_target():
    """Upstream's form: sum n_i*min(0.95, s*scale_i)/N, not s (here most weights sit in layers scaled below 1)."""
    model = layered_model()
    optimizer = adam_trained(model)
    pruner = GradualPruner(model, optimizer, "bitter4-upstream", 0.5, warmup_steps=0, ramp_end_step=1, frequency=1)
    pruner.update_masks(0.5)
    sizes = [p.numel() for p in prunable_parameters(model).values()]
    expected = sum(round(upstream_layer_sparsity(0.5, i, 4) * n) for i, n in enumerate(sizes)) / sum(sizes)
    assert pruner.history[-1]["measured_pct"] == pytest.approx(100 * expected)
    assert pruner.history[-1]["measured_pct"] < 49.0


def test_bitter4_with_one_layer_prunes_it_to_the_target():
    for name, expected in (("bitter4", 300), ("bitter4-upstream", round(0.7 * 0.5 * 600))):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(30, 20))
        optimizer = adam_trained(model, shape=(4, 30))
        pruner = GradualPruner(model, optimizer, name, 0.5, warmup_steps=0, ramp_end_step=1, frequency=1)
        pruner.update_masks(0.5)
        assert int((~pruner.masks["0.weight"]).sum()) == expected, name


# --- signed scores never revive; non-finite scores stop the run --------------------------------


@pytest.mark.parametrize("name", ["bitter5", "bitter9"])
def test_signed_scores_never_revive_pruned_weights(name):
    """Once live weights score below 0 (Adam pushes them to zero), pruned entries (formula score 0) would
    outrank them; the pruner forces pruned entries to -inf, so they stay pruned."""
    model = tiny_model()
    optimizer = adam_trained(model, shape=(4, 6))
    pruner = GradualPruner(model, optimizer, name, 0.9, warmup_steps=0, ramp_end_step=10, frequency=1,
                           chunk_size=7, sample_size=16)
    pruner.update_masks(0.3)
    first = {n: m.clone() for n, m in pruner.masks.items()}
    params = prunable_parameters(model)
    with torch.no_grad():
        for p in params.values():
            optimizer.state[p]["exp_avg"].copy_(-torch.sign(p) * 1e-2)
            optimizer.state[p]["exp_avg_sq"].fill_(1e-4)
    live = [expected_score(name, p.detach()[first[n]], optimizer.state[p]["exp_avg"][first[n]],
                           optimizer.state[p]["exp_avg_sq"][first[n]], p.detach()[first[n]], p.detach()[first[n]])
            for n, p in params.items()]
    assert all((scores < 0).all() for scores in live)
    pruner.update_masks(0.5)
    assert sum(int((~m).sum()) for m in pruner.masks.values()) == round(0.5 * 45)
    for n, mask in pruner.masks.items():
        assert not (mask & ~first[n]).any(), f"{n}: a pruned weight was revived"


def nan_setup(name):
    model = layered_model()
    optimizer = adam_trained(model)
    pruner = GradualPruner(model, optimizer, name, 0.9, warmup_steps=0, ramp_end_step=1000, frequency=1,
                           chunk_size=1000, sample_size=256)
    return model, optimizer, pruner


def poison(optimizer, pruner, where, value=float("nan"), names=("5.weight",), count=1):
    """Set `count` entries (from the 100th) of each of `names`' weight, v or movement accumulator to `value`."""
    with torch.no_grad():
        for name in names:
            param = pruner.params[name]
            target = {"v": lambda: optimizer.state[param]["exp_avg_sq"], "w": lambda: param,
                      "tracked": lambda: pruner.tracked[name]}[where]()
            target.view(-1)[100:100 + count] = value


@pytest.mark.parametrize("name", sorted(SCORES))
def test_a_nan_stops_the_update_and_prunes_nothing(name):
    """A NaN in a score (from the weight, v, or movement's accumulator) raises NonFiniteError naming the score,
    the tensor and the step, before any mask or weight changes; also after an earlier update."""
    model, optimizer, pruner = nan_setup(name)
    score = SCORES[name]
    where = "tracked" if score.tracks == "movement" else ("v" if name in ("bitter0", "bitter7") else "w")
    poison(optimizer, pruner, where)
    before = {n: p.detach().clone() for n, p in prunable_parameters(model).items()}
    with pytest.raises(NonFiniteError, match=f"pruning score {name} is nan in 5.weight at step 300"):
        pruner.update_masks(0.5, step=300)
    assert pruner.masks == {} and pruner.history == []
    for n, p in prunable_parameters(model).items():  # nothing pruned
        assert (p != 0).all() and torch.equal(p.nan_to_num(), before[n].nan_to_num())
    poison(optimizer, pruner, where, value=1.0 if where != "v" else 1e-4)
    pruner.update_masks(0.3, step=310)  # healthy again: prunes
    poison(optimizer, pruner, where, names=("3.weight", "5.weight"), count=10_000)  # 8000 NaNs: past N - k
    masks = {n: m.clone() for n, m in pruner.masks.items()}
    weights = {n: p.detach().clone() for n, p in prunable_parameters(model).items()}
    with pytest.raises(NonFiniteError, match="at step 320"):
        pruner.update_masks(0.5, step=320)
    for n, p in prunable_parameters(model).items():
        assert torch.equal(pruner.masks[n], masks[n]), f"{n}: mask changed"
        assert torch.equal(p.isnan(), weights[n].isnan()) and torch.equal(p.nan_to_num(), weights[n].nan_to_num())
    assert len(pruner.history) == 1


def test_an_infinite_score_stops_the_update_and_is_a_user_error():
    model, optimizer, pruner = nan_setup("bitter7")
    poison(optimizer, pruner, "v", value=float("inf"))
    with pytest.raises(UserError, match=r"pruning score bitter7 is infinite in 5\.weight at step 7: the weights or "
                                        r"the optimizer state went non-finite"):
        pruner.after_optimizer_step(7)
    assert pruner.masks == {}


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


def check_pruned_run(model, optimizer, pruner, masks, sparsity, expected_pruned=None):
    """expected_pruned: the exact count (default round(sparsity * N), which is then within 0.5 points)."""
    params = prunable_parameters(model)
    assert sum(p.numel() for p in params.values()) >= 1_000_000
    measured, _, zeros, total = measure_sparsity(params)
    if expected_pruned is None:
        assert abs(measured - 100 * sparsity) <= 0.5
        expected_pruned = round(sparsity * total)
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
    assert pruned_total == expected_pruned  # exact count: ties are broken to hit k


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("score", sorted(set(SCORES) - {"bitter4-upstream"}))
def test_every_score_reaches_its_target_and_keeps_pruned_entries_zero(mlp_setup, score, sparsity):
    """Gradual pruning to 50-99% on >1M weights: within 0.5 points, zero weights and moments, no revival."""
    check_pruned_run(*train_and_prune(mlp_setup, score, sparsity), sparsity)


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_bitter4_upstream_reaches_its_own_formula(mlp_setup, sparsity):
    """bitter4-upstream misses the target by design: each layer i of 3 ends at min(0.95, s*(0.7 + 0.3*i))."""
    run = train_and_prune(mlp_setup, "bitter4-upstream", sparsity)
    sizes = [784 * 1024, 1024 * 256, 256 * 10]
    layers = [min(0.95, sparsity * (0.7 + 0.6 * i / 2)) for i in range(3)]
    check_pruned_run(*run, sparsity, expected_pruned=sum(round(f * n) for f, n in zip(layers, sizes)))
    last = run[2].history[-1]
    for got, f, n in zip(last["layer_target_pct"].values(), layers, sizes):
        assert abs(got - 100 * f) <= 100 * 0.5 / n  # within half an entry
    if sparsity < 0.95 / 0.7:
        assert last["measured_pct"] < 100 * sparsity - 5  # 77% of the weights are in the 0.7x layer


@pytest.mark.parametrize("base, score", [("adamw", "bitter7"), ("adam", "bitter0"), ("adamwadv", "bitter9"),
                                         ("adamwspam", "bitter8"), ("adamw", "bitter4")])
def test_pruned_moments_stay_zero_for_every_adamwprune_base(mlp_setup, base, score):
    """With AMSGrad (max_exp_avg_sq) or another base, pruned moments stay exactly zero too."""
    params = dataclasses.replace(mlp_setup[2], base=base, amsgrad=base != "adamwspam")
    params = dataclasses.replace(params, spam=dataclasses.replace(params.spam, interval=3, warmup_steps=2, theta=50.0))
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


@pytest.mark.parametrize("name", ["bitter5", "bitter9"])
def test_bitter5_and_bitter9_keep_weights_adam_shrinks_and_prune_those_it_grows(name):
    """The upstream code's sign, as ../shared/upstream/adamwprune_variants.md "Variance-Based Scoring
    (bitter5-9)" writes it: movement = -(weight.sign() * exp_avg) / (sqrt(exp_avg_sq) + eps),
    bitter5 importance = -movement + abs(weight) * 0.1, bitter9 = abs(weight) * sqrt(abs(exp_avg) + eps)
    - 0.1 * movement. After a real Adam step the weights Adam moved toward zero score above those it
    moved away from zero: the reverse of the docs' stated intent (docs/algorithms.md, bitter5's sign)."""
    w = torch.nn.Parameter(torch.tensor([0.5, 0.5, -0.5, -0.5]))
    optimizer = torch.optim.Adam([w], lr=1e-2)
    w.grad = torch.tensor([1.0, -1.0, -1.0, 1.0])
    optimizer.step()
    state = optimizer.state[w]
    shrunk = w.detach().abs() < 0.5
    assert shrunk.tolist() == [True, False, True, False]
    wn, m, v = (t.detach().double().numpy() for t in (w, state["exp_avg"], state["exp_avg_sq"]))
    movement = -(np.sign(wn) * m) / (np.sqrt(v) + EPS)
    expected = {"bitter5": -movement + np.abs(wn) * 0.1,
                "bitter9": np.abs(wn) * np.sqrt(np.abs(m) + EPS) - 0.1 * movement}[name]
    got = run_score(name, ScoreInputs(w.detach(), state["exp_avg"], state["exp_avg_sq"]), 4)
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-6)
    assert got[shrunk].min() > got[~shrunk].max()
