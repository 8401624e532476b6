"""Optimizers and learning-rate schedules, checked against independent references.

AdamWPrune is its base optimizer (Adam, AdamW, AdamWAdv or AdamWSPAM) built
with AdamWPrune's own Kconfig betas, decay and AMSGrad, so with pruning off it
must follow the base step for step. AdamWAdv is compared with torch
AdamW(amsgrad=True) on gradients clipped by hand; AdamWSPAM with a
transcription of the SPAM authors' reference code in tests/test_spam.py.
Every configuration goes through a real .config and lib.config.load_settings.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lib.config import load_settings
from lib.errors import UserError
from lib.models import model_entry
from lib.optim import build_optimizer
from lib.optim.adamwadv import AdamWAdv
from lib.optim.lr_schedules import LRSchedule, lr_schedule_for
from lib.optim.spam import AdamWSPAM

BASE_CONFIG = """\
CONFIG_MODEL_MODE_SINGLE=y
CONFIG_MODEL_SELECT_LENET5=y
CONFIG_PRUNING_MODE_SINGLE=y
CONFIG_PRUNING_SELECT_NONE=y
"""
ADAMWPRUNE = BASE_CONFIG + "CONFIG_OPTIMIZER_MODE_SINGLE=y\nCONFIG_OPTIMIZER_SELECT_ADAMWPRUNE=y\n"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def settings_of(tmp_path, text):
    config = tmp_path / ".config"
    config.write_text(text)
    return load_settings(config, warn=lambda message: None)


def config_lines(**symbols):
    return "".join(f"CONFIG_{name}={value}\n" for name, value in symbols.items())


def small_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 4))


def reference_groups(model, weight_decay):
    """Decay on Linear/Conv weights only, chosen by module type (not by tensor rank as lib does)."""
    decayed = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    ids = {id(p) for p in decayed}
    return [{"params": decayed, "weight_decay": weight_decay},
            {"params": [p for p in model.parameters() if id(p) not in ids], "weight_decay": 0.0}]


def batches(n, seed=1, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return [(scale * torch.randn(16, 8, generator=gen), torch.randn(16, 4, generator=gen)) for _ in range(n)]


def train(model, optimizer, data, before_step=None):
    for x, y in data:
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        if before_step is not None:
            before_step(model)
        optimizer.step()
    return model


def assert_same_parameters(a, b, atol=1e-6):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=atol), f"{name}: max diff {(p - q).abs().max().item():.3g}"


def max_difference(a, b):
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


# --- AdamWPrune is its base optimizer -----------------------------------------------------

# AdamWPrune's own values, and decoy AdamW/AdamWAdv values that must not leak in.
PRUNE_VALUES = config_lines(ADAMWPRUNE_BETA1='"0.85"', ADAMWPRUNE_BETA2='"0.99"', ADAMWPRUNE_WEIGHT_DECAY='"0.05"',
                            ADAMW_BETA1='"0.5"', ADAMW_BETA2='"0.9"', ADAMW_WEIGHT_DECAY='"0.3"',
                            ADAMW_EPSILON='"1e-6"', ADV_WEIGHT_DECAY='"0.2"', ADAMWPRUNE_ENABLE_PRUNING="n")
LR, BETAS, DECAY, EPS = 3e-3, (0.85, 0.99), 0.05, 1e-6

BASES = {
    "adam": (config_lines(ADAMWPRUNE_BASE_ADAM="y", ADAMWPRUNE_AMSGRAD="y"),
             lambda groups: torch.optim.Adam(groups, lr=LR, betas=BETAS, eps=EPS, amsgrad=True)),
    "adamw": (config_lines(ADAMWPRUNE_BASE_ADAMW="y", ADAMWPRUNE_AMSGRAD="y"),
              lambda groups: torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS, amsgrad=True)),
    "adamwadv": (config_lines(ADAMWPRUNE_BASE_ADAMWADV="y", ADAMWPRUNE_AMSGRAD="y", ADV_USE_AMSGRAD="n",
                              ADV_GRAD_CLIP='"0.5"'),
                 lambda groups: AdamWAdv(groups, LR, betas=BETAS, eps=EPS, amsgrad=True, grad_clip=0.5)),
    "adamwspam": (config_lines(ADAMWPRUNE_BASE_ADAMWSPAM="y", SPAM_THETA='"50"', SPAM_INTERVAL=40,
                               SPAM_WARMUP_STEPS=10, SPAM_CLIP_DELAY_STEPS=5),
                  lambda groups: AdamWSPAM(groups, LR, BETAS, EPS, theta=50.0, enable_clip=True, reset_interval=40,
                                           warmup_steps=10, clip_delay_steps=5)),
}


@pytest.mark.parametrize("base", sorted(BASES))
def test_adamwprune_without_pruning_equals_its_base(tmp_path, base):
    """100 steps of AdamWPrune (from a .config) track the base optimizer built by hand to 1e-6."""
    lines, make_reference = BASES[base]
    settings = settings_of(tmp_path, ADAMWPRUNE + PRUNE_VALUES + lines)
    params = settings.optimizer_params["adamwprune"]
    assert params.base == base
    model, reference = small_model(), small_model()
    optimizer = build_optimizer("adamwprune", model, LR, params)
    expected = make_reference(reference_groups(reference, DECAY))
    assert isinstance(optimizer, type(expected))  # on AdamWSPAM: MaskedAdamWSPAM, which is AdamWSPAM unmasked
    data = batches(100)
    train(model, optimizer, data)
    train(reference, expected, data)
    assert max_difference(model, small_model()) > 1e-2  # it did train
    assert_same_parameters(model, reference)


@pytest.mark.parametrize("symbol, value, key, expected", [
    ("ADAMWPRUNE_BETA1", '"0.7"', "betas", (0.7, 0.999)),
    ("ADAMWPRUNE_BETA2", '"0.9"', "betas", (0.9, 0.9)),
    ("ADAMWPRUNE_WEIGHT_DECAY", '"0.5"', "weight_decay", 0.5),
    ("ADAMWPRUNE_AMSGRAD", "y", "amsgrad", True),
])
def test_adamwprune_honours_its_kconfig_values(tmp_path, symbol, value, key, expected):
    """Each AdamWPrune value reaches the optimizer's param_groups and changes the trajectory."""
    (tmp_path / "default").mkdir()
    default = settings_of(tmp_path / "default", ADAMWPRUNE).optimizer_params["adamwprune"]
    changed = settings_of(tmp_path, ADAMWPRUNE + config_lines(**{symbol: value})).optimizer_params["adamwprune"]
    model_default, model_changed = small_model(), small_model()
    opt_default = build_optimizer("adamwprune", model_default, 1e-2, default)
    opt_changed = build_optimizer("adamwprune", model_changed, 1e-2, changed)
    assert isinstance(opt_changed, torch.optim.AdamW)  # the default base
    decayed, undecayed = opt_changed.param_groups
    assert decayed[key] == expected
    if key == "weight_decay":
        assert undecayed["weight_decay"] == 0.0
        assert opt_default.param_groups[0]["weight_decay"] == 0.01
    else:
        assert undecayed[key] == expected
        assert opt_default.param_groups[0][key] != expected
    data = batches(20, scale=10.0) + batches(40, seed=2, scale=0.05)  # shrinking gradients: AMSGrad matters
    train(model_default, opt_default, data)
    train(model_changed, opt_changed, data)
    assert max_difference(model_default, model_changed) > 1e-5  # float noise is below 1e-7


