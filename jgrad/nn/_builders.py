"""Network builders: ``mlp`` (every cause and cure of unstable gradients as an option) and a
small ``resnet`` for 8x8 images (scikit-learn's digits), with and without skip connections."""

from __future__ import annotations

from jgrad import _checks
from jgrad import init as _init
from jgrad.nn._activations import (
    ACTIVATIONS,
    Activation,
    activation,
    elementwise,
    prelu,
)
from jgrad.nn._conv import conv2d, global_avg_pool
from jgrad.nn._dense import dense, maxout, weight_init
from jgrad.nn._layer import Layer, SerialLayer, serial
from jgrad.nn._norm import batch_norm, layer_norm
from jgrad.nn._regularize import dropout
from jgrad.nn._regularize import residual as residual_block
from jgrad.nn._repeat import repeat

__all__ = ["mlp", "resnet", "NORMS"]

#: Values of the ``norm`` argument of the builders.
NORMS = (None, "batch", "layer")


def _norm_layers(norm):
    _checks.choice("norm", norm, NORMS)
    return [] if norm is None else [batch_norm() if norm == "batch" else layer_norm()]


def _act_layer(act, options=ACTIVATIONS + ("prelu",)):
    if isinstance(act, Activation):
        return elementwise(act)
    _checks.choice("activation", act, options)
    if act == "prelu":
        return prelu()
    return elementwise(activation(act))


def mlp(
    depth: int,
    width: int,
    *,
    activation: str | Activation = "tanh",
    init: str | _init.Initializer | None = "gaussian",
    weight_var: float | None = None,
    bias_var: float = 0.0,
    norm: str | None = None,
    residual: bool = False,
    residual_scale: float = 1.0,
    drop_prob: float = 0.0,
    num_pieces: int = 2,
    out_dim: int | None = None,
    stacked: bool = False,
) -> SerialLayer:
    """A depth-``depth`` multilayer perceptron of constant ``width``.

    Plain (``residual=False``): each block is ``dense -> [norm] -> activation -> [dropout]``
    (norm after the dense layer and before the activation, as batch norm was introduced).
    Residual: each block is a pre-activation residual block
    ``h + residual_scale * dense(dropout(activation(norm(h))))``; the first block projects
    the input when its size differs from ``width``. ``activation="maxout"`` replaces
    ``dense -> activation`` by a maxout layer of ``num_pieces`` pieces.

    Args:
        depth: number of hidden (dense or maxout) layers, >= 1.
        width: their width, >= 1.
        activation: a name in ``jgrad.nn.ACTIVATIONS``, ``"prelu"``, ``"maxout"``, or an
            :class:`Activation`.
        init: the weight initializer of every dense (or maxout) layer, passed to each as
            its ``w_init`` and so the same kind of value: a ``jgrad.init`` name
            (``"gaussian"``, ``"he_normal"``, ``"glorot_normal"``, ``"orthogonal"``,
            ``"standard_uniform"``, ...) or an initializer function; None is
            ``"gaussian"``. Biases are always ``N(0, bias_var)``.
        weight_var: sigma_w^2 for ``init="gaussian"`` (weights ``N(0, weight_var/fan_in)``) or
            the squared gain of ``"orthogonal"``/``"identity"``; default 1. Other inits fix
            their own variance and reject it.
        bias_var: sigma_b^2; biases ``N(0, bias_var)``.
        norm: ``None``, ``"batch"`` or ``"layer"``.
        residual: pre-activation residual blocks with identity shortcuts.
        residual_scale: multiplier of each residual branch.
        drop_prob: dropout probability after each activation (0 disables).
        num_pieces: pieces per maxout unit (only with ``activation="maxout"``).
        out_dim: if given, a final linear readout ``dense(out_dim)``.
        stacked: the params layout, an explicit choice (never made for you). False: one
            params entry per layer. True: blocks 2..depth (identical in code, each with
            its own params) are ONE :func:`jgrad.nn.repeat` layer whose params are
            stacked along a leading axis ``depth - 1``, so ``init`` and a jitted
            ``apply`` take a time that does not grow with depth beyond the arithmetic
            (for deep networks). The function and the distribution of every weight are
            those of the default layout; ``jgrad.nn.stack_params`` and
            ``jgrad.nn.unstack_params`` convert params between the two. With
            ``depth == 1`` there is nothing to stack and the layouts coincide.

    Returns:
        A :class:`SerialLayer`; ``net.block_ends`` lists the indices of the layers whose
        outputs are the hidden representations h_1..h_depth (what the gradient-flow analyzers
        report on). Params: a tuple with one entry per layer. With ``stacked=True`` the
        layers are the first block's, then the repeat layer, then the readout; the
        repeat layer's index in ``block_ends`` stands for the outputs h_2..h_depth of
        its blocks (its own output is h_depth).

    Raises:
        ValueError: for any invalid argument, naming it and the allowed values.

    Examples:
        >>> import jax, jgrad
        >>> net = jgrad.nn.mlp(3, 8, activation="relu", init="he_normal")
        >>> _, params = net.init(jax.random.key(0), (4,))
        >>> len(params), net.block_ends
        (6, (1, 3, 5))
    """
    depth = _checks.positive_int("depth", depth)
    width = _checks.positive_int("width", width)
    drop_prob = _checks.probability("drop_prob", drop_prob)
    _checks.boolean("residual", residual)
    residual_scale = _checks.real("residual_scale", residual_scale)
    num_pieces = _checks.positive_int("num_pieces", num_pieces)
    _checks.boolean("stacked", stacked)
    _norm_layers(norm)  # validates norm
    is_maxout = isinstance(activation, str) and activation == "maxout"
    if not is_maxout:  # validates the name early
        _act_layer(activation, ACTIVATIONS + ("prelu", "maxout"))
    weight_init("init", init, weight_var)  # validates init and weight_var

    def linear():
        if is_maxout:
            return maxout(
                width, num_pieces, weight_var=weight_var, bias_var=bias_var, w_init=init
            )
        return dense(width, weight_var=weight_var, bias_var=bias_var, w_init=init)

    def act():
        return [] if is_maxout else [_act_layer(activation)]

    drop = [dropout(drop_prob)] if drop_prob > 0 else []

    def block() -> list[Layer]:
        if residual:
            branch = serial(*_norm_layers(norm), *act(), *drop, linear())
            return [residual_block(branch, residual_scale)]
        return [linear(), *_norm_layers(norm), *act(), *drop]

    stack = stacked and depth > 1
    layers: list[Layer] = []
    ends: list[int] = []
    for _ in range(1 if stack else depth):
        layers += block()
        ends.append(len(layers) - 1)
    if stack:
        body = block()
        one = body[0] if len(body) == 1 else serial(*body, block_ends=(len(body) - 1,))
        layers.append(repeat(one, depth - 1))
        ends.append(len(layers) - 1)
    if out_dim is not None:
        _checks.positive_int("out_dim", out_dim)
        layers.append(
            dense(out_dim, weight_var=weight_var, bias_var=bias_var, w_init=init)
        )
    return serial(*layers, block_ends=ends)


