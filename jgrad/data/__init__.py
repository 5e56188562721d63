"""Data: bundled real data (scikit-learn's digits, with a fixed train/test split, as
images, vectors and pixel sequences) and generated long-dependency tasks (adding, copy,
temporal order), each keyed and jitted, with its chance-level loss."""

from jgrad.data._digits import Dataset as Dataset
from jgrad.data._digits import digits as digits
from jgrad.data._digits import sequential_digits as sequential_digits
from jgrad.data._tasks import SequenceTask as SequenceTask
from jgrad.data._tasks import adding as adding
from jgrad.data._tasks import copy_task as copy_task
from jgrad.data._tasks import temporal_order as temporal_order

__all__ = [
    "Dataset",
    "SequenceTask",
    "adding",
    "copy_task",
    "digits",
    "sequential_digits",
    "temporal_order",
]
