"""Data sources by name. Each image loader takes a data folder and a device
and returns the dataset (whole tensors, or a streaming folder source for
ImageNet-sized data); the Kconfig data choice lists the same names. Text
corpora for GPT-2 are prepared once into token files: TEXT_SOURCES, named as
the GPT2_DATASET_* choice. Adding a source is one loader module plus one line."""
from __future__ import annotations

from typing import Any, Callable

from lib.data.cifar import load_cifar10, load_cifar100
from lib.data.imagefolder import ImageFolderData, load_image_folder
from lib.data.mnist import ImageClassificationData, load_mnist

DATA_SOURCES: dict[str, Callable[..., Any]] = {
    "mnist": load_mnist,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "imagefolder": load_image_folder,
}

__all__ = ["DATA_SOURCES", "ImageClassificationData", "ImageFolderData", "load_cifar10", "load_cifar100",
           "load_image_folder", "load_mnist"]