def test_adamwprune_amsgrad_with_spam_base_is_a_user_error(tmp_path):
    """SPAM has no AMSGrad: the combination stops at load_settings, naming both symbols."""
    with pytest.raises(UserError, match="ADAMWPRUNE_AMSGRAD.*ADAMWPRUNE_BASE_ADAMWSPAM"):
        settings_of(tmp_path, ADAMWPRUNE + config_lines(ADAMWPRUNE_BASE_ADAMWSPAM="y", ADAMWPRUNE_AMSGRAD="y"))


# --- AdamWAdv ------------------------------------------------------------------------------


def clip_by_hand(max_norm, record):
    def clip(model):
        grads = [p.grad for p in model.parameters()]
        norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
        record.append(norm)
        scale = max_norm / (norm + 1e-6)  # torch.nn.utils.clip_grad_norm_'s rule
        if scale < 1.0:
            for g in grads:
                g.mul_(scale)
    return clip


def test_adamwadv_is_amsgrad_adamw_on_clipped_gradients():
    """AdamWAdv(grad_clip=0.3) equals AdamW(amsgrad) fed gradients clipped to global norm 0.3 by hand."""
    model, reference = small_model(), small_model()
    optimizer = AdamWAdv(reference_groups(model, 0.01), 1e-2, grad_clip=0.3)
    expected = torch.optim.AdamW(reference_groups(reference, 0.01), lr=1e-2, amsgrad=True)
    assert all(group["amsgrad"] for group in optimizer.param_groups)
    data, norms = batches(50, scale=3.0), []
    train(model, optimizer, data)
    train(reference, expected, data, before_step=clip_by_hand(0.3, norms))
    assert sum(n > 0.3 for n in norms) >= 25  # clipping was active on most steps
    assert_same_parameters(model, reference)


