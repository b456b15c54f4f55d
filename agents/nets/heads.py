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


def _deconv_plan(grid: int) -> tuple[int, int]:
    """(input size, kernel) of a stride-2 VALID transposed conv whose output is `grid` cells: (s - 1) * 2 + k."""
    if grid < 3:
        raise ValueError(f"a pixel-control grid needs at least 3 cells per side, got {grid}")
    kernel = 4 if grid % 2 == 0 else 3
    return (grid - kernel) // 2 + 1, kernel


class PixelControlHead(nn.Module):
    """UNREAL's pixel-control Q head (Jaderberg et al. 2016, Sec. 3.1; miyosuda/unreal's layer sizes): core
    features -> FC -> [32, s_h, s_w] -> two stride-2 transposed convs, a 1-channel value map V and an |A|-channel
    advantage map A, combined as a dueling net: Q = V + A - mean_a A, shape [N, A, G_h, G_w].

    For the 20x20 grid of the 80x80 crop the FC map is 9x9 (the paper's 7x7 would give 16x16, a reimplementers' pitfall
    1); other grids (MinAtar's 10x10 at one pixel per cell) get s = (G - k) / 2 + 1 with k = 4 (even G) or 3.
    No ReLU on the two maps (miyosuda has one): Q is a regression output and A - mean_a A is signed anyway.
    """

    def __init__(self, input_size: int, num_actions: int, grid: tuple[int, int], channels: int = 32):
        super().__init__()
        (s_h, k_h), (s_w, k_w) = _deconv_plan(grid[0]), _deconv_plan(grid[1])
        self.grid, self.map_shape = tuple(grid), (channels, s_h, s_w)
        self.fc = nn.Linear(input_size, channels * s_h * s_w)
        self.value = nn.ConvTranspose2d(channels, 1, (k_h, k_w), stride=2)
        self.advantage = nn.ConvTranspose2d(channels, num_actions, (k_h, k_w), stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, input_size] -> Q [N, A, G_h, G_w]."""
        h = torch.relu(self.fc(x)).view(-1, *self.map_shape)
        v, a = self.value(h), self.advantage(h)  # [N,1,G,G], [N,A,G,G]
        assert v.shape[-2:] == self.grid, f"deconv gives {tuple(v.shape[-2:])}, expected {self.grid}"
        return v + a - a.mean(dim=1, keepdim=True)


class RewardPredictionHead(nn.Module):
    """UNREAL's reward prediction (Sec. 3.2): the torso features of k frames, concatenated, -> a hidden ReLU layer
    (128 units as the paper's appendix recalls it; 0: a linear map as in miyosuda/unreal) -> 3 logits for the
    classes zero / positive / negative of the reward that follows the last frame."""

    def __init__(self, feature_size: int, frames: int = 3, hidden_size: int = 128):
        super().__init__()
        size = feature_size * frames
        layers: list[nn.Module] = [nn.Linear(size, hidden_size), nn.ReLU()] if hidden_size else []
        self.net = nn.Sequential(*layers, nn.Linear(hidden_size or size, 3))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [k, N, F] (time-major, oldest first) -> logits [N, 3]."""
        k, n, f = features.shape
        return self.net(features.permute(1, 0, 2).reshape(n, k * f))


class FeatureControlHead(nn.Module):
    """UNREAL's feature control (Sec. 3.1, not in the headline agent): one Q value per action for each of C feature
    channels, [N, A, C], from the core features; its pseudo-reward is the change of that channel's mean activation."""

    def __init__(self, input_size: int, num_actions: int, channels: int):
        super().__init__()
        self.num_actions, self.channels = num_actions, channels
        self.q = nn.Linear(input_size, num_actions * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q(x).view(-1, self.num_actions, self.channels)
