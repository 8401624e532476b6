"""lib/data/cifar.py on tiny batches in the real format: Python pickles of
dicts with bytes keys, uint8 [N, 3072] rows, the archive's folder names.
Tests never reach the internet: downloads go to a 127.0.0.1 server."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lib.data import ImageClassificationData
from lib.data.cifar import CIFAR10, CIFAR100, CifarSpec, load_cifar, load_cifar10, load_cifar100
from lib.errors import UserError
from tests.loopback import refused_url, serve_folder

PER_BATCH = 6


def batch_dict(spec: CifarSpec, rng: np.random.Generator, n: int, name: str) -> dict:
    """One batch as the real files hold it after pickle.load(..., encoding='bytes')."""
    labels = [int(v) for v in rng.integers(0, spec.num_classes, n)]
    batch = {b"batch_label": name.encode(), b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"filenames": [f"img_{i}.png".encode() for i in range(n)], spec.label_key: labels}
    if spec is CIFAR100:
        batch[b"coarse_labels"] = [v // 5 for v in labels]
    return batch


class Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote for the published batches: every
    str as a BINSTRING (bytes when read with encoding="bytes")."""

    def save_bytes(self, obj: bytes) -> None:
        size = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([size]) if size < 256 else pickle.BINSTRING + struct.pack("<i", size)
        self.write(head + obj)
        self.memoize(obj)

    def save_str(self, obj: str) -> None:
        self.save_bytes(obj.encode("latin1"))

    dispatch = {**pickle._Pickler.dispatch, bytes: save_bytes, str: save_str}


def py2_pickle(obj: object) -> bytes:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    # numpy 1.x, which wrote the files, lived under numpy.core.
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def write_cifar(data_dir: Path, spec: CifarSpec, seed: int = 0) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    folder = data_dir / spec.folder
    folder.mkdir(parents=True)
    batches = {name: batch_dict(spec, rng, PER_BATCH, name) for name in (*spec.train_files, *spec.test_files)}
    for name, batch in batches.items():
        # One batch as a Python 3 tool would re-save it, the rest as published.
        (folder / name).write_bytes(pickle.dumps(batch) if name == "data_batch_2" else py2_pickle(batch))
    names = [f"class{i}".encode() for i in range(spec.num_classes)]
    (folder / spec.meta_file).write_bytes(py2_pickle({spec.names_key: names}))
    return batches


def unnormalise(images: torch.Tensor, spec: CifarSpec) -> np.ndarray:
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    return torch.round((images * std + mean) * 255).to(torch.uint8).reshape(len(images), -1).numpy()


@pytest.mark.parametrize("spec", [CIFAR10, CIFAR100], ids=["cifar10", "cifar100"])
def test_pickle_batches_load_as_normalised_nchw(tmp_path, spec):
    batches = write_cifar(tmp_path, spec)
    data = load_cifar(spec, tmp_path, download=False)
    assert isinstance(data, ImageClassificationData)
    n_train = PER_BATCH * len(spec.train_files)
    assert data.train_images.shape == (n_train, 3, 32, 32)
    assert data.test_images.shape == (PER_BATCH, 3, 32, 32)
    assert data.train_images.dtype == torch.float32 and data.train_labels.dtype == torch.int64
    assert data.num_classes == spec.num_classes
    train = [batches[name] for name in spec.train_files]
    assert data.train_labels.tolist() == [v for b in train for v in b[spec.label_key]]
    # Rows are channel-major (1024 R, 1024 G, 1024 B): NCHW is a plain reshape.
    np.testing.assert_array_equal(unnormalise(data.train_images, spec), np.concatenate([b[b"data"] for b in train]))
    np.testing.assert_array_equal(unnormalise(data.test_images, spec), batches[spec.test_files[0]][b"data"])
    assert data.info["name"] == spec.name and data.info["path"] == str(tmp_path / spec.folder)
    assert (data.info["train_size"], data.info["test_size"]) == (n_train, PER_BATCH)


def test_wrappers(tmp_path):
    write_cifar(tmp_path, CIFAR100)
    assert load_cifar100(tmp_path, download=False, train_limit=4, test_limit=2).train_labels.shape == (4,)


def test_limits_take_a_fixed_subset(tmp_path):
    write_cifar(tmp_path, CIFAR10)
    first = load_cifar10(tmp_path, download=False, train_limit=7, test_limit=3)
    again = load_cifar10(tmp_path, download=False, train_limit=7, test_limit=3)
    assert first.train_images.shape == (7, 3, 32, 32) and first.info["test_size"] == 3
    assert torch.equal(first.train_images, again.train_images)
    assert "limited" in first.info["split"]