def test_adamwadv_without_clipping_is_amsgrad_adamw():
    """grad_clip=0 means no clipping: plain AdamW(amsgrad=True) to 1e-6."""
    model, reference = small_model(), small_model()
    optimizer = AdamWAdv(reference_groups(model, 0.01), 1e-2, grad_clip=0.0)
    expected = torch.optim.AdamW(reference_groups(reference, 0.01), lr=1e-2, amsgrad=True)
    data = batches(50, scale=3.0)
    train(model, optimizer, data)
    train(reference, expected, data)
    assert_same_parameters(model, reference)
    clipped = train(small_model(), AdamWAdv(reference_groups(small_model(), 0.01), 1e-2, grad_clip=0.3), data)
    assert max_difference(clipped, reference) > 1e-4  # the clip matters on these gradients


def test_adamwadv_from_kconfig(tmp_path):
    """ADV_* values reach AdamWAdv: AMSGrad, its own decay, the clip norm."""
    text = BASE_CONFIG + config_lines(OPTIMIZER_MODE_SINGLE="y", OPTIMIZER_SELECT_ADAMWADV="y",
                                      ADV_WEIGHT_DECAY='"0.05"', ADV_GRAD_CLIP='"0.3"')
    params = settings_of(tmp_path, text).optimizer_params["adamwadv"]
    model, reference = small_model(), small_model()
    optimizer = build_optimizer("adamwadv", model, 1e-2, params)
    assert isinstance(optimizer, AdamWAdv) and optimizer.grad_clip == 0.3
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]
    expected = torch.optim.AdamW(reference_groups(reference, 0.05), lr=1e-2, amsgrad=True)
    data = batches(30, scale=3.0)
    train(model, optimizer, data)
    train(reference, expected, data, before_step=clip_by_hand(0.3, []))
    assert_same_parameters(model, reference)


# --- learning-rate schedules ------------------------------------------------------------------


def test_linear_warmup_values():
    """Warm-up goes peak/(N+1), 2 peak/(N+1), ..., N peak/(N+1) over the first N steps (nanoGPT's
    (it+1)/(warmup+1)), then the peak, whatever the kind."""
    for kind in ("constant", "cosine", "step"):
        schedule = LRSchedule(2.0, kind, total_steps=100, warmup_steps=4, min_lr=0.1, step_every=10)
        assert [schedule.at(s) for s in range(5)] == pytest.approx([0.4, 0.8, 1.2, 1.6, 2.0])
    assert LRSchedule(2.0).at(0) == LRSchedule(2.0).at(10_000) == 2.0


def test_cosine_peak_midpoint_and_floor():
    """Cosine: the peak right after warm-up, (peak+min)/2 halfway, min_lr at the end and after."""
    schedule = LRSchedule(1.0, "cosine", total_steps=110, warmup_steps=10, min_lr=0.1)
    assert schedule.at(10) == pytest.approx(1.0)
    assert schedule.at(60) == pytest.approx(0.55)
    assert schedule.at(35) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert schedule.at(110) == pytest.approx(0.1)
    assert schedule.at(500) == pytest.approx(0.1)
    values = [schedule.at(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_step_decay_values():
    """Step decay: gamma^floor((step - warm-up) / every) times the peak."""
    schedule = LRSchedule(1.0, "step", total_steps=100, warmup_steps=2, step_every=5, gamma=0.5)
    assert [schedule.at(s) for s in (2, 6, 7, 11, 12, 17)] == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.25, 0.125])


