"""ResNet-50 on CIFAR-100 (CIFAR stem, or the ImageNet stem on upsampled images) or an
ImageNet-style folder: its data, network and augmentation; lib trains it.

Run by the runner as `python -m resnet50.train --run-dir D`; D/run.json holds
the RunSpec. Writes D/metrics.json.
"""
from __future__ import annotations

from torch import nn

from lib.data.cifar import load_cifar100
from lib.data.imagefolder import load_image_folder
from lib.errors import run_cli
from lib.spec import RunSpec
from lib.train.image_classifier import Data, ImageTrainer, crop_and_flip
from resnet50.model import ResNet50, ResNet50Config


def _load(spec: RunSpec, device, download: bool) -> Data:
    m, data_dir = spec.model_params, spec.training.data_dir
    limits = {"train_limit": m["train_limit"] or None, "test_limit": m["test_limit"] or None}
    if m["dataset"] == "imagenet":
        return load_image_folder(data_dir, device, image_size=m["image_size"], **limits)
    return load_cifar100(data_dir, device, download=download, **limits)


def _build(data: Data, spec: RunSpec) -> nn.Module:
    m = spec.model_params
    network = ResNet50(ResNet50Config(num_classes=data.num_classes, stem=m["stem"]))
    if m["stem"] == "imagenet" and m["dataset"] != "imagenet":
        # CIFAR through the ImageNet stem: upsample each batch on the device.
        network = nn.Sequential(nn.Upsample(size=m["image_size"], mode="bilinear", align_corners=False), network)
    return network


def _augment(spec: RunSpec):
    m = spec.model_params
    if not m["augment"]:
        return None
    return crop_and_flip(padding=0 if m["dataset"] == "imagenet" else 4)  # folders: flips only


TRAINER = ImageTrainer(_load, _build, _augment)
prepare_data = TRAINER.prepare_data

if __name__ == "__main__":
    run_cli(lambda: TRAINER.main(__doc__.splitlines()[0]))
