"""Benchmark: batched singular values (no vectors), every route JAX and jgrad offer, in one run.

The spectra of Jacobian products are SVD-bound (``bench_jacobian.py``), and where an SVD is
fast depends on the device: XLA's GPU SVD handles matrices larger than 32 x 32 one at a
time. For each batch shape ``B:N`` (B matrices of N x N with a graded spectrum, singular
values spread over four decades) this times:

- ``jnp.linalg.svd(compute_uv=False)``, XLA's default;
- ``jax.lax.linalg.svd`` with each ``SvdAlgorithm`` (QR, JACOBI, POLAR);
- ``sqrt(eigvalsh(M M^T))``: fast, but loses every singular value below
  ``sqrt(eps) * sigma_max``;
- jgrad's ``svd="host"`` route (LAPACK ``?gesdd`` on the host through ``jax.pure_callback``,
  one matrix per core, SciPy's OpenBLAS on one thread);
- ``torch.linalg.svdvals`` on the matching torch device, when torch is installed.

Each route's error is the largest ``|log s - log s_ref|`` against float64 NumPy on the same
float32 matrices, over the singular values above ``1e-3 * sigma_max`` (float32 cannot
resolve the rest to better than ``eps * sigma_max / sigma``). Medians of ``--repeats``.

    python scripts/bench_svd.py                      # writes runs/bench_svd.json
    python scripts/bench_svd.py --shapes 16:256,512:256
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from jax.lax.linalg import SvdAlgorithm, svd

from jgrad.analyze._host_svd import host_svdvals
from jgrad.experiments._bench import (
    add_precision_arg,
    device_label,
    median_time,
    parse_shapes,
    set_precision,
    torch_device,
    write_results,
)

SHAPES = [(16, 256), (512, 256), (16, 128), (2048, 128)]
QUICK = [(3, 8)]


def graded(batch, n, seed=0):
    """``batch`` Gaussian n x n matrices times diag(logspace(0, -4, n))."""
    m = jax.random.normal(jax.random.key(seed), (batch, n, n))
    return m * jnp.logspace(0.0, -4.0, n)


def routes():
    def algo(a):
        return lambda x: svd(x, full_matrices=False, compute_uv=False, algorithm=a)

    def gram(x):
        g = x @ jnp.swapaxes(x, -1, -2)
        return jnp.sqrt(jnp.clip(jnp.linalg.eigvalsh(g), 0.0))[..., ::-1]

    return {
        "jnp.linalg.svd": lambda x: jnp.linalg.svd(x, compute_uv=False),
        "lax svd QR": algo(SvdAlgorithm.QR),
        "lax svd JACOBI": algo(SvdAlgorithm.JACOBI),
        "lax svd POLAR": algo(SvdAlgorithm.POLAR),
        "sqrt eigvalsh(M M^T)": gram,
        'jgrad svd="host"': host_svdvals,
    }


def log_error(s, ref):
    keep = ref >= 1e-3 * ref[..., :1]
    err = np.abs(np.log(np.maximum(np.asarray(s, np.float64), 1e-300)) - np.log(ref))
    return float(np.max(err[keep]))


def time_torch(m, repeats):
    try:
        import torch
    except ImportError:
        return None
    dev = torch_device()
    x = torch.tensor(np.asarray(m), device=dev)

    def run():
        out = torch.linalg.svdvals(x)
        if dev == "cuda":
            torch.cuda.synchronize()
        return out

    t, iqr = median_time(run, repeats)
    return t, iqr, run().cpu().numpy()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one tiny shape")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--shapes", default=None, help="comma-separated B:N batch shapes")
    add_precision_arg(p)
    p.add_argument("--out", default="runs/bench_svd.json")
    args = p.parse_args(argv)
    set_precision(args.precision)
    shapes = QUICK if args.quick else SHAPES
    if args.shapes:
        shapes = parse_shapes(args.shapes)
    print(f"device {device_label()}; precision {args.precision}")
    rows = []
    for batch, n in shapes:
        m = graded(batch, n)
        ref = np.linalg.svd(np.asarray(m, np.float64), compute_uv=False)
        res = {}
        for name, fn in routes().items():
            f = jax.jit(fn)
            try:
                out = jax.block_until_ready(f(m))
            except Exception as e:  # an algorithm a backend lacks: recorded, not fatal
                res[name] = {"error": f"{type(e).__name__}: {str(e)[:120]}"}
                continue
            t, iqr = median_time(lambda f=f: jax.block_until_ready(f(m)), args.repeats)
            res[name] = {"seconds": t, "iqr": iqr, "max_log_err": log_error(out, ref)}
        tt = time_torch(m, args.repeats)
        if tt is not None:
            res["torch linalg.svdvals"] = {
                "seconds": tt[0],
                "iqr": tt[1],
                "max_log_err": log_error(tt[2], ref),
            }
        base = res["jnp.linalg.svd"]["seconds"]
        print(f"\n{batch} x ({n}, {n}) float32")
        print(
            f"{'route':<24}{'median ms':>10}{'IQR %':>7}{'/ jnp':>8}{'max |dlog s|':>14}"
        )
        for name, v in res.items():
            if "error" in v:
                print(f"{name:<24}  failed: {v['error']}")
            else:
                print(
                    f"{name:<24}{v['seconds'] * 1e3:>10.2f}{100 * v['iqr']:>7.0f}"
                    f"{v['seconds'] / base:>8.2f}{v['max_log_err']:>14.1e}"
                )
            rows.append({"batch": batch, "n": n, "route": name, **v})
    write_results(
        "bench_svd.py",
        argv,
        args.out,
        rows,
        precision=args.precision,
        device=device_label(),
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
