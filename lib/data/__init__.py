"""Data sources by name. Each loader takes a data folder and a device and
returns the whole dataset as tensors on that device; the Kconfig data choice
lists the same names. Adding a source is one loader module plus one line here."""
from __future__ import annotations

from typing import Any, Callable

from lib.data.mnist import ImageClassificationData, load_mnist

DATA_SOURCES: dict[str, Callable[..., Any]] = {
    "mnist": load_mnist,
}

__all__ = ["DATA_SOURCES", "ImageClassificationData", "load_mnist"]