def test_unknown_schedule_kind_is_refused():
    with pytest.raises(ValueError, match="linear"):
        LRSchedule(1.0, "linear")


GENERAL = config_lines(LEARNING_RATE='"0.002"', LR_SCHEDULE_STEP="y", LR_STEP_EVERY=10, LR_STEP_GAMMA='"0.5"')


@pytest.mark.parametrize("optimizer, lines", [
    ("adamwadv", config_lines(OPTIMIZER_SELECT_ADAMWADV="y")),
    ("adamwprune", config_lines(OPTIMIZER_SELECT_ADAMWPRUNE="y", ADAMWPRUNE_BASE_ADAMWADV="y")),
])
def test_adamwadv_anneals_to_its_eta_min(tmp_path, optimizer, lines):
    """AdamWAdv (alone or as AdamWPrune's base) anneals by cosine to ADV_COSINE_ETA_MIN, not LR_SCHEDULE."""
    text = BASE_CONFIG + GENERAL + "CONFIG_OPTIMIZER_MODE_SINGLE=y\n" + lines + 'CONFIG_ADV_COSINE_ETA_MIN="0.0001"\n'
    settings = settings_of(tmp_path, text)
    training = settings.training
    schedule = lr_schedule_for(optimizer, settings.optimizer_params[optimizer], training, total_steps=100)
    assert (schedule.kind, schedule.peak, schedule.min_lr) == ("cosine", 0.002, 0.0001)
    assert schedule.at(0) == pytest.approx(0.002)
    assert schedule.at(50) == pytest.approx((0.002 + 0.0001) / 2)
    assert schedule.at(100) == pytest.approx(0.0001)


@pytest.mark.parametrize("optimizer, lines", [
    ("adamwadv", config_lines(OPTIMIZER_SELECT_ADAMWADV="y", ADV_USE_COSINE_ANNEALING="n")),
    ("adamwprune", config_lines(OPTIMIZER_SELECT_ADAMWPRUNE="y", ADAMWPRUNE_BASE_ADAMW="y")),
])
def test_without_adv_annealing_lr_schedule_applies(tmp_path, optimizer, lines):
    """With annealing off (or another AdamWPrune base) the general LR_SCHEDULE applies."""
    settings = settings_of(tmp_path, BASE_CONFIG + GENERAL + "CONFIG_OPTIMIZER_MODE_SINGLE=y\n" + lines)
    training = settings.training
    schedule = lr_schedule_for(optimizer, settings.optimizer_params[optimizer], training, total_steps=100)
    assert schedule.kind == "step"
    assert [schedule.at(s) for s in (0, 9, 10, 25)] == pytest.approx([0.002, 0.002, 0.001, 0.0005])


@pytest.mark.parametrize("model, kind", [("lenet5", "constant"), ("resnet18", "cosine"), ("resnet50", "cosine"),
                                         ("gpt2", "cosine")])
def test_default_lr_schedule_is_upstreams_for_the_model(tmp_path, model, kind):
    """LR_SCHEDULE unset = per model: upstream trains LeNet-5 at a constant rate (its trainer steps a
    scheduler only for AdamWAdv), the ResNets with cosine (RESNET18_USE_COSINE_SCHEDULE=y), GPT-2 with
    cosine (GPT2_DECAY_LR=y). An explicit choice wins."""
    settings = settings_of(tmp_path, BASE_CONFIG + 'CONFIG_LEARNING_RATE="0.002"\n')
    training = settings.training
    assert training.lr_schedule == "per-model"
    schedule = lr_schedule_for("adamw", settings.optimizer_params["adamw"], training, 100,
                               per_model=model_entry(model).lr_schedule)
    assert schedule.kind == kind
    cosine = 0.002 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.99)))  # 1% floor, step 99 of 100
    assert schedule.at(99) == pytest.approx(0.002 if kind == "constant" else cosine)
    (tmp_path / "explicit").mkdir()
    settings = settings_of(tmp_path / "explicit", BASE_CONFIG + "CONFIG_LR_SCHEDULE_COSINE=y\n")
    training = settings.training
    assert lr_schedule_for("adamw", settings.optimizer_params["adamw"], training, 100,
                           per_model=model_entry("lenet5").lr_schedule).kind == "cosine"


