"""ResNet-18 (CIFAR variant) on CIFAR-10: its data, network and augmentation; lib trains it.

Run by the runner as `python -m resnet18.train --run-dir D`; D/run.json holds
the RunSpec. Writes D/metrics.json.
"""
from __future__ import annotations

from lib.data.cifar import load_cifar10
from lib.errors import run_cli
from lib.train.image_classifier import ImageTrainer, crop_and_flip
from resnet18.model import ResNet18, ResNet18Config

TRAINER = ImageTrainer(
    load=lambda spec, device, download: load_cifar10(spec.training.data_dir, device, download=download,
                                                     train_limit=spec.model_params["train_limit"] or None,
                                                     test_limit=spec.model_params["test_limit"] or None),
    build=lambda data, spec: ResNet18(ResNet18Config(num_classes=data.num_classes)),
    augment=lambda spec: crop_and_flip() if spec.model_params["augment"] else None)
prepare_data = TRAINER.prepare_data

if __name__ == "__main__":
    run_cli(lambda: TRAINER.main(__doc__.splitlines()[0]))
