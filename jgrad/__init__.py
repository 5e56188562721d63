"""jgrad: measure, explain and cure vanishing and exploding gradients in JAX."""

__version__ = "0.1.0"

from jgrad import analyze, data, experiments, init, nn, optim, rnn, theory  # noqa: E402

__all__ = [
    "__version__",
    "analyze",
    "data",
    "experiments",
    "init",
    "nn",
    "optim",
    "rnn",
    "theory",
]
