"""Analyzers of gradient flow: per-layer gradient norms in log space (more to come: exact
Jacobian products, spectra, Lyapunov exponents)."""

from jgrad.analyze._grad_flow import GradFlow as GradFlow
from jgrad.analyze._grad_flow import layer_grad_norms as layer_grad_norms
from jgrad.analyze._grad_flow import net_layers as net_layers

__all__ = ["GradFlow", "layer_grad_norms", "net_layers"]
