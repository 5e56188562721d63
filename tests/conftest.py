"""Test configuration: strict promotion rules (as equinox's tests), keys from a fixture,
and property tests that CI replays deterministically."""

import itertools
import os

import jax
import numpy as np
import pytest
from hypothesis import settings

# CI (CI=true) draws the same examples on every run, so a failure there is reproducible;
# local runs keep drawing new ones.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# Implicit rank promotion hides shape bugs (a (n,) bias broadcast against (n, 1)); fail instead.
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def getkey():
    """Returns a function giving a fresh, never-reused PRNG key on every call."""
    counter = itertools.count(1)
    return lambda: jax.random.key(next(counter) * 7919)


@pytest.fixture
def rng():
    """A NumPy generator with a fixed seed, for reference data."""
    return np.random.default_rng(20261122)
