"""AdamWSPAM against an independent transcription of the SPAM authors' reference code.

The reference is TianjinYellow/SPAM-Optimizer galore_torch/SPAM.py (read in
ffuhu/SPAM-tests@a3b19b7212956d8983280b14292362d28a7b40a0). `ReferenceSPAM`
below follows its step() line by line on plain Python floats, with its own
counters (total_step, current_step) and its CosineDecay (the closed form of
torch's CosineAnnealingLR(T_max=N+1), checked against torch below); it
shares no code with lib/. The only liberty: DeltaT = 0 means "never reset"
(the reference would divide by zero in its reset test).
"""
from __future__ import annotations

import copy
import io
import math
import warnings

import pytest
import torch
from torch import nn

from lib.config import load_settings
from lib.errors import UserError
from lib.optim import build_optimizer
from lib.optim.spam import AdamWSPAM


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# --- the transcription -----------------------------------------------------------------------


def cosine_decay_dr(current_step, t_max, death_rate=0.99):
    """The reference's CosineDecay(0.99, T_max).get_dr(current_step)."""
    if current_step >= t_max:
        return 0.0  # eta_min
    return death_rate * (1.0 + math.cos(math.pi * current_step / (t_max + 1))) / 2.0


class ReferenceSPAM:
    """The reference SPAM step on lists of floats: tensors[i] is a flat list, decay[i] its group's weight decay.

    `variant` switches one deliberately wrong behaviour on, to show the tests can tell it apart.
    """

    def __init__(self, tensors, decay, lr, betas, eps, warmup_steps, threshold, delta_t, grad_accu_steps,
                 variant=None):
        self.p = [list(t) for t in tensors]
        self.decay, self.lr, self.betas, self.eps = decay, lr, betas, eps
        self.warmup_steps, self.thres, self.delta_t, self.grad_accu_steps = (warmup_steps, threshold, delta_t,
                                                                             grad_accu_steps)
        self.variant = variant
        self.total_step = 0
        self.current_step = 0 if variant == "warmup_at_start" else warmup_steps + 1
        self.state = [{} for _ in tensors]
        self.since_reset = [0 for _ in tensors]  # only for the bias_restart variant
        self.events = {"resets": [], "clipped": [], "scale": {}}

    def get_dr(self, c):
        if self.variant == "cosine_over_n":
            return 0.0 if c >= self.warmup_steps else 0.99 * (1 + math.cos(math.pi * c / self.warmup_steps)) / 2
        return cosine_decay_dr(c, self.warmup_steps)

    def step(self, grads):
        t = self.total_step + 1
        scale_factor = 1 - self.get_dr(self.current_step)
        self.events["scale"][t] = scale_factor
        b1, b2 = self.betas
        for i, grad in enumerate(grads):
            if grad is None:
                continue
            g, p, state = list(grad), self.p[i], self.state[i]
            if "step" not in state:
                state["step"] = 0
            if "exp_avg" not in state:
                state["exp_avg"], state["exp_avg_sq"] = [0.0] * len(g), [0.0] * len(g)
            if self.variant == "reset_at_t_minus_1":
                reset = self.delta_t != 0 and t > 1 and (t - 1) % self.delta_t == 0
            else:
                reset = self.delta_t != 0 and (self.total_step + 1) % self.delta_t == 0
            if reset:
                state["exp_avg"], state["exp_avg_sq"] = [0.0] * len(g), [0.0] * len(g)
                self.since_reset[i] = 0
                if i == 0:
                    self.events["resets"].append(t)
            m, v = state["exp_avg"], state["exp_avg_sq"]
            state["step"] += 1
            self.since_reset[i] += 1
            if self.thres != 0:
                current_step = self.total_step + 1
                if self.variant == "clip_from_second_step":
                    active = self.since_reset[i] > 1
                elif current_step >= self.grad_accu_steps:
                    active = self.delta_t == 0 or current_step % self.delta_t >= self.grad_accu_steps
                else:
                    active = False
                if active:
                    for j in range(len(g)):
                        if g[j] ** 2 > self.thres * v[j]:
                            g[j] = math.copysign(math.sqrt(v[j] * self.thres), g[j])  # g != 0 here
                            self.events["clipped"].append((t, i, j))
            n = self.since_reset[i] if self.variant == "bias_restart" else state["step"]
            bias_correction1, bias_correction2 = 1.0 - b1 ** n, 1.0 - b2 ** n
            step_size = self.lr * math.sqrt(bias_correction2) / bias_correction1
            decay_lr = self.lr * (scale_factor if self.variant == "warmup_on_decay" else 1.0)
            for j in range(len(g)):
                m[j] = m[j] * b1 + (1.0 - b1) * g[j]
                v[j] = v[j] * b2 + (1.0 - b2) * g[j] * g[j]
                if self.variant == "decay_before_update" and self.decay[i] > 0:
                    p[j] = p[j] - decay_lr * self.decay[i] * p[j]
                if self.variant == "eps_torch":  # torch AdamW: eps after the bias correction of sqrt(v)
                    p[j] -= self.lr * scale_factor / bias_correction1 * m[j] / (
                        math.sqrt(v[j]) / math.sqrt(bias_correction2) + self.eps)
                else:
                    denom = math.sqrt(v[j]) + self.eps
                    p[j] = p[j] + (-step_size * scale_factor) * (m[j] / denom)
                if self.variant != "decay_before_update" and self.decay[i] > 0:
                    p[j] = p[j] + (-decay_lr * self.decay[i]) * p[j]
        self.total_step += 1
        self.current_step += 1
        if self.total_step != 0 and self.delta_t != 0 and (self.total_step + 1) % self.delta_t == 0:
            self.current_step = 0  # and a fresh CosineDecay(0.99, warmup_steps)


