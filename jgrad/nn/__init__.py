"""Pure-function networks: ``Layer(init, apply, info)``, ``serial``, layers and builders."""

from jgrad.nn._activations import ACTIVATIONS as ACTIVATIONS
from jgrad.nn._activations import Activation as Activation
from jgrad.nn._activations import activation as activation
from jgrad.nn._activations import elementwise as elementwise
from jgrad.nn._activations import prelu as prelu
from jgrad.nn._builders import NORMS as NORMS
from jgrad.nn._builders import mlp as mlp
from jgrad.nn._builders import resnet as resnet
from jgrad.nn._conv import avg_pool as avg_pool
from jgrad.nn._conv import conv2d as conv2d
from jgrad.nn._conv import flatten as flatten
from jgrad.nn._conv import global_avg_pool as global_avg_pool
from jgrad.nn._dense import dense as dense
from jgrad.nn._dense import maxout as maxout
from jgrad.nn._layer import Layer as Layer
from jgrad.nn._layer import LayerInfo as LayerInfo
from jgrad.nn._layer import SerialLayer as SerialLayer
from jgrad.nn._layer import serial as serial
from jgrad.nn._norm import batch_norm as batch_norm
from jgrad.nn._norm import layer_norm as layer_norm
from jgrad.nn._regularize import dropout as dropout
from jgrad.nn._regularize import residual as residual
from jgrad.nn._repeat import repeat as repeat
from jgrad.nn._repeat import stack_params as stack_params
from jgrad.nn._repeat import unstack_params as unstack_params

__all__ = [
    "ACTIVATIONS",
    "NORMS",
    "Activation",
    "Layer",
    "LayerInfo",
    "SerialLayer",
    "activation",
    "avg_pool",
    "batch_norm",
    "conv2d",
    "dense",
    "dropout",
    "elementwise",
    "flatten",
    "global_avg_pool",
    "layer_norm",
    "maxout",
    "mlp",
    "prelu",
    "repeat",
    "resnet",
    "residual",
    "serial",
    "stack_params",
    "unstack_params",
]
