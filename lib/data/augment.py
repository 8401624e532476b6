"""Batch augmentation on the device: no per-sample Python loop."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pad by `padding` (zeros) and crop back at a random offset per image."""
    if padding <= 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device="cpu").to(images.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device="cpu").to(images.device)
    rows = (torch.arange(h, device=images.device)[None, :] + dy[:, None])[:, None, :, None]
    cols = (torch.arange(w, device=images.device)[None, :] + dx[:, None])[:, None, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    chans = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_flip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror a random half of the images horizontally."""
    flip = torch.rand(images.shape[0], generator=generator, device="cpu").to(images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)
