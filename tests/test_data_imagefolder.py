"""lib/data/imagefolder.py on a tiny ImageNet-style folder of PNG and JPEG
files of odd sizes, written by the test."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lib.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD, decode_image, load_image_folder
from lib.errors import UserError

CLASSES = {"n01440764": (255, 0, 0), "n01443537": (0, 255, 0), "n01484850": (0, 0, 255)}
SIZES = [(40, 30), (24, 64), (33, 33), (80, 20)]


def write_folder(data_dir: Path, per_class: dict[str, int]) -> Path:
    """Solid-colour images per class, alternating PNG (lossless) and JPEG."""
    root = data_dir / "imagenet"
    for split, count in per_class.items():
        for name, colour in CLASSES.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                suffix = ".png" if i % 2 == 0 else ".JPEG"
                Image.new("RGB", SIZES[i % len(SIZES)], colour).save(root / split / name / f"img_{i}{suffix}")
    return root


def unnormalise(images: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images * std + mean) * 255


def test_decode_resizes_shorter_side_and_centre_crops(tmp_path):
    pixels = np.zeros((30, 60, 3), dtype=np.uint8)
    pixels[:, 20:40] = 200  # a centre stripe, a third of the width
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    out = decode_image(tmp_path / "wide.png", 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    # 60x30 -> 32x16, centre 16 columns hold the 10.7-pixel stripe and some black on both sides
    assert out[:, 0].max() < 100 and out[:, 8].min() > 150 and out[:, -1].max() < 100


def test_batches_cover_each_split_once_normalised(tmp_path):
    write_folder(tmp_path, {"train": 4, "val": 2})
    data = load_image_folder(tmp_path, image_size=16)
    assert data.classes == tuple(sorted(CLASSES)) and data.num_classes == 3
    assert (data.info["train_size"], data.info["test_size"]) == (12, 6)
    seen = []
    for images, labels in data.batches("train", 5, shuffle=True, generator=torch.Generator().manual_seed(0)):
        assert images.dtype == torch.float32 and images.shape[1:] == (3, 16, 16) and labels.dtype == torch.int64
        colours = unnormalise(images).mean(dim=(2, 3))
        expected = torch.tensor([CLASSES[data.classes[y]] for y in labels.tolist()], dtype=torch.float32)
        assert torch.allclose(colours, expected, atol=3.0)  # JPEG rounds solid colours by a unit or two
        seen += labels.tolist()
    assert sorted(seen) == [0] * 4 + [1] * 4 + [2] * 4
    sizes = [len(labels) for _, labels in data.batches("test", 4, shuffle=False, num_workers=2)]
    assert sizes == [4, 2]


def test_limits_and_errors(tmp_path):
    root = write_folder(tmp_path, {"train": 2, "val": 1})
    limited = load_image_folder(tmp_path, image_size=8, train_limit=4, test_limit=2)
    assert (len(limited.train), len(limited.test)) == (4, 2) and "limited" in limited.info["split"]
    (root / "val" / "n99999999").mkdir()
    with pytest.raises(UserError, match="class folders not in train/: n99999999"):
        load_image_folder(tmp_path)
    (root / "val" / "n99999999").rmdir()
    (root / "train" / "n01440764" / "img_0.png").write_bytes(b"not an image")
    data = load_image_folder(tmp_path, image_size=8)
    for workers in (0, 1):
        with pytest.raises(UserError) as excinfo:
            list(data.batches("train", 2, shuffle=False, num_workers=workers))
        assert str(excinfo.value).startswith(str(root / "train" / "n01440764" / "img_0.png") + ": cannot decode")
        assert "\n" not in str(excinfo.value)


def test_missing_folder_says_what_to_place(tmp_path):
    with pytest.raises(UserError, match=r"imagenet: no ImageNet-style folder; place train/<class>/\*\.JPEG"):
        load_image_folder(tmp_path)
