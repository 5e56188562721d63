"""Analyzers of gradient flow: exact layer-to-layer and step-to-step Jacobians, their
products in log space, singular-value spectra, Lyapunov exponents, and per-layer and
per-time-step gradient norms."""

from jgrad.analyze._grad_flow import GradFlow as GradFlow
from jgrad.analyze._grad_flow import layer_grad_norms as layer_grad_norms
from jgrad.analyze._grad_flow import net_layers as net_layers
from jgrad.analyze._jacobians import Jacobians as Jacobians
from jgrad.analyze._jacobians import jacobian as jacobian
from jgrad.analyze._jacobians import layer_jacobians as layer_jacobians
from jgrad.analyze._logspace import LogMatrix as LogMatrix
from jgrad.analyze._products import SpectrumStats as SpectrumStats
from jgrad.analyze._products import input_products as input_products
from jgrad.analyze._products import jacobian_product as jacobian_product
from jgrad.analyze._products import log_abs_det as log_abs_det
from jgrad.analyze._products import log_singular_values as log_singular_values
from jgrad.analyze._products import output_products as output_products
from jgrad.analyze._products import spectrum_density as spectrum_density
from jgrad.analyze._products import spectrum_stats as spectrum_stats
from jgrad.analyze._rnn import PascanuBound as PascanuBound
from jgrad.analyze._rnn import TimeGradFlow as TimeGradFlow
from jgrad.analyze._rnn import flatten_carry as flatten_carry
from jgrad.analyze._rnn import lyapunov_spectrum as lyapunov_spectrum
from jgrad.analyze._rnn import pascanu_bound as pascanu_bound
from jgrad.analyze._rnn import rnn_grad_norms as rnn_grad_norms
from jgrad.analyze._rnn import rnn_jacobian_products as rnn_jacobian_products
from jgrad.analyze._rnn import rnn_step_jacobians as rnn_step_jacobians
from jgrad.analyze._rnn import unflatten_carry as unflatten_carry

__all__ = [
    "GradFlow",
    "Jacobians",
    "LogMatrix",
    "PascanuBound",
    "SpectrumStats",
    "TimeGradFlow",
    "flatten_carry",
    "input_products",
    "jacobian",
    "jacobian_product",
    "layer_grad_norms",
    "layer_jacobians",
    "log_abs_det",
    "log_singular_values",
    "lyapunov_spectrum",
    "net_layers",
    "output_products",
    "pascanu_bound",
    "rnn_grad_norms",
    "rnn_jacobian_products",
    "rnn_step_jacobians",
    "spectrum_density",
    "spectrum_stats",
    "unflatten_carry",
]

from jgrad.analyze._norms import OutputNorms as OutputNorms  # noqa: E402
from jgrad.analyze._norms import output_norms as output_norms  # noqa: E402
from jgrad.analyze._spectra import input_output_spectrum as input_output_spectrum  # noqa: E402
from jgrad.analyze._spectra import output_spectra as output_spectra  # noqa: E402
from jgrad.analyze._sweep import output_sweep as output_sweep  # noqa: E402

__all__ += [
    "OutputNorms",
    "input_output_spectrum",
    "output_norms",
    "output_spectra",
    "output_sweep",
]
