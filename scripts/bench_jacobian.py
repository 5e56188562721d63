"""Benchmark: exact Jacobian spectra of tanh MLPs, jgrad against the code users write today.

For each (L, N, B) (depth, width, examples), in one run:

(a) input-output spectrum, the singular values of d y / d x for B examples:
    naive JAX ``jit(vmap(jacrev(f)))`` + ``jnp.linalg.svd`` (as users write it, and with
    ``compute_uv=False``), ``torch.func.vmap(torch.func.jacrev(f))`` +
    ``torch.linalg.svdvals`` when torch is installed, and ``jgrad.analyze.input_output_spectrum``
    vmapped. Floor: the product's matmul flops (L x 2 N^3 B) at the matmul rate measured in
    this run, plus the measured batched SVD (values only) of the B Jacobians themselves:
    the faster of XLA's SVD in one call and LAPACK on the host (both printed).
(b) all L layer-to-output spectra (d y / d h_l for every l): naive = one jacrev per layer
    (of the sub-network from h_l) + SVD, in one jit; jgrad ``output_spectra``. Floor: one sweep
    of products (L matmuls) + the measured SVD of the L B product matrices (the faster of
    the two routes, as in (a)).
(a) and (b) run jgrad's defaults: ``svd="auto"`` (LAPACK on the host through a threaded
    callback for matrices of 128 x 128 and larger, off TPUs) and ``compress=True`` (the
    products carried in fewer rows once their numerical rank falls, from 48 blocks on);
    they are also timed with ``svd="device"`` (XLA's SVD) and ``compress=False``.
(c) cheap summaries of every d y / d h_l: ``output_norms(method="matrix_free")``
    (shared block-Krylov output space + tail Lanczos for the spectral norm, Hutch++ for the
    mean squared singular value, the work tapered with depth) at the ``--settings`` given
    (by default its defaults, and the earlier defaults that give every product every Krylov
    iteration and every probe), and ``output_norms`` (``method="exact"``: explicit products,
    exact mean squared singular value, warm-started Lanczos: the default and
    ``min_lanczos_steps=2``); their time
    over the naive all-layers time, and their accuracy against the exact values from (b).

Every section is timed in interleaved rounds (``interleaved_times``): each round runs every
implementation of the section once, the order reversed every other round, so each baseline
is timed in alternation with jgrad; the table gives the median time, and the median over
rounds of the per-round ratio to the naive JAX code (``ratio_naive``; ``ratio_torch`` to
torch), on a shared machine the drift between two separately timed rows does not cancel,
within a round it does. (a) runs ``3 * --repeats`` rounds, (b) and (c) ``--repeats``; compile
time is reported separately, and one warm-up run precedes the rounds. The rows of (c) include
the naive all-layers code, their ratio is to it (``c_paired_ratio_naive`` for the first
setting); ``a_paired_ratio_naive`` is jgrad's (a) ratio. Both (a) spectra are also compared
with float64 (``a_err_vs_float64``: jacrev in float64 and NumPy's float64 SVD, the values
above ``1e-3 sigma_max``): on a GPU, jgrad's analyzers run their matmuls at full float32
precision and naive JAX at JAX's default (TF32).

The run uses the environment it is given, as a user's program would: OpenBLAS's default
thread count unless ``OPENBLAS_NUM_THREADS`` is set. (JAX's CPU LAPACK, behind
``jnp.linalg.svd``/``qr``, and jgrad's host SVD are SciPy's OpenBLAS; jgrad runs its own host
LAPACK calls on one BLAS thread, see ``jgrad.analyze._host_svd``.) ``--openblas-one-thread``
sets ``OPENBLAS_NUM_THREADS=1`` before NumPy and JAX load, for every case of the run, the
naive baselines included; the header and the JSON (``openblas_num_threads``) say which.
torch sets its own threads.

    python scripts/bench_jacobian.py                  # the grid, writes runs/bench_jacobian.json
    python scripts/bench_jacobian.py --quick          # one small shape (a smoke run)

On a GPU the torch baseline runs on CUDA (synchronized before the clock is read);
``--precision highest`` turns TF32 off in JAX and torch (the default leaves each library's
own: TF32 for JAX's float32 matmuls on recent NVIDIA GPUs, full float32 for torch's).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ONE_THREAD_FLAG = "--openblas-one-thread"

if __name__ == "__main__" and ONE_THREAD_FLAG in sys.argv[1:]:
    # OpenBLAS reads it once, when NumPy/SciPy load it
    os.environ["OPENBLAS_NUM_THREADS"] = "1"

# imported after the OPENBLAS_NUM_THREADS setting above
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jgrad  # noqa: E402
from jgrad import analyze  # noqa: E402
from jgrad.analyze._host_svd import host_svdvals  # noqa: E402
from jgrad.experiments._bench import (  # noqa: E402
    add_precision_arg,
    blas_threads,
    device_label,
    interleaved_times,
    matmul_gflops,
    median_ratio,
    median_time,
    parse_shapes,
    set_precision,
    summary,
    torch_device,
    write_results,
)

GRID = [(32, 256, 16), (128, 128, 16)]
QUICK = [(4, 16, 2)]
WEIGHT_VAR, BIAS_VAR = 1.5, 0.05
# (c) settings: the first 5 to 7 of these matrix-free output_norms arguments,
# ":"-separated
SETTING_NAMES = (
    "block_size",
    "krylov_steps",
    "probes",
    "lanczos_products",
    "lanczos_steps",
    "krylov_products",
    "deep_probes",
)


def time_jit(fn, args):
    """Compiles ``fn`` for ``args``: ((a function running it on ``args`` and blocking,
    compile seconds), its output)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    comp = time.perf_counter() - t0
    return (lambda: jax.block_until_ready(compiled(*args)), comp), compiled(*args)


