"""ImageNet-style image folders, decoded while training.

Owns `<data_dir>/<root>/train/<class>/*.JPEG` and `<root>/val/<class>/*`:
listing the files, decoding them with Pillow to a fixed square size
(shorter side resized to `image_size`, centre crop), and batching them
through a torch DataLoader whose worker processes decode in parallel; the
device converts and normalises each batch. Augmentation (random crop, flip)
stays with the training loop, on the device, as for CIFAR. It never
downloads: ImageNet is distributed only after registration at image-net.org.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from lib.data.limits import limit_splits
from lib.errors import UserError

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def decode_image(path: Path, size: int) -> np.ndarray:
    """One file -> uint8 [size, size, 3]: shorter side resized to `size`, centre crop."""
    try:
        with Image.open(path) as image:
            # JPEG only: let the decoder scale by 1/2..1/8 while staying >= size,
            # several times cheaper than decoding full ImageNet resolution.
            image.draft("RGB", (size, size))
            image = image.convert("RGB")
            width, height = image.size
            scale = size / min(width, height)
            width, height = max(size, round(width * scale)), max(size, round(height * scale))
            left, top = (width - size) // 2, (height - size) // 2
            image = image.resize((width, height), Image.Resampling.BILINEAR)
            return np.array(image.crop((left, top, left + size, top + size)))  # writable, for torch
    except OSError as exc:  # includes PIL.UnidentifiedImageError and truncated files
        raise UserError(f"{path}: cannot decode image ({exc}); delete or replace it") from None


class ImageFolderDataset(torch.utils.data.Dataset):
    """(path, label) pairs decoded on access to (uint8 [3,S,S], label); an
    undecodable file yields label -1-index, which batches() turns into a UserError."""

    def __init__(self, samples: list[tuple[Path, int]], image_size: int) -> None:
        self.samples, self.image_size = samples, image_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        try:
            pixels = decode_image(path, self.image_size)
        except UserError:
            # An exception in a loader worker reaches the caller as a traceback
            # in text and stalls the worker shutdown for seconds; flag the
            # sample by its index instead and let batches() raise.
            return torch.zeros((3, self.image_size, self.image_size), dtype=torch.uint8), -1 - index
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous(), label


@dataclass(frozen=True)
class ImageFolderData:
    """A folder dataset: `train` from train/, `test` from val/, batched on demand."""

    train: ImageFolderDataset
    test: ImageFolderDataset
    num_classes: int
    classes: tuple[str, ...]  # label i is classes[i], the sorted train/ folder names
    device: torch.device
    info: dict  # name, source, train_size, test_size, split, path

    def batches(self, split: str, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None,
                num_workers: int = 0, drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass over `split` ("train" or "test") as normalised float32
        [B,3,S,S] images and int64 [B] labels on the device."""
        dataset = self._split(split)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                                             num_workers=num_workers, pin_memory=self.device.type == "cuda",
                                             drop_last=drop_last)
        return self._on_device(loader, dataset)

    def loader(self, split: str, batch_indices: list[list[int]],
               num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The given batches of sample indices, in that order (the training loop
        decides the order so that a resumed run sees the same batches)."""
        dataset = self._split(split)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batch_indices, num_workers=num_workers,
                                             pin_memory=self.device.type == "cuda")
        return self._on_device(loader, dataset)

    def _split(self, split: str) -> ImageFolderDataset:
        return {"train": self.train, "test": self.test}[split]

    def _on_device(self, loader: torch.utils.data.DataLoader,
                   dataset: ImageFolderDataset) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        cuda = self.device.type == "cuda"
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        for pixels, labels in loader:
            failed = labels[labels < 0]
            if len(failed):  # decode again here to raise the error that names the file
                path = dataset.samples[-1 - int(failed[0])][0]
                decode_image(path, dataset.image_size)
                raise UserError(f"{path}: could not be decoded in a loader worker")
            images = pixels.to(self.device, non_blocking=cuda).to(torch.float32).div_(255.0)
            yield images.sub_(mean).div_(std), labels.to(self.device, non_blocking=cuda)


def load_image_folder(data_dir: str | Path, device: torch.device | str = "cpu", *, root: str = "imagenet",
                      image_size: int = 224, train_limit: int | None = None,
                      test_limit: int | None = None) -> ImageFolderData:
    """List `<data_dir>/<root>/{train,val}/<class>/` images; nothing is decoded yet."""
    folder = Path(data_dir) / root
    if not (folder / "train").is_dir() or not (folder / "val").is_dir():
        raise UserError(f"{folder}: no ImageNet-style folder; place train/<class>/*.JPEG and "
                        f"val/<class>/*.JPEG there (ImageNet is never downloaded: it needs registration)")
    classes = sorted(entry.name for entry in os.scandir(folder / "train") if entry.is_dir())
    if not classes:
        raise UserError(f"{folder / 'train'}: no class folders")
    train = _list_split(folder / "train", classes)
    test = _list_split(folder / "val", classes)
    split = f"{root}/train ({len(train)} images) / {root}/val ({len(test)} images), {len(classes)} classes"
    (train_index, _), (test_index, _), note = limit_splits(
        (np.arange(len(train)), np.array([label for _, label in train])),
        (np.arange(len(test)), np.array([label for _, label in test])), train_limit, test_limit)
    train, test = [train[i] for i in train_index], [test[i] for i in test_index]
    return ImageFolderData(
        train=ImageFolderDataset(train, image_size), test=ImageFolderDataset(test, image_size),
        num_classes=len(classes), classes=tuple(classes), device=torch.device(device),
        info={"name": root, "source": "image-folder", "train_size": len(train), "test_size": len(test),
              "split": split + note, "path": str(folder)},
    )


def _list_split(split_dir: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """Sorted (path, label) pairs; every class folder must hold images, and
    val/ may hold only classes that train/ has."""
    unknown = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir() and entry.name not in classes)
    if unknown:
        raise UserError(f"{split_dir}: class folders not in train/: {', '.join(unknown[:5])}")
    samples = []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            continue  # a val/ without this class is legal, if unusual
        files = sorted(entry.path for entry in os.scandir(class_dir)
                       if entry.is_file() and entry.name.lower().endswith(IMAGE_SUFFIXES))
        if not files:
            raise UserError(f"{class_dir}: no {'/'.join(IMAGE_SUFFIXES)} files")
        samples += [(Path(f), label) for f in files]
    return samples
