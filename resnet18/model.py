"""ResNet-18 for 32x32 images (CIFAR-10), the variant of He et al. 2016
("Deep Residual Learning for Image Recognition", arXiv 1512.03385, table 1)
that CIFAR work uses: the ImageNet stem (7x7 stride-2 conv + max-pool) would
shrink a 32x32 image to 8x8 before the first block, so the stem is one 3x3
stride-1 conv and there is no max-pool. 11,173,962 parameters for 10 classes.

This module owns only the network; training lives in resnet18/train.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from lib.nn.resnet_parts import ResNetTrunk, cifar_stem, shortcut

STAGE_BLOCKS = (2, 2, 2, 2)


@dataclass(frozen=True)
class ResNet18Config:
    in_channels: int = 3
    num_classes: int = 10
    # Start each block's last BN at gamma 0 so the block begins as the identity
    # (Goyal et al. 2017, arXiv 1706.02677, section 5.1). Off by default, as in
    # torchvision and upstream AdamWPrune, so results compare with theirs.
    zero_init_residual: bool = False


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; a 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, zero_init_residual: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if zero_init_residual:  # the block starts as the identity (see the config)
            nn.init.zeros_(self.bn2.weight)
        self.shortcut = shortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _stage(in_planes: int, planes: int, blocks: int, stride: int, zero_init: bool) -> nn.Sequential:
    """`blocks` BasicBlocks; only the first changes stride and width."""
    return nn.Sequential(BasicBlock(in_planes, planes, stride, zero_init),
                         *[BasicBlock(planes, planes, 1, zero_init) for _ in range(blocks - 1)])


class ResNet18(ResNetTrunk):
    def __init__(self, config: ResNet18Config = ResNet18Config()) -> None:
        super().__init__()
        self.config = config
        self.stem = cifar_stem(config.in_channels)
        z = config.zero_init_residual
        self.layer1 = _stage(64, 64, STAGE_BLOCKS[0], stride=1, zero_init=z)
        self.layer2 = _stage(64, 128, STAGE_BLOCKS[1], stride=2, zero_init=z)
        self.layer3 = _stage(128, 256, STAGE_BLOCKS[2], stride=2, zero_init=z)
        self.layer4 = _stage(256, 512, STAGE_BLOCKS[3], stride=2, zero_init=z)
        self.fc = nn.Linear(512, config.num_classes)
        self.init_weights()
