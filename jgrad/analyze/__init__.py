"""Analyzers of gradient flow: exact layer-to-layer and step-to-step Jacobians, their
products in log space, singular-value spectra, Lyapunov exponents, and per-layer and
per-time-step gradient norms.

Which function gives which number (number wanted -> function -> cost / accuracy). The
network analyzers take ONE example (``vmap`` for a batch); logs are natural except the
gradient norms' (log10, as their field names say).

Every analyzer result carries ``nonfinite``, a ``NonFinite(forward, backward)`` record of
where its values first went NaN or inf (data that survives ``jit`` and ``vmap``; eager
calls also warn with ``NonFiniteWarning``); values computed from a NaN or inf are NaN,
``-inf`` only for an exact zero. ``input_output_spectrum`` and ``output_spectra`` return a
``Spectrum(log_sv, nonfinite)``, ``output_sweep`` a ``Sweep(products, nonfinite)``,
``lyapunov_spectrum`` a ``Lyapunov(exponents, nonfinite)``. The
rules and how the indices count: docs/api.md, "Non-finite values".

Feedforward networks (``net, params, x``). ``net`` is a jgrad network, a flax linen /
NNX or equinox model, a function ``fn(params, x)`` or a list of these (docs/api.md, "Your
own model"):

- gradient norm of dL/dh_k at every layer output, and of dL/dtheta per parameter
  -> ``layer_grad_norms`` (a ``GradFlow``) -> one backward pass; exact, never underflows.
- spectrum of the input-output Jacobian d y / d x -> ``input_output_spectrum`` -> the fast
  route: one rescaled VJP sweep and one SVD; top values exact at any depth, those below
  sigma_max * eps dropped.
- spectra of every layer-to-output product d y / d h_l -> ``output_spectra`` -> one sweep,
  one SVD per product; accuracy as above.
- spectral norm and mean squared singular value of every d y / d h_l
  -> ``output_norms(..., method="exact")`` (an ``OutputNorms``) -> one sweep and Lanczos
  per product, no SVD; mean square exact, spectral norm a Ritz lower bound.
- the same without forming any product -> ``output_norms(..., method="matrix_free")``
  -> sweeps of a few vectors; spectral norms lower bounds, Hutch++ mean squares with
  their standard error.
- every product d y / d h_l as a matrix -> ``output_sweep`` (a ``LogMatrix`` per layer)
  -> one sweep; the L products stored.
- per-layer Jacobians J_l = d h_l / d h_(l-1) -> ``layer_jacobians`` (a ``Jacobians``)
  -> L explicit N x N matrices per example (closed forms for dense and activation
  layers); exact. For spectra and norms of the network the sweeps above are faster.
- the layers a network is analysed as -> ``net_layers`` -> static, no compute.
- gradient norm at every submodule call's output and per parameter leaf of a whole flax
  linen, NNX or equinox model -> ``module_grad_norms`` (a ``ModuleGradFlow``) -> one
  ``jax.value_and_grad``; exact, one plain backward pass.
- a linen model as the chain of its submodule calls, for every analyzer here ->
  ``module_chain`` (a ``ModuleChain``) -> one abstract trace; skip connections refused.
- per-example gradient norms of any model, batch-coupled ones too ->
  ``per_example_grad_norms`` -> about one batch backward pass (B when coupled); exact.
- the Jacobian of any function as a matrix -> ``jacobian`` -> jacrev or jacfwd by shape,
  optionally in chunks; exact.

Jacobians you hold (from ``layer_jacobians``, ``rnn_step_jacobians`` or your own):

- one product J_stop ... J_(start+1), every prefix, every suffix -> ``jacobian_product``,
  ``input_products``, ``output_products`` (a ``LogMatrix``) -> explicit matrix products
  rescaled in log space (or an associative scan); top values exact at any depth.
- spectrum of such a product -> ``log_singular_values`` -> explicit product, then SVD;
  ``method="qr"`` keeps the values below eps (finite-depth Lyapunov exponents).
- log |det| of a square product -> ``log_abs_det`` -> QR accumulation; exact at any depth
  and conditioning.

Recurrent cells (``cell, params, xs, carry0``):

- step Jacobians J_t = d s_t / d s_(t-1) -> ``rnn_step_jacobians`` -> T explicit n x n
  matrices, vmapped over t; exact.
- products over time d s_T / d s_t -> ``rnn_jacobian_products`` (a stacked ``LogMatrix``)
  -> one reverse scan (or an associative scan), rescaled.
- gradient norm through time of dL/ds_t -> ``rnn_grad_norms`` (a ``TimeGradFlow``) -> one
  backward scan; exact, never underflows.
- Lyapunov spectrum -> ``lyapunov_spectrum`` (a ``Lyapunov``) -> k JVPs and one QR per
  step; converges as T grows.
- Pascanu et al.'s bound gamma * ||W_hh||_2 next to the measured rate -> ``pascanu_bound``
  (a ``PascanuBound``) -> the products over time and their spectra; vanilla cells only.
- a carry as the flat state vector s, and back -> ``flatten_carry``, ``unflatten_carry``
  -> reshapes only.

Summaries of any spectrum (natural-log singular values):

- sigma_max, sigma_min, mean square, log det, condition number -> ``spectrum_stats`` (a
  ``SpectrumStats``) -> O(r) per spectrum.
- density of log singular values -> ``spectrum_density`` -> a histogram of the finite
  values.
"""

