"""Heads: maps from core features to what the losses need."""

from __future__ import annotations

import torch
from torch import nn


class PolicyBaselineHead(nn.Module):
    """Policy logits [.., A] and a scalar baseline [..] from the same features (Espeholt et al. 2018, Fig. 3)."""

    def __init__(self, input_size: int, num_actions: int):
        super().__init__()
        self.policy = nn.Linear(input_size, num_actions)
        self.baseline = nn.Linear(input_size, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"policy_logits": self.policy(x), "baseline": self.baseline(x).squeeze(-1)}
