"""Weight and bias initializers with the ``jax.nn.initializers`` signature.

Every factory returns ``init(key, shape, dtype=jnp.float32) -> Array``. For a weight of shape
``(..., fan_in_axis, fan_out_axis)`` the fans follow ``jax.nn.initializers.variance_scaling``:
``fan_in = shape[-2] * receptive_field`` and ``fan_out = shape[-1] * receptive_field`` where the
receptive field is the product of the leading axes (the kernel window of an HWIO conv kernel).

Unlike ``jax.nn.initializers.glorot_normal``/``he_normal``, the normal initializers here draw
from an untruncated Gaussian, as in the papers whose variance recursions jgrad reproduces.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from jgrad import _checks

Initializer = Callable[..., jax.Array]

__all__ = [
    "Initializer",
    "standard_uniform",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "lecun_normal",
    "orthogonal",
    "identity",
    "gaussian",
    "gaussian_bias",
    "zeros",
    "constant",
    "fans",
    "get",
    "NAMES",
]


def fans(shape: Sequence[int]) -> tuple[int, int]:
    """Returns ``(fan_in, fan_out)`` of a weight shape (see the module docstring).

    Raises:
        ValueError: if ``shape`` has fewer than two axes.
    """
    shape = _shape(shape)
    if len(shape) < 2:
        _checks._fail(
            "shape",
            "a shape with at least two axes (..., fan_in, fan_out) for a weight "
            "initializer",
            shape,
            "Use gaussian_bias/zeros/constant for biases.",
        )
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def _shape(shape: Sequence[int]) -> tuple[int, ...]:
    """``shape`` as a tuple of ints >= 1 (``np.int64`` too), else a ValueError."""
    fix = "Pass the shape of the array to create, e.g. (784, 256)."
    try:
        dims = tuple(shape)
    except TypeError:
        _checks._fail("shape", "a tuple of positive ints", shape, fix)
    if isinstance(shape, str) or any(_checks._as_int(d) is None for d in dims):
        _checks._fail("shape", "a tuple of positive ints", shape, fix)
    for d in dims:
        _checks.positive_int("shape", d, fix)
    return tuple(_checks._as_int(d) for d in dims)


def _normal(std_fn: Callable[[int, int], float]) -> Initializer:
    def init(key, shape, dtype=jnp.float32):
        _checks.prng_key("key", key)
        fan_in, fan_out = fans(shape)
        std = std_fn(fan_in, fan_out)
        # Draw in float32 and cast: bfloat16 draws are biased (mean off by ~8 standard errors
        # at (512, 1024)).
        return (std * jax.random.normal(key, tuple(shape), jnp.float32)).astype(dtype)

    return init


def _uniform(bound_fn: Callable[[int, int], float]) -> Initializer:
    def init(key, shape, dtype=jnp.float32):
        _checks.prng_key("key", key)
        fan_in, fan_out = fans(shape)
        a = bound_fn(fan_in, fan_out)
        w = jax.random.uniform(key, tuple(shape), jnp.float32, minval=-a, maxval=a)
        return jnp.clip(w.astype(dtype), -a, a)  # float32 draw, as for _normal

    return init


def standard_uniform() -> Initializer:
    """Glorot & Bengio's "standard" initialization ``U[-1/sqrt(fan_in), 1/sqrt(fan_in)]``.

    Its variance is ``1 / (3 fan_in)``, so ``fan_in * Var[W] = 1/3``: the back-propagated
    gradient variance of a tanh net in its linear regime shrinks by about 1/3 per layer.

    References:
        Glorot & Bengio, "Understanding the difficulty of training deep feedforward neural
        networks", AISTATS 2010, eq. (1).

    Examples:
        >>> import jax, jgrad
        >>> w = jgrad.init.standard_uniform()(jax.random.key(0), (4, 3))
        >>> bool((abs(w) <= 0.5).all())
        True
    """
    return _uniform(lambda fi, fo: 1.0 / math.sqrt(fi))


def glorot_normal(gain: float = 1.0) -> Initializer:
    """Glorot/Xavier normal: ``N(0, gain^2 * 2 / (fan_in + fan_out))`` (untruncated).

    References:
        Glorot & Bengio, AISTATS 2010, eq. (16) (the "normalized" variance).
    """
    gain = _checks.non_negative("gain", gain)
    return _normal(lambda fi, fo: gain * math.sqrt(2.0 / (fi + fo)))


def glorot_uniform(gain: float = 1.0) -> Initializer:
    """Glorot/Xavier uniform: ``U[-a, a]`` with ``a = gain * sqrt(6 / (fan_in + fan_out))``.

    References:
        Glorot & Bengio, AISTATS 2010, eq. (16).
    """
    gain = _checks.non_negative("gain", gain)
    return _uniform(lambda fi, fo: gain * math.sqrt(6.0 / (fi + fo)))


def _he_var(negative_slope: float, mode: str) -> Callable[[int, int], float]:
    negative_slope = _checks.real("negative_slope", negative_slope)
    _checks.choice("mode", mode, ("fan_in", "fan_out"))
    factor = 2.0 / (1.0 + negative_slope**2)

    def var(fi, fo):
        return factor / (fi if mode == "fan_in" else fo)

    return var


def he_normal(negative_slope: float = 0.0, mode: str = "fan_in") -> Initializer:
    """He/Kaiming normal: ``N(0, 2 / ((1 + a^2) fan))``, ``a`` the leaky-ReLU slope.

    Args:
        negative_slope: slope ``a`` of a leaky ReLU (0 for ReLU; the PReLU paper's gain).
        mode: ``"fan_in"`` preserves the forward variance (He et al. eq. 10), ``"fan_out"``
            the backward one (eq. 14).

    References:
        He, Zhang, Ren & Sun, "Delving Deep into Rectifiers", ICCV 2015, arXiv:1502.01852.
    """
    var = _he_var(negative_slope, mode)
    return _normal(lambda fi, fo: math.sqrt(var(fi, fo)))


def he_uniform(negative_slope: float = 0.0, mode: str = "fan_in") -> Initializer:
    """He/Kaiming uniform: ``U[-a, a]`` with the variance of :func:`he_normal`.

    References:
        He, Zhang, Ren & Sun, ICCV 2015, arXiv:1502.01852.
    """
    var = _he_var(negative_slope, mode)
    return _uniform(lambda fi, fo: math.sqrt(3.0 * var(fi, fo)))


def lecun_normal() -> Initializer:
    """LeCun normal: ``N(0, 1 / fan_in)`` (SELU's self-normalizing initialization).

    References:
        LeCun, Bottou, Orr & Mueller, "Efficient BackProp", 1998; Klambauer et al.,
        "Self-Normalizing Neural Networks", NeurIPS 2017, arXiv:1706.02515.
    """
    return _normal(lambda fi, fo: math.sqrt(1.0 / fi))


def gaussian(weight_var: float = 1.0) -> Initializer:
    """Mean-field Gaussian: ``N(0, weight_var / fan_in)`` (the papers' sigma_w^2).

    References:
        Poole et al., "Exponential expressivity in deep neural networks through transient
        chaos", NeurIPS 2016, arXiv:1606.05340; Schoenholz et al., "Deep Information
        Propagation", ICLR 2017, arXiv:1611.01232.
    """
    weight_var = _checks.non_negative("weight_var", weight_var)
    return _normal(lambda fi, fo: math.sqrt(weight_var / fi))


def orthogonal(gain: float = 1.0) -> Initializer:
    """Scaled (semi-)orthogonal matrix: ``W^T W = gain^2 I`` (or ``W W^T`` when wide).

    The weight is reshaped to ``(fan_in, shape[-1])`` (kernel windows folded into fan-in),
    drawn as the Q factor of a Gaussian matrix with the signs of R's diagonal folded in (so Q
    is Haar-distributed), and scaled by ``gain``.

    References:
        Saxe, McClelland & Ganguli, "Exact solutions to the nonlinear dynamics of learning in
        deep linear neural networks", ICLR 2014, arXiv:1312.6120; Mezzadri, "How to generate
        random matrices from the classical compact groups", 2007, arXiv:math-ph/0609050.
    """
    gain = _checks.non_negative("gain", gain)

    def init(key, shape, dtype=jnp.float32):
        _checks.prng_key("key", key)
        shape = _shape(shape)
        fans(shape)  # validates rank
        rows, cols = math.prod(shape[:-1]), shape[-1]
        n, m = max(rows, cols), min(rows, cols)
        # The draw is float32 for every dtype (the same Haar sample), the QR in the
        # wider of float32 and dtype, so a float64 weight is orthogonal to float64's
        # rounding, not float32's.
        a = jax.random.normal(key, (n, m), jnp.float32)
        if jnp.finfo(dtype).bits > 32:
            a = a.astype(dtype)
        q, r = jnp.linalg.qr(a)
        q = q * jnp.sign(jnp.diagonal(r))[None, :]
        if rows < cols:
            q = q.T
        return (gain * q).reshape(shape).astype(dtype)

    return init


def identity(gain: float = 1.0) -> Initializer:
    """``gain * I`` (rectangular identity when not square), the IRNN recurrent init.

    References:
        Le, Jaitly & Hinton, "A Simple Way to Initialize Recurrent Networks of Rectified
        Linear Units", 2015, arXiv:1504.00941.
    """
    gain = _checks.real("gain", gain)

    def init(key, shape, dtype=jnp.float32):
        del key
        shape = _shape(shape)
        if len(shape) != 2:
            _checks._fail(
                "shape",
                "2-D (in, out) for the identity initializer",
                shape,
                "Use orthogonal() for other shapes.",
            )
        return gain * jnp.eye(shape[0], shape[1], dtype=dtype)

    return init


def gaussian_bias(bias_var: float = 0.0) -> Initializer:
    """Bias ``N(0, bias_var)`` (the mean-field sigma_b^2); exactly zero when ``bias_var=0``."""
    bias_var = _checks.non_negative("bias_var", bias_var)

    def init(key, shape, dtype=jnp.float32):
        shape = _shape(shape)
        if bias_var == 0.0:
            return jnp.zeros(shape, dtype)
        _checks.prng_key("key", key)
        b = math.sqrt(bias_var) * jax.random.normal(key, shape, jnp.float32)
        return b.astype(dtype)

    return init


def zeros() -> Initializer:
    """All zeros (biases)."""
    return constant(0.0)


def constant(value: float) -> Initializer:
    """Every entry equal to ``value``, a finite real (biases, e.g. an LSTM forget-gate
    bias)."""
    value = _checks.real("value", value)

    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.full(_shape(shape), value, dtype)

    return init


# Names `jgrad.nn.mlp`/`dense` accept for `init`; those marked True take their scale from
# `weight_var` (gaussian: variance weight_var/fan_in; orthogonal/identity: gain sqrt(weight_var)).
_BY_NAME: dict[str, tuple[Callable[..., Initializer], bool]] = {
    "gaussian": (lambda v: gaussian(v), True),
    "orthogonal": (lambda v: orthogonal(math.sqrt(v)), True),
    "identity": (lambda v: identity(math.sqrt(v)), True),
    "standard_uniform": (lambda v: standard_uniform(), False),
    "glorot_normal": (lambda v: glorot_normal(), False),
    "glorot_uniform": (lambda v: glorot_uniform(), False),
    "he_normal": (lambda v: he_normal(), False),
    "he_uniform": (lambda v: he_uniform(), False),
    "lecun_normal": (lambda v: lecun_normal(), False),
}

NAMES = tuple(_BY_NAME)


def get(name: str | Initializer, *, weight_var: float | None = None) -> Initializer:
    """Looks up a weight initializer by name (or passes an initializer function through).

    Args:
        name: one of :data:`NAMES` or a function ``(key, shape, dtype) -> Array``.
        weight_var: scale for ``"gaussian"`` (variance ``weight_var / fan_in``, default 1)
            and ``"orthogonal"``/``"identity"`` (gain ``sqrt(weight_var)``, default 1). The
            other names fix their own variance, so ``weight_var`` must be left unset.

    Raises:
        ValueError: unknown name, or ``weight_var`` given with an initializer that ignores it
            (a name that fixes its own variance, or a function).
    """
    if callable(name):
        if weight_var is not None:
            _checks._fail(
                "weight_var",
                "None with an initializer function, which sets its own scale",
                weight_var,
                "Drop weight_var, or scale inside the function (e.g. "
                "jgrad.init.gaussian(2.0)).",
            )
        return name
    _checks.choice("init", name, NAMES)
    factory, uses_var = _BY_NAME[name]
    if weight_var is not None and not uses_var:
        _checks._fail(
            "weight_var",
            f"None with init={name!r}, which fixes its own variance (weight_var scales "
            "init='gaussian', 'orthogonal' or 'identity' only)",
            weight_var,
            "Drop weight_var, or use init='gaussian' to set the variance yourself.",
        )
    v = 1.0 if weight_var is None else _checks.non_negative("weight_var", weight_var)
    return factory(v)