from jgrad.analyze._chain import ModuleChain as ModuleChain
from jgrad.analyze._chain import module_chain as module_chain
from jgrad.analyze._grad_flow import GradFlow as GradFlow
from jgrad.analyze._grad_flow import layer_grad_norms as layer_grad_norms
from jgrad.analyze._grad_flow import net_layers as net_layers
from jgrad.analyze._jacobians import Jacobians as Jacobians
from jgrad.analyze._jacobians import jacobian as jacobian
from jgrad.analyze._jacobians import layer_jacobians as layer_jacobians
from jgrad.analyze._logspace import LogMatrix as LogMatrix
from jgrad.analyze._module_flow import ModuleGradFlow as ModuleGradFlow
from jgrad.analyze._module_flow import module_grad_norms as module_grad_norms
from jgrad.analyze._nonfinite import NonFinite as NonFinite
from jgrad.analyze._nonfinite import NonFiniteWarning as NonFiniteWarning
from jgrad.analyze._norms import OutputNorms as OutputNorms
from jgrad.analyze._norms import output_norms as output_norms
from jgrad.analyze._per_example import ExampleGradNorms as ExampleGradNorms
from jgrad.analyze._per_example import (
    per_example_grad_norms as per_example_grad_norms,
)
from jgrad.analyze._product_spectra import log_abs_det as log_abs_det
from jgrad.analyze._product_spectra import log_singular_values as log_singular_values
from jgrad.analyze._products import input_products as input_products
from jgrad.analyze._products import jacobian_product as jacobian_product
from jgrad.analyze._products import output_products as output_products
from jgrad.analyze._records import Spectrum as Spectrum
from jgrad.analyze._records import Sweep as Sweep
from jgrad.analyze._rnn import TimeGradFlow as TimeGradFlow
from jgrad.analyze._rnn import flatten_carry as flatten_carry
from jgrad.analyze._rnn import rnn_grad_norms as rnn_grad_norms
from jgrad.analyze._rnn import rnn_jacobian_products as rnn_jacobian_products
from jgrad.analyze._rnn import rnn_step_jacobians as rnn_step_jacobians
from jgrad.analyze._rnn import unflatten_carry as unflatten_carry
from jgrad.analyze._rnn_rates import Lyapunov as Lyapunov
from jgrad.analyze._rnn_rates import PascanuBound as PascanuBound
from jgrad.analyze._rnn_rates import lyapunov_spectrum as lyapunov_spectrum
from jgrad.analyze._rnn_rates import pascanu_bound as pascanu_bound
from jgrad.analyze._spectra import input_output_spectrum as input_output_spectrum
from jgrad.analyze._spectra import output_spectra as output_spectra
from jgrad.analyze._stats import SpectrumStats as SpectrumStats
from jgrad.analyze._stats import spectrum_density as spectrum_density
from jgrad.analyze._stats import spectrum_stats as spectrum_stats
from jgrad.analyze._sweep import output_sweep as output_sweep

__all__ = [
    "ExampleGradNorms",
    "GradFlow",
    "Jacobians",
    "LogMatrix",
    "Lyapunov",
    "ModuleChain",
    "ModuleGradFlow",
    "NonFinite",
    "NonFiniteWarning",
    "OutputNorms",
    "PascanuBound",
    "Spectrum",
    "SpectrumStats",
    "Sweep",
    "TimeGradFlow",
    "flatten_carry",
    "input_output_spectrum",
    "input_products",
    "jacobian",
    "jacobian_product",
    "layer_grad_norms",
    "layer_jacobians",
    "log_abs_det",
    "log_singular_values",
    "lyapunov_spectrum",
    "module_chain",
    "module_grad_norms",
    "net_layers",
    "output_norms",
    "output_products",
    "output_spectra",
    "output_sweep",
    "pascanu_bound",
    "per_example_grad_norms",
    "rnn_grad_norms",
    "rnn_jacobian_products",
    "rnn_step_jacobians",
    "spectrum_density",
    "spectrum_stats",
    "unflatten_carry",
]