# --- the scenario: three tensors, two groups, spikes, resets, warm-ups -----------------------

SHAPES = [(2, 3), (3,), (2,)]  # a decayed weight, an undecayed bias, an undecayed gain initialised at 0
INIT = [[0.5, -0.3, 0.8, 0.1, -0.7, 0.25], [0.05, -0.02, 0.0], [0.0, 0.0]]
DECAY = [0.1, 0.0, 0.0]
LR, BETAS, EPS = 0.05, (0.9, 0.99), 1e-3
THETA, INTERVAL, WARMUP, DELAY, STEPS = 500.0, 12, 5, 4, 60
# (step, tensor, entry) -> multiplier. Active clipping: t >= 4 and t % 12 >= 4.
SPIKES = {(2, 0, 1): 40.0,  # before the delay at the start: passes
          (9, 0, 0): 40.0, (9, 1, 0): -40.0, (20, 2, 1): 40.0, (31, 0, 4): -40.0, (45, 1, 0): 40.0,
          (57, 0, 5): 40.0,  # clipped
          (13, 0, 2): 40.0, (49, 1, 1): 40.0}  # within the delay after a reset: pass


def gradients(steps=STEPS, spikes=SPIKES):
    out = []
    for t in range(1, steps + 1):
        step = []
        for i, shape in enumerate(SHAPES):
            size = math.prod(shape)
            g = [0.1 * math.sin(0.7 * t + 1.3 * j + i) + 0.03 * (j + 1) / (i + 1) for j in range(size)]
            if i == 2 and t == 1:
                g = [0.0] * size  # the gain's first gradient is 0
            step.append([g[j] * spikes.get((t, i, j), 1.0) for j in range(size)])
        out.append(step)
    return out


def reference_run(grads, variant=None, **overrides):
    cfg = dict(lr=LR, betas=BETAS, eps=EPS, warmup_steps=WARMUP, threshold=THETA, delta_t=INTERVAL,
               grad_accu_steps=DELAY)
    cfg.update(overrides)
    ref = ReferenceSPAM(INIT, DECAY, variant=variant, **cfg)
    history = []
    for g in grads:
        ref.step(g)
        history.append([list(p) for p in ref.p])
    return ref, history


