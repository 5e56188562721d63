"""scikit-learn's 8x8 handwritten digits, shipped inside the package (no download)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jgrad import _checks

__all__ = ["Dataset", "digits"]


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


def digits(*, flat: bool = False, standardize: bool = True) -> Dataset:
    """The 1,797 8x8 digit images of scikit-learn (UCI optical digits), as NHWC images.

    Args:
        flat: return ``x`` of shape (1797, 64) instead of (1797, 8, 8, 1).
        standardize: scale pixel intensities (0..16) to zero mean and unit variance per
            pixel (constant pixels stay 0).

    Returns:
        A :class:`Dataset` with 10 classes.

    Raises:
        ValueError: if ``flat`` or ``standardize`` is not a bool.
    """
    _checks.boolean("flat", flat)
    _checks.boolean("standardize", standardize)
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.data.astype(np.float32)
    if standardize:
        std = x.std(axis=0)
        x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    if not flat:
        x = x.reshape(-1, 8, 8, 1)
    return Dataset(x=x, y=d.target.astype(np.int32), num_classes=10)