def test_missing_offline_names_archive_and_place(tmp_path):
    with pytest.raises(UserError) as excinfo:
        load_cifar10(tmp_path, download=False)
    message = str(excinfo.value)
    assert "\n" not in message
    assert all(s in message for s in ("cifar-10-python.tar.gz", "cifar-10-batches-py/", str(tmp_path), CIFAR10.url))


def test_failed_download_is_one_line_and_leaves_nothing(tmp_path):
    spec = dataclasses.replace(CIFAR10, url=refused_url(CIFAR10.archive))
    with pytest.raises(UserError, match=r"download failed.*place cifar-10-python\.tar\.gz"):
        load_cifar(spec, tmp_path / "data")
    assert not any((tmp_path / "data").iterdir())


def test_partial_folder_names_missing_files(tmp_path):
    write_cifar(tmp_path, CIFAR10)
    (tmp_path / CIFAR10.folder / "data_batch_3").unlink()
    with pytest.raises(UserError, match="missing: data_batch_3"):
        load_cifar10(tmp_path, download=False)


def test_corrupt_batch_names_the_file(tmp_path):
    write_cifar(tmp_path, CIFAR10)
    path = tmp_path / CIFAR10.folder / "test_batch"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match="test_batch: not a readable CIFAR pickle"):
        load_cifar10(tmp_path, download=False)


def test_wrong_variant_and_bad_labels(tmp_path):
    write_cifar(tmp_path, CIFAR100)
    ten_names = {b"label_names": [b"cat"] * 10, b"num_cases_per_batch": 10000}  # CIFAR-10's batches.meta
    (tmp_path / CIFAR100.folder / "meta").write_bytes(pickle.dumps(ten_names))
    with pytest.raises(UserError, match="expected 100 class names"):
        load_cifar100(tmp_path, download=False)
    batch = batch_dict(CIFAR10, np.random.default_rng(1), 4, "bad")
    batch[b"labels"][2] = 10
    write_cifar(tmp_path / "b", CIFAR10)
    (tmp_path / "b" / CIFAR10.folder / "data_batch_2").write_bytes(pickle.dumps(batch))
    with pytest.raises(UserError, match="data_batch_2: label 10 outside 0..9"):
        load_cifar10(tmp_path / "b", download=False)


def test_pickle_that_runs_code_is_refused(tmp_path):
    write_cifar(tmp_path, CIFAR10)
    evil = pickle.dumps({b"data": print})  # a global outside numpy: refused, not called
    (tmp_path / CIFAR10.folder / "data_batch_1").write_bytes(evil)
    with pytest.raises(UserError, match="refusing to load builtins.print"):
        load_cifar10(tmp_path, download=False)


def tar_gz_of(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return buffer.getvalue()


@pytest.fixture
def archive(tmp_path) -> tuple[bytes, dict]:
    """A real-layout cifar-10-python.tar.gz of tiny batches."""
    batches = write_cifar(tmp_path / "src", CIFAR10, seed=5)
    return tar_gz_of(tmp_path / "src" / CIFAR10.folder), batches


def test_download_verifies_and_extracts_atomically(tmp_path, archive, capsys):
    payload, batches = archive
    served = tmp_path / "served"
    served.mkdir()
    (served / CIFAR10.archive).write_bytes(payload)
    with serve_folder(served) as base:
        spec = dataclasses.replace(CIFAR10, url=base + CIFAR10.archive, md5=hashlib.md5(payload).hexdigest())
        data = load_cifar(spec, tmp_path / "data")
        assert data.test_labels.tolist() == batches["test_batch"][b"labels"]
        assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [CIFAR10.folder, CIFAR10.archive]
        assert "downloaded" in capsys.readouterr().out
        wrong = dataclasses.replace(spec, md5="0" * 32)
        with pytest.raises(UserError, match="download failed.*does not match"):
            load_cifar(wrong, tmp_path / "other")
        assert not any((tmp_path / "other").iterdir())  # no temp file left


def test_hand_placed_archive_is_checked_then_extracted(tmp_path, archive):
    payload, batches = archive
    (tmp_path / CIFAR10.archive).write_bytes(payload)
    with pytest.raises(UserError, match="does not match the published"):
        load_cifar10(tmp_path, download=False)  # the real MD5 cannot match a tiny archive
    spec = dataclasses.replace(CIFAR10, md5=hashlib.md5(payload).hexdigest())
    data = load_cifar(spec, tmp_path, download=False)
    assert data.train_labels.tolist()[:PER_BATCH] == batches["data_batch_1"][b"labels"]
    assert not list(tmp_path.glob(".*"))  # the temp extraction folder is gone


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loads_onto_cuda(tmp_path):
    write_cifar(tmp_path, CIFAR10)
    data = load_cifar10(tmp_path, "cuda", download=False)
    assert data.train_images.is_cuda and data.train_labels.is_cuda
    cpu = load_cifar10(tmp_path, download=False)
    assert torch.allclose(data.train_images.cpu(), cpu.train_images)
