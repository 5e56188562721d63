"""Recurrent cells (vanilla RNN, LSTM, GRU) and their scanned drivers."""

from jgrad.rnn._cell import Cell as Cell
from jgrad.rnn._cell import LSTMState as LSTMState
from jgrad.rnn._cells import gru as gru
from jgrad.rnn._cells import lstm as lstm
from jgrad.rnn._cells import vanilla as vanilla
from jgrad.rnn._clip import clip_carry_grad as clip_carry_grad
from jgrad.rnn._convert import from_flax as from_flax
from jgrad.rnn._convert import from_torch as from_torch
from jgrad.rnn._convert import to_flax as to_flax
from jgrad.rnn._convert import to_torch as to_torch
from jgrad.rnn._fast import unroll_batch as unroll_batch
from jgrad.rnn._unroll import bidirectional as bidirectional
from jgrad.rnn._unroll import unroll as unroll
from jgrad.rnn._unroll import unroll_stack as unroll_stack

__all__ = [
    "Cell",
    "LSTMState",
    "bidirectional",
    "clip_carry_grad",
    "from_flax",
    "from_torch",
    "gru",
    "lstm",
    "to_flax",
    "to_torch",
    "unroll",
    "unroll_batch",
    "unroll_stack",
    "vanilla",
]