def make_params(dtype=torch.float64):
    return [nn.Parameter(torch.tensor(values, dtype=dtype).reshape(shape)) for values, shape in zip(INIT, SHAPES)]


def make_optimizer(params, **overrides):
    cfg = dict(theta=THETA, enable_clip=True, reset_interval=INTERVAL, warmup_steps=WARMUP, clip_delay_steps=DELAY)
    cfg.update(overrides)
    groups = [{"params": [params[0]], "weight_decay": DECAY[0]}, {"params": params[1:], "weight_decay": 0.0}]
    return AdamWSPAM(groups, LR, BETAS, EPS, **cfg)


def run(params, optimizer, grads, start=0):
    history = []
    for g in grads[start:]:
        for p, values in zip(params, g):
            p.grad = torch.tensor(values, dtype=p.dtype).reshape(p.shape)
        optimizer.step()
        history.append([p.detach().reshape(-1).tolist() for p in params])
    return history


def max_gap(a, b):
    return max(abs(x - y) for sa, sb in zip(a, b) for ta, tb in zip(sa, sb) for x, y in zip(ta, tb))


def test_cosine_decay_transcription_is_torchs_cosine_annealing():
    """The reference's CosineDecay steps torch's CosineAnnealingLR(T_max=N+1) to epoch c; our closed form agrees."""
    for n in (1, 5, 150):
        sgd = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.99)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(sgd, n + 1, 0)
        for c in list(range(n + 3)) + [2, 0]:
            if c >= n:
                expected = 0.0
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # step(epoch) is deprecated, as the reference calls it
                    sched.step(c)
                expected = sgd.param_groups[0]["lr"]
            assert cosine_decay_dr(c, n) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_scenario_exercises_resets_clipping_delay_and_warmup():
    """The transcription itself sees the resets, clips only outside the delays, and warms up only after resets."""
    ref, _ = reference_run(gradients())
    assert ref.events["resets"] == [12, 24, 36, 48, 60]
    clipped = set(ref.events["clipped"])
    assert {(9, 0, 0), (9, 1, 0), (20, 2, 1), (31, 0, 4), (45, 1, 0), (57, 0, 5)} <= clipped
    assert all(t >= DELAY and t % INTERVAL >= DELAY for t, _, _ in clipped)
    assert not {(2, 0, 1), (13, 0, 2), (49, 1, 1)} & clipped  # spikes inside a delay pass
    warm = {t: s for t, s in ref.events["scale"].items() if s < 1.0}
    assert sorted(warm) == [12, 13, 14, 15, 16, 24, 25, 26, 27, 28, 36, 37, 38, 39, 40, 48, 49, 50, 51, 52, 60]
    assert warm[12] == pytest.approx(0.01)  # no warm-up at the start, 0.01 on each reset step


def test_spam_matches_reference_transcription_every_step():
    """60 steps, float64: every parameter after every step equals the transcription to 1e-12."""
    grads = gradients()
    params = make_params()
    optimizer = make_optimizer(params)
    _, expected = reference_run(grads)
    got = run(params, optimizer, grads)
    for t, (a, b) in enumerate(zip(got, expected), start=1):
        assert max_gap([a], [b]) < 1e-12, f"step {t}"
    assert params[2].grad.tolist() == grads[-1][2]  # clipping works on a copy, not on .grad


def test_spam_float32_tracks_the_transcription():
    grads = gradients()
    params = make_params(torch.float32)
    _, expected = reference_run(grads)
    got = run(params, make_optimizer(params), grads)
    assert max_gap([got[-1]], [expected[-1]]) < 1e-5


