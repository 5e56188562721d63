"""E10. Le, Jaitly & Hinton 2015: the IRNN, a ReLU RNN initialized to the identity
(fragile).

Paper: Q. V. Le, N. Jaitly, G. E. Hinton, "A Simple Way to Initialize Recurrent Networks
of Rectified Linear Units", arXiv:1504.00941 (2015).

Reproduced: the mechanism (section 3) and the adding-problem comparison (figure 2). At
initialization an IRNN (``w_hh = I``, zero bias) passes the gradient through time
unchanged on its active units: every step Jacobian is ``diag(active)``, so the singular
values of ``dh_T/dh_0`` are exactly 0 or 1, where a tanh RNN with ``N(0, 1/N)`` recurrent
weights and the same inputs decays geometrically. The paper's training claim (IRNNs solve
the adding problem where tanh RNNs do not) is checked at a small budget, where papers.md's
calibration did not see it: reported as measured.

Setup: N = 100 units, 2 inputs, T = 100 non-negative inputs for the Jacobians (float64,
``jgrad.analyze.rnn_step_jacobians`` and ``log_singular_values``), 3 seeds. Training:
the adding problem (``jgrad.data.adding``) at T = 50, SGD at learning rate 0.01 with
global-norm clipping at 1.0 (``jgrad.optim.chain``), batch 32, 3,000 steps, 2 seeds;
the test MSE on 1,000 fresh sequences (chance 1/6). Runs only with ``--full``.

Command: ``jgrad repro e10 --full``. CPU time: about 2 minutes.

Expected:

- irnn_sv_distance: <= 1e-12 [num]
- tanh_log_rate: <= -0.05 [num]
- tanh_minus_irnn_mse: >= 0 [src]

``irnn_sv_distance`` is the largest distance of a singular value of the IRNN's
``dh_T/dh_0`` from {0, 1}; ``tanh_log_rate`` the top singular value's log per step of
the tanh RNN's product; ``tanh_minus_irnn_mse`` the tanh RNN's test MSE minus the IRNN's
after training (the paper: the IRNN is better, so >= 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jgrad
from jgrad import analyze, optim, rnn
from jgrad.experiments import Result

CORE = False
FULL_ONLY = True


def get_config(quick: bool = False, full: bool = False) -> dict:
    return {
        "hidden": 100,
        "jac_steps": 100,
        "jac_seeds": 1 if quick else 3,
        "train_len": 50,
        "train_steps": 500 if quick else 3000,
        "train_seeds": 1 if quick else 2,
        "lr": 0.01,
        "batch": 32,
    }


def _cells(n):
    return {
        "irnn": rnn.vanilla(n, "relu", w_hh_init="identity"),
        "tanh": rnn.vanilla(n, "tanh"),
    }


def _jacobians(config, key):
    out = {"irnn": [], "tanh": [], "active": []}
    with jax.enable_x64():
        for s in range(config["jac_seeds"]):
            k_p, k_x = jax.random.split(jax.random.fold_in(key, s))
            xs = jnp.abs(jax.random.normal(k_x, (config["jac_steps"], 2)))
            for name, cell in _cells(config["hidden"]).items():
                p = cell.init(k_p, 2)
                J = np.asarray(
                    analyze.rnn_step_jacobians(cell, p, xs, cell.init_carry())
                )
                if name == "irnn":
                    prod = np.eye(config["hidden"])
                    for j in J:
                        prod = j @ prod
                    sv = np.linalg.svd(prod, compute_uv=False)
                    out["irnn"].append(np.max(np.minimum(sv, np.abs(sv - 1))))
                    out["active"].append(np.mean(sv > 0.5))
                else:
                    lsv = analyze.log_singular_values(jnp.asarray(J), method="qr")
                    out["tanh"].append(np.asarray(lsv) / config["jac_steps"])
    return out


def _train(name, config, key):
    n, T = config["hidden"], config["train_len"]
    cell = _cells(n)[name]
    k_cell, k_out, k_run, k_test = jax.random.split(key, 4)
    params = {
        "cell": cell.init(k_cell, 2),
        "w": jax.random.normal(k_out, (n,)) / jnp.sqrt(n),
        "b": jnp.zeros(()),
    }

    def predict(p, xs):
        _, hs = rnn.unroll_batch(cell, p["cell"], xs, cell.init_carry((xs.shape[0],)))
        return hs[:, -1] @ p["w"] + p["b"]

    def data(k, step):
        t = jgrad.data.adding(k, config["batch"], T)
        return t.x, t.y

    def loss_fn(p, batch):
        return jnp.mean((predict(p, batch[0]) - batch[1]) ** 2)

    tx = optim.chain("sgd", config["lr"], clip_global_norm=1.0)
    with jax.numpy_dtype_promotion("standard"):
        res = optim.train(
            loss_fn,
            params,
            data,
            tx,
            steps=config["train_steps"],
            key=k_run,
            every=max(config["train_steps"] // 30, 1),
            progress=False,
        )
        test = jgrad.data.adding(k_test, 1000, T)
        mse = float(jnp.mean((predict(res.params, test.x) - test.y) ** 2))
    return mse, [r["loss"] for r in res.history]


def run(config: dict, key) -> Result:
    jac = _jacobians(config, jax.random.fold_in(key, 0))
    numbers = {
        "irnn_sv_distance": float(np.max(jac["irnn"])),
        "irnn_active_fraction": float(np.mean(jac["active"])),
        "tanh_log_rate": float(np.mean([r[0] for r in jac["tanh"]])),
    }
    arrays = {"tanh_log_sv_per_step": np.mean(jac["tanh"], 0)}
    for name in ("irnn", "tanh"):
        mses, curves = [], []
        for s in range(config["train_seeds"]):
            mse, curve = _train(name, config, jax.random.fold_in(key, 100 + s))
            mses.append(mse)
            curves.append(curve)
        numbers[f"{name}_test_mse"] = float(np.mean(mses))
        arrays[f"{name}_loss"] = np.mean(curves, 0)
    numbers["tanh_minus_irnn_mse"] = numbers["tanh_test_mse"] - numbers["irnn_test_mse"]
    steps = config["train_steps"]
    arrays["steps"] = np.arange(1, len(arrays["irnn_loss"]) + 1) * max(steps // 30, 1)
    return Result(numbers, arrays)


def plot(result: Result, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jgrad.experiments import save_figure

    n = result.numbers
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    rates = result.arrays["tanh_log_sv_per_step"]
    a.plot(np.arange(1, len(rates) + 1), rates, ".", color="#D55E00", label="tanh RNN")
    a.axhline(
        0.0,
        color="#0072B2",
        label=f"IRNN (active units: {n['irnn_active_fraction']:.2f})",
    )
    a.set_xlabel("singular value index i")
    a.set_ylabel("(1/T) ln sigma_i(dh_T/dh_0)")
    a.set_title("at initialization, T = 100", fontsize=10)
    a.legend(frameon=False)
    for name, color in (("irnn", "#0072B2"), ("tanh", "#D55E00")):
        b.plot(
            result.arrays["steps"],
            result.arrays[f"{name}_loss"],
            color=color,
            label=f"{name.upper() if name == 'irnn' else 'tanh RNN'}: test MSE "
            f"{n[f'{name}_test_mse']:.3f}",
        )
    b.axhline(1 / 6, color="0.5", ls="--", lw=1, label="chance (1/6)")
    b.set_yscale("log")
    b.set_xlabel("SGD step")
    b.set_ylabel("training MSE")
    b.set_title("adding problem, T = 50", fontsize=10)
    b.legend(frameon=False)
    fig.suptitle("Le, Jaitly & Hinton 2015: IRNN vs tanh RNN")
    try:
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)
