"""Run specs for tests that need a RunSpec but no configuration (runner, executors, slots, provenance).

The settings are plain literals, not Kconfig's: these specs are never trained
from; tests that train build their specs from a configuration (tests/tiny_data.py).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

from lib.spec import OptimizerParams, PruningSettings, RunSpec, TrainingSettings

TRAINING = TrainingSettings(
    batch_size=64, epochs=2, learning_rate=0.001, lr_schedule="per-model", lr_warmup_steps=0, lr_step_every=0,
    lr_step_gamma=0.1, device="cpu", data_dir="./data", compile_model=False, mixed_precision=False,
    save_checkpoint=False, resume=True, grad_accum=1, hyper_param_auto=False, target_effective_batch=1024,
    log_every=0, grad_clip_norm=None, tf32=True)
PRUNING = PruningSettings(warmup_steps=10, frequency=5, ramp_end_epoch=1, schedule="per-method", ramp_fit=False,
                          mask_storage="bool", ramp_end_step=0)
ADAMW = OptimizerParams(learning_rate=None, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
OPTIMIZER_PARAMS = {
    "sgd": OptimizerParams(learning_rate=None, momentum=0.9, weight_decay=0.0005), "adam": ADAMW, "adamw": ADAMW,
    "adamwprune": OptimizerParams(learning_rate=None, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, base="adamw",
                                  state_score="bitter0", warmup_steps=10, frequency=5, ramp_end_step=0),
}


def make_spec(run_id: str, model: str = "lenet5", optimizer: str = "sgd", pruning: str = "none",
              target: float = 0.0, variant: Optional[str] = None, seed: int = 1, epochs: int = 2,
              **model_params: Any) -> RunSpec:
    """A spec of the given identity (optimizer: one of OPTIMIZER_PARAMS) and model parameters."""
    return RunSpec(run_id, model, optimizer, pruning, variant, float(target), seed,
                   training=dataclasses.replace(TRAINING, epochs=epochs), pruning_settings=PRUNING,
                   optimizer_params=OPTIMIZER_PARAMS[optimizer], model_params=model_params)