@pytest.mark.parametrize("variant", ["clip_from_second_step", "bias_restart", "reset_at_t_minus_1",
                                     "warmup_at_start", "cosine_over_n", "warmup_on_decay", "decay_before_update",
                                     "eps_torch"])
def test_a_wrong_variant_of_the_reference_is_told_apart(variant):
    """Each decision matters in this scenario: the transcription with one behaviour changed is far from AdamWSPAM."""
    grads = gradients()
    params = make_params()
    got = run(params, make_optimizer(params), grads)
    _, wrong = reference_run(grads, variant=variant)
    assert max_gap(got, wrong) > 1e-6


def test_zero_initialised_gain_with_zero_first_gradient_moves():
    """A gain at 0 whose first gradient is 0 moves from step 2 (clipping against v = 0 would pin it at 0)."""
    grads = gradients(steps=8)
    params = make_params()
    got = run(params, make_optimizer(params), grads)
    assert got[0][2] == [0.0, 0.0]  # step 1: g = 0, nothing moves
    assert all(abs(x) > 1e-4 for x in got[1][2])  # step 2: it moves
    _, wrong = reference_run(grads, variant="clip_from_second_step")
    assert wrong[6][2] == [0.0, 0.0]  # the old rule (clip from the second step) leaves it at 0


def test_zero_initialised_gain_moves_with_default_settings():
    """Kconfig defaults (interval 1000, warm-up 100, delay 20, theta 5000): a zero gain trains, as the reference."""
    gain = nn.Parameter(torch.zeros(4, dtype=torch.float64))
    optimizer = AdamWSPAM([{"params": [gain], "weight_decay": 0.0}], 1e-3, (0.9, 0.999), 1e-8, theta=5000.0,
                          reset_interval=1000, warmup_steps=100, clip_delay_steps=20)
    ref = ReferenceSPAM([[0.0] * 4], [0.0], 1e-3, (0.9, 0.999), 1e-8, 100, 5000.0, 1000, 20)
    for t in range(1, 31):
        g = [0.0] * 4 if t == 1 else [0.2 + 0.1 * math.cos(t + j) for j in range(4)]
        gain.grad = torch.tensor(g, dtype=torch.float64)
        optimizer.step()
        ref.step([g])
    assert all(x < -1e-2 for x in gain.tolist())  # about lr per step, against the gradient
    assert gain.tolist() == pytest.approx(ref.p[0], rel=1e-12, abs=1e-15)


def test_interval_zero_never_resets():
    """reset_interval 0: no reset and no warm-up; equal to an interval longer than the run, and to the transcription."""
    grads = gradients()
    params, params_long = make_params(), make_params()
    optimizer = make_optimizer(params, reset_interval=0)
    got = run(params, optimizer, grads)
    long = run(params_long, make_optimizer(params_long, reset_interval=10 ** 6), grads)
    ref, expected = reference_run(grads, delta_t=0)
    assert ref.events["resets"] == [] and min(ref.events["scale"].values()) == 1.0
    assert ref.events["clipped"]  # clipping still runs (from step DELAY on)
    assert max_gap(got, expected) < 1e-12
    assert got == long
    _, with_resets = reference_run(grads)
    assert max_gap(got, with_resets) > 1e-3


def test_pruned_weights_stay_exactly_zero():
    """Entries zeroed (weight and same-shape state, as the pruner does) with zeroed gradients stay exactly 0."""
    grads = gradients()
    params = make_params(torch.float32)
    optimizer = make_optimizer(params)
    mask = torch.tensor([[1, 0, 1], [0, 1, 0]], dtype=torch.bool)  # True = kept
    for t, g in enumerate(grads, start=1):
        if t == 20:  # prune more entries mid-run, after moments and a reset exist
            mask[0, 0] = False
            params[0].data[~mask] = 0
            for value in optimizer.state[params[0]].values():
                if torch.is_tensor(value) and value.shape == params[0].shape:
                    value[~mask] = 0
        if t == 1:
            params[0].data[~mask] = 0
        for p, values in zip(params, g):
            p.grad = torch.tensor(values, dtype=p.dtype).reshape(p.shape)
        params[0].grad[~mask] = 0
        optimizer.step()
        state = optimizer.state[params[0]]
        assert torch.all(params[0][~mask] == 0), f"step {t}"
        assert torch.all(state["exp_avg"][~mask] == 0) and torch.all(state["exp_avg_sq"][~mask] == 0)
    assert torch.all(params[0][mask] != 0)


