"""Fixed subsets for quick runs: the first N samples of a fixed-seed
permutation, roughly class-balanced and identical on every machine. The
rule and seeds are MNIST's (lib/data/mnist.py), shared so every image source
limits the same way."""
from __future__ import annotations

import numpy as np

from lib.data.mnist import TEST_LIMIT_SEED, TRAIN_LIMIT_SEED, _limit

Split = tuple[np.ndarray, np.ndarray]  # samples (images or indices), labels


def limit_splits(train: Split, test: Split, train_limit: int | None,
                 test_limit: int | None) -> tuple[Split, Split, str]:
    """Both splits limited, plus a note for info["split"] ("" without limits)."""
    kept, note = [], ""
    for kind, (samples, labels), limit, seed in (("train", train, train_limit, TRAIN_LIMIT_SEED),
                                                 ("test", test, test_limit, TEST_LIMIT_SEED)):
        samples, labels = _limit(samples, labels, limit, seed, f"{kind}_limit")
        kept.append((samples, labels))
        if limit is not None:
            note += f"; {kind} limited to the first {len(labels)} of a fixed permutation (seed {seed})"
    return kept[0], kept[1], note
