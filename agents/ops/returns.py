"""On-policy return targets: n-step, TD(lambda) and Monte-Carlo, truncation-aware.

Same time-major [T, B] conventions as `agents.ops.vtrace`:

    next_values[t] = V(x'_{t+1}), the value of the TRUE successor of transition t (values[t + 1] inside an
                     episode, the bootstrap value at the last step, V(final observation) at a truncated step)
    discounts[t]   = gamma * (1 - terminated[t])          no bootstrap after a termination
    continues[t]   = 1 - (terminated[t] or truncated[t])  0/1 mask (bool or float): 0 where slot t + 1 starts a
                     new episode, so no return reads past it

A return stops at the unroll end and at every episode end and bootstraps there from next_values, which at a
truncation is V(final observation) and at a termination is multiplied by a discount of 0 (openai/gym #2510).

These functions are differentiable w.r.t. rewards, discounts and next_values (no no_grad here); callers detach
the targets where they should be fixed.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_time_major(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    first = next(iter(shapes.values()))
    assert len(first) == 2 and first[0] >= 1, f"expected time-major [T, B] tensors with T >= 1, got {shapes}"
    assert all(s == first for s in shapes.values()), f"all inputs must share one [T, B] shape, got {shapes}"


def _inside_mask(continues: Tensor) -> Tensor:
    """[T, B] bool: True where G_{t+1} may be read (same episode, and t + 1 still inside the unroll)."""
    mask_t = continues.bool()
    return torch.cat([mask_t[:-1], torch.zeros_like(mask_t[-1:])], dim=0)


def n_step_returns(rewards: Tensor, discounts: Tensor, continues: Tensor, next_values: Tensor, n: int) -> Tensor:
    """n-step bootstrapped returns, [T, B] (Sutton & Barto 2018, eq. 7.1; Mnih et al. 2016, A3C).

        G_t^(n) = sum_{k=0}^{m-1} (prod_{j<k} discounts_{t+j}) r_{t+k}
                  + (prod_{j<m} discounts_{t+j}) next_values_{t+m-1}

    where m <= n is cut short by the unroll end and by the end of the episode. Computed as n applications of
    G^(k)_t = r_t + discounts_t * (G^(k-1)_{t+1} if inside the episode and unroll else next_values_t), with
    G^(1)_t = r_t + discounts_t * next_values_t.
    """
    assert n >= 1, f"n must be >= 1, got {n}"
    _check_time_major(rewards=rewards, discounts=discounts, continues=continues, next_values=next_values)
    inside_t = _inside_mask(continues)
    returns_t = rewards + discounts * next_values  # G^(1)
    for _ in range(min(n, rewards.shape[0]) - 1):  # beyond n = T nothing changes
        returns_tp1 = torch.cat([returns_t[1:], next_values[-1:]], dim=0)  # last row is never selected
        returns_t = rewards + discounts * torch.where(inside_t, returns_tp1, next_values)
    return returns_t


def lambda_returns(
    rewards: Tensor, discounts: Tensor, continues: Tensor, next_values: Tensor, lambda_: float
) -> Tensor:
    """TD(lambda) returns, [T, B] (Sutton & Barto 2018, eq. 12.3 in its recursive form; GAE targets of Schulman
    et al. 2016, arXiv:1506.02438: lambda_returns - values is the GAE advantage).

        G_t = r_t + discounts_t * ((1 - lambda * continues_t) * next_values_t + lambda * continues_t * G_{t+1})

    and at the last step G_{T-1} = r_{T-1} + discounts_{T-1} * next_values_{T-1}. lambda = 0 gives the one-step TD
    target, lambda = 1 the Monte-Carlo return within the episode bootstrapped where it stops (equal to on-policy
    V-trace with rho_bar, c_bar >= 1).
    """
    assert 0.0 <= lambda_ <= 1.0, f"lambda_ must be in [0, 1], got {lambda_}"
    _check_time_major(rewards=rewards, discounts=discounts, continues=continues, next_values=next_values)
    inside_t = _inside_mask(continues)
    T = rewards.shape[0]
    returns_tp1 = next_values[-1]  # unused: inside_t is False at T - 1
    out = []
    for t in range(T - 1, -1, -1):
        mixed = (1.0 - lambda_) * next_values[t] + lambda_ * returns_tp1
        returns_tp1 = rewards[t] + discounts[t] * torch.where(inside_t[t], mixed, next_values[t])
        out.append(returns_tp1)
    return torch.stack(out[::-1])


def discounted_returns(rewards: Tensor, discounts: Tensor, continues: Tensor, bootstrap: Tensor) -> Tensor:
    """Monte-Carlo returns within the unroll, [T, B]; `bootstrap` [B] is next_values at the last step.

        G_{T-1} = r_{T-1} + discounts_{T-1} * bootstrap
        G_t     = r_t + discounts_t * continues_t * G_{t+1}

    A convenience for the case without values: at an episode end inside the unroll the return simply stops
    (correct at a termination; at a truncation inside the unroll it drops the tail, since V(final observation) is
    not an input here: use `lambda_returns(..., lambda_=1.0)` with next_values to bootstrap there).
    """
    _check_time_major(rewards=rewards, discounts=discounts, continues=continues)
    assert bootstrap.shape == rewards.shape[1:], f"bootstrap must be [B], got {tuple(bootstrap.shape)}"
    inside_t = _inside_mask(continues)
    returns_tp1 = bootstrap
    out = []
    for t in range(rewards.shape[0] - 1, -1, -1):
        if t == rewards.shape[0] - 1:
            returns_tp1 = rewards[t] + discounts[t] * returns_tp1
        else:
            returns_tp1 = rewards[t] + discounts[t] * torch.where(inside_t[t], returns_tp1, 0.0)
        out.append(returns_tp1)
    return torch.stack(out[::-1])