def resnet(
    num_classes: int = 10,
    *,
    channels: int = 16,
    num_blocks: int = 3,
    activation: str | Activation = "relu",
    norm: str | None = "batch",
    skip: bool = True,
    init: str | _init.Initializer | None = "he_normal",
) -> SerialLayer:
    """A small pre-activation ResNet for 8x8 images such as scikit-learn's digits.

    ``conv3x3(channels) -> num_blocks x block -> [norm] -> activation -> global average pool
    -> dense(num_classes)`` with ``block = [norm] -> act -> conv3x3 -> [norm] -> act ->
    conv3x3``, wrapped in an identity shortcut when ``skip=True`` (He et al. 2016, "Identity
    Mappings") and left plain when ``skip=False``, the comparison that shows what the skip
    connections do for gradient flow.

    Args:
        num_classes: outputs of the final dense layer.
        channels: channels of every convolution.
        num_blocks: number of two-convolution blocks.
        activation: as in :func:`mlp` (not ``"maxout"``).
        norm: ``"batch"`` (default), ``"layer"`` (over channels) or ``None``.
        skip: identity skip connections around each block.
        init: the weight initializer of every conv and the dense layer, passed to each as
            its ``w_init``: a ``jgrad.init`` name or an initializer function (None is
            ``"gaussian"``).

    Returns:
        A :class:`SerialLayer` taking one ``(H, W, C)`` image (or a ``(B, H, W, C)`` batch,
        which batch norm in train mode requires); ``block_ends`` marks each block's output.

    References:
        He, Zhang, Ren & Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016,
        arXiv:1603.05027.
    """
    num_classes = _checks.positive_int("num_classes", num_classes)
    channels = _checks.positive_int("channels", channels)
    num_blocks = _checks.positive_int("num_blocks", num_blocks)
    _checks.boolean("skip", skip)
    _norm_layers(norm)
    _act_layer(activation)  # validates the name early: elementwise or "prelu"
    weight_init("init", init, None)

    def conv():
        return conv2d(channels, 3, w_init=init)

    layers: list[Layer] = [conv()]
    ends = []
    for _ in range(num_blocks):
        branch = serial(
            *_norm_layers(norm),
            _act_layer(activation),
            conv(),
            *_norm_layers(norm),
            _act_layer(activation),
            conv(),
        )
        layers.append(residual_block(branch) if skip else branch)
        ends.append(len(layers) - 1)
    layers += [
        *_norm_layers(norm),
        _act_layer(activation),
        global_avg_pool(),
        dense(num_classes, w_init=init),
    ]
    return serial(*layers, block_ends=ends)
