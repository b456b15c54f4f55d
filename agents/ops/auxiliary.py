"""UNREAL's auxiliary tasks as pure tensor functions (Jaderberg et al. 2016, arXiv:1611.05397, Sec. 3).

Time-major conventions of `agents.ops.returns`: a replayed sequence has T+1 slots and T transitions; transition t
goes from obs_t to obs_{t+1}, `discounts[t] = gamma * (1 - terminated[t])`, `continues[t] = 0` where slot t+1
starts a new episode.

- Pixel control (Sec. 3.1): the pseudo-reward of cell (i, j) for transition t is the mean absolute change of the
  pixels in that cell of the central crop, |obs_{t+1} - obs_t| averaged over the cell's pixels and channels, in
  [0, 1] pixel units (trfl `pixel_control_rewards`; a reimplementers' pitfall: 0-255 pixels would scale everything by
  255). Each cell is a separate control task learned by n-step Q-learning over the replayed sequence:

      R_t = r^pc_t + gamma_pc * R_{t+1}  inside the sequence and episode,   R_T = max_a Q(obs_T, a)

  The transition that ends an episode has no pseudo-reward: its frame after is not stored (slot t+1 holds the next
  episode's first frame), and the change into that frame belongs to no episode. Its pseudo-reward is 0 and no
  return reads past it, as in UNREAL's reference, whose pixel change is 0 at the terminal step; so the last return
  inside an episode is R_t = r^pc_t (from the frame before the last stored one to the last stored one).
  (Q(lambda) with lambda = 1, as trfl's `pixel_control_loss`; the bootstrap uses the current net without
  gradient, as UNREAL's A3C code: there is no target network.)
- Reward prediction (Sec. 3.2): classify the reward that follows k frames as zero / positive / negative.
- Value replay (Sec. 3.3): the n-step return regression of the base agent on replayed sequences.
- Feature control (Sec. 3.1): the pseudo-reward of channel c is |mean f_c(obs_{t+1}) - mean f_c(obs_t)|.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from decoupled.agents.ops.returns import lambda_returns


def pixel_change_rewards(
    obs_t: Tensor,
    obs_tp1: Tensor,
    crop: int = 2,
    cell: int = 4,
    obs_scale: float = 1.0 / 255,
    channels: slice = slice(None),
) -> Tensor:
    """Pixel-control pseudo-rewards [..., G_h, G_w] from observations [..., C, H, W] (any integer or float dtype).

    `crop` pixels are dropped at each border (2 of 84 leaves UNREAL's central 80x80), the rest is split into
    `cell` x `cell` cells (G = (H - 2 crop) / cell), and the absolute change is averaged over each cell's pixels
    and over `channels` (all of them for RGB; the newest frame only for frame stacks, whose older frames repeat
    the previous observation's).
    """
    assert obs_t.shape == obs_tp1.shape and obs_t.dim() >= 3, f"{tuple(obs_t.shape)} vs {tuple(obs_tp1.shape)}"
    H, W = obs_t.shape[-2:]
    if crop < 0 or H - 2 * crop < cell or W - 2 * crop < cell or (H - 2 * crop) % cell or (W - 2 * crop) % cell:
        raise ValueError(f"a {H}x{W} frame cropped by {crop} does not split into {cell}x{cell} cells")
    a = obs_t[..., channels, crop : H - crop, crop : W - crop].float()
    b = obs_tp1[..., channels, crop : H - crop, crop : W - crop].float()
    diff = (b - a).abs() * obs_scale  # [..., C', h, w]
    lead = diff.shape[:-3]
    c, h, w = diff.shape[-3:]
    cells = diff.reshape(*lead, c, h // cell, cell, w // cell, cell)
    return cells.mean(dim=(-5, -3, -1))  # [..., G_h, G_w]


def pixel_control_loss(
    q: Tensor, actions: Tensor, pc_rewards: Tensor, discounts: Tensor, continues: Tensor, mask: Tensor
) -> tuple[Tensor, Tensor]:
    """n-step Q-learning over every cell: returns (loss [T, N], the targets [T, N, G_h, G_w]).

    q [T+1, N, A, G_h, G_w]: Q^aux at every slot; actions [T, N] taken at obs_t; pc_rewards [T, N, G_h, G_w];
    discounts / continues / mask [T, N] (`discounts` already holds gamma_pc; `mask` 0 drops a transition from the
    loss). Where `continues` is 0 (slot t+1 starts a new episode) the pseudo-reward given is replaced by 0: it is
    the change into the next episode's first frame (see the module docstring). Per transition the loss is
    1/2 sum over cells of (R_t - Q(obs_t, a_t))^2 (miyosuda's l2 convention).
    """
    T1, N, A, Gh, Gw = q.shape
    T = T1 - 1
    assert actions.shape == (T, N) and pc_rewards.shape == (T, N, Gh, Gw), (actions.shape, pc_rewards.shape)
    cells = Gh * Gw
    with torch.no_grad():
        pc_rewards = pc_rewards * continues.to(pc_rewards.dtype).view(T, N, 1, 1)  # 0 for an episode's last transition
        max_q_tp1 = q[1:].max(dim=2).values  # [T, N, Gh, Gw]
        flat = lambda x: x.reshape(T, N * cells)  # noqa: E731 - cells become batch columns
        per_cell = lambda x: x.unsqueeze(-1).expand(T, N, cells).reshape(T, N * cells)  # noqa: E731
        targets = lambda_returns(
            flat(pc_rewards), per_cell(discounts), per_cell(continues), flat(max_q_tp1), 1.0
        ).reshape(T, N, Gh, Gw)
    idx = actions.long().view(T, N, 1, 1, 1).expand(T, N, 1, Gh, Gw)
    q_taken = q[:-1].gather(2, idx).squeeze(2)  # [T, N, Gh, Gw]
    loss = 0.5 * ((targets - q_taken) ** 2).sum(dim=(-2, -1)) * mask
    return loss, targets


def value_replay_loss(
    values: Tensor, rewards: Tensor, discounts: Tensor, continues: Tensor, next_values: Tensor
) -> tuple[Tensor, Tensor]:
    """Value-function replay: 1/2 (R_t - V(obs_t))^2 with R_t the n-step return to the sequence's end, [T, N];
    returns (loss, targets). `values` [T, N] carry the gradient; the targets are fixed."""
    with torch.no_grad():
        targets = lambda_returns(rewards, discounts, continues, next_values, 1.0)
    return 0.5 * (targets - values) ** 2, targets


def reward_classes(reward: Tensor) -> Tensor:
    """0 for a zero reward, 1 for a positive one, 2 for a negative one (miyosuda/unreal's order)."""
    return torch.where(reward > 0, 1, torch.where(reward < 0, 2, 0)).long()


def reward_prediction_loss(logits: Tensor, reward: Tensor) -> tuple[Tensor, Tensor]:
    """Cross-entropy [N] of the 3-class reward prediction, and the target classes [N]."""
    target = reward_classes(reward)
    return F.cross_entropy(logits, target, reduction="none"), target


def feature_change_rewards(maps_t: Tensor, maps_tp1: Tensor) -> Tensor:
    """Feature-control pseudo-rewards [..., C]: |mean over space of f_c(obs_{t+1}) - of f_c(obs_t)|, from feature
    maps [..., C, h, w]."""
    return (maps_tp1.mean(dim=(-2, -1)) - maps_t.mean(dim=(-2, -1))).abs()


def feature_control_loss(
    q: Tensor, actions: Tensor, fc_rewards: Tensor, discounts: Tensor, continues: Tensor, mask: Tensor
) -> Tensor:
    """n-step Q-learning per feature channel, as `pixel_control_loss` with channels for cells: q [T+1, N, A, C],
    fc_rewards [T, N, C] -> loss [T, N]."""
    loss, _ = pixel_control_loss(q.unsqueeze(-1), actions, fc_rewards.unsqueeze(-1), discounts, continues, mask)
    return loss