def test_state_dict_round_trip_resumes_exactly():
    """Stop after 25 steps, save through torch.save(weights_only load), resume: bit-identical to one 60-step run."""
    grads = gradients()
    params = make_params()
    straight = run(params, make_optimizer(params), grads)
    first = make_params()
    optimizer = make_optimizer(first)
    run(first, optimizer, grads[:25])
    state = optimizer.state_dict()
    assert all(isinstance(group["total_step"], int) for group in state["param_groups"])
    assert all(set(s) == {"step", "exp_avg", "exp_avg_sq"} and isinstance(s["step"], int)
               for s in state["state"].values())
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in first], "optimizer": state}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = [nn.Parameter(p.clone()) for p in saved["params"]]
    optimizer2 = make_optimizer(resumed)
    optimizer2.load_state_dict(saved["optimizer"])
    tail = run(resumed, optimizer2, grads, start=25)
    assert tail == straight[25:]


def test_parameter_without_gradient_keeps_its_state_and_the_global_count_goes_on():
    """A tensor skipped on some steps (grad None): the reset and warm-up follow the global step, as the reference."""
    grads = gradients()
    for t in (5, 6, 30):
        grads[t - 1][1] = None
    params = make_params()
    optimizer = make_optimizer(params)
    got = []
    for g in grads:
        for p, values in zip(params, g):
            p.grad = None if values is None else torch.tensor(values, dtype=p.dtype).reshape(p.shape)
        optimizer.step()
        got.append([p.detach().reshape(-1).tolist() for p in params])
    _, expected = reference_run(grads)
    assert max_gap(got, expected) < 1e-12
    assert optimizer.state[params[1]]["step"] == STEPS - 3 and optimizer.state[params[0]]["step"] == STEPS


