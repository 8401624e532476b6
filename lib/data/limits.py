"""Fixed subsets for quick runs: the first N samples of a fixed-seed
permutation, roughly class-balanced and identical on every machine. Every
image source (MNIST, CIFAR, image folders) limits its splits through here,
so a TRAIN_LIMIT/TEST_LIMIT means the same rule everywhere."""
from __future__ import annotations

import numpy as np

from lib.errors import UserError

# Separate fixed seeds so limiting the train set never changes the test set.
TRAIN_LIMIT_SEED = 0
TEST_LIMIT_SEED = 1

Split = tuple[np.ndarray, np.ndarray]  # samples (images or indices), labels


def limit_samples(samples: np.ndarray, labels: np.ndarray, limit: int | None, seed: int,
                  name: str) -> Split:
    """The first `limit` samples of a fixed-seed permutation (all of them for
    None); `name` is the setting a bad limit is reported under."""
    if limit is None:
        return samples, labels
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise UserError(f"{name} must be a positive integer or None, got {limit!r}")
    keep = np.random.default_rng(seed).permutation(len(labels))[:limit]
    return samples[keep], labels[keep]


def limit_splits(train: Split, test: Split, train_limit: int | None,
                 test_limit: int | None) -> tuple[Split, Split, str]:
    """Both splits limited, plus a note for info["split"] ("" without limits)."""
    kept, note = [], ""
    for kind, (samples, labels), limit, seed in (("train", train, train_limit, TRAIN_LIMIT_SEED),
                                                 ("test", test, test_limit, TEST_LIMIT_SEED)):
        samples, labels = limit_samples(samples, labels, limit, seed, f"{kind}_limit")
        kept.append((samples, labels))
        if limit is not None:
            note += f"; {kind} limited to the first {len(labels)} of a fixed permutation (seed {seed})"
    return kept[0], kept[1], note
