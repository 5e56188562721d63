"""Singular values computed by NumPy's LAPACK on the host CPU, from inside a jitted program.

XLA's GPU SVD handles a batch of matrices larger than 32 x 32 one matrix at a time: on an
H100, the singular values of 16 matrices of 256 x 256 took 106 ms and of 512 of them 3.5 s
(jax 0.11.2; torch's ``linalg.svdvals`` on the same GPU took as long). A host core does
one such matrix in about 3 ms in float32 LAPACK, 6 ms through NumPy (float64, below), and
the host has several cores. ``svd="host"`` on the spectrum functions moves
the SVD there through :func:`jax.pure_callback`: the matrices are copied to host memory,
split over a thread pool (NumPy releases the GIL inside LAPACK), and the values copied back.

NumPy computes the SVD of a float32 matrix in float64 (its linalg promotes) and returns
float32, so these values are more accurate than float32 LAPACK's (largest log error
5.9e-8 against 2.7e-6 for XLA's on graded 256 x 256 matrices, ``scripts/bench_svd.py``),
at about twice the time per matrix.

What it gives up: the callback has no derivative (differentiate through ``svd="device"``),
and on a CPU-only machine it is slower than XLA's own SVD in isolation (1.9x for 16
matrices of 256 x 256 on 2 cores). Inside a sweep's loop it can be faster even there, as
XLA's SVDs run 1.7-1.8x slower in a loop than unrolled: ``output_spectra`` at L = 128,
N = 128 took 0.81x the time with ``svd="host"``. On the H100 machine it gained 1.5-2.1x,
less than its 16 cores promise (about 107 ms per callback of 16 matrices: the threads did
not run in parallel there, cause not established).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np

__all__ = ["host_svdvals"]

_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    return _POOL


def _svdvals_each(flat: np.ndarray, out: np.ndarray, idx: np.ndarray) -> None:
    """Fills ``out[idx]``; a matrix LAPACK rejects (NaN, inf, no convergence) gets NaN,
    as XLA's SVD returns for it, instead of an exception that would abort the program."""
    try:
        out[idx] = np.linalg.svd(flat[idx], compute_uv=False)
    except np.linalg.LinAlgError:
        for i in idx:
            try:
                out[i] = np.linalg.svd(flat[i], compute_uv=False)
            except np.linalg.LinAlgError:
                out[i] = np.nan


def _np_svdvals(m) -> np.ndarray:
    m = np.asarray(m)
    work = m if m.dtype in (np.float32, np.float64) else m.astype(np.float32)
    r = min(m.shape[-2:])
    flat = work.reshape((-1,) + m.shape[-2:])
    out = np.empty((flat.shape[0], r), work.dtype)
    n = flat.shape[0]
    if n and r:
        chunks = np.array_split(np.arange(n), min(n, os.cpu_count() or 1))
        if len(chunks) == 1:
            _svdvals_each(flat, out, chunks[0])
        else:
            list(_pool().map(lambda idx: _svdvals_each(flat, out, idx), chunks))
    return out.reshape(m.shape[:-2] + (r,)).astype(m.dtype, copy=False)


def host_svdvals(m: jax.Array) -> jax.Array:
    """Singular values (descending) of ``m`` (..., r, n), by LAPACK on the host.

    Works under ``jit`` and ``vmap`` (the batch goes to the host in one call); not
    differentiable.
    """
    shape = jax.ShapeDtypeStruct(m.shape[:-2] + (min(m.shape[-2:]),), m.dtype)
    return jax.pure_callback(_np_svdvals, shape, m, vmap_method="expand_dims")