def test_with_eps_zero_and_no_decay_it_is_adamw():
    """The reference's step is AdamW's except eps placement and decay order: with eps = 0 and no decay they agree."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    reference = copy.deepcopy(model)
    optimizer = AdamWSPAM(model.parameters(), 1e-2, (0.9, 0.99), 0.0, enable_clip=False, reset_interval=0,
                          warmup_steps=0)
    expected = torch.optim.AdamW(reference.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=0.0, weight_decay=0.0)
    gen = torch.Generator().manual_seed(1)
    for _ in range(40):
        x, y = torch.randn(16, 6, generator=gen, dtype=torch.float64), torch.randn(16, 3, generator=gen,
                                                                                      dtype=torch.float64)
        for net, opt in ((model, optimizer), (reference, expected)):
            opt.zero_grad()
            nn.functional.mse_loss(net(x), y).backward()
            opt.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(p, q, rtol=1e-9, atol=1e-12)


def test_bad_arguments_are_refused():
    p = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="clip_delay_steps"):
        AdamWSPAM(p, clip_delay_steps=1)
    with pytest.raises(ValueError, match="theta"):
        AdamWSPAM(p, theta=0.0)
    with pytest.raises(ValueError, match="reset_interval"):
        AdamWSPAM(p, reset_interval=-1)


# --- Kconfig -> optimizer --------------------------------------------------------------------

SPAM_CONFIG = """\
CONFIG_MODEL_MODE_SINGLE=y
CONFIG_MODEL_SELECT_LENET5=y
CONFIG_PRUNING_MODE_SINGLE=y
CONFIG_PRUNING_SELECT_NONE=y
CONFIG_OPTIMIZER_MODE_SINGLE=y
CONFIG_OPTIMIZER_SELECT_ADAMWSPAM=y
"""


def spam_params(tmp_path, extra=""):
    config = tmp_path / ".config"
    config.write_text(SPAM_CONFIG + extra)
    return load_settings(config, warn=lambda message: None).optimizer_params["adamwspam"]


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 4))


def test_kconfig_defaults_reach_the_optimizer(tmp_path):
    optimizer = build_optimizer("adamwspam", small_model(), 1e-3, spam_params(tmp_path))
    assert isinstance(optimizer, AdamWSPAM)
    assert (optimizer.theta, optimizer.enable_clip, optimizer.reset_interval, optimizer.warmup_steps,
            optimizer.clip_delay_steps) == (5000.0, True, 1000, 100, 20)
    decayed, undecayed = optimizer.param_groups
    assert undecayed["weight_decay"] == 0.0 and all(p.dim() == 1 for p in undecayed["params"])
    assert decayed["weight_decay"] == spam_params(tmp_path).weight_decay > 0  # ADAMW_WEIGHT_DECAY


@pytest.mark.parametrize("lines, attribute, value", [
    ("CONFIG_SPAM_CLIP_DELAY_STEPS=7\n", "clip_delay_steps", 7),
    ("CONFIG_SPAM_INTERVAL=0\n", "reset_interval", 0),
    ("CONFIG_SPAM_INTERVAL=40\nCONFIG_SPAM_PERIODIC_RESET=n\n", "reset_interval", 0),
    ("CONFIG_SPAM_WARMUP_STEPS=30\nCONFIG_SPAM_WARMUP=n\n", "warmup_steps", 0),
    ("CONFIG_SPAM_WARMUP_STEPS=30\n", "warmup_steps", 30),
    ("CONFIG_SPAM_ENABLE_CLIP=n\n", "enable_clip", False),
])
def test_kconfig_values_reach_the_optimizer(tmp_path, lines, attribute, value):
    optimizer = build_optimizer("adamwspam", small_model(), 1e-3, spam_params(tmp_path, lines))
    assert getattr(optimizer, attribute) == value


def test_clip_delay_below_two_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="SPAM_CLIP_DELAY_STEPS"):
        spam_params(tmp_path, "CONFIG_SPAM_CLIP_DELAY_STEPS=1\n")


def test_kconfig_built_spam_equals_the_directly_built_one(tmp_path):
    """Through a .config (theta 50, interval 10, warm-up 4, delay 3, decay 0.1): the same 40 steps as by hand."""
    params = spam_params(tmp_path, 'CONFIG_SPAM_THETA="50"\nCONFIG_SPAM_INTERVAL=10\nCONFIG_SPAM_WARMUP_STEPS=4\n'
                                   'CONFIG_SPAM_CLIP_DELAY_STEPS=3\nCONFIG_ADAMW_WEIGHT_DECAY="0.1"\n')
    model, reference = small_model(), small_model()
    optimizer = build_optimizer("adamwspam", model, 1e-2, params)
    decayed = [module.weight for module in reference if isinstance(module, nn.Linear)]
    rest = [p for p in reference.parameters() if all(p is not q for q in decayed)]
    assert params.weight_decay == 0.1
    expected = AdamWSPAM([{"params": decayed, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], 1e-2,
                         params.betas, params.eps, theta=50.0, reset_interval=10, warmup_steps=4,
                         clip_delay_steps=3)
    gen = torch.Generator().manual_seed(3)
    for t in range(40):
        x, y = torch.randn(16, 8, generator=gen), torch.randn(16, 4, generator=gen)
        x = x * (30.0 if t in (7, 25) else 1.0)  # spikes
        for net, opt in ((model, optimizer), (reference, expected)):
            opt.zero_grad()
            nn.functional.mse_loss(net(x), y).backward()
            opt.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.equal(p, q)