def time_section(progs, base, rounds, torch_name=None):
    """Times the section's programs ``{name: (run, compile seconds)}`` in ``rounds``
    interleaved rounds: per name the median seconds, the IQR, and the medians over the
    rounds of the ratios to ``base`` and ``torch_name``."""
    times = interleaved_times({k: run for k, (run, _) in progs.items()}, rounds)
    return {
        name: {
            **summary(ts),
            "compile_seconds": progs[name][1],
            "pairs": rounds,
            "ratio_naive": median_ratio(times, name, base),
            "ratio_torch": median_ratio(times, name, torch_name)
            if torch_name
            else None,
        }
        for name, ts in times.items()
    }


def fastest_svd(mats, repeats):
    """Seconds for the singular values of ``mats`` (K, n, n): XLA's SVD in one call and
    LAPACK on the host (``host_svdvals``), each timed; the smaller is the floor's."""
    (dev, _), _ = time_jit(lambda m: jnp.linalg.svd(m, compute_uv=False), (mats,))
    (host, _), _ = time_jit(host_svdvals, (mats,))
    t = {"device": median_time(dev, repeats)[0], "host": median_time(host, repeats)[0]}
    return {"seconds": min(t.values()), **t}


def float64_errors(spectra, net, params, xs):
    """max |log s - log s_64| of each (B, n) log spectrum in ``spectra`` against the
    input-output Jacobian computed in float64 (``jacrev``, NumPy's float64 SVD), over the
    reference values above ``1e-3 * sigma_max``."""
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        jac = jax.jit(jax.vmap(jax.jacrev(lambda v: net.apply(p64, v))))(
            jnp.asarray(xs, jnp.float64)
        )
        ref = np.log(np.linalg.svd(np.asarray(jac), compute_uv=False))
    keep = ref >= ref[:, :1] + np.log(1e-3)
    return {
        k: float(np.max(np.abs(np.asarray(v, np.float64) - ref)[keep]))
        for k, v in spectra.items()
    }


def rel_errors(est, ex_sn, ex_ms):
    """Median and max relative errors of an OutputNorms against the exact values."""
    sn = np.abs(np.expm1(np.asarray(est.log_spectral_norm - ex_sn)))
    ms = np.abs(np.expm1(np.asarray(est.log_mean_sq - ex_ms)))
    return {
        "sn_rel_err_median": float(np.median(sn)),
        "sn_rel_err_max": float(np.max(sn)),
        "ms_rel_err_median": float(np.median(ms)),
        "ms_rel_err_max": float(np.max(ms)),
    }


