"""Pieces ResNet-18 and ResNet-50 share: the shortcut, the CIFAR stem, He
init, and the trunk's forward (stem, four stages, global pool, classifier)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Identity, or a 1x1 conv + BN projection when the block changes shape."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes))


def cifar_stem(in_channels: int) -> nn.Sequential:
    # A 32x32 image would be 8x8 after the ImageNet stem; keep full resolution instead.
    return nn.Sequential(nn.Conv2d(in_channels, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64),
                         nn.ReLU(inplace=True))


class ResNetTrunk(nn.Module):
    """stem -> layer1..4 -> global average pool -> fc; subclasses build the parts."""

    stem: nn.Module
    layer1: nn.Module
    layer2: nn.Module
    layer3: nn.Module
    layer4: nn.Module
    fc: nn.Linear

    def init_weights(self) -> None:
        # He init for convs (fan_out, as torchvision and upstream do); BN starts at 1/0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
