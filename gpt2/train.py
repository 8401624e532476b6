"""GPT-2 language modelling on GPT-2-tokenized text: data, model, then the shared loop.

Run by the runner as `python -m gpt2.train --run-dir D` (under torchrun when
the run has several GPUs); D/run.json holds the RunSpec. Writes
D/metrics.json with validation loss and perplexity (best and final),
tokens/s and the measured sparsity.
"""
from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gpt2.model import GPT, gpt2_config
from lib.data.text import TokenData, load_tokens, prepare_text, prepared_dir
from lib.data.tokenizer import VOCAB_SIZE
from lib.errors import run_cli
from lib.optim import build_optimizer
from lib.pruning.schedules import fixed_steps
from lib.spec import RunSpec
from lib.train.batch_plan import activation_mib, free_gpu_mib, plan_batch
from lib.train.distributed import init_distributed, shutdown
from lib.train.harness import build_pruner, loop_config, schedule_for, start_run, train_and_record
from lib.train.loop import TrainingLoop, autocast_for
from lib.train.mfu import MFUMeter
from lib.train.tasks import LanguageModelTask

PADDED_VOCAB = 50304  # GPT-2's 50257 rounded up to a multiple of 64 (nanoGPT): faster matmuls


def _text_source(spec: RunSpec) -> tuple[str, Path, int | None, str | None]:
    m = spec.model_params
    return m["dataset"], Path(spec.training.data_dir), m["token_cap"] or None, m["data_path"] or None


def prepare_data(spec: RunSpec) -> str:
    """Tokenize the run's corpus once before a matrix (reused when already prepared)."""
    source, data_dir, cap, path = _text_source(spec)
    tokens = load_tokens(prepare_text(source, data_dir, cap, path))
    return f"gpt2 text: {source} {tokens.meta['train_tokens']:,} train / {tokens.meta['val_tokens']:,} val tokens"


def _load(spec: RunSpec, download: bool) -> TokenData:
    source, data_dir, cap, path = _text_source(spec)
    return load_tokens(prepare_text(source, data_dir, cap, path) if download else prepared_dir(source, data_dir, path))


def _dataset_info(tokens: TokenData) -> dict[str, Any]:
    meta = tokens.meta
    return {"name": meta["source"], "source": meta.get("origin"), "train_size": meta["train_tokens"],
            "test_size": meta["val_tokens"], "unit": "tokens", "split": meta.get("split"), "path": str(tokens.path)}


def _budget(spec: RunSpec, total_steps: int) -> dict[str, Any]:
    """The steps this run was given and why (upstream's per-variant budget, lib/variant_budgets)."""
    budget = spec.variant_budget
    return {"max_iters": total_steps, **(budget.to_json() if budget else
                                         {"base_max_iters": spec.model_params["max_iters"], "extra_pct": 0})}


def main() -> None:
    run = start_run(__doc__.splitlines()[0])
    dist, device = init_distributed(run.device)
    spec = run.spec
    m, training = spec.model_params, spec.training
    tokens = _load(spec, run.download)
    if dist.is_main:
        print(f"data: {tokens.path} {tokens.meta['train_tokens']:,} train / {tokens.meta['val_tokens']:,} val tokens")
    config = gpt2_config(m["model_size"], m["block_size"], PADDED_VOCAB, m.get("dropout", 0.0), m.get("bias", True))
    assert config.vocab_size >= VOCAB_SIZE
    model = GPT(config).to(device)
    num_params = model.get_num_params(non_embedding=False)  # every weight, as make sample counts
    plan = plan_batch("gpt2", training, world_size=dist.world_size, free_gpu_mib=free_gpu_mib(device),
                      num_params=num_params,
                      per_sample_mib=activation_mib("gpt2", m, config.n_layer, config.n_embd))
    if dist.is_main:
        print(f"model: GPT-2 {m['model_size']} ({num_params:,} parameters), "
              f"block {config.block_size}; {plan.describe()}")
    tokens_per_step = plan.effective_batch * config.block_size
    fixed = fixed_steps(spec)  # max_iters: the dry run shows the same ramp (lib/run/plan.py)
    total_steps = fixed[0] if fixed else training.epochs * math.ceil(len(tokens.train) / tokens_per_step)
    schedule = schedule_for(spec, total_steps, warmup_steps=min(m["warmup_steps"], total_steps),
                            min_lr=m["min_lr"], decay_steps=m.get("lr_decay_iters", 0))
    optimizer = build_optimizer(spec.optimizer, model, schedule.peak, spec.optimizer_params)
    pruner = build_pruner(spec, model, optimizer, total_steps,
                          fixed[1] if fixed else math.ceil(total_steps / training.epochs))
    task = LanguageModelTask(tokens, config.block_size, plan.micro_batch, spec.seed, m["eval_samples"], device,
                             rank=dist.rank)
    # MFU at each evaluation: the model's PaLM FLOPs count over the device's datasheet peak.
    mfu = MFUMeter.for_run(model.flops_per_token() * config.block_size, config.block_size, device,
                           autocast_for(device, training.mixed_precision)[1], training.tf32,
                           dist.world_size)
    loop_cfg = loop_config(spec, run.run_dir, plan, total_steps=total_steps, eval_every=m["eval_interval"],
                           max_time_s=m["max_time_s"], eval_at_start=True, throughput_fields=mfu.fields,
                           model_args=asdict(config))
    loop = TrainingLoop(model, task, optimizer, pruner, schedule, loop_cfg, device=device, dist=dist)
    metrics = train_and_record(run.run_dir, spec, loop, started=run.started, note=run.device_note, plan=plan,
                               dataset=_dataset_info(tokens), dist=dist,
                               extra={"mfu": mfu.to_json(), "training_budget": _budget(spec, total_steps)})
    shutdown(dist)
    if dist.is_main:
        print(f"perplexity {metrics['initial_perplexity']:.2f} -> best {metrics['best_perplexity']:.2f}  "
              f"sparsity {metrics['sparsity']['global_pct']:.2f}%  "
              f"{metrics.get('tokens_per_s') or 0:,.0f} tokens/s")


if __name__ == "__main__":
    run_cli(main)
