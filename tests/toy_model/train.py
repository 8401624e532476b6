"""The toy model's trainer: a two-layer MLP on two Gaussian blobs of 4x4
"images" made here from the run's seed. Run by the runner as
`python -m tests.toy_model.train --run-dir D`, like every model's trainer."""
from __future__ import annotations

import torch
from torch import nn

from lib.data.mnist import ImageClassificationData
from lib.errors import run_cli
from lib.train.image_classifier import ImageTrainer
from tests.toy_model import TOY  # noqa: F401  (registers the model in this process)

TRAIN, TEST = 512, 256


def _blobs(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.randint(0, 2, (n,), generator=generator)
    centres = torch.where(labels[:, None] == 1, 1.0, -1.0) * torch.linspace(-1, 1, 16)
    return (centres + torch.randn(n, 16, generator=generator)).view(n, 1, 4, 4), labels


def _load(hp: dict, device, download: bool) -> ImageClassificationData:
    generator = torch.Generator().manual_seed(0)
    (train_x, train_y), (test_x, test_y) = _blobs(TRAIN, generator), _blobs(TEST, generator)
    return ImageClassificationData(train_x.to(device), train_y.to(device), test_x.to(device), test_y.to(device), 2,
                                   {"name": "toy blobs", "source": "made in memory", "train_size": TRAIN,
                                    "test_size": TEST, "split": f"{TRAIN} train / {TEST} test", "path": None})


def _build(data: ImageClassificationData, hp: dict) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, data.num_classes))


TRAINER = ImageTrainer(_load, _build, lambda hp: None)
prepare_data = TRAINER.prepare_data

if __name__ == "__main__":
    run_cli(lambda: TRAINER.main(__doc__.splitlines()[0]))