def torch_case(params, xs, threads):
    """torch.func's jacrev + svdvals as a function to time (None without torch)."""
    try:
        import torch
        from torch.func import jacrev, vmap
    except ImportError:
        return None
    torch.set_num_threads(threads)
    dev = torch_device()
    ws = [torch.tensor(np.asarray(p["w"]), device=dev) for p in params[::2]]
    bs = [torch.tensor(np.asarray(p["b"]), device=dev) for p in params[::2]]
    x = torch.tensor(np.asarray(xs), device=dev)

    def f(v):
        for w, b in zip(ws, bs, strict=True):
            v = torch.tanh(v @ w + b)
        return v

    def run():
        with torch.no_grad():
            out = torch.linalg.svdvals(vmap(jacrev(f))(x))
        if dev == "cuda":
            torch.cuda.synchronize()
        return out

    return run, None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one small shape")
    ap.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="interleaved rounds of (b) and (c); (a) runs 3 times as many",
    )
    ap.add_argument(
        "--settings",
        default="8:2:24:8:6:32:4,8:2:24:12:6:128:4",
        help="(c) matrix-free output_norms settings to time, comma-separated "
        "BLOCK_SIZE:KRYLOV_STEPS:PROBES:LANCZOS_PRODUCTS:LANCZOS_STEPS"
        "[:KRYLOV_PRODUCTS[:DEEP_PROBES]] (the first is the default "
        "one, the second the earlier defaults: every product gets every iteration)",
    )
    ap.add_argument("--out", default="runs/bench_jacobian.json")
    ap.add_argument(
        ONE_THREAD_FLAG,
        action="store_true",
        help="set OPENBLAS_NUM_THREADS=1 for the whole run, baselines included (by "
        "default the environment is left as the user has it; see the module docstring)",
    )
    ap.add_argument(
        "--shapes", default=None, help="comma-separated L:N:B shapes (default the grid)"
    )
    add_precision_arg(ap)
    args = ap.parse_args(argv)
    for setting in args.settings.split(","):
        fields = setting.split(":")
        if not 5 <= len(fields) <= len(SETTING_NAMES) or not all(
            f.isdigit() for f in fields
        ):
            ap.error(
                "--settings must be comma-separated BLOCK_SIZE:KRYLOV_STEPS:PROBES:"
                "LANCZOS_PRODUCTS:LANCZOS_STEPS[:KRYLOV_PRODUCTS[:DEEP_PROBES]] "
                f"integers, got {setting!r}; for example "
                "8:2:24:8:6:32:4"
            )
    set_precision(args.precision)
    grid = QUICK if args.quick else GRID
    if args.shapes:
        grid = parse_shapes(args.shapes)
    threads = os.cpu_count() or 1
    peak = matmul_gflops(args.repeats)
    blas = os.environ.get("OPENBLAS_NUM_THREADS", "unset")
    if args.openblas_one_thread:
        blas += f" ({ONE_THREAD_FLAG})"
    print(
        f"device {device_label()}; precision {args.precision}; float32 matmul peak "
        f"(XLA): {peak:.1f} GFLOP/s; torch threads {threads}; OPENBLAS_NUM_THREADS={blas}"
        f"; BLAS threads at start {blas_threads()}"
    )
    rows = []
    for L, N, B in grid:
        net = jgrad.nn.mlp(
            L,
            N,
            activation="tanh",
            init="gaussian",
            weight_var=WEIGHT_VAR,
            bias_var=BIAS_VAR,
        )
        _, params = net.init(jax.random.key(0), (N,))
        xs = jax.random.normal(jax.random.key(1), (B, N))
        layers = net.layers

        def f(x, lo=0):
            for layer, p in zip(layers[lo:], params[lo:], strict=True):
                x = layer.apply(p, x)
            return x

        res = {}  # section (a)'s programs: {name: (run, compile seconds)}
        # (a) input-output spectrum
        naive_io = lambda xs: jnp.linalg.svd(jax.vmap(jax.jacrev(f))(xs))  # noqa: E731
        jgrad_io = jax.vmap(lambda x: analyze.input_output_spectrum(net, params, x))
        res["a: naive JAX jacrev+svd"], _ = time_jit(naive_io, (xs,))
        res["a: naive JAX jacrev+svdvals"], _ = time_jit(
            lambda xs: jnp.linalg.svd(jax.vmap(jax.jacrev(f))(xs), compute_uv=False),
            (xs,),
        )
        tc = torch_case(params, xs, threads)
        torch_name = "a: torch.func jacrev+svdvals" if tc is not None else None
        if tc is not None:
            res[torch_name] = tc
        res["a: jgrad input_output_spectrum"], io = time_jit(jgrad_io, (xs,))
        io = io.log_sv  # a Spectrum: (log_sv, nonfinite)
        res["a: jgrad input_output_spectrum svd=device"], _ = time_jit(
            jax.vmap(
                lambda x: analyze.input_output_spectrum(net, params, x, svd="device")
            ),
            (xs,),
        )
        res["a: jgrad input_output_spectrum compress=False"], _ = time_jit(
            jax.vmap(
                lambda x: analyze.input_output_spectrum(net, params, x, compress=False)
            ),
            (xs,),
        )
        # SVD time of the actual Jacobians (SVD cost depends on the spectrum: random
        # Gaussian matrices take longer than these graded ones).
        # The floor takes the faster of XLA's SVD (one call for the batch: it sometimes
        # runs on all cores and sometimes on one) and LAPACK on the host (a thread pool).
        mats = jax.jit(jax.vmap(jax.jacrev(f)))(xs)
        svd_b = fastest_svd(mats, args.repeats)
        floor_a = L * 2 * N**3 * B / peak / 1e9 + svd_b["seconds"]

        # (b) all layer-to-output spectra
        def naive_all(xs):
            _, hs = jax.vmap(lambda x: net.apply(params, x, return_intermediates=True))(
                xs
            )
            hs = (xs,) + tuple(hs)
            out = []
            for b in range(L):  # block b starts at layer 2b (dense, tanh)
                h = hs[2 * b]
                jac = jax.vmap(jax.jacrev(lambda v, lo=2 * b: f(v, lo)))(h)
                out.append(jnp.linalg.svd(jac, compute_uv=False))
            return out

        # (a) timed, interleaved with the naive JAX code
        naive_a_name = "a: naive JAX jacrev+svd"
        res = time_section(res, naive_a_name, 3 * args.repeats, torch_name)
        res_b = {}
        res_b["b: naive JAX L x (jacrev+svdvals)"], _ = time_jit(naive_all, (xs,))
        res_b["b: jgrad output_spectra"], spectra = time_jit(
            jax.vmap(lambda x: analyze.output_spectra(net, params, x)),
            (xs,),
        )
        res_b["b: jgrad output_spectra svd=device"], _ = time_jit(
            jax.vmap(lambda x: analyze.output_spectra(net, params, x, svd="device")),
            (xs,),
        )
        res_b["b: jgrad output_spectra compress=False"], _ = time_jit(
            jax.vmap(lambda x: analyze.output_spectra(net, params, x, compress=False)),
            (xs,),
        )
        mats_l = jax.jit(
            jax.vmap(
                lambda x: jnp.stack(
                    [p.matrix for p in analyze.output_sweep(net, params, x).products]
                )
            )
        )(xs).reshape(L * B, N, N)
        svd_l = fastest_svd(mats_l, args.repeats)
        floor_b = L * 2 * N**3 * B / peak / 1e9 + svd_l["seconds"]

        naive_b_name = "b: naive JAX L x (jacrev+svdvals)"
        naive_b_prog = res_b[naive_b_name]
        res.update(time_section(res_b, naive_b_name, args.repeats))

        # (c) cheap summaries
        keys = jax.random.split(jax.random.key(4), B)
        exact = jnp.stack(spectra.log_sv, axis=1)  # (B, L, N)
        ex_sn = exact[..., 0]
        ex_ms = analyze.spectrum_stats(exact).log_mean_sq
        accuracy = {}
        # the baseline, timed again in (c)'s rounds
        naive_c_name = "c: naive JAX L x (jacrev+svdvals)"
        res_c = {naive_c_name: naive_b_prog}
        first_c = None
        for i, setting in enumerate(args.settings.split(",")):
            names = SETTING_NAMES[: len(setting.split(":"))]
            kw = dict(zip(names, (int(v) for v in setting.split(":")), strict=True))
            name = f"c: jgrad output_norms matrix_free {setting}"
            first_c = first_c or name
            res_c[name], est = time_jit(
                jax.vmap(
                    lambda x, k, kw=kw: analyze.output_norms(
                        net, params, x, method="matrix_free", probe_key=k, **kw
                    )
                ),
                (xs, keys),
            )
            accuracy[f"matrix_free {setting} ({':'.join(names)})"] = rel_errors(
                est, ex_sn, ex_ms
            )
        # output_norms: explicit products, exact mean sq., warm-started Lanczos (the
        # default: 8 to 16 steps a product; min_lanczos_steps=2: the fast setting)
        for label, kw in (
            ("Lanczos 8-16 steps", {}),
            ("min_lanczos_steps=2", {"min_lanczos_steps": 2}),
        ):
            res_c[f"c: jgrad output_norms ({label})"], est = time_jit(
                jax.vmap(
                    lambda x, k, kw=kw: analyze.output_norms(
                        net, params, x, probe_key=k, **kw
                    )
                ),
                (xs, keys),
            )
            accuracy[f"output_norms ({label}, exact mean sq.)"] = rel_errors(
                est, ex_sn, ex_ms
            )
        res.update(time_section(res_c, naive_c_name, args.repeats))

        # consistency of (a) with the naive spectrum (top 10 log singular values)
        naive_sv = jnp.log(
            jax.jit(
                lambda xs: jnp.linalg.svd(jax.vmap(jax.jacrev(f))(xs), compute_uv=False)
            )(xs)
        )
        # (jgrad's compressed sweep reads the values it dropped as -inf: compared where
        # both are finite)
        fin = np.isfinite(np.asarray(naive_sv[:, :10])) & np.isfinite(
            np.asarray(io[:, :10])
        )
        a_err = float(
            np.max(np.abs(np.asarray(io[:, :10] - naive_sv[:, :10])[fin]), initial=0)
        )

        # both (a) spectra against float64 (jacrev in float64, NumPy's float64 SVD), over
        # the values above 1e-3 sigma_max: on a GPU the matmul precision decides this
        # (jgrad's analyzers run at full float32 precision, naive JAX at TF32)
        a_err64 = float64_errors({"jgrad": io, "naive": naive_sv}, net, params, xs)

        a_paired = res["a: jgrad input_output_spectrum"]["ratio_naive"]
        c_paired = res[first_c]["ratio_naive"]
        print(
            f"\ntanh MLP L={L} N={N} B={B} (weight_var {WEIGHT_VAR}, bias_var {BIAS_VAR}); "
            f"floor (a) {floor_a * 1e3:.1f} ms (SVD {svd_b['seconds'] * 1e3:.1f}: "
            f"XLA {svd_b['device'] * 1e3:.1f}, host {svd_b['host'] * 1e3:.1f}), "
            f"floor (b) {floor_b * 1e3:.1f} ms (SVDs {svd_l['seconds'] * 1e3:.1f}: "
            f"XLA {svd_l['device'] * 1e3:.1f}, host {svd_l['host'] * 1e3:.1f})"
        )
        print(
            f"OPENBLAS_NUM_THREADS={blas}; /naive, /torch: medians over the rounds of "
            f"the per-round ratios ({3 * args.repeats} rounds for (a), "
            f"{args.repeats} for (b), (c))"
        )
        print(
            f"{'implementation':<38}{'median ms':>10}{'IQR %':>7}{'compile s':>10}"
            f"{'/naive':>8}{'/torch':>8}{'/floor':>8}"
        )
        for name, v in res.items():
            t = v["seconds"]
            floor = {"a": floor_a, "b": floor_b}.get(name[0])
            comp = "" if v["compile_seconds"] is None else f"{v['compile_seconds']:.2f}"
            tr = "" if v["ratio_torch"] is None else f"{v['ratio_torch']:.2f}"
            fl = f"{t / floor:.2f}" if floor else ""
            print(
                f"{name:<38}{t * 1e3:>10.1f}{100 * v['iqr']:>7.0f}{comp:>10}"
                f"{v['ratio_naive']:>8.3f}{tr:>8}{fl:>8}"
            )
            rows.append(
                {
                    "L": L,
                    "N": N,
                    "B": B,
                    "impl": name,
                    **v,
                    "ratio_floor": (t / floor) if floor else None,
                }
            )
        for setting, acc in accuracy.items():
            print(
                f"(c) {setting} accuracy over {B}x{L} products: "
                f"spectral norm rel. err median {acc['sn_rel_err_median']:.1e} max "
                f"{acc['sn_rel_err_max']:.1e}; mean sq. sv rel. err median "
                f"{acc['ms_rel_err_median']:.1e} max {acc['ms_rel_err_max']:.1e}"
            )
        print(f"(a) vs naive: top-10 log singular values max abs diff {a_err:.1e}")
        print(
            "(a) vs float64, max |d log s| over the values above 1e-3 sigma_max: "
            + ", ".join(f"{k} {v:.1e}" for k, v in a_err64.items())
        )
        print(
            f"(a) jgrad / naive JAX, interleaved pairs ({3 * args.repeats}): "
            f"median {a_paired:.3f} (OPENBLAS_NUM_THREADS={blas})"
        )
        print(
            f"(c) default estimator / naive all-layers, interleaved pairs "
            f"({args.repeats}): median {c_paired:.3f}"
        )
        rows.append(
            {
                "L": L,
                "N": N,
                "B": B,
                "impl": "accuracy",
                "floor_a_seconds": floor_a,
                "floor_b_seconds": floor_b,
                "svd_a_seconds": svd_b,
                "svd_b_seconds": svd_l,
                "c_accuracy": accuracy,
                "a_top10_max_abs_diff": a_err,
                "a_err_vs_float64": a_err64,
                "a_paired_ratio_naive": a_paired,
                "c_paired_ratio_naive": c_paired,
            }
        )
    write_results(
        "bench_jacobian.py",
        argv,
        args.out,
        rows,
        matmul_peak_gflops=peak,
        openblas_num_threads=blas,
        blas_threads_at_start=blas_threads(),
        torch_threads=threads,
        precision=args.precision,
        device=device_label(),
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
