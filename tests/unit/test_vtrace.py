"""V-trace against slow NumPy versions of Espeholt et al. 2018 (arXiv:1802.01561), eq. 1 and Section 4.2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from decoupled.agents.ops.returns import lambda_returns
from decoupled.agents.ops.vtrace import VTraceReturns, vtrace_from_importance_weights, vtrace_from_logits

GAMMA = 0.9


def assert_close(actual, expected, rtol=1e-7, atol=1e-7, msg=""):
    """np.testing on tensors: torch.testing.assert_close costs ~1 s of lazy imports on first use."""
    np.testing.assert_allclose(actual.detach().numpy(), expected.detach().numpy(), rtol=rtol, atol=atol, err_msg=msg)


def _clip(x: float, threshold: float | None) -> float:
    return x if threshold is None else min(x, threshold)


def vtrace_reference(log_rhos, discounts, rewards, values, next_values, continues, rho_bar, c_bar, pg_rho_bar):
    """Eq. 1 as a direct sum, one batch column at a time, with the trace cut where the episode ends:

    v_s = V(x_s) + sum_{t=s}^{end} (prod_{i=s}^{t-1} gamma_i c_i) delta_t,
    delta_t = rho_t (r_t + gamma_t V(x'_{t+1}) - V(x_t)),
    and pg_s = rho_pg_s (r_s + gamma_s v'_{s+1} - V(x_s)) (Section 4.2).
    """
    T, B = rewards.shape
    rhos = np.exp(log_rhos)
    vs = np.zeros((T, B))
    pg = np.zeros((T, B))
    for b in range(B):
        for s in range(T):
            v_s = values[s, b]
            coef = 1.0  # prod_{i=s}^{t-1} gamma_i c_i
            for t in range(s, T):
                delta_t = _clip(rhos[t, b], rho_bar) * (
                    rewards[t, b] + discounts[t, b] * next_values[t, b] - values[t, b]
                )
                v_s += coef * delta_t
                if not continues[t, b]:
                    break  # the episode ends after step t
                coef *= discounts[t, b] * _clip(rhos[t, b], c_bar)
            vs[s, b] = v_s
        for s in range(T):
            v_next = vs[s + 1, b] if s + 1 < T and continues[s, b] else next_values[s, b]
            pg[s, b] = _clip(rhos[s, b], pg_rho_bar) * (rewards[s, b] + discounts[s, b] * v_next - values[s, b])
    return vs, pg


def torchbeast_vtrace(log_rhos, discounts, rewards, values, bootstrap_value, rho_bar=1.0, pg_rho_bar=1.0):
    """Standard V-trace as in facebookresearch/torchbeast / deepmind/scalable_agent (no truncation handling)."""
    rhos = np.exp(log_rhos)
    clipped_rhos = np.minimum(rhos, rho_bar)
    cs = np.minimum(rhos, 1.0)
    values_tp1 = np.concatenate([values[1:], bootstrap_value[None]], axis=0)
    deltas = clipped_rhos * (rewards + discounts * values_tp1 - values)
    acc = np.zeros_like(bootstrap_value)
    result = []
    for t in range(discounts.shape[0] - 1, -1, -1):
        acc = deltas[t] + discounts[t] * cs[t] * acc
        result.append(acc)
    vs = np.stack(result[::-1]) + values
    vs_tp1 = np.concatenate([vs[1:], bootstrap_value[None]], axis=0)
    pg = np.minimum(rhos, pg_rho_bar) * (rewards + discounts * vs_tp1 - values)
    return vs, pg


def random_unroll(rng, T, B, p_term=0.15, p_trunc=0.15):
    """A [T, B] unroll with terminations and truncations inside; next_values follow the documented convention."""
    u = rng.random((T, B))
    terminated = u < p_term
    truncated = (u >= p_term) & (u < p_term + p_trunc)
    values = rng.normal(size=(T, B))
    bootstrap = rng.normal(size=B)
    next_values = np.concatenate([values[1:], bootstrap[None]], axis=0)
    next_values = np.where(truncated, rng.normal(size=(T, B)), next_values)  # V(final obs of truncated episode)
    next_values = np.where(terminated, rng.normal(size=(T, B)), next_values)  # value of a terminal obs: unused
    return dict(
        log_rhos=rng.normal(size=(T, B)),
        discounts=GAMMA * (1.0 - terminated),
        rewards=rng.normal(size=(T, B)),
        values=values,
        next_values=next_values,
        continues=1.0 - (terminated | truncated),
    ), (terminated, truncated, bootstrap)


def as_torch(d):
    return {k: torch.as_tensor(v, dtype=torch.float64) for k, v in d.items()}


def run_vtrace(d, **clips) -> VTraceReturns:
    return vtrace_from_importance_weights(**as_torch(d), **clips)


CLIPS = [(1.0, 1.0, 1.0), (None, None, None), (2.0, 0.5, 1.5), (0.7, 1.3, None)]


@pytest.mark.parametrize("T,B", [(1, 1), (5, 3), (20, 4)])
@pytest.mark.parametrize("clips", CLIPS)
def test_matches_direct_sum_reference(T, B, clips):
    rng = np.random.default_rng(T * 100 + B)
    d, (terminated, truncated, _) = random_unroll(rng, T, B)
    rho_bar, c_bar, pg_rho_bar = clips
    out = run_vtrace(d, clip_rho_threshold=rho_bar, clip_c_threshold=c_bar, clip_pg_rho_threshold=pg_rho_bar)
    vs, pg = vtrace_reference(**d, rho_bar=rho_bar, c_bar=c_bar, pg_rho_bar=pg_rho_bar)
    np.testing.assert_allclose(out.vs.numpy(), vs, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out.pg_advantages.numpy(), pg, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(out.log_rhos.numpy(), d["log_rhos"])
    assert out.vs.dtype == torch.float64 and out.vs.shape == (T, B)


def test_random_unrolls_contain_both_boundary_kinds():
    # Guards the reference test above against silently testing only the boundary-free case.
    d, (terminated, truncated, _) = random_unroll(np.random.default_rng(2004), 20, 4)
    assert terminated[:-1].any() and truncated[:-1].any()


@pytest.mark.parametrize("T,B", [(1, 2), (7, 3), (30, 5)])
def test_equals_standard_vtrace_without_boundaries(T, B):
    rng = np.random.default_rng(7 * T + B)
    d, (_, _, bootstrap) = random_unroll(rng, T, B, p_term=0.0, p_trunc=0.0)
    d["log_rhos"] = 1.5 * d["log_rhos"]  # make clipping bite
    out = run_vtrace(d, clip_rho_threshold=1.0, clip_c_threshold=1.0, clip_pg_rho_threshold=1.0)
    vs, pg = torchbeast_vtrace(d["log_rhos"], d["discounts"], d["rewards"], d["values"], bootstrap)
    np.testing.assert_allclose(out.vs.numpy(), vs, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out.pg_advantages.numpy(), pg, rtol=1e-10, atol=1e-10)


def test_equals_standard_vtrace_with_terminations_only():
    # torchbeast encodes terminations through discounts = gamma * (1 - done) only; the continues mask is redundant
    # there and must not change anything.
    d, (_, _, bootstrap) = random_unroll(np.random.default_rng(3), 25, 4, p_term=0.2, p_trunc=0.0)
    assert d["continues"].min() == 0.0
    d["next_values"] = np.concatenate([d["values"][1:], bootstrap[None]], axis=0)  # what torchbeast would use
    out = run_vtrace(d)
    vs, pg = torchbeast_vtrace(d["log_rhos"], d["discounts"], d["rewards"], d["values"], bootstrap)
    np.testing.assert_allclose(out.vs.numpy(), vs, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out.pg_advantages.numpy(), pg, rtol=1e-10, atol=1e-10)


def test_on_policy_vs_is_the_lambda_one_return():
    # (a) rho = 1 everywhere: eq. 1 reduces to the n-step Bellman target, i.e. the lambda = 1 return, boundaries
    # included (Espeholt et al. 2018, Section 4.1, "on-policy case").
    d, _ = random_unroll(np.random.default_rng(11), 16, 5)
    d["log_rhos"] = np.zeros_like(d["log_rhos"])
    t = as_torch(d)
    out = vtrace_from_importance_weights(**t)
    expected = lambda_returns(t["rewards"], t["discounts"], t["continues"], t["next_values"], lambda_=1.0)
    assert_close(out.vs, expected, rtol=1e-10, atol=1e-10)
    vs_tp1 = torch.where(
        torch.cat([t["continues"][:-1].bool(), torch.zeros(1, 5, dtype=torch.bool)]),
        torch.cat([out.vs[1:], out.vs[-1:]]),
        t["next_values"],
    )
    assert_close(out.pg_advantages, t["rewards"] + t["discounts"] * vs_tp1 - t["values"])


def _boundary_unroll():
    """One column, T = 6: episode A = steps 0..2 ends at step 2, episode B = steps 3..5."""
    rng = np.random.default_rng(5)
    T = 6
    values = rng.normal(size=(T, 1))
    next_values = np.concatenate([values[1:], rng.normal(size=(1, 1))], axis=0)
    next_values[2, 0] = rng.normal()  # V(final obs of episode A), not values[3]
    return dict(
        log_rhos=0.5 * rng.normal(size=(T, 1)),
        discounts=np.full((T, 1), GAMMA),
        rewards=rng.normal(size=(T, 1)),
        values=values,
        next_values=next_values,
        continues=np.ones((T, 1)),
    )


def test_bootstraps_on_truncation():
    # (b) a truncation at step 2 keeps discount gamma: the targets of episode A depend on V(final obs).
    d = _boundary_unroll()
    d["continues"][2, 0] = 0.0
    base = run_vtrace(d)
    d["next_values"][2, 0] += 1.0
    moved = run_vtrace(d)
    assert torch.all((moved.vs[:3] - base.vs[:3]).abs() > 1e-3)
    assert (moved.pg_advantages[2] - base.pg_advantages[2]).abs().item() > 1e-3
    assert_close(moved.vs[3:], base.vs[3:], rtol=0, atol=0)


def test_does_not_bootstrap_on_termination():
    # (b) a termination at step 2 has discount 0: V(terminal obs) must not matter anywhere.
    d = _boundary_unroll()
    d["continues"][2, 0] = 0.0
    d["discounts"][2, 0] = 0.0
    base = run_vtrace(d)
    d["next_values"][2, 0] += 100.0
    moved = run_vtrace(d)
    assert_close(moved.vs, base.vs, rtol=0, atol=0)
    assert_close(moved.pg_advantages, base.pg_advantages, rtol=0, atol=0)
    # Sanity: the same perturbation does matter when step 2 is not an episode end.
    d["discounts"][2, 0] = GAMMA
    d["continues"][2, 0] = 1.0
    d["next_values"][2, 0] = d["values"][3, 0]
    inside = run_vtrace(d)
    d["next_values"][2, 0] += 100.0
    assert (run_vtrace(d).vs[2] - inside.vs[2]).abs().item() > 1.0


@pytest.mark.parametrize("kind", ["terminated", "truncated"])
def test_no_information_crosses_an_episode_boundary(kind):
    # (c) changing anything of episode B (steps 3..5) leaves the targets of episode A (steps 0..2) unchanged.
    d = _boundary_unroll()
    d["continues"][2, 0] = 0.0
    if kind == "terminated":
        d["discounts"][2, 0] = 0.0
    base = run_vtrace(d)
    rng = np.random.default_rng(0)
    for key in ("rewards", "values", "log_rhos", "next_values"):
        moved_d = {k: v.copy() for k, v in d.items()}
        moved_d[key][3:] += rng.normal(size=(3, 1)) + 3.0
        moved = run_vtrace(moved_d)
        assert_close(moved.vs[:3], base.vs[:3], rtol=0, atol=0, msg=key)
        assert_close(moved.pg_advantages[:3], base.pg_advantages[:3], rtol=0, atol=0, msg=key)
        assert (moved.vs[3:] - base.vs[3:]).abs().max().item() > 1e-3, key  # the perturbation was effective
    # Without the boundary the same reward change does reach episode A.
    d["continues"][2, 0], d["discounts"][2, 0] = 1.0, GAMMA
    joined = run_vtrace(d)
    d["rewards"][3:] += 3.0
    assert (run_vtrace(d).vs[:3] - joined.vs[:3]).abs().min().item() > 1e-3


def test_outputs_carry_no_gradient_and_inputs_are_untouched():
    # (e)
    d, _ = random_unroll(np.random.default_rng(1), 8, 3)
    t = {k: v.clone().requires_grad_(True) for k, v in as_torch(d).items()}
    before = {k: v.detach().clone() for k, v in t.items()}
    out = vtrace_from_importance_weights(**t)
    for name, x in out._asdict().items():
        assert not x.requires_grad and x.grad_fn is None, name
    for k, v in t.items():
        assert_close(v.detach(), before[k], rtol=0, atol=0)
    logits_b = torch.randn(8, 3, 4, dtype=torch.float64, requires_grad=True)
    logits_t = torch.randn(8, 3, 4, dtype=torch.float64, requires_grad=True)
    actions = torch.randint(0, 4, (8, 3))
    t.pop("log_rhos")
    out = vtrace_from_logits(logits_b, logits_t, actions, **t)
    for name, x in out._asdict().items():
        assert not x.requires_grad and x.grad_fn is None, name


def test_vtrace_from_logits_uses_pi_over_mu():
    # (f) rho_t = pi(a_t | x_t) / mu(a_t | x_t) computed by hand from softmax probabilities.
    T, B, A = 4, 2, 3
    rng = np.random.default_rng(9)
    behaviour = rng.normal(size=(T, B, A))
    target = rng.normal(size=(T, B, A))
    actions = rng.integers(0, A, size=(T, B))
    d, _ = random_unroll(rng, T, B)
    d.pop("log_rhos")
    rhos = np.zeros((T, B))
    for t in range(T):
        for b in range(B):
            pi = np.exp(target[t, b]) / np.exp(target[t, b]).sum()
            mu = np.exp(behaviour[t, b]) / np.exp(behaviour[t, b]).sum()
            rhos[t, b] = pi[actions[t, b]] / mu[actions[t, b]]
    out = vtrace_from_logits(
        torch.as_tensor(behaviour), torch.as_tensor(target), torch.as_tensor(actions), **as_torch(d)
    )
    np.testing.assert_allclose(out.log_rhos.numpy(), np.log(rhos), rtol=1e-10, atol=1e-12)
    vs, pg = vtrace_reference(np.log(rhos), **d, rho_bar=1.0, c_bar=1.0, pg_rho_bar=1.0)
    np.testing.assert_allclose(out.vs.numpy(), vs, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out.pg_advantages.numpy(), pg, rtol=1e-10, atol=1e-10)
    # Swapping pi and mu inverts the ratio, so the order of the arguments is checked too.
    swapped = vtrace_from_logits(
        torch.as_tensor(target), torch.as_tensor(behaviour), torch.as_tensor(actions), **as_torch(d)
    )
    np.testing.assert_allclose(swapped.log_rhos.numpy(), -np.log(rhos), rtol=1e-10, atol=1e-12)


def test_clip_thresholds_are_used():
    d, _ = random_unroll(np.random.default_rng(4), 10, 3)
    d["log_rhos"] = np.abs(d["log_rhos"]) + 0.5  # every rho > 1.6, so every clip at 1 bites
    base = run_vtrace(d)
    for name in ("clip_rho_threshold", "clip_c_threshold", "clip_pg_rho_threshold"):
        unclipped = run_vtrace(d, **{name: None})
        assert not torch.allclose(unclipped.pg_advantages, base.pg_advantages) or not torch.allclose(
            unclipped.vs, base.vs
        ), name


def test_rejects_misaligned_inputs():
    d, _ = random_unroll(np.random.default_rng(0), 5, 2)
    t = as_torch(d)
    t["next_values"] = t["next_values"][:-1]
    with pytest.raises(AssertionError):
        vtrace_from_importance_weights(**t)
    t = as_torch(d)
    with pytest.raises(AssertionError):
        vtrace_from_importance_weights(**{k: v.reshape(-1) for k, v in t.items()})
