"""Singular values computed by LAPACK on the host CPU, from inside a jitted program.

XLA's GPU SVD handles a batch of matrices larger than 32 x 32 one matrix at a time, and
XLA's CPU SVD runs on one core inside a loop (``lax.map``, ``lax.scan``), where the sweeps
take theirs. ``svd="host"`` on the spectrum functions moves the SVD to the host through
:func:`jax.pure_callback`: the matrices are copied to host memory, split over a thread
pool with one worker per core, and the values copied back. docs/benchmarks.md
(``scripts/bench_svd.py``) has the times of every route.

The LAPACK routine is ``sgesdd``/``dgesdd`` (no singular vectors) in the matrix's own
precision, called through ctypes on the function pointers SciPy publishes in
``scipy.linalg.cython_lapack`` (a public Cython API; SciPy is a dependency of JAX). ctypes
releases the GIL for the call, so the pool's threads run in parallel (SciPy's own
``lapack.sgesdd`` wrapper keeps the GIL; NumPy's ``svd`` promotes float32 to float64).
The values are those of float32 (float64) LAPACK, as XLA's CPU SVD gives them; the tests
compare them with the device path. Without SciPy's Cython LAPACK, NumPy's ``svd`` is
used. A callback has no derivative: under ``jax.grad``/``jvp`` the values and their
derivative come from XLA's SVD (with singular vectors) instead, so differentiating costs
what ``svd="device"`` costs.

The pool gives each core one matrix, so each ``?gesdd`` runs its BLAS on one thread
(:func:`one_blas_thread`, for the duration of the callback; the count is restored
after). SciPy's OpenBLAS (the library of the ctypes route, and of XLA's CPU LAPACK
custom calls) otherwise starts as many threads as cores for every call: with the pool,
more threads than cores, which busy-wait on each other, and a user who has not set
``OPENBLAS_NUM_THREADS=1`` would get a much slower spectrum. Only that library is
limited, not NumPy's own OpenBLAS. LAPACK calls that XLA makes inside a compiled program
(``jnp.linalg.qr``, the pivoted QR of ``compress=True``) are outside this scope and run
on OpenBLAS's threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["host_svdvals"]

_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    return _POOL


def _lapack_gesdd(name: str):
    """``?gesdd`` from SciPy's Cython LAPACK as a ctypes function (GIL released), or None."""
    try:
        from scipy.linalg import cython_lapack

        cap = cython_lapack.__pyx_capi__[name]
        get_name = ctypes.pythonapi.PyCapsule_GetName
        get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
        get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
        get_ptr.restype = ctypes.c_void_p
        get_ptr.argtypes = [ctypes.py_object, ctypes.c_char_p]
        ptr = get_ptr(cap, get_name(cap))
    except Exception:  # noqa: BLE001 - no SciPy, or a SciPy without the capsule
        return None
    return ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 14))(ptr)


_GESDD = {
    np.dtype(np.float32): _lapack_gesdd("sgesdd"),
    np.dtype(np.float64): _lapack_gesdd("dgesdd"),
}


