"""CIFAR-10 and CIFAR-100 as whole-dataset tensors on the device.

Owns finding the python-pickle batches under `<data_dir>/cifar-10-batches-py/`
and `<data_dir>/cifar-100-python/` (torchvision's layout, so existing data
folders work), extracting a hand-placed or downloaded `.tar.gz` atomically,
and parsing the pickles with numpy. Returns the same ImageClassificationData
as lib/data/mnist.py; it does not batch, shuffle or augment (the training
loop does that on the device, see lib/data/augment.py).
"""
from __future__ import annotations

import codecs
import os
import pickle
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lib.data.download import download_file, file_md5
from lib.data.limits import limit_splits
from lib.data.mnist import ImageClassificationData
from lib.errors import UserError, escaped

try:  # numpy >= 2 moved numpy.core to numpy._core; old pickles name either
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

IMAGE_BYTES = 3 * 32 * 32  # one row: 1024 red, 1024 green, 1024 blue, each 32x32 row-major


@dataclass(frozen=True)
class CifarSpec:
    """Where one CIFAR variant lives, how to fetch it and how its pickles look."""

    name: str
    folder: str  # the folder the archive extracts to
    archive: str
    url: str
    md5: str  # of the archive, as published with the dataset
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: bytes
    names_key: bytes  # class names in the meta file
    num_classes: int
    mean: tuple[float, float, float]  # per-channel, over the training set
    std: tuple[float, float, float]


CIFAR10 = CifarSpec(
    name="cifar10", folder="cifar-10-batches-py", archive="cifar-10-python.tar.gz",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", md5="c58f30108f718f92721af3b95e74349a",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)), test_files=("test_batch",),
    meta_file="batches.meta", label_key=b"labels", names_key=b"label_names", num_classes=10,
    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
)
CIFAR100 = CifarSpec(
    name="cifar100", folder="cifar-100-python", archive="cifar-100-python.tar.gz",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", md5="eb9058c3a382ffc7106e4002c42a8d85",
    train_files=("train",), test_files=("test",), meta_file="meta",
    label_key=b"fine_labels", names_key=b"fine_label_names", num_classes=100,
    mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
)


def load_cifar10(data_dir: str | Path, device: torch.device | str = "cpu", *, download: bool = True,
                 train_limit: int | None = None, test_limit: int | None = None) -> ImageClassificationData:
    """CIFAR-10: 50,000 train / 10,000 test 32x32 colour images, 10 classes."""
    return load_cifar(CIFAR10, data_dir, device, download=download, train_limit=train_limit, test_limit=test_limit)


def load_cifar100(data_dir: str | Path, device: torch.device | str = "cpu", *, download: bool = True,
                  train_limit: int | None = None, test_limit: int | None = None) -> ImageClassificationData:
    """CIFAR-100 with its 100 fine labels: 50,000 train / 10,000 test."""
    return load_cifar(CIFAR100, data_dir, device, download=download, train_limit=train_limit, test_limit=test_limit)


def load_cifar(spec: CifarSpec, data_dir: str | Path, device: torch.device | str = "cpu", *,
               download: bool = True, train_limit: int | None = None,
               test_limit: int | None = None) -> ImageClassificationData:
    """Load one CIFAR variant, extracting or downloading its archive when needed."""
    folder = _ensure_folder(spec, Path(data_dir), download)
    _check_meta(spec, folder / spec.meta_file)
    train_x, train_y = _read_batches(spec, folder, spec.train_files)
    test_x, test_y = _read_batches(spec, folder, spec.test_files)
    split = (f"{spec.folder}: {'+'.join(spec.train_files)} train ({len(train_y)}) / "
             f"{'+'.join(spec.test_files)} test ({len(test_y)})")
    (train_x, train_y), (test_x, test_y), note = limit_splits((train_x, train_y), (test_x, test_y),
                                                             train_limit, test_limit)
    device = torch.device(device)
    return ImageClassificationData(
        train_images=_to_images(train_x, spec, device),
        train_labels=torch.from_numpy(train_y).to(device),
        test_images=_to_images(test_x, spec, device),
        test_labels=torch.from_numpy(test_y).to(device),
        num_classes=spec.num_classes,
        info={"name": spec.name, "source": "pickle-batches", "train_size": int(len(train_y)),
              "test_size": int(len(test_y)), "split": split + note, "path": str(folder)},
    )


