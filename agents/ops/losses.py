"""Actor-critic loss terms of IMPALA (Espeholt et al. 2018, arXiv:1802.01561, Section 4.2).

Pure functions of time-major tensors: `logits` [T, B, A], `actions` / `advantages` / `targets` / `values` [T, B].
The IMPALA objective for one unroll is

    loss = policy_gradient_loss + baseline_cost * baseline_loss + entropy_cost * entropy_loss

with the V-trace targets `vs` as baseline targets and the V-trace `pg_advantages` as advantages
(`agents.ops.vtrace`).

Reduction: MEAN over the T * B entries, for all three terms. This is a deliberate deviation from
deepmind/scalable_agent and facebookresearch/torchbeast, which SUM over T and B. With a mean, the loss scale and
the relative weight of the three terms do not depend on the batch size or the unroll length, so the IMPALA cost
coefficients (0.5 baseline, 0.01 entropy) keep their meaning when either changes. What changes against a
torchbeast-style sum: gradients are smaller by a factor T * B. RMSProp / Adam are nearly invariant to that scale
(only their epsilon becomes relatively larger), but a gradient-norm clip tuned for summed losses (torchbeast's
`grad_norm_clipping=40`) must be divided by T * B to act the same (the learner does so: `optim.max_grad_norm` is in
summed-loss units under either reduction); SGD learning rates must be multiplied by T * B.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def _check_logits(logits: Tensor) -> None:
    assert logits.ndim == 3, f"logits must be [T, B, A], got shape {tuple(logits.shape)}"


def action_log_probs(logits: Tensor, actions: Tensor) -> Tensor:
    """log pi(a_t | x_t) for the taken actions: [T, B, A] logits, [T, B] integer actions -> [T, B].

    Uses log_softmax + gather rather than `torch.distributions.Categorical.log_prob` (vwxyzjn/cleanrl PR #162
    found wrong gradients with the latter combined with gradient accumulation), and stays differentiable w.r.t.
    `logits`.
    """
    _check_logits(logits)
    assert actions.shape == logits.shape[:2], f"actions {tuple(actions.shape)} vs logits {tuple(logits.shape)}"
    assert not actions.is_floating_point(), "actions must be an integer tensor"
    log_probs = F.log_softmax(logits, dim=-1)  # [T, B, A]
    return torch.gather(log_probs, -1, actions.long().unsqueeze(-1)).squeeze(-1)  # [T, B]


def policy_gradient_loss(logits: Tensor, actions: Tensor, advantages: Tensor) -> Tensor:
    """Policy-gradient surrogate: mean over [T, B] of -log pi(a_t | x_t) * A_t, a scalar.

    Its gradient is the IMPALA policy update (Espeholt et al. 2018, Section 4.2, first term),
    rho_s * grad log pi(a_s | x_s) * (r_s + gamma * v_{s+1} - V(x_s)), when `advantages` are V-trace's
    `pg_advantages`. The advantages are detached: they are a fixed weight, not something to optimise.
    Mean, not torchbeast's sum; see the module docstring.
    """
    assert advantages.shape == logits.shape[:2], f"advantages {tuple(advantages.shape)} vs logits {logits.shape}"
    log_pi_t = action_log_probs(logits, actions)  # [T, B]
    return -(log_pi_t * advantages.detach()).mean()


def entropy_loss(logits: Tensor) -> Tensor:
    """Negative policy entropy, mean over [T, B]: mean_t,b sum_a pi(a) log pi(a), a scalar.

    Adding `entropy_cost * entropy_loss` to the loss raises the entropy (Espeholt et al. 2018, Section 4.2, third
    term; Mnih et al. 2016). Mean, not torchbeast's sum; see the module docstring. Logits must be finite.
    """
    _check_logits(logits)
    log_probs = F.log_softmax(logits, dim=-1)  # [T, B, A]
    neg_entropy_t = (log_probs.exp() * log_probs).sum(dim=-1)  # [T, B]
    return neg_entropy_t.mean()


def baseline_loss(targets: Tensor, values: Tensor) -> Tensor:
    """Value regression: 0.5 * mean over [T, B] of (v_s - V(x_s))^2, a scalar.

    The targets (V-trace `vs`) are detached, so only `values` receives gradient (Espeholt et al. 2018, Section 4.2,
    second term). Mean, not torchbeast's sum; see the module docstring.
    """
    assert values.ndim == 2 and targets.shape == values.shape, (
        f"targets {tuple(targets.shape)} and values {tuple(values.shape)} must both be [T, B]"
    )
    return 0.5 * ((targets.detach() - values) ** 2).mean()
