"""Per-layer gradient norms in training metrics: ``param_grad_norms`` and the leaf norms
of every row, ``jgrad.optim.record_layers`` (the analyzers' log-space norms), against
plain ``jax.grad`` in float64; the divergence report; the PRNG key in checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad
from jgrad import optim


@pytest.fixture(autouse=True)
def _standard_promotion():
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        yield


def _setup():
    net = jgrad.nn.mlp(2, 12, activation="tanh", out_dim=3)
    _, params = net.init(jax.random.key(0), (6,))
    w = jax.random.normal(jax.random.key(5), (6, 3))

    def data(key, step):
        x = jax.random.normal(key, (16, 6))
        return x, jnp.sin(x @ w)

    def loss(y, batch):
        return jnp.mean((y - batch[1]) ** 2)

    def loss_fn(p, batch):
        return loss(net.apply(p, batch[0]), batch)

    return net, params, data, loss, loss_fn


def _norm64(tree):
    return np.sqrt(
        sum(np.sum(np.asarray(v, np.float64) ** 2) for v in jax.tree.leaves(tree))
    )


def test_rows_hold_leaf_and_layer_norms_of_the_gradient():
    net, params, data, loss, loss_fn = _setup()
    key = jax.random.key(3)
    res = optim.train(
        loss_fn,
        params,
        data,
        optim.chain("sgd", 0.1),
        steps=1,
        key=key,
        progress=False,
    )
    row = res.history[0]
    g = jax.grad(loss_fn)(params, data(jax.random.fold_in(key, 0), 0))
    flat = jax.tree_util.tree_flatten_with_path(g)[0]
    assert list(row["leaf_grad_norms"]) == [jax.tree_util.keystr(p) for p, _ in flat]
    for (path, v), got in zip(flat, row["leaf_grad_norms"].values(), strict=True):
        np.testing.assert_allclose(got, _norm64(v), rtol=1e-5)
    layers = {f"[{k}]": _norm64(v) for k, v in enumerate(g)}
    with_params = [f"[{k}]" for k, v in enumerate(g) if jax.tree.leaves(v)]
    assert list(row["param_grad_norms"]) == with_params
    for name, got in row["param_grad_norms"].items():
        np.testing.assert_allclose(got, layers[name], rtol=1e-5)
    np.testing.assert_allclose(
        np.sqrt(sum(v**2 for v in row["param_grad_norms"].values())),
        row["grad_norm"],
        rtol=1e-5,
    )


def test_record_layers_equals_float64_autodiff_at_each_layer():
    net, params, data, loss, loss_fn = _setup()
    key = jax.random.key(4)
    res = optim.train(
        loss_fn,
        params,
        data,
        optim.chain("sgd", 0.1),
        steps=2,
        key=key,
        every=2,
        record_fn=optim.record_layers(net, loss),
        record_every=2,
        progress=False,
    )
    row = res.history[-1]
    # recorded after step 2: the final params, the batch of step index 1
    p64 = jax.tree.map(lambda v: np.asarray(v, np.float64), res.params)
    x, y = (np.asarray(v, np.float64) for v in data(jax.random.fold_in(key, 1), 1))
    with jax.enable_x64():
        layers = jgrad.analyze.net_layers(net)
        hs = [jnp.asarray(x)]
        for layer, p in zip(layers, p64, strict=True):
            hs.append(layer.apply(p, hs[-1]))

        def from_k(k, h, p):
            for layer, pk in zip(layers[k:], p[k:], strict=True):
                h = layer.apply(pk, h)
            return jnp.mean((h - y) ** 2)

        want_h = [
            np.log10(_norm64(jax.grad(from_k, 1)(k, hs[k], p64)))
            for k in range(len(layers) + 1)
        ]
        gp = jax.grad(lambda p: from_k(0, jnp.asarray(x), p))(p64)
    want_p = [np.log10(_norm64(v)) if jax.tree.leaves(v) else -np.inf for v in gp]
    np.testing.assert_allclose(row["log10_layer_grad_norms"], want_h, atol=2e-5)
    np.testing.assert_allclose(row["log10_layer_param_grad_norms"], want_p, atol=2e-5)
    assert row["nonfinite_forward_layer"] == row["nonfinite_backward_layer"] == -1


def test_divergence_names_every_bad_leaf_and_where_the_layers_went_nonfinite():
    net, params, data, loss, loss_fn = _setup()

    def poisoned(key, step):
        x, y = data(key, step)
        return (jnp.where(step == 2, x.at[0, 0].set(jnp.nan), x), y)

    res = optim.train(
        loss_fn,
        params,
        poisoned,
        optim.chain("sgd", 0.1),
        steps=5,
        key=jax.random.key(0),
        every=1,
        record_fn=optim.record_layers(net, loss),
        record_every=10,
        progress=False,
    )
    d = res.divergence
    assert d.step == 3 and d.leaf == "[0]['b']"
    assert d.leaves == [k for k in res.history[0]["leaf_grad_norms"]]
    assert d.record["nonfinite_forward_layer"] == 0  # the input held the NaN
    with pytest.raises(ValueError, match="`inputs` must be a function"):
        optim.record_layers(net, loss, inputs=3)


def test_checkpoints_hold_the_key_and_resuming_with_another_is_refused(tmp_path):
    net, params, data, loss, loss_fn = _setup()
    tx = optim.chain("sgd", 0.1)
    kw = dict(out=tmp_path, progress=False)
    optim.train(loss_fn, params, data, tx, steps=2, key=jax.random.key(1), **kw)
    with pytest.raises(ValueError, match="`key`.*another PRNG key"):
        optim.train(
            loss_fn, params, data, tx, steps=4, key=jax.random.key(2), resume=True, **kw
        )
    res = optim.train(
        loss_fn, params, data, tx, steps=4, key=jax.random.key(1), resume=True, **kw
    )
    assert res.step == 4 and [r["step"] for r in res.history][-1] == 4
