"""LeNet-5 on MNIST: wires the model to lib (data, optimizer, pruning, loop).

Run by the runner as `python -m lenet5.train --run-dir D`; D/run.json holds
the RunSpec. Writes D/metrics.json.
"""
from __future__ import annotations

import math
import time

from lenet5.model import LeNet5, LeNet5Config
from lib.data.augment import random_crop
from lib.data.mnist import load_mnist
from lib.errors import run_cli
from lib.optim import build_optimizer
from lib.train import (ClassificationTask, build_pruner, cuda_peak_mib, environment, load_spec, parse_run_dir,
                       resolve_device, schedule_for, seed_everything, train_classifier, write_metrics)


def prepare_data(hyperparams: dict) -> str:
    """Download MNIST once before a matrix (or find the embedded subset); say which."""
    data = load_mnist(hyperparams["training"]["data_dir"], "cpu", download=True)
    return f"mnist: {data.info['source']} ({data.info['train_size']} train / {data.info['test_size']} test)"


def main() -> None:
    run_dir, download = parse_run_dir(__doc__.splitlines()[0])
    spec = load_spec(run_dir)
    started = time.perf_counter()
    hp, training = spec.hyperparams, spec.hyperparams["training"]
    generator = seed_everything(spec.seed)
    device, note = resolve_device(training["device"])
    if note:
        print(f"note: {note}")
    data = load_mnist(training["data_dir"], device, download=download, train_limit=hp["model"]["train_limit"] or None,
                      test_limit=hp["model"]["test_limit"] or None)
    print(f"data: {data.info['source']} {data.info['train_size']} train / {data.info['test_size']} test")
    model = LeNet5(LeNet5Config(num_classes=data.num_classes)).to(device)
    steps_per_epoch = math.ceil(data.info["train_size"] / training["batch_size"])
    total_steps = training["epochs"] * steps_per_epoch
    schedule = schedule_for(spec, total_steps)
    optimizer = build_optimizer(spec.optimizer, model, schedule.peak, hp["optimizer"])
    pruner = build_pruner(spec, model, optimizer, total_steps, steps_per_epoch)
    augment = (lambda x, g: random_crop(x, 2, g)) if hp["model"]["augment"] else None
    task = ClassificationTask(data.train_images, data.train_labels, data.test_images, data.test_labels, augment)
    metrics = train_classifier(model, task, optimizer, pruner, epochs=training["epochs"],
                               batch_size=training["batch_size"], schedule=schedule, generator=generator)
    metrics["memory"]["cuda_max_allocated_mib"] = cuda_peak_mib(device)
    metrics.update(dataset=data.info, environment=environment(device, note),
                   wall_time_s=time.perf_counter() - started)
    write_metrics(run_dir, spec, metrics)
    print(f"best test accuracy {metrics['best_accuracy_pct']:.2f}%  "
          f"sparsity {metrics['sparsity']['global_pct']:.2f}%")


if __name__ == "__main__":
    run_cli(main)