def _ensure_folder(spec: CifarSpec, data_dir: Path, download: bool) -> Path:
    """The extracted folder; from the archive in data_dir, or downloaded first."""
    folder = data_dir / spec.folder
    if folder.is_dir():
        needed = (*spec.train_files, *spec.test_files, spec.meta_file)
        missing = [name for name in needed if not (folder / name).is_file()]
        if missing:
            raise UserError(f"{folder}: CIFAR files missing: {', '.join(missing)}; delete the folder "
                            f"and place {spec.archive} in {data_dir}/ to extract it again")
        return folder
    archive = data_dir / spec.archive
    if archive.is_file():
        found = file_md5(archive)
        if found != spec.md5:
            raise UserError(f"{archive}: MD5 {found} does not match the published {spec.md5}; "
                            f"delete it and download {spec.url} again")
    elif not download:
        raise UserError(_not_found(spec, data_dir, "downloads are off"))
    else:
        try:
            download_file(spec.url, archive, md5=spec.md5)
        except OSError as exc:
            raise UserError(_not_found(spec, data_dir, f"download failed: {exc}")) from None
    _extract(archive, spec.folder, data_dir)
    return folder


def _not_found(spec: CifarSpec, data_dir: Path, reason: str) -> str:
    return (f"{spec.name} not found in {data_dir}/ ({reason}): place {spec.archive} (from {spec.url}) "
            f"or its extracted folder {spec.folder}/ there")


def _extract(archive: Path, folder: str, data_dir: Path) -> None:
    """Unpack into a temp folder beside the target and rename the result into
    place, so an interrupted extraction never leaves a half folder behind."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder}.", suffix=".tmp", dir=data_dir))
    try:
        # The "data" filter refuses absolute paths, links out of the folder and devices.
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(tmp, **safe)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise UserError(f"{archive}: cannot extract ({exc}); delete it and download it again") from None
        if not (tmp / folder).is_dir():
            raise UserError(f"{archive}: holds no {folder}/ folder; is it the right archive?")
        try:
            os.rename(tmp / folder, data_dir / folder)
        except OSError:
            if not (data_dir / folder).is_dir():  # else a concurrent run extracted it first
                raise
        print(escaped(f"extracted {archive} -> {data_dir / folder}"), flush=True)  # DATA_DIR may be a stranger's
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _ArrayUnpickler(pickle.Unpickler):
    """The batches hold only dicts, lists, bytes and numpy arrays; refusing
    every other global keeps a tampered pickle from running code."""

    ALLOWED = {
        **{(f"numpy.{core}.multiarray", "_reconstruct"): _multiarray._reconstruct for core in ("core", "_core")},
        **{(f"numpy.{core}.multiarray", "scalar"): _multiarray.scalar for core in ("core", "_core")},
        **{(f"numpy.{core}.numeric", "_frombuffer"): _numeric._frombuffer for core in ("core", "_core")},
        ("numpy", "ndarray"): np.ndarray,
        # Python 3 writes bytes as _codecs.encode(str, "latin1") under protocol 2.
        ("_codecs", "encode"): codecs.encode,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> object:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            # encoding="bytes": the batches were written by Python 2, so keys are bytes.
            batch = _ArrayUnpickler(handle, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise UserError(f"{path}: not a readable CIFAR pickle ({exc}); delete the folder and extract it again") from None
    if not isinstance(batch, dict):
        raise UserError(f"{path}: not a CIFAR pickle (holds {type(batch).__name__}, expected a dict)")
    return batch


def _check_meta(spec: CifarSpec, path: Path) -> None:
    """The meta file tells CIFAR-10 from CIFAR-100 folders placed by hand."""
    names = _unpickle(path).get(spec.names_key)
    if not isinstance(names, list) or len(names) != spec.num_classes:
        raise UserError(f"{path}: expected {spec.num_classes} class names under {spec.names_key!r}; "
                        f"is this {spec.name}?")


def _read_batches(spec: CifarSpec, folder: Path, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate batches into uint8 [N,3,32,32] images and int64 [N] labels."""
    images, labels = [], []
    for name in names:
        path = folder / name
        batch = _unpickle(path)
        data, label = batch.get(b"data"), batch.get(spec.label_key)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != IMAGE_BYTES:
            shape = getattr(data, "shape", None)
            raise UserError(f"{path}: b'data' must be uint8 [N, {IMAGE_BYTES}], found {shape}")
        if label is None or len(label) != len(data):
            found = "none" if label is None else len(label)
            raise UserError(f"{path}: {found} labels under {spec.label_key!r} for {len(data)} images")
        label = np.asarray(label, dtype=np.int64)
        bad = label[(label < 0) | (label >= spec.num_classes)]
        if len(bad):
            raise UserError(f"{path}: label {bad[0]} outside 0..{spec.num_classes - 1}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(label)
    return np.concatenate(images), np.concatenate(labels)


def _to_images(pixels: np.ndarray, spec: CifarSpec, device: torch.device) -> torch.Tensor:
    """uint8 [N,3,32,32] -> normalised float32; the bytes travel to the device
    first (4x less to copy than float32) and convert there."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).to(device).to(torch.float32).div_(255.0)
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)
