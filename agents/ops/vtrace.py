"""V-trace off-policy value targets (Espeholt et al. 2018, "IMPALA", arXiv:1802.01561, Section 4.1).

Generalised so that episode boundaries may fall anywhere inside a time-major [T, B] unroll, and so that a
truncated episode (time limit) bootstraps from the value of its final observation while a terminated one does not
(openai/gym #2510). Per transition t of the unroll:

    values[t]      = V(x_t)
    next_values[t] = V(x'_{t+1}), the value of the TRUE successor of transition t: normally values[t + 1]; at the
                     last step the bootstrap value; at a truncated step the value of the truncated episode's final
                     observation (which is not in the unroll, since slot t + 1 holds the next episode's reset).
    discounts[t]   = gamma * (1 - terminated[t])          no bootstrap after a termination
    continues[t]   = 1 - (terminated[t] or truncated[t])  0/1 mask: 0 where slot t + 1 starts a new episode

With rho_t = pi(a_t | x_t) / mu(a_t | x_t), eq. 1 of the paper written backwards (Remark 1 there) becomes

    delta_t  = clip(rho_t, rho_bar) * (r_t + discounts_t * next_values_t - values_t)
    A_t      = delta_t + discounts_t * continues_t * clip(rho_t, c_bar) * A_{t+1},   A_T = 0
    vs_t     = values_t + A_t

and the policy-gradient advantage (Section 4.2) is

    pg_advantages_t = clip(rho_t, pg_rho_bar) * (r_t + discounts_t * vs'_{t+1} - values_t)
    vs'_{t+1}       = vs_{t+1} if continues_t and t < T - 1, else next_values_t.

The `continues` factor stops the trace at every episode end: at a termination the discount is already 0, but at a
truncation it is not, and without it the trace would leak the next episode's TD errors into this one. With no
boundary inside the unroll and next_values = cat(values[1:], bootstrap) this is exactly the standard V-trace of
deepmind/scalable_agent and facebookresearch/torchbeast.

Everything here is computed under torch.no_grad and returned detached: V-trace produces targets, not a loss.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from decoupled.agents.ops.losses import action_log_probs


class VTraceReturns(NamedTuple):
    vs: Tensor  # [T, B] V-trace targets v_s (eq. 1)
    pg_advantages: Tensor  # [T, B] rho_pg_s * (r_s + discounts_s * vs'_{s+1} - V(x_s))
    log_rhos: Tensor  # [T, B] log pi(a_s | x_s) - log mu(a_s | x_s)


def _clip(x: Tensor, threshold: float | None) -> Tensor:
    """min(x, threshold); None means no clipping."""
    return x if threshold is None else torch.clamp(x, max=threshold)


def _check_time_major(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    first = next(iter(shapes.values()))
    assert len(first) == 2 and first[0] >= 1, f"expected time-major [T, B] tensors with T >= 1, got {shapes}"
    assert all(s == first for s in shapes.values()), f"all inputs must share one [T, B] shape, got {shapes}"


@torch.no_grad()
def vtrace_from_importance_weights(
    log_rhos: Tensor,
    discounts: Tensor,
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    continues: Tensor,
    clip_rho_threshold: float | None = 1.0,
    clip_c_threshold: float | None = 1.0,
    clip_pg_rho_threshold: float | None = 1.0,
) -> VTraceReturns:
    """V-trace targets and policy-gradient advantages from log importance weights; all inputs [T, B].

    See the module docstring for the meaning of each input and the recursion (eq. 1 and Remark 1 of Espeholt et
    al. 2018). `clip_rho_threshold` is rho_bar (it sets the value function the targets converge to),
    `clip_c_threshold` is c_bar (it sets the speed of convergence), `clip_pg_rho_threshold` clips the
    policy-gradient weight; None disables a clip. `continues` may be bool or float and must hold 0/1.
    Returned tensors are detached.
    """
    _check_time_major(
        log_rhos=log_rhos,
        discounts=discounts,
        rewards=rewards,
        values=values,
        next_values=next_values,
        continues=continues,
    )
    log_rhos = log_rhos.detach()
    discounts, rewards, values, next_values = (
        discounts.detach(),
        rewards.detach(),
        values.detach(),
        next_values.detach(),
    )
    continue_mask_t = continues.detach().bool()  # [T, B]
    T = values.shape[0]

    rhos = torch.exp(log_rhos)
    clipped_rhos = _clip(rhos, clip_rho_threshold)  # rho_t in eq. 1
    cs = _clip(rhos, clip_c_threshold)  # c_i in eq. 1
    deltas_t = clipped_rhos * (rewards + discounts * next_values - values)  # delta_t V in eq. 1
    # The trace factor that carries A_{t+1} back to A_t; continues cuts it at truncations as well as terminations.
    traces_t = discounts * continue_mask_t.to(discounts.dtype) * cs

    acc = torch.zeros_like(values[0])  # A_T = 0
    vs_minus_v_xs = []
    for t in range(T - 1, -1, -1):
        acc = deltas_t[t] + traces_t[t] * acc
        vs_minus_v_xs.append(acc)
    vs = values + torch.stack(vs_minus_v_xs[::-1])  # [T, B]

    # vs'_{t+1}: the next slot's target while inside the episode, else the true successor's value.
    vs_tp1 = torch.cat([vs[1:], next_values[-1:]], dim=0)
    inside_t = torch.cat([continue_mask_t[:-1], torch.zeros_like(continue_mask_t[-1:])], dim=0)
    vs_tp1 = torch.where(inside_t, vs_tp1, next_values)
    pg_advantages = _clip(rhos, clip_pg_rho_threshold) * (rewards + discounts * vs_tp1 - values)
    return VTraceReturns(vs=vs, pg_advantages=pg_advantages, log_rhos=log_rhos)


def vtrace_from_logits(
    behaviour_logits: Tensor,
    target_logits: Tensor,
    actions: Tensor,
    discounts: Tensor,
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    continues: Tensor,
    clip_rho_threshold: float | None = 1.0,
    clip_c_threshold: float | None = 1.0,
    clip_pg_rho_threshold: float | None = 1.0,
) -> VTraceReturns:
    """V-trace with log_rhos = log pi(a_t | x_t) - log mu(a_t | x_t) computed from logits.

    `behaviour_logits` (mu, the actor's policy) and `target_logits` (pi, the learner's) are [T, B, A]; `actions`
    [T, B] integer; the rest as in `vtrace_from_importance_weights`. Returned tensors are detached; the learner
    computes log pi(a_t | x_t) with gradient itself (`agents.ops.losses.policy_gradient_loss`).
    """
    assert behaviour_logits.shape == target_logits.shape, (
        f"behaviour_logits {tuple(behaviour_logits.shape)} vs target_logits {tuple(target_logits.shape)}"
    )
    with torch.no_grad():
        log_rhos = action_log_probs(target_logits.detach(), actions) - action_log_probs(
            behaviour_logits.detach(), actions
        )
    return vtrace_from_importance_weights(
        log_rhos,
        discounts,
        rewards,
        values,
        next_values,
        continues,
        clip_rho_threshold=clip_rho_threshold,
        clip_c_threshold=clip_c_threshold,
        clip_pg_rho_threshold=clip_pg_rho_threshold,
    )
