"""Generated tasks (adding, copy, temporal order) and the digits split: structure,
targets recomputed by a Python loop, chance-level losses by simulation, bad input."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from jgrad import data


def test_adding_targets_markers_and_chance_level(getkey):
    task = data.adding(getkey(), 64, 20)
    x, y = np.asarray(task.x), np.asarray(task.y)
    assert x.shape == (64, 20, 2) and y.shape == (64,)
    for i in range(64):  # a Python loop over each sequence
        marked = np.flatnonzero(x[i, :, 1])
        assert len(marked) == 2 and marked[0] < 10 <= marked[1]
        np.testing.assert_allclose(y[i], x[i, marked, 0].sum(), rtol=1e-6)
    big = data.adding(getkey(), 100_000, 8)
    mse = float(jnp.mean((big.y - 1.0) ** 2))
    assert abs(mse - big.chance_loss) < 0.003 and big.chance_loss == pytest.approx(
        1 / 6
    )


def test_copy_layout_and_memoryless_cross_entropy(getkey):
    T, L, K = 30, 10, 8
    task = data.copy_task(getkey(), 16, T)
    x, y = np.asarray(task.x), np.asarray(task.y)
    assert x.shape == (16, T + 2 * L, K + 2) and y.shape == (16, T + 2 * L)
    tokens = x.argmax(-1)
    np.testing.assert_array_equal(y[:, T + L :], tokens[:, :L])  # recall = the symbols
    assert np.all(y[:, : T + L] == 0) and np.all(tokens[:, T + L - 1] == K + 1)
    assert np.all((tokens[:, :L] >= 1) & (tokens[:, :L] <= K))
    # the memoryless predictor: blank before the recall, uniform over symbols during it
    logp = np.full((T + 2 * L, K + 2), -np.inf)
    logp[: T + L, 0] = 0.0
    logp[T + L :, 1 : K + 1] = -np.log(K)
    ce = -np.mean(np.take_along_axis(logp[None], y[..., None], -1))
    assert ce == pytest.approx(task.chance_loss, abs=1e-12)
    assert task.chance_loss == pytest.approx(10 * math.log(8) / (T + 20), abs=1e-12)


def test_temporal_order_positions_and_classes(getkey):
    T = 100
    task = data.temporal_order(getkey(), 256, T)
    tokens = np.asarray(task.x).argmax(-1)
    y = np.asarray(task.y)
    for i in range(256):
        pos = np.flatnonzero(tokens[i] >= 4)
        assert len(pos) == 2 and 10 <= pos[0] < 20 and 40 <= pos[1] < 50
        first, second = tokens[i, pos] - 4
        assert y[i] == 2 * first + second
    counts = np.bincount(y, minlength=4)
    assert counts.min() > 40  # the four classes about equally often (64 expected)
    assert task.chance_loss == pytest.approx(np.log(4))


def test_generation_is_keyed_and_jitted(getkey):
    key = getkey()
    a, b = data.adding(key, 8, 12), data.adding(key, 8, 12)
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.array_equal(a.x, data.adding(getkey(), 8, 12).x)


@pytest.mark.parametrize(
    ("fn", "kwargs", "match"),
    [
        (data.adding, dict(n=4, seq_len=1), "`seq_len` must be >= 2"),
        (data.copy_task, dict(n=4, seq_len=0), "`seq_len` must be >= 2"),
        (data.temporal_order, dict(n=4, seq_len=5), "`seq_len` must be >= 10"),
        (data.adding, dict(n=0, seq_len=10), "`n`"),
        (data.adding, dict(n=4, seq_len=2.5), "`seq_len`"),
        (data.copy_task, dict(n=4, seq_len=10, length=0), "`length`"),
    ],
)
def test_bad_input(fn, kwargs, match, getkey):
    with pytest.raises(ValueError, match=match):
        fn(getkey(), **kwargs)
    with pytest.raises(ValueError, match="`key`"):
        fn(0, 4, 10)


def test_digits_split_is_fixed_disjoint_and_covering():
    full = data.digits(flat=True)
    train, test = (
        data.digits(flat=True, split="train"),
        data.digits(flat=True, split="test"),
    )
    assert len(train.y) == 1437 and len(test.y) == 360
    rows = {r.tobytes() for r in full.x}
    assert {r.tobytes() for r in train.x} | {r.tobytes() for r in test.x} <= rows
    np.testing.assert_array_equal(train.x, data.digits(flat=True, split="train").x)
    assert sorted(np.concatenate([train.y, test.y]).tolist()) == sorted(full.y.tolist())
    with pytest.raises(ValueError, match="`split`"):
        data.digits(split="valid")


def test_sequential_digits_read_pixels_in_order_or_one_fixed_permutation():
    flat = data.digits(flat=True, split="test")
    seq = data.sequential_digits(split="test")
    perm = data.sequential_digits(split="test", permute=True)
    assert seq.x.shape == perm.x.shape == (360, 64, 1)
    np.testing.assert_array_equal(seq.x[..., 0], flat.x)
    np.testing.assert_array_equal(
        perm.x, data.sequential_digits(split="test", permute=True).x
    )
    # the same pixels, as columns, in another order
    cols = sorted(c.tobytes() for c in flat.x.T)
    assert sorted(c.tobytes() for c in perm.x[..., 0].T) == cols
    assert not np.array_equal(perm.x, seq.x)
