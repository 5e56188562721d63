"""Helpers shared by the tests."""

import contextlib

import jax


def default_promotion():
    """JAX's default promotion rules, for third-party code (flax, the README, baselines)
    that relies on implicit promotion; conftest.py makes the rules strict everywhere else."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.numpy_rank_promotion("allow"))
    stack.enter_context(jax.numpy_dtype_promotion("standard"))
    return stack
