"""The training entry points end to end: `python -m <model>.train --run-dir D`.

Each trainer is started the way the runner starts it (run.json written
first, then lib/run/launch.trainer_command from the repository root) on tiny
data in the real on-disk format (MNIST IDX files, CIFAR pickle batches, an
image folder, a local text file), and its metrics.json is checked against
docs/results-format.md. The classifiers and GPT-2 must also learn: the
training loss (validation perplexity) falls. ResNet-50 is 23M parameters, so
it trains one step per variant and only has to run and record.
"""
from __future__ import annotations

import math
import re

import pytest
import torch

from tests.tiny_data import (ROOT, gpt2_symbols, one_spec, prepare_gpt2_text, train, write_cifar10, write_cifar100,
                             write_image_folder, write_mnist, write_text)

pytestmark = pytest.mark.slow  # each test trains a model in a trainer subprocess

CLASSIFIER = {"MODEL_MODE_SINGLE": True, "OPTIMIZER_MODE_SINGLE": True, "OPTIMIZER_SELECT_ADAM": True,
              "PRUNING_MODE_SINGLE": True, "PRUNING_SELECT_NONE": True, "LEARNING_RATE": "0.002"}
DATASET_FIELDS = {"name", "source", "train_size", "test_size", "split"}
ENVIRONMENT_FIELDS = {"device", "torch_version", "num_threads", "gpu_name"}
SPARSITY_FIELDS = {"target_pct", "global_pct", "per_layer_pct", "prunable_params", "zero_params"}
MEMORY_FIELDS = {"weights_bytes", "gradients_bytes", "optimizer_state_bytes", "mask_bytes", "training_multiplier",
                 "inference_multiplier", "cuda_max_allocated_mib", "terms"}


def documented_record_fields(row: str) -> set[str]:
    """The quoted field names of a list row (`epochs`, `evals`) of docs/results-format.md."""
    text = (ROOT / "docs" / "results-format.md").read_text()
    match = re.search(rf"^\| {row} \| list of `\{{(.*?)\}}`", text, re.MULTILINE)
    assert match, f"docs/results-format.md has no `{row}` row"
    return set(re.findall(r'"(\w+)"', match.group(1)))


def check_common(metrics: dict, spec, task: str) -> None:
    """The fields every metrics.json has, and that they agree with each other."""
    assert metrics["schema_version"] == 1
    assert (metrics["run_id"], metrics["model"], metrics["task"]) == (spec.run_id, spec.model, task)
    assert DATASET_FIELDS <= set(metrics["dataset"])
    assert metrics["dataset"]["train_size"] > 0 and metrics["dataset"]["test_size"] > 0
    assert ENVIRONMENT_FIELDS <= set(metrics["environment"])
    assert metrics["environment"]["device"] == "cpu" and metrics["environment"]["gpu_name"] is None
    sparsity = metrics["sparsity"]
    assert SPARSITY_FIELDS <= set(sparsity)
    assert sparsity["target_pct"] == spec.target_sparsity_pct
    assert sparsity["prunable_params"] > 0 and sparsity["per_layer_pct"]
    assert sparsity["global_pct"] == pytest.approx(100.0 * sparsity["zero_params"] / sparsity["prunable_params"])
    assert isinstance(metrics["pruning_schedule"], list)
    if spec.pruning == "none":
        assert metrics["pruning_schedule"] == [] and sparsity["global_pct"] < 1.0
    memory = metrics["memory"]
    assert MEMORY_FIELDS <= set(memory)
    assert memory["weights_bytes"] > 0 and memory["cuda_max_allocated_mib"] is None
    assert memory["training_multiplier"] >= 2.0  # weights + gradients at least
    assert 0.0 < memory["inference_multiplier"] <= 1.0
    assert metrics["wall_time_s"] >= metrics["train_time_s"] > 0
    assert metrics["throughput_samples_per_s"] > 0
    assert metrics["steps"] == metrics["planned_steps"] and metrics["stopped_by"] == "steps"
    assert metrics["resumed_from_step"] is None
    plan = metrics["batch_plan"]
    assert plan["micro_batch"] == spec.training.batch_size and plan["grad_accum"] == 1
    assert plan["effective_batch"] == plan["micro_batch"] * plan["grad_accum"] * plan["world_size"]


def check_classification(metrics: dict, spec, epochs: int) -> None:
    check_common(metrics, spec, "classification")
    records = metrics["epochs"]
    assert [r["epoch"] for r in records] == list(range(1, epochs + 1))
    assert metrics["steps"] == records[-1]["step"]
    accuracies = [r["test_accuracy_pct"] for r in records]
    assert metrics["best_accuracy_pct"] == max(accuracies)
    assert metrics["final_accuracy_pct"] == accuracies[-1]
    assert metrics["final_test_loss"] == records[-1]["test_loss"]
    assert accuracies[metrics["best_epoch"] - 1] == metrics["best_accuracy_pct"]
    assert all(0.0 <= a <= 100.0 for a in accuracies)
    assert "best_val_loss" not in metrics and "evals" not in metrics


