"""LeNet-5 on MNIST: its data, network and augmentation; lib trains it.

Run by the runner as `python -m lenet5.train --run-dir D`; D/run.json holds
the RunSpec. Writes D/metrics.json.
"""
from __future__ import annotations

from lenet5.model import LeNet5, LeNet5Config
from lib.data.augment import random_crop
from lib.data.mnist import ImageClassificationData, load_mnist
from lib.errors import run_cli
from lib.spec import RunSpec
from lib.train.image_classifier import ImageTrainer


def _load(spec: RunSpec, device, download: bool) -> ImageClassificationData:
    m = spec.model_params
    return load_mnist(spec.training.data_dir, device, download=download,
                      train_limit=m["train_limit"] or None, test_limit=m["test_limit"] or None)


def _augment(spec: RunSpec):
    # a random shift of up to 2 pixels: helps on the 4,000-image embedded subset
    return (lambda x, g: random_crop(x, 2, g)) if spec.model_params["augment"] else None


TRAINER = ImageTrainer(_load, lambda data, spec: LeNet5(LeNet5Config(num_classes=data.num_classes)), _augment)
prepare_data = TRAINER.prepare_data

if __name__ == "__main__":
    run_cli(lambda: TRAINER.main(__doc__.splitlines()[0]))