def _gesdd_each(fn, flat: np.ndarray, out: np.ndarray, idx: np.ndarray) -> None:
    """Singular values of ``flat[i]`` for i in ``idx`` into ``out[i]`` by LAPACK ``?gesdd``
    (Fortran calling convention). A row-major (m, n) matrix is the column-major (n, m)
    matrix of its transpose, which has the same singular values, so no transposing copy.
    Each matrix is copied into one scratch matrix (gesdd overwrites its input), checked
    there and decomposed while it is in cache, and the values are written straight into
    ``out`` (C-contiguous, ``flat``'s dtype): no copy of the whole chunk (memory of the
    order of the batch). The arguments are built once per chunk: per call, ctypes'
    argument conversion is then the only Python overhead."""
    _, m, n = flat.shape
    r = min(m, n)
    a = np.empty((m, n), flat.dtype)
    iwork = np.empty(8 * r, np.int32)
    unused = np.empty(1, flat.dtype)
    c_int, ref = ctypes.c_int, ctypes.byref
    jobz, rows, cols, one, info = (
        ctypes.c_char(b"N"),
        c_int(n),
        c_int(m),
        c_int(1),
        c_int(0),
    )
    lwork = c_int(-1)
    query = np.empty(1, flat.dtype)
    u = unused.ctypes.data
    # jobz, m, n, A, lda, S, U, ldu, VT, ldvt, work, lwork, iwork, info
    call = [ref(jobz), ref(rows), ref(cols), a.ctypes.data, ref(rows), query.ctypes.data,
            u, ref(one), u, ref(one), query.ctypes.data, ref(lwork), iwork.ctypes.data,
            ref(info)]  # fmt: skip
    fn(*call)  # workspace query (S is not written)
    work = np.empty(int(query[0]) + 1, flat.dtype)
    lwork.value, call[10] = work.size, work.ctypes.data
    o0, ds = out.ctypes.data, r * out.itemsize
    for i in idx:
        np.copyto(a, flat[i])
        if not np.isfinite(a).all():
            out[i] = np.nan  # LAPACK's result is undefined there
            continue
        call[5] = o0 + int(i) * ds
        fn(*call)
        if info.value != 0:
            out[i] = np.nan  # no convergence: NaN, as XLA


# LAPACK symbols with 32-bit integers, as SciPy's Cython LAPACK calls them (NumPy's own
# OpenBLAS has 64-bit integers: ``scipy_sgesdd_64_``)
_LP64_GESDD = ("sgesdd_", "scipy_sgesdd_")


class _BlasLib(NamedTuple):
    """A loaded BLAS library's thread-count getter and setter (process-wide)."""

    path: str
    get: Callable[[], int]
    set: Callable[[int], object]


def _openblas_lib(lib) -> _BlasLib | None:
    """OpenBLAS's own getter and setter, called directly: threadpoolctl's
    ``set_num_threads`` lets only the first thread that used it set OpenBLAS's threads
    (others silently do nothing), and the callback runs on XLA's threads."""
    try:
        dll = ctypes.CDLL(lib.filepath)  # already loaded: the same handle
    except OSError:
        return None
    for pre, suf in itertools.product(("", "scipy_"), ("", "64_", "_64")):
        get = getattr(dll, f"{pre}openblas_get_num_threads{suf}", None)
        put = getattr(dll, f"{pre}openblas_set_num_threads{suf}", None)
        if get is not None and put is not None:
            get.restype, get.argtypes = ctypes.c_int, []
            put.restype, put.argtypes = None, [ctypes.c_int]
            return _BlasLib(lib.filepath, get, put)
    return None


def _exports(path: str, names: tuple[str, ...]) -> bool:
    try:
        dll = ctypes.CDLL(path)
    except OSError:
        return False
    return any(hasattr(dll, n) for n in names)