def train_losses(metrics: dict) -> list[float]:
    return [r["train_loss"] for r in metrics["epochs"]]


# -- LeNet-5: pruned, with the best checkpoint ------------------------------------

LENET5_EPOCHS = 4


@pytest.fixture(scope="module")
def lenet5_run(tmp_path_factory):
    """LeNet-5, Adam, magnitude pruning to 50% reached at the end of epoch 1, best.pt saved."""
    tmp = tmp_path_factory.mktemp("lenet5")
    write_mnist(tmp / "data", n_train=200, n_test=100)
    spec = one_spec(tmp, **{**CLASSIFIER, "MODEL_SELECT_LENET5": True, "LENET5_AUGMENT": False,
                            "PRUNING_SELECT_NONE": False, "PRUNING_SELECT_MAGNITUDE": True,
                            "TARGET_SPARSITY": "0.5", "PRUNING_WARMUP": 2, "PRUNING_FREQUENCY": 2,
                            "PRUNING_RAMP_END_EPOCH": 1, "NUM_EPOCHS": LENET5_EPOCHS, "BATCH_SIZE": 25,
                            "LEARNING_RATE": "0.003", "SAVE_CHECKPOINT": True})
    return (spec, *train(tmp / "results", spec))


def test_lenet5_trains_on_idx_files_and_records_the_documented_fields(lenet5_run):
    spec, _, metrics, output = lenet5_run
    assert spec.run_id == "lenet5_adam_magnitude_50"
    check_classification(metrics, spec, LENET5_EPOCHS)
    assert metrics["dataset"]["name"] == "mnist" and metrics["dataset"]["source"] == "idx"
    assert (metrics["dataset"]["train_size"], metrics["dataset"]["test_size"]) == (200, 100)
    losses = train_losses(metrics)
    assert losses[0] > losses[-1], losses
    assert metrics["best_accuracy_pct"] >= 90.0  # each class has its own bright patch
    assert "best test accuracy" in output


def test_lenet5_magnitude_pruning_reaches_its_target_measured(lenet5_run):
    _, _, metrics, _ = lenet5_run
    sparsity = metrics["sparsity"]
    assert sparsity["target_pct"] == 50.0
    assert abs(sparsity["global_pct"] - 50.0) <= 1.0, sparsity
    schedule = metrics["pruning_schedule"]
    assert schedule and {"step", "target_pct", "measured_pct"} <= set(schedule[0])
    assert [s["step"] for s in schedule] == sorted(s["step"] for s in schedule)
    assert all(abs(s["measured_pct"] - s["target_pct"]) <= 1.0 for s in schedule), schedule
    assert schedule[-1]["target_pct"] == pytest.approx(50.0)
    # the ramp ends with epoch 1, so every evaluation sees the full target
    assert all(abs(r["sparsity_pct"] - 50.0) <= 1.0 for r in metrics["epochs"])
    memory = metrics["memory"]
    assert memory["mask_bytes"] > 0
    assert memory["inference_multiplier"] < 0.75  # about half the weights are zero


