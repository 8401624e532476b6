"""GPT-2 across two processes (torchrun, gloo on CPU): the data-parallel path a
multi-GPU run takes, with AdamWPrune state pruning."""
from __future__ import annotations

import re

import pytest
import torch

from lib.jsonio import read_json
from lib.run import runner
from lib.run.launch import trainer_command
from lib.run.task import Placement, RunPolicy, RunTask, execute_run
from tests.tiny_data import gpt2_symbols, one_spec, prepare_gpt2_text, train, write_text

pytestmark = pytest.mark.slow  # a two-process torchrun GPT-2 run


def test_two_process_gpt2_run_trains_prunes_and_writes_once(tmp_path):
    text = write_text(tmp_path / "corpus.txt", n_chars=40_000)
    spec = one_spec(tmp_path, **gpt2_symbols(text, GPT2_MAX_ITERS=20, GPT2_GPUS_PER_RUN=2, SAVE_CHECKPOINT=True,
                                             OPTIMIZER_SELECT_ADAMW=False, OPTIMIZER_SELECT_ADAMWPRUNE=True,
                                             ADAMWPRUNE_BASE_ADAMW=True, PRUNING_SELECT_NONE=False,
                                             PRUNING_SELECT_STATE=True, ADAMWPRUNE_TARGET_SPARSITY="0.5",
                                             ADAMWPRUNE_WARMUP_STEPS=5, ADAMWPRUNE_FREQUENCY=5,
                                             ADAMWPRUNE_RAMP_END_STEP=15))
    assert spec.pruning == "state"
    prepare_gpt2_text(spec)
    run_dir, metrics, output = train(tmp_path / "results", spec)
    assert "torch.distributed.run" in read_json(run_dir / "run.json")["command"]
    assert metrics["world_size"] == 2
    assert metrics["batch_plan"]["effective_batch"] == 2 * metrics["batch_plan"]["micro_batch"]
    assert metrics["steps"] == 20
    assert abs(metrics["sparsity"]["global_pct"] - 50.0) < 0.5
    assert metrics["final_perplexity"] < metrics["initial_perplexity"]
    # Only rank 0 prints and writes: one summary line, one metrics file.
    assert output.count("perplexity ") == 1
    best = torch.load(run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    assert best["step"] == metrics["best_step"]


def test_a_two_process_run_that_goes_non_finite_is_not_retried_and_gets_the_non_finite_advice(tmp_path):
    """torchrun exits 1 whatever its workers' codes, so a worker's NonFiniteError (exit 3) reaches the
    runner as 1: the runner must learn from what the workers recorded in the run folder that the run
    diverged, not retry it (the same settings diverge again), and advise the learning rate or clipping
    rather than `make continue`. The worker's error line, far above torchrun's report, is in the tail."""
    text = write_text(tmp_path / "corpus.txt", n_chars=40_000)
    spec = one_spec(tmp_path, **gpt2_symbols(text, GPT2_GPUS_PER_RUN=2, LEARNING_RATE="10", GPT2_WARMUP_STEPS=0))
    prepare_gpt2_text(spec)
    results = tmp_path / "results"
    task = RunTask(results, spec, tuple(trainer_command(spec, results / spec.run_id)), RunPolicy(retries=2))
    result = execute_run(task, Placement("local"), env={"OMP_NUM_THREADS": "1"})
    assert result["exit_code"] == 1  # torchrun's own code, not the workers' 3
    assert result["status"] == "failed" and result["attempts"] == 1 and result["non_finite"] is True
    assert any(re.search(r"became (nan|inf|.*\(diverged\)) at step \d+ \(lr", line) for line in result["log_tail"])
    [advice] = runner.failure_lines(results, [spec])
    assert advice.startswith(f"1 run went non-finite ({spec.run_id}); make continue reruns the recorded settings")
