"""scikit-learn's 8x8 handwritten digits, shipped inside the package (no download)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jgrad import _checks

__all__ = ["Dataset", "digits", "sequential_digits"]

#: The fixed split: a permutation drawn once with this seed; the first 80% train.
_SPLIT_SEED, _TRAIN = 20261207, 1437
_SPLITS = (None, "train", "test")


class Dataset(NamedTuple):
    """A labelled data set held in memory.

    Attributes:
        x: (N, ...) float32 inputs.
        y: (N,) int32 class labels.
        num_classes: number of classes.
    """

    x: np.ndarray
    y: np.ndarray
    num_classes: int


def digits(
    *, flat: bool = False, standardize: bool = True, split: str | None = None
) -> Dataset:
    """The 1,797 8x8 digit images of scikit-learn (UCI optical digits), as NHWC images.

    Args:
        flat: return ``x`` of shape (N, 64) instead of (N, 8, 8, 1).
        standardize: scale pixel intensities (0..16) to zero mean and unit variance per
            pixel (constant pixels stay 0), with the statistics of the whole set.
        split: None (all 1,797), ``"train"`` (1,437) or ``"test"`` (360): a fixed
            split, the same on every machine and call, disjoint and covering the set.

    Returns:
        A :class:`Dataset` with 10 classes.

    Raises:
        ValueError: ``flat`` or ``standardize`` not a bool, an unknown ``split``.
    """
    _checks.boolean("flat", flat)
    _checks.boolean("standardize", standardize)
    _checks.choice("split", split, _SPLITS)
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.data.astype(np.float32)
    if standardize:
        std = x.std(axis=0)
        x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    y = d.target.astype(np.int32)
    if split is not None:
        order = np.random.default_rng(_SPLIT_SEED).permutation(len(y))
        rows = order[:_TRAIN] if split == "train" else order[_TRAIN:]
        x, y = x[rows], y[rows]
    if not flat:
        x = x.reshape(-1, 8, 8, 1)
    return Dataset(x=x, y=y, num_classes=10)


def sequential_digits(*, split: str | None = None, permute: bool = False) -> Dataset:
    """The digits read one pixel per step: a small, real version of the sequential
    (and permuted sequential) MNIST long-dependency benchmark.

    Args:
        split: None, ``"train"`` or ``"test"``, as :func:`digits`.
        permute: read the pixels in one fixed random order (the same for every image
            and call) instead of row by row.

    Returns:
        A :class:`Dataset`: ``x`` (N, 64, 1) float32 sequences (standardized pixels),
        ``y`` (N,) classes.

    Raises:
        ValueError: an unknown ``split``, ``permute`` not a bool.
    """
    _checks.boolean("permute", permute)
    data = digits(flat=True, split=split)
    x = data.x
    if permute:
        x = x[:, np.random.default_rng(_SPLIT_SEED + 1).permutation(64)]
    return Dataset(x=x[:, :, None], y=data.y, num_classes=10)
