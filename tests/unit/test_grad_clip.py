"""The learner's gradient clip (runners/training/actor_learner.py): `optim.max_grad_norm` is in summed-loss units,
so a clip acts the same under `loss_reduction: sum` and `mean`; a clip far above the gradients is reported."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from decoupled.agents import get_agent
from decoupled.agents.impala import ImpalaConfig
from decoupled.envs.base import EnvSpec
from decoupled.runners.training.actor_learner import Learner
from decoupled.runners.training.config import load_config

T, B = 5, 4


def _rollout(spec: EnvSpec, net, seed: int = 0) -> dict:
    """A learner batch [T+1, B] of random transitions (one episode end inside), with the net's initial state."""
    rng = np.random.default_rng(seed)
    A = spec.num_actions
    if spec.obs_dtype == np.uint8:
        obs = rng.integers(0, 2, (T + 1, B, *spec.obs_shape)).astype(np.uint8)
    else:
        obs = rng.normal(size=(T + 1, B, *spec.obs_shape)).astype(spec.obs_dtype)
    terminated = np.zeros((T + 1, B), bool)
    terminated[3, 1] = True
    data = {
        "obs": obs,
        "action": rng.integers(0, A, (T + 1, B)),
        "reward": rng.choice([0.0, 1.0, -1.0], (T + 1, B)).astype(np.float32),
        "terminated": terminated,
        "truncated": np.zeros((T + 1, B), bool),
        "behaviour_logits": rng.normal(size=(T + 1, B, A)).astype(np.float32),
        "truncation_value": np.zeros((T + 1, B), np.float32),
    }
    state = [s.numpy() for s in net.initial_state(B)]
    return {"data": data, "initial_state": state, "policy_version": 0}


def _impala(reduction: str, replay_ratio: float):
    spec = EnvSpec("vec", (6,), np.dtype(np.float32), 3)
    cfg = ImpalaConfig(torso="mlp", hidden_sizes=(16,), core="lstm", lstm_size=8, loss_reduction=reduction,
                       replay_ratio=replay_ratio, replay_start_steps=0)  # fmt: skip
    return get_agent("impala"), cfg, spec


def _unreal(reduction: str, replay_ratio: float):
    cfg = load_config("configs/unreal/catch.yaml", [f"agent.loss_reduction={reduction}", "agent.replay_start_steps=0"])
    return get_agent("unreal"), cfg.agent, EnvSpec("catch", (1, 10, 5), np.dtype(np.uint8), 3)


def _clipped_gradients(make, reduction, replay_ratio, max_grad_norm, check_updates=1):
    """One learner step on a fixed batch; returns the clipped gradients (left in .grad: the step is SGD with lr 0),
    and the step's metrics."""
    agent, cfg, spec = make(reduction, replay_ratio)
    torch.manual_seed(0)
    net = agent.make_net(spec, cfg)
    replay = agent.make_replay(cfg, spec, net, T, 0) if agent.make_replay else None
    learner = Learner(agent, cfg, net, torch.optim.SGD(net.parameters(), lr=0.0), torch.device("cpu"),
                      max_grad_norm, 3, replay)  # fmt: skip
    learner.clip_check_updates = check_updates  # the clip check's window: this one update
    rollout = _rollout(spec, net)
    metrics = learner.step(rollout)
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    return grads, metrics


@pytest.mark.parametrize(
    "make,replay_ratio,factor",
    [(_impala, 0.0, T * B), (_impala, 0.5, T * (B + 2)), (_unreal, 0.0, T * B)],
    ids=["impala", "impala_replay", "unreal"],
)
def test_the_clip_acts_the_same_under_sum_and_mean(make, replay_ratio, factor):
    """The summed loss's gradient is `factor` times the mean loss's (factor: the transitions the mean is over). With
    a clip that acts on both, the clipped gradients keep that ratio: the mean loss is clipped at max_grad_norm /
    factor, i.e. both at max_grad_norm in summed-loss units."""
    max_grad_norm = 1e-4
    g_sum, m_sum = _clipped_gradients(make, "sum", replay_ratio, max_grad_norm)
    g_mean, m_mean = _clipped_gradients(make, "mean", replay_ratio, max_grad_norm)
    assert m_sum["train/grad_norm"] > max_grad_norm and m_sum["train/grad_clipped"] == 1.0
    assert m_mean["train/grad_clipped"] == 1.0
    np.testing.assert_allclose(m_sum["train/grad_norm"], factor * m_mean["train/grad_norm"], rtol=1e-4)
    assert g_sum.keys() == g_mean.keys()
    clipped_norm = torch.sqrt(sum((g.double() ** 2).sum() for g in g_sum.values()))
    np.testing.assert_allclose(float(clipped_norm), max_grad_norm, rtol=1e-4)
    for name in g_sum:
        np.testing.assert_allclose(g_sum[name].numpy(), factor * g_mean[name].numpy(), rtol=1e-3, atol=1e-9,
                                   err_msg=name)  # fmt: skip
    # and a clip above the gradient leaves it alone under either reduction
    g_free, m_free = _clipped_gradients(make, "mean", replay_ratio, 10 * m_sum["train/grad_norm"])
    assert m_free["train/grad_clipped"] == 0.0
    np.testing.assert_allclose(m_free["train/grad_norm"], m_mean["train/grad_norm"], rtol=1e-6)


def test_a_clip_that_cannot_act_is_reported(capsys):
    """The issue's case: a clip of 40 on a mean loss whose gradient norms are far below it. The learner says so once
    its first updates are in; a clip that acts, one within 10x of the gradients, or none, says nothing."""
    _, metrics = _clipped_gradients(_impala, "mean", 0.0, 40.0 * 1e6)
    err = capsys.readouterr().err
    assert "optim.max_grad_norm=4e+07" in err and "will not act" in err and "summed-loss units" in err
    norm = metrics["train/grad_norm"]
    _clipped_gradients(_impala, "mean", 0.0, 40.0 * 1e6, check_updates=2)  # the window is not over yet
    _clipped_gradients(_impala, "sum", 0.0, 5 * norm * T * B)  # 5x the gradient: it may act some day
    _, metrics = _clipped_gradients(_impala, "sum", 0.0, None)
    assert metrics["train/grad_clipped"] == 0.0
    _clipped_gradients(_impala, "mean", 0.0, 1e-4)
    assert capsys.readouterr().err == ""
