"""ResNet-50 on CIFAR-100 (CIFAR stem, or the ImageNet stem on upsampled images) or an
ImageNet-style folder: data, then the shared classifier training.

Run by the runner as `python -m resnet50.train --run-dir D`; D/run.json holds
the RunSpec. Writes D/metrics.json.
"""
from __future__ import annotations

from torch import nn

from lib.data.cifar import load_cifar100
from lib.data.imagefolder import load_image_folder
from lib.errors import run_cli
from lib.image_classifier import crop_and_flip, train_image_classifier
from lib.train import start_run
from resnet50.model import ResNet50, ResNet50Config


def prepare_data(hyperparams: dict) -> str:
    """Find (or download) CIFAR-100, or list the image folder, once before a matrix."""
    model, data_dir = hyperparams["model"], hyperparams["training"]["data_dir"]
    if model["dataset"] == "imagenet":
        data = load_image_folder(data_dir, "cpu", image_size=model["image_size"])
    else:
        data = load_cifar100(data_dir, "cpu", download=True)
    return f"resnet50 data: {data.info['split']}"


def main() -> None:
    run = start_run(__doc__.splitlines()[0])
    hp = run.spec.hyperparams
    m, data_dir = hp["model"], hp["training"]["data_dir"]
    limits = {"train_limit": m["train_limit"] or None, "test_limit": m["test_limit"] or None}
    if m["dataset"] == "imagenet":
        data = load_image_folder(data_dir, run.device, image_size=m["image_size"], **limits)
        augment = crop_and_flip(padding=0) if m["augment"] else None  # folders: flips only
    else:
        data = load_cifar100(data_dir, run.device, download=run.download, **limits)
        augment = crop_and_flip() if m["augment"] else None
    print(f"data: {data.info['split']}")
    network = ResNet50(ResNet50Config(num_classes=data.num_classes, stem=m["stem"]))
    if m["stem"] == "imagenet" and m["dataset"] != "imagenet":
        # CIFAR through the ImageNet stem: upsample each batch on the device.
        network = nn.Sequential(nn.Upsample(size=m["image_size"], mode="bilinear", align_corners=False), network)
    train_image_classifier(run, data, network.to(run.device), augment)


if __name__ == "__main__":
    run_cli(main)
