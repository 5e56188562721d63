"""Initializers with the ``jax.nn.initializers`` signature ``init(key, shape, dtype)``."""

from jgrad.init._critical import critical_gaussian as critical_gaussian
from jgrad.init._critical import critical_orthogonal as critical_orthogonal
from jgrad.init._initializers import NAMES as NAMES
from jgrad.init._initializers import Initializer as Initializer
from jgrad.init._initializers import constant as constant
from jgrad.init._initializers import fans as fans
from jgrad.init._initializers import gaussian as gaussian
from jgrad.init._initializers import gaussian_bias as gaussian_bias
from jgrad.init._initializers import get as get
from jgrad.init._initializers import glorot_normal as glorot_normal
from jgrad.init._initializers import glorot_uniform as glorot_uniform
from jgrad.init._initializers import he_normal as he_normal
from jgrad.init._initializers import he_uniform as he_uniform
from jgrad.init._initializers import identity as identity
from jgrad.init._initializers import lecun_normal as lecun_normal
from jgrad.init._initializers import orthogonal as orthogonal
from jgrad.init._initializers import standard_uniform as standard_uniform
from jgrad.init._initializers import zeros as zeros

__all__ = [
    "NAMES",
    "Initializer",
    "constant",
    "critical_gaussian",
    "critical_orthogonal",
    "fans",
    "gaussian",
    "gaussian_bias",
    "get",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "identity",
    "lecun_normal",
    "orthogonal",
    "standard_uniform",
    "zeros",
]
