"""Tiny datasets in the real on-disk formats, and trainer runs on them.

Shared by tests/test_trainers.py and tests/test_resume.py. The images are
easily separable (each class has its own bright patch or colour), so a few
epochs of a small network make the training loss fall; the text is a short
English-like corpus generated from a fixed seed. A run goes the way the
runner starts it: run.json from lib/run/task.prepare_run_dir, then the
command of lib/run/launch.trainer_command, with the repository root as the
working directory.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from lib.config import load_settings
from lib.matrix import RunSpec, expand
from lib.run.launch import trainer_command
from lib.run.task import prepare_run_dir

ROOT = Path(__file__).resolve().parent.parent
TRAINER_TIMEOUT_S = 300
# Two threads at most: the machine's cores are shared with the rest of the suite.
TRAINER_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


# -- images -------------------------------------------------------------------

def class_images(labels: np.ndarray, channels: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [N, C, size, size]: dim noise plus a bright square whose place and
    colour depend on the class, so classes separate after a few steps."""
    n = len(labels)
    images = rng.integers(0, 40, (n, channels, size, size), dtype=np.uint8)
    side = size // 5
    for i, label in enumerate(labels):
        row, col = divmod(int(label) % 16, 4)
        top, left = row * size // 4 + 1, col * size // 4 + 1
        for c in range(channels):
            level = 255 if channels == 1 or (int(label) + c) % 3 else 120
            images[i, c, top:top + side, left:left + side] = level
    return images


def balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % num_classes).astype(np.uint8)