@functools.cache
def _route_blas() -> tuple[_BlasLib, ...]:
    """The BLAS libraries our LAPACK route runs in, found once (threadpoolctl's scan of
    the loaded libraries takes about 9 ms). SciPy's Cython LAPACK (32-bit integers)
    links a library exporting ``sgesdd_`` or ``scipy_sgesdd_``: that one only, not
    NumPy's 64-bit-integer OpenBLAS (``scipy_sgesdd_64_``), which the user's NumPy code
    uses. NumPy's route: the libraries NumPy's LAPACK can be in, all loaded BLAS."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # a declared dependency; without it, no limit
        return ()
    libs = ThreadpoolController().select(user_api="blas").lib_controllers
    if _GESDD[np.dtype(np.float32)] is not None:
        mine = [lib for lib in libs if _exports(lib.filepath, _LP64_GESDD)]
        libs = mine or libs
    out = []
    for lib in libs:
        if lib.internal_api == "openblas":
            found = _openblas_lib(lib)
        else:  # MKL, BLIS, FlexiBLAS: no single-controller rule there
            found = _BlasLib(lib.filepath, lambda lib=lib: lib.num_threads,
                             lib.set_num_threads)  # fmt: skip
        if found is not None:
            out.append(found)
    return tuple(out)


_LIMIT_LOCK = threading.Lock()
_LIMIT = {"depth": 0, "saved": ()}


@contextlib.contextmanager
def one_blas_thread():
    """Runs the block with the BLAS library of the host LAPACK route on one thread, and
    restores its thread count when the last such block (of any thread) has left.

    The pool already gives each core one matrix: a threaded BLAS inside each ``?gesdd``
    only adds threads that wait on each other (busy-waiting, on more threads than
    cores). The count is process-wide, so it is set on entering the first block and
    restored on leaving the last, counted under a lock (two callbacks may run at once).
    """
    libs = _route_blas()
    with _LIMIT_LOCK:
        if _LIMIT["depth"] == 0:
            _LIMIT["saved"] = tuple(lib.get() for lib in libs)
            for lib, n in zip(libs, _LIMIT["saved"], strict=True):
                if n != 1:
                    lib.set(1)
        _LIMIT["depth"] += 1
    try:
        yield
    finally:
        with _LIMIT_LOCK:
            _LIMIT["depth"] -= 1
            if _LIMIT["depth"] == 0:
                for lib, n in zip(libs, _LIMIT["saved"], strict=True):
                    if n != 1:
                        lib.set(n)


def _svdvals_each(flat: np.ndarray, out: np.ndarray, idx: np.ndarray) -> None:
    """Fills ``out[idx]``; a matrix LAPACK rejects (NaN, inf, no convergence) gets NaN,
    as XLA's SVD returns for it, instead of an exception that would abort the program."""
    fn = _GESDD.get(flat.dtype)
    if fn is not None:
        _gesdd_each(fn, flat, out, idx)
        return
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
        with one_blas_thread():
            _svdvals_split(flat, out)
    return out.reshape(m.shape[:-2] + (r,)).astype(m.dtype, copy=False)


def _svdvals_split(flat: np.ndarray, out: np.ndarray) -> None:
    """Fills ``out`` with the values of ``flat``, split over the thread pool."""
    n = flat.shape[0]
    # below about 2^16 matrix entries in all, waking the pool costs more than it saves
    parts = 1 if n * flat[0].size < 1 << 16 else min(n, os.cpu_count() or 1)
    chunks = np.array_split(np.arange(n), parts)
    # the calling thread takes the first chunk itself (one thread hand-off less:
    # 5.44 against 5.63 ms for 16 graded 128 x 128 float32 matrices on 2 cores)
    rest = []
    if len(chunks) > 1:
        pool = _pool()
        rest = [pool.submit(_svdvals_each, flat, out, idx) for idx in chunks[1:]]
    _svdvals_each(flat, out, chunks[0])
    for fut in rest:
        fut.result()


@jax.custom_jvp
def host_svdvals(m: jax.Array) -> jax.Array:
    """Singular values (descending) of ``m`` (..., r, n), by LAPACK ``?gesdd`` on the host.

    Works under ``jit`` and ``vmap`` (the batch goes to the host in one call). Under
    differentiation (forward or reverse mode) the values and their derivative come from
    XLA's SVD on the device instead, which has the singular vectors the derivative needs.
    """
    shape = jax.ShapeDtypeStruct(m.shape[:-2] + (min(m.shape[-2:]),), m.dtype)
    return jax.pure_callback(_np_svdvals, shape, m, vmap_method="expand_dims")


@host_svdvals.defjvp
def _host_svdvals_jvp(primals, tangents):
    return jax.jvp(lambda a: jnp.linalg.svd(a, compute_uv=False), primals, tangents)
