"""n-step, TD(lambda) and Monte-Carlo returns against slow NumPy versions of their textbook definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from decoupled.agents.ops.returns import discounted_returns, lambda_returns, n_step_returns

GAMMA = 0.9


def assert_close(actual, expected, rtol=1e-7, atol=1e-7, msg=""):
    """np.testing on tensors: torch.testing.assert_close costs ~1 s of lazy imports on first use."""
    np.testing.assert_allclose(actual.detach().numpy(), expected.detach().numpy(), rtol=rtol, atol=atol, err_msg=msg)


def n_step_reference(rewards, discounts, continues, next_values, n):
    """G_t^(n) = sum_{k<m} (prod_{j<k} gamma_{t+j}) r_{t+k} + (prod_{j<m} gamma_{t+j}) V(x'_{t+m}) (S&B eq. 7.1),
    with m <= n cut at the unroll end and at the episode end."""
    T, B = rewards.shape
    out = np.zeros((T, B))
    for b in range(B):
        for t in range(T):
            g, coef = 0.0, 1.0
            for k in range(n):
                i = t + k
                g += coef * rewards[i, b]
                coef *= discounts[i, b]
                if k == n - 1 or i == T - 1 or not continues[i, b]:
                    g += coef * next_values[i, b]
                    break
            out[t, b] = g
    return out


def steps_to_horizon(continues, t, b):
    """Number of transitions from t up to and including the episode end or the unroll end."""
    T = continues.shape[0]
    i = t
    while i < T - 1 and continues[i, b]:
        i += 1
    return i - t + 1


def lambda_reference(rewards, discounts, continues, next_values, lam):
    """Truncated lambda-return as a weighted average of n-step returns (Sutton & Barto 2018, eqs. 12.2 / 12.9):
    G^lambda_t = (1 - lambda) sum_{n=1}^{N-1} lambda^{n-1} G^(n)_t + lambda^{N-1} G^(N)_t, N = steps to horizon."""
    T, B = rewards.shape
    n_step = {n: n_step_reference(rewards, discounts, continues, next_values, n) for n in range(1, T + 1)}
    out = np.zeros((T, B))
    for b in range(B):
        for t in range(T):
            N = steps_to_horizon(continues, t, b)
            g = sum((1 - lam) * lam ** (n - 1) * n_step[n][t, b] for n in range(1, N))
            out[t, b] = g + lam ** (N - 1) * n_step[N][t, b]
    return out


def monte_carlo_reference(rewards, discounts, continues, bootstrap):
    """sum_k (prod_{j<k} gamma_{t+j}) r_{t+k} to the episode end, plus the discounted bootstrap at the unroll end."""
    T, B = rewards.shape
    out = np.zeros((T, B))
    for b in range(B):
        for t in range(T):
            g, coef = 0.0, 1.0
            for i in range(t, T):
                g += coef * rewards[i, b]
                coef *= discounts[i, b]
                if i == T - 1:
                    g += coef * bootstrap[b]
                elif not continues[i, b]:
                    break
            out[t, b] = g
    return out


def random_unroll(rng, T, B, p_term=0.15, p_trunc=0.15):
    u = rng.random((T, B))
    terminated = u < p_term
    truncated = (u >= p_term) & (u < p_term + p_trunc)
    values = rng.normal(size=(T, B))
    next_values = np.concatenate([values[1:], rng.normal(size=(1, B))], axis=0)
    next_values = np.where(terminated | truncated, rng.normal(size=(T, B)), next_values)
    return dict(
        rewards=rng.normal(size=(T, B)),
        discounts=GAMMA * (1.0 - terminated),
        continues=1.0 - (terminated | truncated),
        next_values=next_values,
    )


def as_torch(d):
    return {k: torch.as_tensor(v, dtype=torch.float64) for k, v in d.items()}


@pytest.mark.parametrize("T,B", [(1, 1), (6, 3), (15, 4)])
@pytest.mark.parametrize("n", [1, 2, 5, 40])
def test_n_step_matches_reference(T, B, n):
    d = random_unroll(np.random.default_rng(T * 31 + B + n), T, B)
    got = n_step_returns(**as_torch(d), n=n)
    np.testing.assert_allclose(got.numpy(), n_step_reference(**d, n=n), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("T,B", [(1, 1), (6, 3), (15, 4)])
@pytest.mark.parametrize("lam", [0.0, 0.5, 0.95, 1.0])
def test_lambda_matches_reference(T, B, lam):
    d = random_unroll(np.random.default_rng(T * 17 + B), T, B)
    got = lambda_returns(**as_torch(d), lambda_=lam)
    np.testing.assert_allclose(got.numpy(), lambda_reference(**d, lam=lam), rtol=1e-10, atol=1e-10)


def test_random_unrolls_contain_both_boundary_kinds():
    d = random_unroll(np.random.default_rng(15 * 17 + 4), 15, 4)
    ends = d["continues"][:-1] == 0
    assert (ends & (d["discounts"][:-1] == 0)).any() and (ends & (d["discounts"][:-1] > 0)).any()


@pytest.mark.parametrize("T,B", [(1, 2), (9, 3)])
def test_discounted_matches_reference(T, B):
    rng = np.random.default_rng(T + B)
    d = random_unroll(rng, T, B)
    bootstrap = rng.normal(size=B)
    got = discounted_returns(
        *(torch.as_tensor(d[k]) for k in ("rewards", "discounts", "continues")), torch.as_tensor(bootstrap)
    )
    np.testing.assert_allclose(
        got.numpy(), monte_carlo_reference(d["rewards"], d["discounts"], d["continues"], bootstrap), rtol=1e-10
    )


def test_closed_forms():
    # Constant reward 1, gamma 0.5, no boundaries, bootstrap 0: G_t = 2 (1 - 0.5^(T - t)).
    T = 5
    ones = torch.ones(T, 1, dtype=torch.float64)
    discounts, nv = 0.5 * ones, torch.zeros(T, 1, dtype=torch.float64)
    expected = torch.tensor([[2 * (1 - 0.5 ** (T - t))] for t in range(T)], dtype=torch.float64)
    assert_close(lambda_returns(ones, discounts, ones, nv, 1.0), expected)
    assert_close(n_step_returns(ones, discounts, ones, nv, T), expected)
    assert_close(discounted_returns(ones, discounts, ones, nv[0]), expected)
    # n = 2: 1 + 0.5 everywhere except the last step.
    assert_close(n_step_returns(ones, discounts, ones, nv, 2)[:-1], 1.5 * ones[:-1])
    # lambda = 0 is the one-step TD target, which is the 1-step return.
    d = as_torch(random_unroll(np.random.default_rng(0), 8, 3))
    assert_close(lambda_returns(**d, lambda_=0.0), d["rewards"] + d["discounts"] * d["next_values"])
    assert_close(n_step_returns(**d, n=1), d["rewards"] + d["discounts"] * d["next_values"])


def test_discounted_equals_lambda_one_without_truncations():
    rng = np.random.default_rng(21)
    d = random_unroll(rng, 12, 3, p_term=0.25, p_trunc=0.0)
    t = as_torch(d)
    got = discounted_returns(t["rewards"], t["discounts"], t["continues"], t["next_values"][-1])
    assert_close(got, lambda_returns(**t, lambda_=1.0))


def _boundary_unroll(kind):
    """One column, T = 6, episode A = steps 0..2 (ended by `kind` at step 2), episode B = steps 3..5."""
    d = random_unroll(np.random.default_rng(8), 6, 1, p_term=0.0, p_trunc=0.0)
    d["continues"][2, 0] = 0.0
    if kind == "terminated":
        d["discounts"][2, 0] = 0.0
    return d


FNS = {
    "n_step_3": lambda d: n_step_returns(**as_torch(d), n=3),
    "n_step_10": lambda d: n_step_returns(**as_torch(d), n=10),
    "lambda_0.9": lambda d: lambda_returns(**as_torch(d), lambda_=0.9),
    "lambda_1": lambda d: lambda_returns(**as_torch(d), lambda_=1.0),
}


@pytest.mark.parametrize("fn", FNS.keys())
def test_bootstraps_on_truncation_not_on_termination(fn):
    # (b) perturb V(x'_3) = next_values[2], the value of episode A's final observation.
    for kind, should_move in (("truncated", True), ("terminated", False)):
        d = _boundary_unroll(kind)
        base = FNS[fn](d)
        d["next_values"][2, 0] += 10.0
        moved = FNS[fn](d)
        diff = (moved - base).abs()
        if should_move:
            assert torch.all(diff[:3] > 1e-3), (kind, diff)
        else:
            assert torch.all(diff[:3] == 0), (kind, diff)
        assert torch.all(diff[3:] == 0), (kind, diff)


@pytest.mark.parametrize("fn", FNS.keys())
@pytest.mark.parametrize("kind", ["terminated", "truncated"])
def test_no_information_crosses_an_episode_boundary(fn, kind):
    # (c) episode B's rewards and values do not reach episode A's targets...
    d = _boundary_unroll(kind)
    base = FNS[fn](d)
    for key in ("rewards", "next_values"):
        moved_d = {k: v.copy() for k, v in d.items()}
        moved_d[key][3:] += 5.0
        moved = FNS[fn](moved_d)
        assert_close(moved[:3], base[:3], rtol=0, atol=0, msg=key)
        assert (moved[3:] - base[3:]).abs().min().item() > 1e-3, key
    # ...but they do when there is no boundary.
    joined = random_unroll(np.random.default_rng(8), 6, 1, p_term=0.0, p_trunc=0.0)
    base = FNS[fn](joined)
    joined["rewards"][3:] += 5.0
    if fn == "n_step_3":
        assert (FNS[fn](joined)[1:3] - base[1:3]).abs().min().item() > 1e-3
    else:
        assert (FNS[fn](joined)[:3] - base[:3]).abs().min().item() > 1e-3


def test_discounted_stops_at_episode_end():
    d = _boundary_unroll("truncated")
    t = as_torch(d)
    base = discounted_returns(t["rewards"], t["discounts"], t["continues"], t["next_values"][-1])
    t["rewards"][3:] += 5.0
    moved = discounted_returns(t["rewards"], t["discounts"], t["continues"], t["next_values"][-1])
    assert_close(moved[:3], base[:3], rtol=0, atol=0)
    assert (moved[3:] - base[3:]).abs().min().item() > 1e-3


@pytest.mark.parametrize(
    "fn",
    [
        lambda r, nv, d, c: n_step_returns(r, d, c, nv, n=3),
        lambda r, nv, d, c: lambda_returns(r, d, c, nv, lambda_=0.8),
        lambda r, nv, d, c: discounted_returns(r, d, c, nv[-1]),
    ],
    ids=["n_step", "lambda", "discounted"],
)
def test_gradcheck(fn):
    # (d) differentiable w.r.t. rewards, next_values and discounts, boundaries included.
    d = as_torch(random_unroll(np.random.default_rng(12), 7, 3))
    r, nv, disc = (d[k].clone().requires_grad_(True) for k in ("rewards", "next_values", "discounts"))
    assert torch.autograd.gradcheck(lambda r, nv, disc: fn(r, nv, disc, d["continues"]), (r, nv, disc))


def test_inputs_are_untouched_and_bool_continues_accepted():
    d = as_torch(random_unroll(np.random.default_rng(13), 9, 2))
    before = {k: v.clone() for k, v in d.items()}
    as_float = lambda_returns(**d, lambda_=0.7)
    as_bool = lambda_returns(**{**d, "continues": d["continues"].bool()}, lambda_=0.7)
    assert_close(as_float, as_bool, rtol=0, atol=0)
    assert_close(
        n_step_returns(**d, n=4), n_step_returns(**{**d, "continues": d["continues"].bool()}, n=4), rtol=0, atol=0
    )
    for k, v in d.items():
        assert_close(v, before[k], rtol=0, atol=0)


def test_rejects_bad_arguments():
    d = as_torch(random_unroll(np.random.default_rng(0), 4, 2))
    with pytest.raises(AssertionError):
        n_step_returns(**d, n=0)
    with pytest.raises(AssertionError):
        lambda_returns(**d, lambda_=1.5)
    with pytest.raises(AssertionError):
        lambda_returns(**{**d, "next_values": d["next_values"][1:]}, lambda_=0.5)