def _idx_bytes(array: np.ndarray) -> bytes:
    """IDX: magic (0, 0, 0x08 unsigned byte, ndim), big-endian dims, the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def write_mnist(data_dir: Path, n_train: int, n_test: int, num_classes: int = 10, seed: int = 0) -> Path:
    """The four MNIST IDX files (uncompressed) under data_dir/mnist."""
    rng = np.random.default_rng(seed)
    folder = data_dir / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = balanced_labels(n, num_classes, rng)
        images = class_images(labels, 1, 28, rng)[:, 0]
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(_idx_bytes(images))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx_bytes(labels))
    return folder


def _cifar_batch(labels: np.ndarray, label_key: bytes, name: str, rng: np.random.Generator) -> dict:
    """A batch dict as the published pickles hold it (bytes keys, uint8 [N, 3072] rows)."""
    data = class_images(labels, 3, 32, rng).reshape(len(labels), 3 * 32 * 32)
    batch = {b"batch_label": name.encode(), b"data": data, label_key: [int(v) for v in labels],
             b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [int(v) // 5 for v in labels]
    return batch


def write_cifar10(data_dir: Path, n_train: int, n_test: int, num_classes: int = 10, seed: int = 0) -> Path:
    """cifar-10-batches-py/: data_batch_1..5 (n_train split across them), test_batch, batches.meta."""
    rng = np.random.default_rng(seed)
    folder = data_dir / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    labels = balanced_labels(n_train, num_classes, rng)
    for i, part in enumerate(np.array_split(labels, 5), start=1):
        name = f"data_batch_{i}"
        (folder / name).write_bytes(pickle.dumps(_cifar_batch(part, b"labels", name, rng), protocol=2))
    test = _cifar_batch(balanced_labels(n_test, num_classes, rng), b"labels", "test_batch", rng)
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    meta = {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_cases_per_batch": n_train // 5}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def write_cifar100(data_dir: Path, n_train: int, n_test: int, num_classes: int = 4, seed: int = 0) -> Path:
    """cifar-100-python/: train, test and meta, labels from the first `num_classes` fine classes."""
    rng = np.random.default_rng(seed)
    folder = data_dir / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        batch = _cifar_batch(balanced_labels(n, num_classes, rng), b"fine_labels", name, rng)
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def write_image_folder(data_dir: Path, n_train: int, n_test: int, classes: int = 2, size: int = 48,
                       seed: int = 0) -> Path:
    """imagenet/{train,val}/<wnid>/*.png: `n_train`/`n_test` images per class."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = data_dir / "imagenet"
    for split, n in (("train", n_train), ("val", n_test)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            images = class_images(np.full(n, c), 3, size, rng)
            for i, image in enumerate(images):
                Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"img_{i}.png")
    return root


# -- text ---------------------------------------------------------------------

_SUBJECTS = ["the old sailor", "a young doctor", "my neighbour", "the small dog", "our teacher", "the farmer",
             "a tired student", "the king", "her brother", "the baker", "a quiet child", "the captain"]
_VERBS = ["found", "carried", "painted", "watched", "opened", "bought", "lost", "cleaned", "remembered",
          "followed", "mended", "sold"]
_OBJECTS = ["a red boat", "the heavy door", "an apple", "the broken clock", "a letter", "the green field",
            "a warm coat", "the river", "some bread", "the tall tower", "a wooden box", "the long road"]
_ENDINGS = ["in the morning", "after the rain", "before dinner", "near the harbour", "with great care",
            "on a cold day", "without a word", "for the first time", "at the market", "by the window"]


def english_text(n_chars: int, seed: int = 0) -> str:
    """Simple English sentences in paragraphs, the same for a given seed."""
    rng = random.Random(seed)
    paragraphs, length = [], 0
    while length < n_chars:
        sentences = []
        for _ in range(rng.randint(3, 6)):
            sentence = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_ENDINGS)}."
            sentences.append(sentence[0].upper() + sentence[1:])
        paragraphs.append(" ".join(sentences))
        length += len(paragraphs[-1]) + 2
    return "\n\n".join(paragraphs) + "\n"


def write_text(path: Path, n_chars: int = 40_000, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(english_text(n_chars, seed))
    return path


# -- configurations and runs ----------------------------------------------------

def config_lines(**symbols: Any) -> str:
    """CONFIG_ lines: True -> y, False -> not set, str -> quoted, int -> as is."""
    lines = []
    for name, value in symbols.items():
        if value is True:
            lines.append(f"CONFIG_{name}=y")
        elif value is False:
            lines.append(f"# CONFIG_{name} is not set")
        elif isinstance(value, str):
            lines.append(f'CONFIG_{name}="{value}"')
        else:
            lines.append(f"CONFIG_{name}={value}")
    return "\n".join(lines) + "\n"


def specs_from(tmp_path: Path, name: str = "config", **symbols: Any) -> list[RunSpec]:
    """Expand a configuration of the given symbols (CPU, data under tmp_path/data by default)."""
    symbols = {"DEVICE": "cpu", "DATA_DIR": str(tmp_path / "data"), **symbols}
    path = tmp_path / name
    path.write_text(config_lines(**symbols))
    warnings: list[str] = []
    specs = expand(load_settings(path, warn=warnings.append))
    assert not warnings, warnings  # a misspelt or ignored symbol would silently test something else
    return specs


def one_spec(tmp_path: Path, **symbols: Any) -> RunSpec:
    specs = specs_from(tmp_path, **symbols)
    assert len(specs) == 1, [s.run_id for s in specs]
    return specs[0]


def prepare_run(results_dir: Path, spec: RunSpec) -> tuple[Path, list[str]]:
    """The run folder with its run.json, as the runner leaves it before launch, and the command."""
    run_dir = results_dir / spec.run_id
    command = trainer_command(spec, run_dir)
    prepare_run_dir(run_dir, spec, command)  # sets an earlier attempt aside, as a rerun does
    return run_dir, command


def run_trainer(command: list[str], timeout: float = TRAINER_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, env=TRAINER_ENV, capture_output=True, text=True, timeout=timeout)


def train(results_dir: Path, spec: RunSpec) -> tuple[Path, dict, str]:
    """Run a spec's trainer to the end; (run folder, metrics.json, output). Fails on a non-zero exit."""
    run_dir, command = prepare_run(results_dir, spec)
    proc = run_trainer(command)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{spec.run_id} exited {proc.returncode}:\n{output[-4000:]}"
    return run_dir, json.loads((run_dir / "metrics.json").read_text()), output


def start_trainer(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=ROOT, env=TRAINER_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def gpt2_symbols(text: Path, **overrides: Any) -> dict[str, Any]:
    """A tiny GPT-2 (2 layers, 64 wide) on a local text file, AdamW, dense."""
    return {"MODEL_MODE_SINGLE": True, "MODEL_SELECT_GPT2": True, "GPT2_SIZE_TINY": True,
            "GPT2_DATASET_LOCAL": True, "GPT2_DATA_PATH": str(text), "GPT2_BLOCK_SIZE": 32,
            "GPT2_MAX_ITERS": 30, "GPT2_EVAL_INTERVAL": 10, "GPT2_EVAL_SAMPLES": 2, "GPT2_WARMUP_STEPS": 5,
            "GPT2_MIN_LR": "1e-4", "BATCH_SIZE": 4, "LEARNING_RATE": "3e-3",
            "OPTIMIZER_MODE_SINGLE": True, "OPTIMIZER_SELECT_ADAMW": True,
            "PRUNING_MODE_SINGLE": True, "PRUNING_SELECT_NONE": True, **overrides}


def prepare_gpt2_text(spec: RunSpec) -> None:
    """Tokenize the run's text, as the runner does once before a matrix (trainers run --no-download)."""
    from gpt2.train import prepare_data

    prepare_data(spec)
