"""LeNet-5 for 28x28 single-channel images, with BatchNorm after each
convolution as in the upstream AdamWPrune model (about 44k parameters)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LeNet5Config:
    in_channels: int = 1
    num_classes: int = 10


class LeNet5(nn.Module):
    def __init__(self, config: LeNet5Config = LeNet5Config()) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(config.in_channels, 6, kernel_size=5), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 4 * 4, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, config.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