def test_lenet5_best_checkpoint_holds_the_pruned_zeros(lenet5_run):
    _, run_dir, metrics, _ = lenet5_run
    saved = torch.load(run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    assert saved["evaluation"]["epoch"] == metrics["best_epoch"]
    weights = saved["model"]
    layers = metrics["sparsity"]["per_layer_pct"]
    assert set(layers) <= set(weights)
    zeros = sum(int((weights[name] == 0).sum()) for name in layers)
    total = sum(weights[name].numel() for name in layers)
    assert total == metrics["sparsity"]["prunable_params"]
    assert abs(100.0 * zeros / total - 50.0) <= 1.0
    assert 100.0 * zeros / total == pytest.approx(saved["evaluation"]["sparsity_pct"])


def test_epoch_records_hold_the_documented_fields(lenet5_run):
    _, _, metrics, _ = lenet5_run
    documented = documented_record_fields("epochs")
    for record in metrics["epochs"]:
        assert documented <= set(record), documented - set(record)


# -- ResNet-18 on CIFAR-10 ------------------------------------------------------------

def test_resnet18_trains_on_cifar10_pickles(tmp_path):
    write_cifar10(tmp_path / "data", n_train=24, n_test=12, num_classes=4)
    spec = one_spec(tmp_path, **{**CLASSIFIER, "MODEL_SELECT_RESNET18": True, "RESNET18_AUGMENT": False,
                                 "NUM_EPOCHS": 3, "BATCH_SIZE": 8})
    _, metrics, _ = train(tmp_path / "results", spec)
    check_classification(metrics, spec, 3)
    assert metrics["dataset"]["name"] == "cifar10" and metrics["dataset"]["source"] == "pickle-batches"
    assert (metrics["dataset"]["train_size"], metrics["dataset"]["test_size"]) == (24, 12)
    assert metrics["steps"] == 9  # 3 steps of 8 per epoch
    losses = train_losses(metrics)
    assert losses[0] > losses[-1], losses


# -- ResNet-50: CIFAR-100 through either stem, and an image folder ---------------------

RESNET50 = {
    "cifar-stem": ({}, "cifar100"),
    "imagenet-stem-on-cifar": ({"RESNET50_STEM_IMAGENET": True, "RESNET50_IMAGE_SIZE": 64}, "cifar100"),
    "image-folder": ({"RESNET50_DATASET_IMAGENET": True, "RESNET50_STEM_IMAGENET": True,
                      "RESNET50_IMAGE_SIZE": 64}, "imagenet"),
}


@pytest.mark.parametrize("variant", list(RESNET50))
def test_resnet50_runs_and_records(tmp_path, variant):
    symbols, dataset = RESNET50[variant]
    if dataset == "imagenet":
        write_image_folder(tmp_path / "data", n_train=4, n_test=2, classes=2, size=48)
    else:
        write_cifar100(tmp_path / "data", n_train=8, n_test=4)
    spec = one_spec(tmp_path, **{**CLASSIFIER, "MODEL_SELECT_RESNET50": True, "RESNET50_AUGMENT": False,
                                 "NUM_EPOCHS": 1, "BATCH_SIZE": 8, **symbols})
    assert spec.model_params["dataset"] == dataset
    _, metrics, output = train(tmp_path / "results", spec)
    check_classification(metrics, spec, 1)
    assert metrics["dataset"]["name"] == dataset
    assert metrics["dataset"]["source"] == ("image-folder" if dataset == "imagenet" else "pickle-batches")
    assert (metrics["dataset"]["train_size"], metrics["dataset"]["test_size"]) == (8, 4)
    assert metrics["steps"] == 1
    assert math.isfinite(metrics["epochs"][0]["train_loss"])
    # about 23.5M prunable weights whatever the stem and head
    assert metrics["sparsity"]["prunable_params"] > 20_000_000
    assert "best test accuracy" in output


# -- GPT-2 on a local text file ---------------------------------------------------------

def test_gpt2_trains_on_local_text_and_perplexity_falls(tmp_path):
    text = write_text(tmp_path / "corpus.txt", n_chars=40_000)
    spec = one_spec(tmp_path, **gpt2_symbols(text, GPT2_MAX_ITERS=30, SAVE_CHECKPOINT=True))
    prepare_gpt2_text(spec)
    run_dir, metrics, output = train(tmp_path / "results", spec)
    check_common(metrics, spec, "language_modeling")
    assert metrics["dataset"]["train_size"] > 5_000 and metrics["dataset"]["test_size"] > 500  # tokens
    evals = metrics["evals"]
    assert [e["step"] for e in evals] == [0, 10, 20, 30]
    documented = documented_record_fields("evals")
    assert all(documented <= set(e) for e in evals), documented
    assert evals[0]["train_loss"] is None and all(e["train_loss"] > 0 for e in evals[1:])
    for e in evals:
        assert e["val_perplexity"] == pytest.approx(math.exp(e["val_loss"]))
    # untrained: about the vocabulary size (ln 50304 = 10.8 nats)
    assert evals[0]["val_perplexity"] > 10_000
    assert metrics["final_perplexity"] < evals[0]["val_perplexity"] / 20, [e["val_perplexity"] for e in evals]
    assert metrics["final_val_loss"] == evals[-1]["val_loss"]
    assert metrics["best_val_loss"] == min(e["val_loss"] for e in evals)
    assert metrics["best_perplexity"] == pytest.approx(math.exp(metrics["best_val_loss"]))
    assert metrics["final_perplexity"] == pytest.approx(math.exp(metrics["final_val_loss"]))
    assert metrics["steps"] == 30
    assert metrics["tokens_per_s"] == pytest.approx(metrics["throughput_samples_per_s"] * 32)
    assert "best_accuracy_pct" not in metrics and "epochs" not in metrics
    assert "perplexity" in output
    best = torch.load(run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    assert best["step"] == metrics["best_step"]
    assert best["evaluation"]["val_loss"] == metrics["best_val_loss"]
