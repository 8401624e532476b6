"""Data loaders. Each image loader (lib/data/mnist.py, cifar.py,
imagefolder.py) takes a data folder and a device and returns the dataset
(whole tensors, or a streaming folder source for ImageNet-sized data); each
model's train.py calls its own. Text corpora for GPT-2 are prepared once into
token files: lib/data/text_sources.TEXT_SOURCES, named as the GPT2_DATASET_*
choice."""
from __future__ import annotations

from lib.data.cifar import load_cifar10, load_cifar100
from lib.data.imagefolder import ImageFolderData, load_image_folder
from lib.data.mnist import ImageClassificationData, load_mnist

__all__ = ["ImageClassificationData", "ImageFolderData", "load_cifar10", "load_cifar100",
           "load_image_folder", "load_mnist"]
