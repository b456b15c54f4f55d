"""The IMPALA agent's loss (agents/impala.py) against a slow loop written from the paper (Espeholt et al. 2018,
eq. 1 and Sec. 4.2), under both reductions, and the replayed sequences of `agent.replay_ratio` weighed as one
batch of B + n sequences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from decoupled.agents.impala import ImpalaConfig, impala_loss, impala_replay_loss


def _batch(T, B, A, seed):
    """A random [T+1, B] batch (slot t+1: the transition out of obs_t) with terminations and truncations inside, and
    the net's outputs on it."""
    rng = np.random.default_rng(seed)
    terminated = rng.random((T + 1, B)) < 0.15
    truncated = (rng.random((T + 1, B)) < 0.15) & ~terminated
    batch = {
        "action": torch.as_tensor(rng.integers(0, A, (T + 1, B))),
        "reward": torch.as_tensor(rng.normal(size=(T + 1, B))),
        "terminated": torch.as_tensor(terminated),
        "truncated": torch.as_tensor(truncated),
        "behaviour_logits": torch.as_tensor(rng.normal(size=(T + 1, B, A))),
        "truncation_value": torch.as_tensor(np.where(truncated, rng.normal(size=(T + 1, B)), 0.0)),
    }
    outputs = {
        "policy_logits": torch.as_tensor(rng.normal(size=(T + 1, B, A))),
        "baseline": torch.as_tensor(rng.normal(size=(T + 1, B))),
    }
    return batch, outputs


def _impala_loss_slow(cfg: ImpalaConfig, batch, outputs) -> float:
    """The IMPALA loss by loops: V-trace targets v_s from eq. 1 (the sum of c-weighted TD errors up to the episode
    end or the unroll end), the policy gradient rho_s log pi(a_s|x_s) (r_s + gamma v_{s+1} - V(x_s)), 1/2 (v_s -
    V(x_s))^2 and the negative entropy; summed over every transition (the paper's TensorFlow code), or their mean
    over the T*B transitions under `loss_reduction: mean`. A termination bootstraps from nothing, a truncation from
    the actor's value of the final observation."""
    b = {k: v.numpy().astype(np.float64) for k, v in batch.items()}
    o = {k: v.detach().numpy().astype(np.float64) for k, v in outputs.items()}
    T, B = b["action"].shape[0] - 1, b["action"].shape[1]
    gamma = cfg.discount

    def log_softmax(z):
        return z - math.log(sum(math.exp(x) for x in z))

    total = 0.0
    for col in range(B):
        V = o["baseline"][:, col]
        log_pi, log_rho, ends, successor = [], [], [], []
        for t in range(T):
            a = int(b["action"][t + 1, col])
            lp = log_softmax(o["policy_logits"][t, col])
            log_pi.append(lp)
            log_rho.append(lp[a] - log_softmax(b["behaviour_logits"][t + 1, col])[a])
            term, trunc = bool(b["terminated"][t + 1, col]), bool(b["truncated"][t + 1, col])
            ends.append(term or trunc)
            successor.append(0.0 if term else b["truncation_value"][t + 1, col] if trunc else V[t + 1])
        rho = [math.exp(x) for x in log_rho]
        vs = []
        for s in range(T):
            v, weight = V[s], 1.0
            for t in range(s, T):
                delta = min(rho[t], cfg.clip_rho_threshold) * (b["reward"][t + 1, col] + gamma * successor[t] - V[t])
                v += weight * delta
                if ends[t]:
                    break
                weight *= gamma * min(rho[t], cfg.clip_c_threshold)
            vs.append(v)
        for s in range(T):
            a = int(b["action"][s + 1, col])
            nxt = successor[s] if ends[s] or s == T - 1 else vs[s + 1]
            advantage = min(rho[s], cfg.clip_pg_rho_threshold) * (b["reward"][s + 1, col] + gamma * nxt - V[s])
            pg = -log_pi[s][a] * advantage
            baseline = 0.5 * (vs[s] - V[s]) ** 2
            neg_entropy = sum(math.exp(x) * x for x in log_pi[s])
            total += pg + cfg.baseline_cost * baseline + cfg.entropy_cost * neg_entropy
    return total if cfg.loss_reduction == "sum" else total / (T * B)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_impala_loss_matches_the_loop_reference(reduction):
    """`sum` is the paper's sum over the T*B transitions (not the mean times a wrong factor), `mean` its mean
    (float32 discounts inside: agreement to 1e-6)."""
    cfg = ImpalaConfig(loss_reduction=reduction, entropy_cost=0.05)
    batch, outputs = _batch(T=6, B=3, A=4, seed=0)
    loss, metrics = impala_loss(cfg, batch, outputs)
    np.testing.assert_allclose(float(loss), _impala_loss_slow(cfg, batch, outputs), rtol=1e-6)
    parts = metrics["loss/policy"] + 0.5 * metrics["loss/baseline"] + 0.05 * metrics["loss/entropy"]
    np.testing.assert_allclose(float(parts), float(loss), rtol=1e-6)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_replayed_sequences_weigh_as_one_concatenated_batch(reduction):
    """agent.replay_ratio > 0: the loss on B on-policy and n replayed sequences is the loss of one batch of B + n
    sequences (each transition one weight), computed here on an explicitly concatenated batch."""
    cfg = ImpalaConfig(loss_reduction=reduction, replay_ratio=0.5)
    T, B, n, A = 5, 4, 2, 3
    batch, outputs = _batch(T, B, A, seed=1)
    replay, replay_outputs = _batch(T, n, A, seed=2)
    loss, _ = impala_replay_loss(
        cfg, {**batch, "replay": {"seq": replay}}, {**outputs, "replay": {"seq": replay_outputs}}
    )
    cat = lambda x, y: {k: torch.cat([x[k], y[k]], dim=1) for k in x}  # noqa: E731 - along the batch axis
    concatenated, _ = impala_loss(cfg, cat(batch, replay), cat(outputs, replay_outputs))
    np.testing.assert_allclose(float(loss), float(concatenated), rtol=1e-6)
    np.testing.assert_allclose(float(loss), _impala_loss_slow(cfg, cat(batch, replay), cat(outputs, replay_outputs)),
                               rtol=1e-6)  # fmt: skip
