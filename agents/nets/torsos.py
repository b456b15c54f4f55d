"""Torsos: observation encoders shared by every agent.

Each torso takes observations [N, *obs_shape] as stored by the env (uint8 pixels or float vectors), converts
them to float *inside* the net (so actors and replay keep uint8), and returns features [N, out_size].
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class _ScaledInput(nn.Module):
    """Converts stored observations to float inside the net. Conv torsos can compute in channels-last (NHWC)
    layout: oneDNN's fast path on the CPU, measured +27% learner samples/s for the Nature CNN on 2 cores
    (BENCHMARKS.md). The layout changes no parameter's meaning (flattening restores the logical order), so
    checkpoints load either way."""

    def __init__(self, obs_scale: float, channels_last: bool = False):
        super().__init__()
        self.obs_scale = obs_scale
        self.channels_last = channels_last

    def _float(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.float()
        x = x * self.obs_scale if self.obs_scale != 1.0 else x
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _use_layout(self) -> None:
        if self.channels_last:
            self.to(memory_format=torch.channels_last)  # conv weights; 2-D parameters are untouched


class MLPTorso(_ScaledInput):
    """Flattens any observation and applies `len(hidden_sizes)` ReLU layers."""

    def __init__(self, obs_shape: tuple[int, ...], hidden_sizes: tuple[int, ...] = (64, 64), obs_scale: float = 1.0):
        super().__init__(obs_scale)
        layers: list[nn.Module] = []
        size = math.prod(obs_shape)
        for h in hidden_sizes:
            layers += [nn.Linear(size, h), nn.ReLU()]
            size = h
        self.net = nn.Sequential(nn.Flatten(), *layers)
        self.out_size = size

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(self._float(obs))


class NatureCNN(_ScaledInput):
    """The DQN Nature torso (Mnih et al. 2015), the "shallow" IMPALA net: 3 convs and a 512-unit layer."""

    def __init__(
        self, obs_shape: tuple[int, ...], hidden_size: int = 512, obs_scale: float = 1.0 / 255, channels_last=False
    ):
        super().__init__(obs_scale, channels_last)
        c = obs_shape[0]
        self.convs = nn.Sequential(
            nn.Conv2d(c, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            n = self.convs(torch.zeros(1, *obs_shape)).shape[1]
        self.fc = nn.Linear(n, hidden_size)
        self.out_size = hidden_size
        self._use_layout()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(self.convs(self._float(obs))))

    def forward_maps(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, the last conv layer's maps [N, 64, h, w]) in one pass (UNREAL's feature control)."""
        maps = self.convs[:-1](self._float(obs))
        return F.relu(self.fc(maps.flatten(1))), maps


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(F.relu(self.conv0(F.relu(x))))


class ImpalaResNet(_ScaledInput):
    """The "deep" IMPALA torso (Espeholt et al. 2018, Fig. 3): stages of conv + max-pool + 2 residual blocks,
    channels (16, 32, 32), then a 256-unit layer."""

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        channels: tuple[int, ...] = (16, 32, 32),
        hidden_size: int = 256,
        obs_scale: float = 1.0 / 255,
        channels_last: bool = False,
    ):
        super().__init__(obs_scale, channels_last)
        layers: list[nn.Module] = []
        c = obs_shape[0]
        for out in channels:
            layers += [
                nn.Conv2d(c, out, 3, padding=1),
                nn.MaxPool2d(3, stride=2, padding=1),
                _ResidualBlock(out),
                _ResidualBlock(out),
            ]
            c = out
        self.stages = nn.Sequential(*layers, nn.ReLU(), nn.Flatten())
        with torch.no_grad():
            n = self.stages(torch.zeros(1, *obs_shape)).shape[1]
        self.fc = nn.Linear(n, hidden_size)
        self.out_size = hidden_size
        self._use_layout()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(self.stages(self._float(obs))))

    def forward_maps(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, the last stage's maps after its ReLU [N, C, h, w]) in one pass (UNREAL's feature control)."""
        maps = self.stages[:-1](self._float(obs))
        return F.relu(self.fc(maps.flatten(1))), maps


class MinAtarCNN(_ScaledInput):
    """The MinAtar baseline torso (Young & Tian 2019): one 3x3 conv with 16 channels and a 128-unit layer."""

    def __init__(self, obs_shape: tuple[int, ...], hidden_size: int = 128, obs_scale: float = 1.0, channels_last=False):
        super().__init__(obs_scale, channels_last)
        c, h, w = obs_shape
        self.conv = nn.Conv2d(c, 16, 3, stride=1)
        self.fc = nn.Linear(16 * (h - 2) * (w - 2), hidden_size)
        self.out_size = hidden_size
        self._use_layout()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(self._float(obs)))
        return F.relu(self.fc(x.flatten(1)))

    def forward_maps(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, the conv layer's maps [N, 16, h, w]) in one pass (UNREAL's feature control)."""
        x = F.relu(self.conv(self._float(obs)))
        return F.relu(self.fc(x.flatten(1))), x


TORSOS = ("mlp", "nature_cnn", "impala_resnet", "minatar_cnn")


def make_torso(
    kind: str,
    obs_shape: tuple[int, ...],
    obs_scale: float,
    hidden_sizes: tuple[int, ...],
    channels_last: bool = False,
) -> nn.Module:
    """Build a torso by name. `hidden_sizes` are the MLP's layers; CNN torsos use its last entry as FC size and
    compute in channels-last layout when `channels_last`."""
    if kind == "mlp":
        return MLPTorso(obs_shape, hidden_sizes, obs_scale)
    if len(obs_shape) != 3:
        raise ValueError(f"torso {kind!r} needs image observations [C,H,W], got shape {obs_shape}; use torso: mlp")
    if kind == "nature_cnn":
        return NatureCNN(obs_shape, hidden_sizes[-1], obs_scale, channels_last)
    if kind == "impala_resnet":
        return ImpalaResNet(obs_shape, hidden_size=hidden_sizes[-1], obs_scale=obs_scale, channels_last=channels_last)
    if kind == "minatar_cnn":
        return MinAtarCNN(obs_shape, hidden_sizes[-1], obs_scale, channels_last)
    raise ValueError(f"unknown torso {kind!r}; choose one of {', '.join(TORSOS)}")
