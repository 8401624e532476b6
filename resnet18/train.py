"""ResNet-18 (CIFAR variant) on CIFAR-10: data, then the shared classifier training.

Run by the runner as `python -m resnet18.train --run-dir D`; D/run.json holds
the RunSpec. Writes D/metrics.json.
"""
from __future__ import annotations

from lib.data.cifar import load_cifar10
from lib.errors import run_cli
from lib.image_classifier import crop_and_flip, train_image_classifier
from lib.train import start_run
from resnet18.model import ResNet18, ResNet18Config


def prepare_data(hyperparams: dict) -> str:
    """Find (or download and extract) the CIFAR-10 pickle batches once, before a matrix."""
    data = load_cifar10(hyperparams["training"]["data_dir"], "cpu", download=True)
    return f"cifar10: {data.info['split']}"


def main() -> None:
    run = start_run(__doc__.splitlines()[0])
    hp = run.spec.hyperparams
    data = load_cifar10(hp["training"]["data_dir"], run.device, download=run.download,
                        train_limit=hp["model"]["train_limit"] or None, test_limit=hp["model"]["test_limit"] or None)
    print(f"data: {data.info['split']}")
    model = ResNet18(ResNet18Config(num_classes=data.num_classes)).to(run.device)
    train_image_classifier(run, data, model, crop_and_flip() if hp["model"]["augment"] else None)


if __name__ == "__main__":
    run_cli(main)