def test_sgd_learning_rate_overrides_the_peak_for_sgd_only(tmp_path):
    """SGD_LEARNING_RATE is SGD's peak (default 0.01); Adam and AdamW keep LEARNING_RATE; 0 means LEARNING_RATE."""
    multiple = config_lines(OPTIMIZER_MODE_MULTIPLE="y", OPTIMIZER_ENABLE_SGD="y", OPTIMIZER_ENABLE_ADAM="y",
                            OPTIMIZER_ENABLE_ADAMW="y", LEARNING_RATE='"0.002"')
    (tmp_path / "a").mkdir()
    settings = settings_of(tmp_path / "a", BASE_CONFIG + multiple + 'CONFIG_SGD_LEARNING_RATE="0.05"\n')
    training = settings.training
    peaks = {name: lr_schedule_for(name, settings.optimizer_params[name], training, 100).peak
             for name in ("sgd", "adam", "adamw")}
    assert peaks == {"sgd": 0.05, "adam": 0.002, "adamw": 0.002}
    settings = settings_of(tmp_path, BASE_CONFIG + multiple)  # SGD's own default: 0.01, not Adam's rate
    training = settings.training
    assert lr_schedule_for("sgd", settings.optimizer_params["sgd"], training, 100).peak == 0.01
    (tmp_path / "b").mkdir()
    settings = settings_of(tmp_path / "b", BASE_CONFIG + multiple + 'CONFIG_SGD_LEARNING_RATE="0"\n')
    training = settings.training
    assert lr_schedule_for("sgd", settings.optimizer_params["sgd"], training, 100).peak == 0.002


# --- parameter groups -------------------------------------------------------------------------


def conv_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 6), nn.LayerNorm(6),
                         nn.Linear(6, 3))


@pytest.mark.parametrize("name", ["adam", "adamw", "adamwadv", "adamwspam", "adamwprune", "sgd"])
def test_decay_only_on_linear_and_conv_weights(tmp_path, name):
    """Biases and BatchNorm/LayerNorm weights get decay 0; Linear and Conv2d weights the configured value."""
    multiple = config_lines(OPTIMIZER_MODE_MULTIPLE="y", **{f"OPTIMIZER_ENABLE_{n.upper()}": "y" for n in
                                                            ("sgd", "adam", "adamw", "adamwadv", "adamwspam",
                                                             "adamwprune")})
    decays = config_lines(SGD_WEIGHT_DECAY='"0.07"', ADAM_WEIGHT_DECAY='"0.07"', ADAMW_WEIGHT_DECAY='"0.07"',
                          ADV_WEIGHT_DECAY='"0.07"', ADAMWPRUNE_WEIGHT_DECAY='"0.07"')
    params = settings_of(tmp_path, BASE_CONFIG + multiple + decays).optimizer_params[name]
    model = conv_model()
    optimizer = build_optimizer(name, model, 1e-3, params)
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert len(decay_of) == len(list(model.parameters()))
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            wanted = 0.07 if isinstance(module, (nn.Linear, nn.Conv2d)) and param_name == "weight" else 0.0
            assert decay_of[id(param)] == wanted, f"{module_name}.{param_name}"


def test_sgd_momentum_and_decay_from_kconfig(tmp_path):
    """SGD_MOMENTUM and SGD_WEIGHT_DECAY reach torch SGD and its trajectory."""
    text = BASE_CONFIG + config_lines(OPTIMIZER_MODE_SINGLE="y", OPTIMIZER_SELECT_SGD="y", SGD_MOMENTUM='"0.8"',
                                      SGD_WEIGHT_DECAY='"0.01"')
    params = settings_of(tmp_path, text).optimizer_params["sgd"]
    model, reference = small_model(), small_model()
    optimizer = build_optimizer("sgd", model, 0.05, params)
    assert isinstance(optimizer, torch.optim.SGD)
    assert [(g["momentum"], g["weight_decay"]) for g in optimizer.param_groups] == [(0.8, 0.01), (0.8, 0.0)]
    expected = torch.optim.SGD(reference_groups(reference, 0.01), lr=0.05, momentum=0.8)
    data = batches(30)
    train(model, optimizer, data)
    train(reference, expected, data)
    assert_same_parameters(model, reference)


def test_unknown_optimizer_is_a_user_error():
    with pytest.raises(UserError, match="lion"):
        build_optimizer("lion", small_model(), 1e-3, {})
