"""Runs of identical blocks (jgrad.analyze._segments): which blocks are merged into one
lax.scan, and that every sweep gives the same numbers with and without the runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jgrad import analyze, nn
from jgrad.analyze import _segments


def _f64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


def _kinds(segs):
    return [
        ("run", s.hs.shape[0]) if isinstance(s, _segments.Run) else "block"
        for s in segs
    ]


def _segs(net, params, x, cut=None, key=None, train=False):
    return _segments.segments(
        net, params, x, blocks=True, train=train, key=key, cut=cut
    )[0]


def test_identical_blocks_form_one_run_and_the_cut_splits_it(getkey):
    net = nn.mlp(10, 6, activation="tanh", out_dim=3)
    _, params = net.init(getkey(), (4,))
    x = jax.random.normal(getkey(), (4,))
    # block 0 maps 4 -> 6 (its own), blocks 1..9 repeat, the readout 6 -> 3 is single
    assert _kinds(_segs(net, params, x)) == ["block", ("run", 9), "block"]
    segs = _segs(net, params, x, cut=7)
    assert _kinds(segs) == ["block", ("run", 6), ("run", 3), "block"]
    tail = _segments.segments(
        net, params, x, blocks=True, train=False, key=None, cut=7, single_after_cut=True
    )[0]
    assert _kinds(tail) == ["block", ("run", 6)] + ["block"] * 4
    before, after = _segments.split_at(segs, 7)
    assert len(before) == 2 and len(after) == 2
    with pytest.raises(ValueError, match="boundary"):
        _segments.split_at(segs, 3)
    # the last block always stays single, even when it repeats the others
    net2 = nn.mlp(5, 6, activation="tanh")
    _, p2 = net2.init(getkey(), (6,))
    assert _kinds(_segs(net2, p2, x[:1].repeat(6))) == [("run", 4), "block"]


@pytest.mark.slow
def test_blocks_that_differ_are_not_merged(getkey):
    # different activations, a width change, and functions closing over different
    # constant arrays (the same code, so only the constants tell them apart)
    def blk(act, w):
        return nn.serial(nn.dense(w), nn.elementwise(act))

    net = [blk("tanh", 5)] * 3 + [blk("relu", 5)] * 3 + [blk("tanh", 4)] * 3
    params = [
        b.init(k, (5,) if i < 7 else (4,))[1]
        for i, (b, k) in enumerate(zip(net, jax.random.split(getkey(), 9), strict=True))
    ]
    x = jax.random.normal(getkey(), (5,))
    assert _kinds(_segs(net, params, x)) == [
        ("run", 3),
        ("run", 3),
        "block",
        "block",
        "block",
    ]

    masks = [jax.random.uniform(k, (5,)) for k in jax.random.split(getkey(), 4)]
    fns = [lambda p, v, m=m: jnp.tanh(p @ v) * m for m in masks]
    ws = [jax.random.normal(k, (5, 5)) for k in jax.random.split(getkey(), 4)]
    assert all(k == "block" for k in _kinds(_segs(fns, ws, x)))
    same = [lambda p, v, m=masks[0]: jnp.tanh(p @ v) * m] * 4
    assert _kinds(_segs(same, ws, x)) == [("run", 3), "block"]

    # and the sweep over the un-merged functions is right (jacrev of the composition)
    def f(v):
        for fn, w in zip(fns, ws, strict=True):
            v = fn(w, v)
        return v

    sweep = analyze.output_sweep(fns, ws, x).products
    np.testing.assert_allclose(sweep[0].value(), jax.jacrev(f)(x), rtol=2e-5, atol=1e-6)


NETS = [
    dict(depth=9, width=6, activation="tanh", weight_var=1.7, bias_var=0.1, out_dim=3),
    dict(depth=8, width=5, activation="gelu", residual=True, norm="layer"),
    dict(depth=7, width=5, activation="relu", init="he_normal", drop_prob=0.2),
]


@pytest.mark.parametrize(
    "kw",
    [pytest.param(kw, marks=pytest.mark.slow) for kw in NETS[:2]] + NETS[2:],
)
def test_every_sweep_is_the_same_with_and_without_runs(kw, getkey, monkeypatch):
    """Runs (lax.scan over stacked params, with the linearizations stored by the forward
    scan, and re-linearizing each block instead) against the unrolled per-block
    linearization, in float64: output_sweep, output_spectra,
    input_output_spectrum, output_norms exact and matrix-free (Lanczos tail across a
    run boundary, dropout keys stacked)."""
    with jax.enable_x64(True):
        net = nn.mlp(**kw)
        _, params = net.init(getkey(), (5,))
        params = _f64(params)
        x = jax.random.normal(getkey(), (5,), jnp.float64)
        key, dkey = getkey(), getkey()
        train = "drop_prob" in kw

        def run_all(x):
            kws = dict(train=train, key=dkey) if train else {}
            return (
                [
                    p.value()
                    for p in analyze.output_sweep(net, params, x, **kws).products
                ],
                analyze.output_spectra(net, params, x, **kws).log_sv,
                analyze.input_output_spectrum(net, params, x, **kws).log_sv,
                analyze.output_norms(
                    net,
                    params,
                    x,
                    probe_key=key,
                    max_lanczos_steps=4,
                    min_lanczos_steps=2,
                    **kws,
                ),
                analyze.output_norms(
                    net,
                    params,
                    x,
                    method="matrix_free",
                    probe_key=key,
                    block_size=1,
                    krylov_steps=1,
                    probes=3,
                    lanczos_products=4,
                    lanczos_steps=3,
                    **kws,
                ),
            )

        segs = _segments.segments(
            net, params, x, blocks=True, train=train, key=dkey if train else None
        )[0]
        assert any(isinstance(s, _segments.Run) for s in segs)
        assert all(s.lin is not None for s in segs if isinstance(s, _segments.Run))
        with_runs = jax.jit(run_all)(x)  # linearizations stored by the forward scan
        monkeypatch.setattr(_segments, "STORE_LINEARIZATION", False)
        relinearized = jax.jit(run_all)(x)  # every sweep step re-linearizes its block
        monkeypatch.setattr(_segments, "MIN_RUN", 10**9)
        unrolled = jax.jit(run_all)(x)
        for other in (relinearized, unrolled):
            for a, b in zip(
                jax.tree.leaves(with_runs), jax.tree.leaves(other), strict=True
            ):
                np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_program_size_does_not_grow_with_depth(getkey):
    """The program of the estimator (and of the exact spectra) has the same matrix
    products, loops and decompositions at depth 48 and 96 (both beyond the estimator's
    default ``krylov_products``, 32): the sweeps scan the repeated blocks, so compile
    time no longer grows with depth (only the stacking of the params does, one operand
    per layer)."""

    def size(depth, fn):
        net = nn.mlp(depth, 8, activation="tanh")
        _, params = net.init(getkey(), (8,))
        x = jax.random.normal(getkey(), (8,))
        lowered = jax.jit(lambda p, x: fn(net, p, x)).lower(params, x)
        text = lowered.as_text()
        ops = ("stablehlo.dot_general", "stablehlo.while", "custom_call", "tanh")
        return [text.count(op) for op in ops]

    est = lambda net, p, x: analyze.output_norms(  # noqa: E731
        net, p, x, method="matrix_free", probe_key=jax.random.key(0)
    )
    for fn in (est, analyze.output_spectra):
        small, big = size(48, fn), size(96, fn)
        assert small == big
        assert small[1] > 0  # the loops are there
