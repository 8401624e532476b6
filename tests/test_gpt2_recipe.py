"""GPT-2's recipe as nanoGPT runs it: optimizer groups and defaults, the learning-rate
schedule, the bias option (checkpoints, MFU and sampling: tests/test_gpt2_tools.py)."""
from __future__ import annotations

import math

import pytest

from gpt2.model import GPT, gpt2_config
from lib.errors import UserError
from lib.optim import build_optimizer
from lib.train.harness import schedule_for
from tests.tiny_data import gpt2_symbols, one_spec


def nanogpt_get_lr(it: int, learning_rate: float, warmup_iters: int, lr_decay_iters: int, min_lr: float) -> float:
    """nanoGPT train.py's get_lr, written out independently of lib/optim/lr_schedules.py."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


def gpt2_spec(tmp_path, **overrides):
    return one_spec(tmp_path, **gpt2_symbols(tmp_path / "unused.txt", **overrides))


def test_gpt2_alone_takes_nanogpt_betas_and_weight_decay(tmp_path):
    """AdamW (0.9, 0.95) and decay 0.1; AdamWPrune decay 0.1 but upstream's beta2 0.999."""
    adamw = gpt2_spec(tmp_path).optimizer_params
    assert adamw.betas == (0.9, 0.95) and adamw.weight_decay == 0.1
    (tmp_path / "p").mkdir()
    prune = gpt2_spec(tmp_path / "p", OPTIMIZER_SELECT_ADAMW=False, OPTIMIZER_SELECT_ADAMWPRUNE=True)
    params = prune.optimizer_params
    assert params.betas == (0.9, 0.999) and params.weight_decay == 0.1


def test_other_models_keep_the_general_defaults_and_set_values_win(tmp_path):
    lenet = one_spec(tmp_path, MODEL_MODE_SINGLE=True, MODEL_SELECT_LENET5=True, OPTIMIZER_MODE_SINGLE=True,
                     OPTIMIZER_SELECT_ADAMW=True).optimizer_params
    assert lenet.betas == (0.9, 0.999) and lenet.weight_decay == 0.0001
    (tmp_path / "s").mkdir()
    set_ = gpt2_spec(tmp_path / "s", ADAMW_BETA2="0.99", ADAMW_WEIGHT_DECAY="0.05").optimizer_params
    assert set_.betas == (0.9, 0.99) and set_.weight_decay == 0.05


def test_only_rank_two_tensors_decay_and_betas_reach_the_optimizer(tmp_path):
    """nanoGPT's configure_optimizers: matmul weights and embeddings decay; biases and LayerNorms do not."""
    spec = gpt2_spec(tmp_path)
    model = GPT(gpt2_config("tiny", 16, 128))
    optimizer = build_optimizer("adamw", model, 1e-3, spec.optimizer_params)
    decay, no_decay = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert {names[id(p)] for p in no_decay["params"]} == {
        n for n, _ in model.named_parameters() if n.endswith(".bias") or ".ln_" in n or n.startswith("transformer.ln_f")}
    assert "transformer.wte.weight" in {names[id(p)] for p in decay["params"]}  # = lm_head.weight (tied)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert all(group["betas"] == (0.9, 0.95) for group in optimizer.param_groups)


@pytest.mark.parametrize("decay_iters", [0, 60])
def test_learning_rate_follows_nanogpt_get_lr(tmp_path, decay_iters):
    spec = gpt2_spec(tmp_path, GPT2_WARMUP_STEPS=10, GPT2_LR_DECAY_ITERS=decay_iters, GPT2_MIN_LR="1e-4",
                     LEARNING_RATE="3e-3")
    m = spec.model_params
    total = 100
    schedule = schedule_for(spec, total, warmup_steps=m["warmup_steps"], min_lr=m["min_lr"],
                            decay_steps=m["lr_decay_iters"])
    horizon = decay_iters or total
    expected = [nanogpt_get_lr(it, 3e-3, 10, horizon, 1e-4) for it in range(total)]
    assert [schedule.at(it) for it in range(total)] == pytest.approx(expected, rel=1e-12)
    assert schedule.at(0) == pytest.approx(3e-3 / 11)
    if decay_iters:
        assert all(schedule.at(it) == pytest.approx(1e-4) for it in range(decay_iters, total))
        assert schedule.at(decay_iters - 1) > 1e-4


def test_decay_horizon_inside_the_warm_up_is_refused(tmp_path):
    with pytest.raises(UserError, match="GPT2_LR_DECAY_ITERS=5 is not after the warm-up"):
        gpt2_spec(tmp_path, GPT2_WARMUP_STEPS=10, GPT2_LR_DECAY_ITERS=5)


def test_bias_option_reaches_the_model(tmp_path):
    """GPT2_BIAS=n removes every Linear and LayerNorm bias: per block 2 LayerNorms
    (n_embd each), c_attn (3 n_embd), attn c_proj (n_embd), c_fc (4 n_embd), mlp c_proj
    (n_embd), plus ln_f."""
    assert gpt2_spec(tmp_path).model_params["bias"] is True
    (tmp_path / "n").mkdir()
    m = gpt2_spec(tmp_path / "n", GPT2_BIAS=False).model_params
    assert m["bias"] is False
    with_bias = GPT(gpt2_config("tiny", 16, 128))
    without = GPT(gpt2_config("tiny", 16, 128, bias=m["bias"]))
    n_layer, n_embd = with_bias.config.n_layer, with_bias.config.n_embd
    assert with_bias.get_num_params() - without.get_num_params() == n_layer * 11 * n_embd + n_embd
    assert not any(name.endswith(".bias") for name, _ in without.named_parameters())
