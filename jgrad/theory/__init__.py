"""Mean-field theory beside measurement: Gaussian expectations, the length and
correlation maps, q*, c*, chi_1, chi_c, depth scales, critical lines, and batch norm's
gradient explosion rate.

- ``mean_field(activation, weight_var, bias_var)`` -> a ``MeanField`` with every
  quantity; ``q_fixed_point``, ``c_fixed_point``, ``chi1``, ``depth_scales`` and
  ``critical_weight_var`` give one each. All broadcast over arrays of variances and are
  jit- and vmap-able.
- ``length_map``, ``correlation_map``: one layer of the maps.
- ``expectation``, ``pair_expectation``, ``hermite_rule``: Gaussian expectations by
  Gauss-Hermite quadrature (even rules).
- ``batch_norm_grad_growth(activation, batch_size)``: the per-layer growth of the squared
  gradient norm in deep batch-normalized networks (Yang et al. 2019).
- ``phase_diagram(activation, weight_vars, bias_vars, *, depth, width, seeds, key)`` ->
  a ``PhaseDiagram``: measured chi_1, q^l and Jacobian mean squares over a grid x seeds
  as one jitted, vmapped program, chunked and sharded over the devices, with the theory
  at every point; ``phase_probe`` measures one network.
"""

from jgrad.theory._batch_norm import batch_norm_grad_growth as batch_norm_grad_growth
from jgrad.theory._gauss import default_degree as default_degree
from jgrad.theory._gauss import expectation as expectation
from jgrad.theory._gauss import hermite_rule as hermite_rule
from jgrad.theory._gauss import pair_expectation as pair_expectation
from jgrad.theory._mean_field import MeanField as MeanField
from jgrad.theory._mean_field import c_fixed_point as c_fixed_point
from jgrad.theory._mean_field import chi1 as chi1
from jgrad.theory._mean_field import correlation_map as correlation_map
from jgrad.theory._mean_field import critical_weight_var as critical_weight_var
from jgrad.theory._mean_field import depth_scales as depth_scales
from jgrad.theory._mean_field import length_map as length_map
from jgrad.theory._mean_field import mean_field as mean_field
from jgrad.theory._mean_field import q_fixed_point as q_fixed_point
from jgrad.theory._phase import PhaseDiagram as PhaseDiagram
from jgrad.theory._phase import PhaseProbe as PhaseProbe
from jgrad.theory._phase import phase_diagram as phase_diagram
from jgrad.theory._phase import phase_probe as phase_probe

__all__ = [
    "MeanField",
    "PhaseDiagram",
    "PhaseProbe",
    "batch_norm_grad_growth",
    "c_fixed_point",
    "chi1",
    "correlation_map",
    "critical_weight_var",
    "default_degree",
    "depth_scales",
    "expectation",
    "hermite_rule",
    "length_map",
    "mean_field",
    "pair_expectation",
    "phase_diagram",
    "phase_probe",
    "q_fixed_point",
]
