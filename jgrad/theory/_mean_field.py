"""Mean-field theory of deep fully connected networks at initialization.

A layer ``h^l = W^l phi(h^{l-1}) + b^l`` with ``W_ij ~ N(0, weight_var / N)`` and
``b_i ~ N(0, bias_var)`` maps the length ``q^l = E[(h_i^l)^2]`` by the length map
``q -> weight_var E[phi(sqrt(q) z)^2] + bias_var`` and the correlation of two inputs by the
correlation map ``c -> (weight_var E[phi(u1) phi(u2)] + bias_var) / q*`` (Poole et al.
2016). At the fixed point q*:

- ``chi1 = weight_var E[phi'(sqrt(q*) z)^2]`` is the per-layer growth of the squared
  gradient norm and of the mean squared singular value of the layer Jacobian; the
  network is ordered (gradients vanish) for chi1 < 1, chaotic (they explode) for chi1 > 1;
- ``chi_c = weight_var E[phi'(u1) phi'(u2)]`` at the correlation fixed point c*;
- the depth scales ``xi_q = -1 / log V'(q*)`` and ``xi_c = -1 / log chi_c`` over which
  lengths and correlations approach their fixed points (Schoenholz et al. 2017); a
  network trains when its depth is below about 6 xi_c.

Fixed points are found by bisection to a relative tolerance (plain iteration converges
only like 1/t at criticality), everything is jit- and vmap-able over the variances, and
arrays of variances are broadcast. Precision is the variances' dtype (float32 by default,
float64 under ``jax.enable_x64``).

References:
    Poole et al., "Exponential expressivity in deep neural networks through transient
    chaos", NeurIPS 2016, arXiv:1606.05340. Schoenholz et al., "Deep Information
    Propagation", ICLR 2017, arXiv:1611.01232.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jgrad import _checks
from jgrad.theory._gauss import hermite_rule
from jgrad.theory._kernels import Kernels, kernels

__all__ = [
    "MeanField",
    "c_fixed_point",
    "chi1",
    "correlation_map",
    "critical_weight_var",
    "depth_scales",
    "length_map",
    "mean_field",
    "q_fixed_point",
]

_Q_LO, _Q_HI = 1e-30, 1e30


class MeanField(NamedTuple):
    """Mean-field quantities at one (or, broadcast, every) ``(weight_var, bias_var)``.

    Attributes:
        q_star: the stable fixed point of the length map; 0 when lengths decay to 0
            (bias_var = 0, ordered); ``inf`` when lengths grow without bound (no fixed
            point: ``has_fixed_point`` False); NaN when every q is a fixed point
            (``marginal``: ReLU at weight_var 2, bias_var 0).
        c_star: the stable fixed point of the correlation map (1 in the ordered phase
            and at criticality).
        chi1: ``weight_var E[phi'(sqrt(q*) z)^2]``. For ReLU, leaky ReLU and the identity
            it does not depend on q* and is given even without a fixed point; otherwise
            NaN there.
        chi_c: ``weight_var E[phi'(u1) phi'(u2)]`` at (q*, c*); equals chi1 when c* = 1.
        xi_q: depth scale of the lengths, ``-1 / log V'(q*)``.
        xi_c: depth scale of the correlations, ``-1 / log chi_c``; ``inf`` at criticality.
        has_fixed_point: the length map has a finite stable fixed point (or a line of
            them).
        marginal: every q is a fixed point.
    """

    q_star: jax.Array
    c_star: jax.Array
    chi1: jax.Array
    chi_c: jax.Array
    xi_q: jax.Array
    xi_c: jax.Array
    has_fixed_point: jax.Array
    marginal: jax.Array

    @property
    def trainable_depth(self) -> jax.Array:
        """About 6 xi_c: the depth up to which such networks train (Schoenholz et al.)."""
        return 6.0 * self.xi_c

    def jacobian_msv(self, depth) -> jax.Array:
        """The mean squared singular value of the input-output Jacobian after ``depth``
        layers, ``chi1 ** depth`` (Pennington et al. 2017)."""
        return self.chi1 ** jnp.asarray(depth, self.chi1.dtype)

    def phase(self, tol: float = 1e-6) -> np.ndarray:
        """``"ordered"`` (chi1 < 1 - tol), ``"critical"`` or ``"chaotic"`` (> 1 + tol),
        an array of strings shaped like chi1 (``"unbounded"`` without a fixed point)."""
        chi = np.asarray(self.chi1, np.float64)
        out = np.where(
            chi < 1 - tol, "ordered", np.where(chi > 1 + tol, "chaotic", "critical")
        )
        return np.where(np.asarray(self.has_fixed_point), out, "unbounded")


# --- validation (eager, concrete values only) ----------------------------------------


def _variance(name: str, value):
    if isinstance(value, jax.core.Tracer):
        return value
    a = np.asarray(value)
    if a.dtype.kind not in "fiu" or a.size == 0:
        _checks._fail(
            name,
            "a non-negative float (or a non-empty array of them)",
            value,
            f"Pass e.g. {name}=1.5.",
        )
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        bad = a[~(np.isfinite(a) & (a >= 0))].ravel()[0]
        _checks._fail(
            name,
            "finite and >= 0 (a variance)",
            float(bad),
            f"Pass a non-negative {name}, e.g. {name}=1.5.",
        )
    return value


def _degree(degree) -> int | None:
    if degree is None:
        return None
    hermite_rule(degree)  # validates: a positive even integer
    return int(degree)


def _floats(*xs):
    arrs = [jnp.asarray(x) for x in xs]
    dtype = jnp.result_type(*arrs)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.float32
    return [a.astype(dtype) for a in arrs]


# --- root finding ---------------------------------------------------------------------


def _bisect(g, lo, hi, *, geometric: bool):
    """A root of g in [lo, hi] given g(lo) > 0 >= g(hi), to the dtype's precision."""
    eps = jnp.finfo(lo.dtype).eps

    def cond(s):
        lo, hi, i = s
        return (i < 300) & (hi - lo > 4 * eps * jnp.abs(hi))

    def body(s):
        lo, hi, i = s
        mid = jnp.sqrt(lo * hi) if geometric else 0.5 * (lo + hi)
        mid = jnp.clip(mid, lo, hi)
        up = g(mid) > 0
        stuck = (mid == lo) | (mid == hi)
        lo2 = jnp.where(up, mid, lo)
        hi2 = jnp.where(up, hi, mid)
        return lo2, hi2, jnp.where(stuck, 300, i + 1)

    lo, hi, _ = lax.while_loop(cond, body, (lo, hi, jnp.int32(0)))
    return 0.5 * (lo + hi)


def _q_star(kern: Kernels, wv, bv):
    """(q*, has_fixed_point, marginal)."""
    dtype = wv.dtype
    if kern.slope is not None:  # V(q) = wv p q + bv
        a = wv * kern.slope
        marginal = (a == 1) & (bv == 0)
        stable = a < 1
        q = jnp.where(stable, bv / jnp.where(stable, 1 - a, 1), jnp.inf)
        q = jnp.where(marginal, jnp.nan, q)
        return q, stable | marginal, marginal

    def g(q):
        return wv * kern.v(q) + bv - q

    lo = jnp.asarray(_Q_LO, dtype)

    def grow(hi):
        return jnp.where(g(hi) > 0, hi * 16, hi)

    hi = lax.while_loop(
        lambda h: (g(h) > 0) & (h < _Q_HI),
        grow,
        jnp.maximum(jnp.asarray(1.0, dtype), 2 * (wv + bv)),
    )
    bounded = g(hi) <= 0
    positive = g(lo) > 0
    root = _bisect(g, lo, jnp.where(bounded, hi, 2 * lo), geometric=True)
    q = jnp.where(positive, root, 0.0)
    q = jnp.where(bounded, q, jnp.inf)
    return q, bounded, jnp.zeros((), bool)


def _chi1(kern: Kernels, wv, q):
    if kern.slope is not None:
        return wv * kern.slope
    return wv * kern.dv(jnp.where(jnp.isfinite(q), q, 1.0))


def _c_star(kern: Kernels, wv, bv, q, chi):
    """The stable fixed point of the correlation map: 1 unless chi1 > 1."""
    dtype = wv.dtype
    one = jnp.asarray(1.0, dtype)
    qs = jnp.where(jnp.isfinite(q) & (q > 0), q, 1.0)

    def g(c):
        return (wv * kern.k(qs, c) + bv) / qs - c

    top = one - jnp.sqrt(jnp.finfo(dtype).eps)
    chaotic = (chi > 1) & (g(top) < 0)
    root = _bisect(g, jnp.asarray(0.0, dtype), top, geometric=False)
    return jnp.where(chaotic, root, one)


def _scale(x):
    """-1 / log x: inf at x = 1 (and above)."""
    return jnp.where(x < 1, -1.0 / jnp.log(x), jnp.inf)


def _core(kern: Kernels, wv, bv) -> MeanField:
    q, has, marginal = _q_star(kern, wv, bv)
    # a homogeneous activation's maps do not depend on q when bias_var = 0: any q
    # stands for the line of fixed points
    q_use = jnp.where(marginal, 1.0, q)
    finite = jnp.isfinite(q_use)
    chi = _chi1(kern, wv, q_use)
    if kern.slope is None:
        chi = jnp.where(finite, chi, jnp.nan)
    c = _c_star(kern, wv, bv, q_use, chi)
    qs = jnp.where(finite & (q_use > 0), q_use, 1.0)
    chi_c = jnp.where(c < 1, wv * kern.kd(qs, c), chi)
    dv_q = jax.grad(lambda q: wv * kern.v(q))(jnp.maximum(qs, 1e-12))
    nan = jnp.asarray(jnp.nan, wv.dtype)
    return MeanField(
        q,
        jnp.where(finite, c, nan),
        chi,
        jnp.where(finite, chi_c, nan),
        jnp.where(finite, _scale(dv_q), nan),
        jnp.where(finite, _scale(chi_c), nan),
        has,
        marginal,
    )


def _chi1_only(kern: Kernels, wv, bv):
    q, has, _ = _q_star(kern, wv, bv)
    chi = _chi1(kern, wv, q)
    return chi if kern.slope is not None else jnp.where(has, chi, jnp.nan)


@functools.lru_cache(maxsize=64)
def _compiled(kern: Kernels, what: str):
    fns = {
        "mean_field": lambda w, b: _core(kern, w, b),
        "q": lambda w, b: _q_star(kern, w, b)[0],
        "chi1": lambda w, b: _chi1_only(kern, w, b),
        "critical": lambda b: _critical(kern, b),
    }
    return jax.jit(jnp.vectorize(fns[what]))


def _evaluate(what, activation, weight_var, bias_var, degree, quadrature):
    """Validates the arguments (before tracing) and runs the compiled ``what``."""
    kern = _kern(activation, degree, quadrature)
    w, b = _floats(_variance("weight_var", weight_var), _variance("bias_var", bias_var))
    return _compiled(kern, what)(w, b)


def _kern(activation, degree, quadrature):
    degree = _degree(degree)
    _checks.boolean("quadrature", quadrature)
    return kernels(activation, degree=degree, quadrature=quadrature)


def mean_field(
    activation,
    weight_var,
    bias_var,
    *,
    degree: int | None = None,
    quadrature: bool = False,
) -> MeanField:
    """Every mean-field quantity at ``(weight_var, bias_var)`` (broadcast together).

    Args:
        activation: a name (``"tanh"``, ``"relu"``, ``"erf"``, ...) or a
            ``jgrad.nn.Activation``.
        weight_var: sigma_w^2 (weights ``N(0, weight_var / fan_in)``), >= 0.
        bias_var: sigma_b^2, >= 0.
        degree: Gauss-Hermite nodes per dimension (even), for activations without
            closed forms; None: 128 in float32, 256 in float64
            (``jgrad.theory.default_degree``).
        quadrature: use quadrature even where closed forms exist (ReLU, leaky ReLU,
            identity, erf), e.g. to check one against the other.

    Returns:
        A :class:`MeanField`, each field shaped like the broadcast variances.

    Raises:
        ValueError: an unknown activation (the valid names listed), a negative or
            non-finite variance, an odd or non-positive ``degree``.

    Examples:
        >>> import jgrad
        >>> mf = jgrad.theory.mean_field("tanh", 1.0, 0.0)  # critical
        >>> round(float(mf.chi1), 6), mf.phase().item()
        (1.0, 'critical')
        >>> round(float(jgrad.theory.mean_field("relu", 1.5, 0.1).q_star), 6)
        0.4
    """
    return _evaluate("mean_field", activation, weight_var, bias_var, degree, quadrature)


def q_fixed_point(
    activation,
    weight_var,
    bias_var,
    *,
    degree: int | None = None,
    quadrature: bool = False,
) -> jax.Array:
    """q*, the stable fixed point of the length map (see :class:`MeanField`:
    0, ``inf`` without a fixed point, NaN when marginal)."""
    return _evaluate("q", activation, weight_var, bias_var, degree, quadrature)


def chi1(
    activation,
    weight_var,
    bias_var,
    *,
    degree: int | None = None,
    quadrature: bool = False,
) -> jax.Array:
    """chi_1 = weight_var E[phi'(sqrt(q*) z)^2]: the per-layer growth of the squared
    gradient norm (< 1 ordered, > 1 chaotic).

    Examples:
        >>> import jgrad
        >>> float(jgrad.theory.chi1("relu", 3.0, 0.5))  # weight_var / 2, any bias_var
        1.5
    """
    return _evaluate("chi1", activation, weight_var, bias_var, degree, quadrature)


def c_fixed_point(
    activation,
    weight_var,
    bias_var,
    *,
    degree: int | None = None,
    quadrature: bool = False,
) -> jax.Array:
    """c*, the stable fixed point of the correlation map (1 unless chaotic)."""
    return mean_field(
        activation, weight_var, bias_var, degree=degree, quadrature=quadrature
    ).c_star


def depth_scales(
    activation,
    weight_var,
    bias_var,
    *,
    degree: int | None = None,
    quadrature: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """(xi_q, xi_c), the depth scales of lengths and correlations (Schoenholz et al.
    2017); xi_c is ``inf`` at criticality."""
    mf = mean_field(
        activation, weight_var, bias_var, degree=degree, quadrature=quadrature
    )
    return mf.xi_q, mf.xi_c


def length_map(
    activation, weight_var, bias_var, q, *, degree: int | None = None
) -> jax.Array:
    """``weight_var E[phi(sqrt(q) z)^2] + bias_var``: q^{l+1} from q^l."""
    kern = _kern(activation, degree, False)
    w, b, q = _floats(
        _variance("weight_var", weight_var),
        _variance("bias_var", bias_var),
        _variance("q", q),
    )
    return jnp.vectorize(lambda w, b, q: w * kern.v(q) + b)(w, b, q)


def correlation_map(
    activation, weight_var, bias_var, q, c, *, degree: int | None = None
) -> jax.Array:
    """``(weight_var E[phi(u1) phi(u2)] + bias_var) / q``: the correlation of two inputs
    after one more layer, both of length q (at q = q* the map's fixed point is c*)."""
    kern = _kern(activation, degree, False)
    w, b, q, c = _floats(
        _variance("weight_var", weight_var),
        _variance("bias_var", bias_var),
        _variance("q", q),
        c,
    )
    return jnp.vectorize(lambda w, b, q, c: (w * kern.k(q, c) + b) / q)(w, b, q, c)


def _critical(kern: Kernels, bv):
    dtype = bv.dtype
    if kern.slope is not None:
        return jnp.full_like(bv, 1.0 / kern.slope)

    def g(w):
        q, has, _ = _q_star(kern, w, bv)
        return 1 - jnp.where(has, _chi1(kern, w, q), jnp.inf)

    lo, hi = jnp.asarray(1e-3, dtype), jnp.asarray(100.0, dtype)
    ok = (g(lo) > 0) & (g(hi) <= 0)
    return jnp.where(ok, _bisect(g, lo, hi, geometric=True), jnp.nan)


def critical_weight_var(
    activation, bias_var, *, degree: int | None = None, quadrature: bool = False
) -> jax.Array:
    """The weight_var at which chi1 = 1 for this bias_var: the critical line (the edge
    of chaos). ReLU 2, identity 1, leaky ReLU 2 / (1 + a^2), for every bias_var (with
    bias_var > 0 their lengths then grow without bound); NaN where none lies in
    [1e-3, 100].

    Examples:
        >>> import jgrad
        >>> round(float(jgrad.theory.critical_weight_var("tanh", 0.0)), 5)
        1.0
    """
    kern = _kern(activation, degree, quadrature)
    (b,) = _floats(_variance("bias_var", bias_var))
    return _compiled(kern, "critical")(b)
