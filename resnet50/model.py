"""ResNet-50 (He et al. 2016, arXiv 1512.03385, table 1): Bottleneck blocks
[3, 4, 6, 3] with expansion 4, stride on the 3x3 conv as torchvision does
("ResNet v1.5"). Two stems:

- "cifar": one 3x3 stride-1 conv, no max-pool, for 32x32 inputs
  (23,705,252 parameters for 100 classes);
- "imagenet": 7x7 stride-2 conv + 3x3 stride-2 max-pool, for 224x224 inputs
  such as CIFAR upsampled to 224 (25,557,032 parameters for 1000 classes,
  the torchvision resnet50 figure).

This module owns only the network; training lives in resnet50/train.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from lib.errors import UserError
from lib.nn.resnet_parts import ResNetTrunk, cifar_stem, shortcut

STEMS = ("cifar", "imagenet")
STAGE_BLOCKS = (3, 4, 6, 3)
EXPANSION = 4


@dataclass(frozen=True)
class ResNet50Config:
    in_channels: int = 3
    num_classes: int = 100
    stem: str = "cifar"
    # Start each block's last BN at gamma 0 so the block begins as the identity
    # (Goyal et al. 2017, arXiv 1706.02677, section 5.1). Off by default, as in
    # torchvision and upstream AdamWPrune, so results compare with theirs.
    zero_init_residual: bool = False

    def __post_init__(self) -> None:
        if self.stem not in STEMS:
            raise UserError(f"ResNet-50 stem {self.stem!r} is unknown (have: {', '.join(STEMS)})")


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride), 1x1 expand by 4; projection shortcut when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, zero_init_residual: bool = False) -> None:
        super().__init__()
        out_planes = planes * EXPANSION
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        if zero_init_residual:  # the block starts as the identity (see the config)
            nn.init.zeros_(self.bn3.weight)
        self.shortcut = shortcut(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


def _stage(in_planes: int, planes: int, blocks: int, stride: int, zero_init: bool) -> nn.Sequential:
    """`blocks` Bottlenecks; only the first changes stride and width."""
    return nn.Sequential(Bottleneck(in_planes, planes, stride, zero_init),
                         *[Bottleneck(planes * EXPANSION, planes, 1, zero_init) for _ in range(blocks - 1)])


def _stem(in_channels: int, kind: str) -> nn.Sequential:
    if kind == "imagenet":
        return nn.Sequential(nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64),
                             nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
    return cifar_stem(in_channels)


class ResNet50(ResNetTrunk):
    def __init__(self, config: ResNet50Config = ResNet50Config()) -> None:
        super().__init__()
        self.config = config
        self.stem = _stem(config.in_channels, config.stem)
        z = config.zero_init_residual
        self.layer1 = _stage(64, 64, STAGE_BLOCKS[0], stride=1, zero_init=z)
        self.layer2 = _stage(256, 128, STAGE_BLOCKS[1], stride=2, zero_init=z)
        self.layer3 = _stage(512, 256, STAGE_BLOCKS[2], stride=2, zero_init=z)
        self.layer4 = _stage(1024, 512, STAGE_BLOCKS[3], stride=2, zero_init=z)
        self.fc = nn.Linear(512 * EXPANSION, config.num_classes)
        self.init_weights()
