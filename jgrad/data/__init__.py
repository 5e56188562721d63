"""Data: bundled real data (scikit-learn's digits); generated tasks come later."""

from jgrad.data._digits import Dataset as Dataset
from jgrad.data._digits import digits as digits

__all__ = ["Dataset", "digits"]
