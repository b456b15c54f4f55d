"""Shared building blocks of the agents' nets: torsos (`torsos`), recurrent cores (`cores`: feed-forward and
LSTM; `dni`: the synthetic-gradient LSTM) and heads (`heads`). `make_core` builds a core by its config name."""

from __future__ import annotations

from typing import Any

from torch import nn

from decoupled.agents.nets.cores import FeedForwardCore, LSTMCore
from decoupled.agents.nets.dni import DNIConfig, DNILSTMCore

CORES = ("none", "lstm", "dni_lstm")


def make_core(kind: str, input_size: int, num_actions: int, hidden_size: int, dni: Any = None) -> nn.Module:
    """`dni`: the `DNIConfig` of a `dni_lstm` core (its defaults when None)."""
    if kind == "none":
        return FeedForwardCore(input_size, num_actions)
    if kind == "lstm":
        return LSTMCore(input_size, num_actions, hidden_size)
    if kind == "dni_lstm":
        return DNILSTMCore(input_size, num_actions, hidden_size, dni if dni is not None else DNIConfig())
    raise ValueError(f"unknown core {kind!r}; choose one of {', '.join(CORES)}")
