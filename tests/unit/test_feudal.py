"""FeUdal Networks (agents/feudal.py): the dilated LSTM, gradient isolation between Manager and Worker, the intrinsic
reward and the transition policy gradient against slow references written from the paper's equations, goals of
zero norm, the config's refusals, and the agent end to end (dni_lstm Worker, resume, goal ablation)."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from decoupled.agents import get_agent
from decoupled.agents.feudal import (
    FeudalConfig,
    FeudalNet,
    feudal_loss,
    intrinsic_rewards,
    transition_policy_gradient,
)
from decoupled.agents.nets.cores import DilatedLSTM
from decoupled.envs.base import EnvSpec
from decoupled.runners.training.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
SPEC = EnvSpec(name="vec", obs_shape=(6,), obs_dtype=np.dtype(np.float32), num_actions=3)
C = 3  # horizon of the small nets below


def _cfg(**kw):
    base = dict(torso="mlp", hidden_sizes=(16,), manager_size=8, dilation=3, horizon=C, goal_embedding=4,
                worker_size=12, random_goal_prob=0.0)  # fmt: skip
    return FeudalConfig(**{**base, **kw})


def _batch(S=C + 7 + 1, B=4, seed=0, first_at=()):
    g = torch.Generator().manual_seed(seed)
    first = torch.zeros(S, B, dtype=torch.bool)
    for t, b in first_at:
        first[t, b] = True
    terminated = first.clone()
    return {
        "obs": torch.randn(S, B, 6, generator=g),
        "action": torch.randint(0, 3, (S, B), generator=g),
        "reward": torch.randn(S, B, generator=g),
        "terminated": terminated,
        "truncated": torch.zeros(S, B, dtype=torch.bool),
        "first": first,
        "behaviour_logits": torch.randn(S, B, 3, generator=g),
        "truncation_value": torch.zeros(S, B),
    }


def _forward(net, batch):
    inputs = {
        "obs": batch["obs"],
        "first": batch["first"],
        "prev_action": batch["action"],
        "prev_reward": batch["reward"],
    }
    return net(inputs, net.initial_state(batch["obs"].shape[1]))


# ------------------------------------------------------------------------------------------ F-1: the dilated LSTM
def test_dilated_lstm_updates_one_core_per_step_and_sums_them():
    torch.manual_seed(0)
    r, B, H = 10, 2, 5
    dl = DilatedLSTM(4, H, r)
    xs = torch.randn(25, B, 4, requires_grad=True)
    state = dl.initial_state(B)
    outs, hs = [], []
    for t in range(25):
        before = state[0].detach().clone()
        out, state = dl.step(xs[t], state)
        changed = (state[0].detach() != before).any(-1).any(0)  # [r]: which cores moved
        assert changed.tolist() == [j == t % r for j in range(r)], t
        assert torch.allclose(out, state[0].sum(1))
        outs.append(out)
        hs.append(state[0])
    # the gradient of core j's h at step 23 reaches only the inputs of steps j, j + r, ... (its own recurrence)
    j = 23 % r
    hs[23][:, j].sum().backward()
    reached = (xs.grad.abs().sum((1, 2)) > 0).tolist()
    assert reached == [t <= 23 and t % r == j for t in range(25)]


# ------------------------------------------------------------------------------------------ F-2: isolation
MANAGER = ("manager_space", "manager.")
WORKER = ("worker.", "action_embedding", "worker_value", "goal_embedding")


def _grads(net):
    return {n: (p.grad is not None and bool(p.grad.abs().sum() > 0)) for n, p in net.named_parameters()}


def test_the_workers_loss_never_reaches_the_manager():
    torch.manual_seed(1)
    cfg = _cfg(manager_cost=0.0, manager_value_cost=0.0)
    net = FeudalNet(SPEC, cfg)
    batch = _batch()
    outputs, _ = _forward(net, batch)
    feudal_loss(cfg, batch, outputs)[0].backward()
    got = _grads(net)
    assert not any(v for n, v in got.items() if n.startswith(MANAGER)), got
    assert all(got[n] for n in got if n.startswith(("action_embedding", "goal_embedding", "worker_value", "torso")))


def test_the_transition_policy_gradient_reaches_only_the_manager_and_the_torso():
    torch.manual_seed(2)
    cfg = _cfg()
    net = FeudalNet(SPEC, cfg)
    batch = _batch()
    outputs, _ = _forward(net, batch)
    s, g = outputs["manager_state"], outputs["goal"]
    S, B = s.shape[:2]
    terms, keep, _ = transition_policy_gradient(s, g, torch.ones(S - C, B), batch["first"], C)
    terms.sum().backward()
    got = _grads(net)
    assert not any(v for n, v in got.items() if n.startswith(WORKER)), got
    assert got["manager.cell.weight_ih"] and got["manager_space.0.weight"] and got["torso.net.1.weight"]
    assert not got["manager_value.weight"]


def test_s_is_only_a_target_in_the_tpg():
    s = torch.randn(8, 2, 5, requires_grad=True)
    g = torch.randn(8, 2, 5, requires_grad=True)
    terms, _, _ = transition_policy_gradient(s, g, torch.ones(8 - C, 2), torch.zeros(8, 2, dtype=torch.bool), C)
    terms.sum().backward()
    assert s.grad is None and g.grad.abs().sum() > 0


def test_the_manager_critic_learns_from_x_not_from_the_goals():
    torch.manual_seed(3)
    net = FeudalNet(SPEC, _cfg())
    outputs, _ = _forward(net, _batch())
    outputs["manager_value"].pow(2).sum().backward()  # V^M(x_t) alone
    got = _grads(net)
    assert got["manager_value.weight"] and got["torso.net.1.weight"]
    assert not any(v for n, v in got.items() if n.startswith(MANAGER + WORKER)), got


# ------------------------------------------------------------------------------------------ F-3: the numbers
def _reference_intrinsic(s, g, first, c):
    """Eq. 8 for each slot j >= c, as a plain loop over python floats: mean over the i whose slots j-i+1..j hold no
    episode start of cos(s_j - s_{j-i}, g_{j-i}); 0 where slot j starts an episode or no i is left."""
    S, B, _ = s.shape
    out = np.zeros((S - c, B))
    for j in range(c, S):
        for b in range(B):
            if first[j, b]:
                continue
            vals = []
            for i in range(1, c + 1):
                if any(first[k, b] for k in range(j - i + 1, j + 1)):
                    continue
                a, d = s[j, b] - s[j - i, b], g[j - i, b]
                na, nd = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in d))
                vals.append(sum(x * y for x, y in zip(a, d, strict=True)) / (na * nd + 1e-8))
            out[j - c, b] = sum(vals) / len(vals) if vals else 0.0
    return out


def test_intrinsic_reward_is_plus_one_minus_one_zero_for_aligned_opposite_orthogonal_goals():
    u = torch.tensor([0.6, 0.8])
    s = torch.arange(9.0)[:, None, None] * u  # s_t = t u, [9,1,2]
    first = torch.zeros(9, 1, dtype=torch.bool)
    for goal, want in [(u, 1.0), (-u, -1.0), (torch.tensor([-0.8, 0.6]), 0.0)]:
        r = intrinsic_rewards(s, goal.expand(9, 1, 2), first, C)
        assert torch.allclose(r, torch.full_like(r, want), atol=1e-6), (goal, r)


def test_intrinsic_reward_matches_the_slow_reference_across_episode_starts():
    torch.manual_seed(4)
    s, g = torch.randn(14, 3, 5), torch.randn(14, 3, 5)
    first = torch.zeros(14, 3, dtype=torch.bool)
    first[6, 0] = first[4, 1] = first[5, 1] = first[13, 2] = True
    got = intrinsic_rewards(s, g, first, 4).numpy()
    np.testing.assert_allclose(got, _reference_intrinsic(s.numpy(), g.numpy(), first.numpy(), 4), atol=1e-6)


def test_tpg_matches_a_slow_reference_and_a_step_turns_the_goal_toward_the_transition():
    torch.manual_seed(5)
    S, B, c = 12, 2, 3
    s = torch.randn(S, B, 4)
    g = torch.randn(S, B, 4, requires_grad=True)
    adv = torch.randn(S - c, B)
    first = torch.zeros(S, B, dtype=torch.bool)
    first[7, 1] = True
    terms, keep, _ = transition_policy_gradient(s, g, adv, first, c)
    for t in range(S - c):
        for b in range(B):
            crosses = any(first[k, b] for k in range(t + 1, t + c + 1))
            delta, goal = (s[t + c, b] - s[t, b]).tolist(), g[t, b].tolist()
            cos = sum(x * y for x, y in zip(delta, goal, strict=True)) / (
                math.sqrt(sum(x * x for x in delta)) * math.sqrt(sum(y * y for y in goal)) + 1e-8
            )
            want = 0.0 if crosses else -float(adv[t, b]) * cos
            assert bool(keep[t, b]) == (not crosses)
            assert float(terms[t, b].detach()) == pytest.approx(want, abs=1e-5)
    # positive advantage: one gradient step on g raises the cosine with s_{t+c} - s_t
    goal = torch.randn(1, 1, 4, requires_grad=True)
    s2 = torch.stack([torch.zeros(1, 4), torch.ones(1, 4)])  # delta = (1, 1, 1, 1)
    before = torch.nn.functional.cosine_similarity(goal.detach()[0], s2[1] - s2[0], dim=-1)
    t_, _, _ = transition_policy_gradient(
        s2, goal.expand(2, 1, 4), torch.ones(1, 1), torch.zeros(2, 1, dtype=torch.bool), 1
    )
    t_.sum().backward()
    with torch.no_grad():
        goal -= 0.1 * goal.grad
    after = torch.nn.functional.cosine_similarity(goal.detach()[0], s2[1] - s2[0], dim=-1)
    assert after > before


def test_goals_of_zero_norm_give_no_nan():
    torch.manual_seed(6)
    cfg = _cfg()
    net = FeudalNet(SPEC, cfg)
    with torch.no_grad():
        for p in net.manager.parameters():
            p.zero_()  # the dLSTM outputs 0: every goal has zero norm
    batch = _batch()
    outputs, _ = _forward(net, batch)
    assert torch.equal(outputs["goal"], torch.zeros_like(outputs["goal"]))
    loss, metrics = feudal_loss(cfg, batch, outputs)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(v).all() for v in metrics.values())
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_goal_ablation_replaces_the_goals_the_worker_sees():
    torch.manual_seed(7)
    net = FeudalNet(SPEC, _cfg())
    batch = _batch()
    with torch.no_grad():
        base = _forward(net, batch)[0]
        net.goal_ablation = "zero"
        zero = _forward(net, batch)[0]
        net.goal_ablation = "random"
        rand = _forward(net, batch)[0]
    assert torch.allclose(zero["policy_logits"], torch.zeros_like(base["policy_logits"]))  # w = phi(0) = 0: U w = 0
    assert not torch.allclose(rand["policy_logits"], base["policy_logits"])
    assert torch.equal(zero["goal"], base["goal"]) and torch.equal(rand["goal"], base["goal"])  # the Manager is as is


# ------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(
    "override, key",
    [
        ("agent.horizon=30", "agent.horizon=30 is longer than runner.unroll_length=20"),
        ("agent.intrinsic_weight=-0.5", "agent.intrinsic_weight"),
        ("agent.dni.scale=0.5", "agent.worker_core=dni_lstm"),
    ],
)
def test_bad_feudal_configs_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[")):
        load_config(ROOT / "configs/feudal/catch.yaml", ["runner.unroll_length=20", override])


def test_a_bad_feudal_config_exits_2_before_anything_starts(tmp_path):
    run = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "decoupled", "train", "feudal/catch", "agent.horizon=500", "--run-dir", str(run)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 2 and "agent.horizon" in out.stderr and not run.exists()


def test_the_agent_is_registered_with_its_overlap():
    agent = get_agent("feudal")
    assert agent.overlap(_cfg(horizon=7)) == 7 and get_agent("impala").overlap(None) == 0


# ------------------------------------------------------------------------------------------ end to end
def _train_cfg(*extra):
    small = ["runner.total_env_frames=5120", "runner.log_every_env_frames=512", "wandb.mode=disabled",
             "runner.checkpoint_every_env_frames=1024", "runner.unroll_length=8"]  # fmt: skip
    return load_config(ROOT / "configs/feudal/catch.yaml", small + list(extra))


def _params(run):
    from decoupled.runners.training.checkpoint import CheckpointManager

    state, _ = CheckpointManager(Path(run) / "checkpoints").load_latest()
    return state["net"], state


@pytest.mark.parametrize("worker_core", ["lstm", "dni_lstm"])
def test_feudal_trains_counts_frames_once_and_resumes_bit_identically(tmp_path, monkeypatch, worker_core):
    """Serial mode: a run stopped by SIGTERM and resumed ends with the parameters of an uninterrupted one (the
    overlap slots and the Manager's state included in the actor's snapshot); the dni_lstm Worker's hook trains M."""
    import os
    import signal

    from decoupled.runners.training import train as train_mod

    cfg = _train_cfg(f"agent.worker_core={worker_core}")
    ref = train_mod.train(cfg, tmp_path / "ref")
    assert ref["status"] == "finished" and ref["env_frames"] == 5120  # 16 envs x 8 new steps, 40 updates
    real, calls = train_mod.Actor.unroll, {"n": 0}

    def unroll(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 17:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, *a, **k)

    monkeypatch.setattr(train_mod.Actor, "unroll", unroll)
    assert train_mod.train(cfg, tmp_path / "cut")["status"] == "stopped"
    monkeypatch.undo()
    assert train_mod.train(cfg, tmp_path / "cut", resume=True)["env_frames"] == 5120
    (a, state), (b, _) = _params(tmp_path / "ref"), _params(tmp_path / "cut")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert "lead_slots" in state["actor"] and state["actor"]["lead_slots"]["reward"].shape[0] == 4 + 1
    if worker_core == "dni_lstm":
        assert state["learner_extra"]["dni"]["updates"] > 0


def test_feudal_trains_async_and_evaluates_with_and_without_goals(tmp_path):
    from decoupled.runners.training import train as train_mod

    cfg = _train_cfg("runner.mode=async", "runner.total_env_frames=3200")
    assert train_mod.train(cfg, tmp_path / "run")["env_frames"] == 3200
    for ablation in ([], ["--ablate-goals", "zero"], ["--ablate-goals", "random"]):
        out = subprocess.run(
            [sys.executable, "-m", "decoupled", "eval", str(tmp_path / "run"), "--episodes", "4", "--no-video",
             *ablation],
            capture_output=True, text=True,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
    assert (tmp_path / "run" / "eval_ablate_goals_zero" / "scores.json").is_file()
