"""LeNet-5 on MNIST: wires the model to lib (data, then the shared classifier training).

Run by the runner as `python -m lenet5.train --run-dir D`; D/run.json holds
the RunSpec. Writes D/metrics.json.
"""
from __future__ import annotations

from lenet5.model import LeNet5, LeNet5Config
from lib.data.augment import random_crop
from lib.data.mnist import load_mnist
from lib.errors import run_cli
from lib.image_classifier import train_image_classifier
from lib.train import start_run


def prepare_data(hyperparams: dict) -> str:
    """Download MNIST once before a matrix (or find the embedded subset); say which."""
    data = load_mnist(hyperparams["training"]["data_dir"], "cpu", download=True)
    return f"mnist: {data.info['source']} ({data.info['train_size']} train / {data.info['test_size']} test)"


def main() -> None:
    run = start_run(__doc__.splitlines()[0])
    hp = run.spec.hyperparams
    data = load_mnist(hp["training"]["data_dir"], run.device, download=run.download,
                      train_limit=hp["model"]["train_limit"] or None, test_limit=hp["model"]["test_limit"] or None)
    print(f"data: {data.info['source']} {data.info['train_size']} train / {data.info['test_size']} test")
    model = LeNet5(LeNet5Config(num_classes=data.num_classes)).to(run.device)
    augment = (lambda x, g: random_crop(x, 2, g)) if hp["model"]["augment"] else None
    train_image_classifier(run, data, model, augment)


if __name__ == "__main__":
    run_cli(main)
