"""IMPALA loss terms (Espeholt et al. 2018, Section 4.2) against NumPy, including the mean reduction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from decoupled.agents.ops.losses import action_log_probs, baseline_loss, entropy_loss, policy_gradient_loss


def assert_close(actual, expected, rtol=1e-7, atol=1e-7, msg=""):
    """np.testing on tensors: torch.testing.assert_close costs ~1 s of lazy imports on first use."""
    np.testing.assert_allclose(actual.detach().numpy(), expected.detach().numpy(), rtol=rtol, atol=atol, err_msg=msg)


def log_softmax_reference(logits):
    out = np.zeros_like(logits)
    for idx in np.ndindex(logits.shape[:-1]):
        z = logits[idx]
        out[idx] = z - np.log(np.sum(np.exp(z)))
    return out


def inputs(T=5, B=3, A=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(T, B, A)) * 2.0, rng.integers(0, A, size=(T, B)), rng.normal(size=(T, B))


@pytest.mark.parametrize("T,B,A", [(1, 1, 2), (5, 3, 4), (8, 2, 18)])
def test_matches_numpy(T, B, A):
    logits, actions, adv = inputs(T, B, A, seed=T + B + A)
    log_pi = log_softmax_reference(logits)
    log_pi_a = np.array([[log_pi[t, b, actions[t, b]] for b in range(B)] for t in range(T)])
    targets = np.random.default_rng(1).normal(size=(T, B))

    got = action_log_probs(torch.as_tensor(logits), torch.as_tensor(actions))
    np.testing.assert_allclose(got.numpy(), log_pi_a, rtol=1e-12)
    # Mean over the T * B entries, not the sum (module docstring).
    pg = policy_gradient_loss(torch.as_tensor(logits), torch.as_tensor(actions), torch.as_tensor(adv))
    np.testing.assert_allclose(pg.item(), np.mean(-log_pi_a * adv), rtol=1e-12)
    ent = entropy_loss(torch.as_tensor(logits))
    np.testing.assert_allclose(ent.item(), np.mean(np.sum(np.exp(log_pi) * log_pi, axis=-1)), rtol=1e-12)
    base = baseline_loss(torch.as_tensor(targets), torch.as_tensor(adv))
    np.testing.assert_allclose(base.item(), 0.5 * np.mean((targets - adv) ** 2), rtol=1e-12)
    assert pg.ndim == ent.ndim == base.ndim == 0


def test_entropy_loss_sign_and_extremes():
    uniform = torch.zeros(2, 3, 5, dtype=torch.float64)
    assert_close(entropy_loss(uniform), torch.tensor(-np.log(5.0), dtype=torch.float64))
    peaked = torch.tensor([[[100.0, 0.0, 0.0]]], dtype=torch.float64)
    assert abs(entropy_loss(peaked).item()) < 1e-30 and entropy_loss(uniform) < entropy_loss(peaked)


def test_scale_does_not_depend_on_batch_or_unroll_size():
    logits, actions, adv = (torch.as_tensor(x) for x in inputs())
    values = torch.zeros_like(adv)
    tiled = lambda x: torch.cat([x, x], dim=0).repeat_interleave(3, dim=1)  # 2T x 3B copies
    assert_close(
        policy_gradient_loss(tiled(logits), tiled(actions), tiled(adv)), policy_gradient_loss(logits, actions, adv)
    )
    assert_close(entropy_loss(tiled(logits)), entropy_loss(logits))
    assert_close(baseline_loss(tiled(adv), tiled(values)), baseline_loss(adv, values))


def test_targets_and_advantages_are_detached():
    logits, actions, adv = (torch.as_tensor(x) for x in inputs())
    logits = logits.clone().requires_grad_(True)
    adv = adv.clone().requires_grad_(True)
    values = torch.zeros(5, 3, dtype=torch.float64, requires_grad=True)
    (policy_gradient_loss(logits, actions, adv) + baseline_loss(adv, values)).backward()
    assert adv.grad is None
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # d/dV 0.5 * mean (G - V)^2 = -(G - V) / (T * B)
    assert_close(values.grad, -(adv.detach() - 0.0) / 15)


def test_policy_gradient_direction():
    # A positive advantage on action a raises pi(a) after a gradient step.
    logits = torch.zeros(1, 1, 3, dtype=torch.float64, requires_grad=True)
    actions = torch.tensor([[1]])
    policy_gradient_loss(logits, actions, torch.ones(1, 1, dtype=torch.float64)).backward()
    stepped = logits.detach() - 0.5 * logits.grad
    assert action_log_probs(stepped, actions).item() > action_log_probs(logits.detach(), actions).item()


def test_gradcheck():
    # (d) float64 gradient checks w.r.t. logits and values.
    logits, actions, adv = (torch.as_tensor(x) for x in inputs(4, 2, 3))
    logits = logits.clone().requires_grad_(True)
    values = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: policy_gradient_loss(x, actions, adv), (logits,))
    assert torch.autograd.gradcheck(entropy_loss, (logits,))
    assert torch.autograd.gradcheck(lambda x: action_log_probs(x, actions), (logits,))
    assert torch.autograd.gradcheck(lambda v: baseline_loss(adv, v), (values,))


def test_rejects_bad_shapes():
    logits, actions, adv = (torch.as_tensor(x) for x in inputs())
    with pytest.raises(AssertionError):
        action_log_probs(logits, actions[:-1])
    with pytest.raises(AssertionError):
        policy_gradient_loss(logits, actions, adv[:, :-1])
    with pytest.raises(AssertionError):
        baseline_loss(adv, adv[:-1])
    with pytest.raises(AssertionError):
        entropy_loss(logits[0])
