"""The UNREAL agent (agents/unreal.py): which gradients each auxiliary loss may send where (spec checks U-7 and
pitfall 8), the loss scale, config errors, and the zero-weight agent being exactly the base agent."""

from pathlib import Path

import numpy as np
import pytest
import torch

from decoupled.agents import get_agent
from decoupled.agents.impala import ImpalaNet
from decoupled.agents.unreal import UnrealNet
from decoupled.envs import make_vec_env
from decoupled.envs.base import EnvSpec
from decoupled.runners.training.actor_learner import HostStaging, replay_to_batch, rollout_to_batch
from decoupled.runners.training.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
UNREAL_CATCH = ROOT / "configs" / "unreal" / "catch.yaml"
UNREAL = get_agent("unreal")


def _setup(*overrides):
    cfg = load_config(UNREAL_CATCH, ["agent.replay_start_steps=0", *overrides])
    env = make_vec_env("catch", "catch", 4, seed=0)
    net = UNREAL.make_net(env.spec, cfg.agent)
    return cfg, env, net


def _rollout(env, net, T=8, seed=0, n=2):
    from decoupled.runners.training.actor_learner import Actor

    actor = Actor(env, net, T, torch.device("cpu"))
    actor.start(seed)
    return [actor.unroll() for _ in range(n)]


def _losses(cfg, env, net, rollouts=2):
    """Batch, outputs and the loss of one learner step, with the replay filled from `rollouts` rollouts."""
    replay = UNREAL.make_replay(cfg.agent, env.spec, net, 8, 0)
    for r in _rollout(env, net, n=rollouts):
        replay.add(r)
    batch, state = rollout_to_batch(r, torch.device("cpu"))
    from decoupled.runners.training.actor_learner import net_inputs

    outputs, _ = net(net_inputs(batch["obs"], batch["first"], batch["action"], batch["reward"], "cpu"), state)
    batch["replay"] = replay_to_batch(UNREAL.sample_replay(cfg.agent, replay), torch.device("cpu"), HostStaging())
    outputs["replay"] = UNREAL.replay_outputs(cfg.agent, net, batch["replay"])
    return batch, outputs


def _grads(net, loss):
    net.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    return {n: (p.grad is not None and bool(p.grad.abs().sum() > 0)) for n, p in net.named_parameters()}


def test_value_replay_trains_the_value_but_not_the_policy():
    """U-7: L_VR alone gives the value head a gradient and the policy head none."""
    cfg, env, net = _setup("agent.pixel_control_cost=0", "agent.reward_prediction_cost=0")
    batch, outputs = _losses(cfg, env, net)
    from decoupled.agents.impala import vtrace_inputs
    from decoupled.agents.ops.auxiliary import value_replay_loss

    o, s = outputs["replay"]["seq"], batch["replay"]["seq"]
    vi = vtrace_inputs(cfg.agent, s, o["baseline"])
    vr, _ = value_replay_loss(o["baseline"][:-1], vi["rewards"], vi["discounts"], vi["continues"], vi["next_values"])
    g = _grads(net, vr.mean())
    assert g["heads.baseline.weight"] and g["core.lstm.weight_ih"] and g["torso.net.1.weight"]
    assert not g["heads.policy.weight"] and not g["heads.policy.bias"]


def test_reward_prediction_trains_the_torso_only_and_pixel_control_not_the_policy():
    """Pitfall 8: RP must not touch the LSTM (nor the policy/value heads); PC gives no policy gradient."""
    cfg, env, net = _setup()
    batch, outputs = _losses(cfg, env, net)
    from decoupled.agents.ops.auxiliary import pixel_control_loss, reward_prediction_loss

    ce, _ = reward_prediction_loss(outputs["replay"]["rp_logits"], batch["replay"]["rp"]["reward"])
    g = _grads(net, ce.mean())
    assert g["torso.net.1.weight"] and g["reward_prediction.net.0.weight"]
    assert not any(v for k, v in g.items() if k.startswith(("core.", "heads.", "pixel_control.")))
    o, s = outputs["replay"]["seq"], batch["replay"]["seq"]
    cont = (~(s["terminated"][1:] | s["truncated"][1:])).float()
    pc, _ = pixel_control_loss(o["pixel_control_q"], s["action"][1:], o["pixel_change"], 0.9 * cont, cont, cont)
    g = _grads(net, pc.sum())
    assert g["pixel_control.fc.weight"] and g["pixel_control.value.weight"] and g["core.lstm.weight_hh"]
    assert not g["heads.policy.weight"] and not any(k.startswith("reward_prediction.") and v for k, v in g.items())


def _value_replay_slow(seq, values, gamma):
    """L_VR by loops: 1/2 (R_t - V(obs_t))^2 averaged over every replayed transition, R_t the discounted sum of the
    rewards to the episode's end (then nothing after a termination, gamma V(final obs) after a truncation) or to the
    sequence's end (then gamma V(obs_T))."""
    r, term, trunc, tv = (seq[k].double().numpy() for k in ("reward", "terminated", "truncated", "truncation_value"))
    V = values.double().numpy()
    T, N = V.shape[0] - 1, V.shape[1]
    total = 0.0
    for n in range(N):
        for t in range(T):
            ret, disc, k = 0.0, 1.0, t
            while True:
                ret += disc * r[k + 1, n]  # slot k+1 holds the reward of transition k
                if term[k + 1, n]:
                    break
                if trunc[k + 1, n]:
                    ret += disc * gamma * tv[k + 1, n]
                    break
                if k == T - 1:
                    ret += disc * gamma * V[T, n]
                    break
                disc *= gamma
                k += 1
            total += 0.5 * (ret - V[t, n]) ** 2
    return total / (T * N)


def _reward_prediction_slow(logits, reward):
    """L_RP by loops: the cross-entropy of the class of the reward after the window (0 zero, 1 positive, 2
    negative), averaged over the windows."""
    total = 0.0
    for z, rew in zip(logits.double().tolist(), reward.tolist(), strict=True):
        cls = 0 if rew == 0 else (1 if rew > 0 else 2)
        total += np.log(sum(np.exp(x) for x in z)) - z[cls]
    return total / len(logits)


def _pixel_control_slow(seq, q, crop, cell, scale, gamma):
    """L_PC by the loops of the episode-end tests below: summed over the sequences' trained transitions, averaged."""
    total, count = 0.0, 0
    T, N = q.shape[0] - 1, q.shape[1]
    for n in range(N):
        episode = _episode_of_slot(seq["terminated"][:, n].numpy(), seq["truncated"][:, n].numpy())
        frames = seq["obs"][:, n].numpy()
        change = lambda k, f=frames: _pixel_change_slow(f[k], f[k + 1], crop, cell, scale).ravel()  # noqa: E731
        s, c = _control_loss_slow(q[:, n].reshape(T + 1, q.shape[2], -1), seq["action"][:, n].numpy(), change,
                                  episode, gamma)  # fmt: skip
        total, count = total + s, count + c
    return total / count


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_unreal_loss_is_the_base_loss_plus_each_auxiliary_loss_computed_independently(reduction):
    """Each auxiliary loss against a loop reference of its definition (Jaderberg et al. 2016, Sec. 3), and the total
    against the base loss plus the references at the documented scale: the weight lambda times T*B under `sum`
    (the base loss sums over T*B) and times 1 under `mean`, RP (one window per sequence) 1/T of that."""
    torch.manual_seed(4)  # the net, and the actions sampled from it: caught and missed balls in 6 rollouts
    cfg, env, net = _setup(f"agent.loss_reduction={reduction}")
    batch, outputs = _losses(cfg, env, net, rollouts=6)
    assert set(batch["replay"]["rp"]["reward"].tolist()) == {-1.0, 0.0, 1.0}
    loss, metrics = UNREAL.loss_fn(cfg.agent, batch, outputs)
    from decoupled.agents.impala import impala_loss

    a = cfg.agent
    seq, o = batch["replay"]["seq"], outputs["replay"]["seq"]
    assert (seq["terminated"][1:] | seq["truncated"][1:]).any()  # episode ends inside the replayed sequences
    vr = _value_replay_slow(seq, o["baseline"].detach(), a.discount)
    rp = _reward_prediction_slow(outputs["replay"]["rp_logits"].detach(), batch["replay"]["rp"]["reward"])
    pc = _pixel_control_slow(seq, o["pixel_control_q"].detach().double().numpy(), a.pixel_control_crop,
                             a.pixel_control_cell, env.spec.extra["obs_scale"], a.pixel_control_discount)  # fmt: skip
    np.testing.assert_allclose(float(metrics["aux/value_replay/loss"]), vr, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["aux/reward_prediction/loss"]), rp, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["aux/pixel_control/loss"]), pc, rtol=1e-5)
    base, _ = impala_loss(a, batch, outputs)
    T, B = batch["action"].shape[0] - 1, batch["action"].shape[1]
    scale = T * B if reduction == "sum" else 1
    expected = (
        float(base.detach())
        + scale * (a.pixel_control_cost * pc + a.value_replay_cost * vr)
        + (scale / T) * a.reward_prediction_cost * rp
    )
    np.testing.assert_allclose(float(loss.detach()), expected, rtol=1e-5)
    # no replay batch yet (warm-up): the base loss alone
    loss0, metrics0 = UNREAL.loss_fn(a, {k: v for k, v in batch.items() if k != "replay"}, outputs)
    torch.testing.assert_close(loss0, base)
    assert not any(k.startswith("aux/") for k in metrics0)


def test_feature_control_on_a_conv_torso():
    cfg = load_config(
        ROOT / "configs" / "unreal" / "minatar_breakout.yaml",
        ["agent.feature_control_cost=0.1", "agent.replay_start_steps=0", "env.num_envs=2"],
    )
    env = make_vec_env("minatar", "breakout", 2, seed=0)
    net = UNREAL.make_net(env.spec, cfg.agent)
    batch, outputs = _losses(cfg, env, net)
    loss, metrics = UNREAL.loss_fn(cfg.agent, batch, outputs)
    assert torch.isfinite(loss) and torch.isfinite(metrics["aux/feature_control/loss"])
    assert outputs["replay"]["seq"]["feature_control_q"].shape[-1] == 16  # the MinAtar conv's channels
    env.close()


def test_zero_weights_build_the_base_net_and_no_replay():
    cfg = load_config(
        UNREAL_CATCH,
        ["agent.pixel_control_cost=0", "agent.reward_prediction_cost=0", "agent.value_replay_cost=0"],
    )
    spec = EnvSpec("x", (1, 10, 5), np.dtype(np.uint8), 3)
    net = UNREAL.make_net(spec, cfg.agent)
    assert type(net) is ImpalaNet and UNREAL.make_replay(cfg.agent, spec, net, 20, 0) is None
    torch.manual_seed(3)
    full = UNREAL.make_net(spec, load_config(UNREAL_CATCH).agent)
    torch.manual_seed(3)
    base = UNREAL.make_net(spec, cfg.agent)
    assert isinstance(full, UnrealNet)
    for k, v in base.state_dict().items():  # the heads come from a forked RNG: the base part is the same
        assert torch.equal(v, full.state_dict()[k]), k
    # ... and the global RNG is left where the base net leaves it (the actors sample from it next)
    torch.manual_seed(3)
    UNREAL.make_net(spec, cfg.agent)
    after_base = torch.rand(1)
    torch.manual_seed(3)
    UNREAL.make_net(spec, load_config(UNREAL_CATCH).agent)
    assert torch.equal(torch.rand(1), after_base)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="agent.feature_control_cost"):
        load_config(UNREAL_CATCH, ["agent.feature_control_cost=0.1"])  # mlp torso: no feature maps
    with pytest.raises(ConfigError, match="agent.pixel_control_cost"):
        load_config(UNREAL_CATCH, ["agent.pixel_control_cost=-1"])
    cfg = load_config(UNREAL_CATCH, ["agent.pixel_control_cell=4"])
    with pytest.raises(ValueError, match="agent.pixel_control_cell=4"):
        UNREAL.make_net(EnvSpec("x", (1, 10, 5), np.dtype(np.uint8), 3), cfg.agent)


# ------------------------------------------------------------------------------------------------ episode ends
# Independent references for the control tasks, written from the paper's definitions (Jaderberg et al. 2016,
# Sec. 3.1) with plain loops: a transition's pseudo-reward is the change between two frames of one episode, the
# transition that ends an episode has none (UNREAL's reference: a pixel change of 0 at the terminal step) and no
# return reads past it; inside the sequence R_t = r_t + gamma R_{t+1}, at its end R_T = max_a Q(obs_T, a).


def _replay_batch(spec, T, N, episode_starts, seed=0):
    """A hand-made replay batch: random frames [T+1, N], random actions and rewards; `episode_starts` holds
    (slot, column, "terminated" | "truncated"): slot starts a new episode (the transition into it ended one)."""
    rng = np.random.default_rng(seed)
    A = spec.num_actions
    seq = {
        "obs": rng.integers(0, 256, (T + 1, N, *spec.obs_shape)).astype(np.uint8),
        "action": rng.integers(0, A, (T + 1, N)).astype(np.int64),
        "reward": rng.choice([0.0, 0.0, 1.0, -1.0], (T + 1, N)).astype(np.float32),
        "terminated": np.zeros((T + 1, N), bool),
        "truncated": np.zeros((T + 1, N), bool),
        "behaviour_logits": rng.normal(size=(T + 1, N, A)).astype(np.float32),
        "truncation_value": rng.normal(size=(T + 1, N)).astype(np.float32),
    }
    for slot, col, kind in episode_starts:
        seq[kind][slot, col] = True
    return seq


def _episode_of_slot(terminated, truncated):
    """The episode each slot of one column belongs to (slot 0's own flag is about the transition before it)."""
    ids, e = [0], 0
    for s in range(1, len(terminated)):
        e += int(bool(terminated[s]) or bool(truncated[s]))
        ids.append(e)
    return ids


def _pixel_change_slow(a, b, crop, cell, scale):
    """|b - a| averaged over each cell of the central crop and over the channels, by loops: [G_h, G_w]."""
    C, H, W = a.shape
    gh, gw = (H - 2 * crop) // cell, (W - 2 * crop) // cell
    out = np.zeros((gh, gw))
    for i in range(gh):
        for j in range(gw):
            total = 0.0
            for c in range(C):
                for y in range(crop + i * cell, crop + (i + 1) * cell):
                    for x in range(crop + j * cell, crop + (j + 1) * cell):
                        total += abs(float(b[c, y, x]) - float(a[c, y, x])) * scale
            out[i, j] = total / (C * cell * cell)
    return out


def _control_loss_slow(q, actions, pseudo_reward, episode, gamma):
    """One column's n-step Q-learning loss of a control task, summed over the transitions it trains on, and how many
    those are. q [T+1, A, K] (K cells or channels), actions [T+1] (slot t+1: the action taken at obs_t),
    pseudo_reward(t) -> [K] for a transition inside one episode."""
    T = q.shape[0] - 1
    total, count = 0.0, 0
    for t in range(T):
        if episode[t + 1] != episode[t]:
            continue  # the episode's last transition: its next frame is not stored, nothing to learn from
        ret, disc, k = np.zeros(q.shape[-1]), 1.0, t
        while True:
            if k == T:  # the sequence ends inside the episode: bootstrap from max_a Q(obs_T, a)
                ret += disc * q[T].max(axis=0)
                break
            if episode[k + 1] != episode[k]:  # transition k ends the episode: no pseudo-reward, no bootstrap
                break
            ret += disc * pseudo_reward(k)
            disc *= gamma
            k += 1
        total += 0.5 * float(((ret - q[t, int(actions[t + 1])]) ** 2).sum())
        count += 1
    return total, count


EPISODE_STARTS = [(0, 0, "terminated"), (3, 0, "terminated"), (4, 0, "truncated"), (5, 1, "truncated"),
                  (6, 1, "terminated"), (8, 3, "terminated")]  # fmt: skip


def _loss_with_replay(cfg, net, seq):
    """(loss, metrics, outputs of the replayed sequences) of one update whose on-policy batch is `seq` too."""
    from decoupled.runners.training.actor_learner import net_inputs

    staging = HostStaging()
    state = [s.numpy() for s in net.initial_state(seq["obs"].shape[1])]
    rb = replay_to_batch({"seq": seq, "seq_state": state}, torch.device("cpu"), staging)
    batch = replay_to_batch(seq, torch.device("cpu"), staging, "batch")
    with torch.no_grad():
        outputs, _ = net(net_inputs(batch["obs"], batch["first"], batch["action"], batch["reward"], "cpu"),
                         tuple(rb["seq_state"]))  # fmt: skip
        outputs["replay"] = UNREAL.replay_outputs(cfg.agent, net, rb)
        batch["replay"] = rb
        loss, metrics = UNREAL.loss_fn(cfg.agent, batch, outputs)
    return loss, metrics, outputs


def test_pixel_control_has_no_pseudo_reward_across_an_episode_end():
    """The change from an episode's last stored frame into the next episode's first frame is no pixel change:
    the loss equals the loop reference above (which fails if that change leaks into the returns before it)."""
    from decoupled.agents.impala import impala_loss

    cfg = load_config(UNREAL_CATCH, ["agent.reward_prediction_cost=0", "agent.value_replay_cost=0",
                                     "agent.pixel_control_crop=1", "agent.pixel_control_cell=4"])  # fmt: skip
    spec = EnvSpec("x", (2, 14, 14), np.dtype(np.uint8), 3, extra={"obs_scale": 1 / 255})
    torch.manual_seed(0)
    net = UNREAL.make_net(spec, cfg.agent)
    T, N = 8, 4
    seq = _replay_batch(spec, T, N, EPISODE_STARTS)
    loss, metrics, outputs = _loss_with_replay(cfg, net, seq)
    q = outputs["replay"]["seq"]["pixel_control_q"].double().numpy()  # [T+1, N, A, 3, 3]
    total, count = 0.0, 0
    for n in range(N):
        episode = _episode_of_slot(seq["terminated"][:, n], seq["truncated"][:, n])
        frames = seq["obs"][:, n]
        change = lambda k, frames=frames: _pixel_change_slow(frames[k], frames[k + 1], 1, 4, 1 / 255).ravel()  # noqa: E731
        s, c = _control_loss_slow(q[:, n].reshape(T + 1, 3, -1), seq["action"][:, n], change, episode, 0.9)
        total, count = total + s, count + c
    want = total / count
    np.testing.assert_allclose(float(metrics["aux/pixel_control/loss"]), want, rtol=1e-5)
    base, _ = impala_loss(cfg.agent, replay_to_batch(seq, torch.device("cpu"), HostStaging()), outputs)
    np.testing.assert_allclose(float(loss - base), cfg.agent.pixel_control_cost * want, rtol=1e-4)


def test_feature_control_has_no_pseudo_reward_across_an_episode_end():
    from decoupled.agents.impala import impala_loss

    cfg = load_config(
        ROOT / "configs" / "unreal" / "minatar_breakout.yaml",
        ["agent.feature_control_cost=0.1", "agent.pixel_control_cost=0", "agent.reward_prediction_cost=0",
         "agent.value_replay_cost=0"],
    )  # fmt: skip
    spec = EnvSpec("x", (4, 10, 10), np.dtype(np.uint8), 3, extra={"obs_scale": 1 / 255})
    torch.manual_seed(0)
    net = UNREAL.make_net(spec, cfg.agent)
    T, N = 8, 4
    seq = _replay_batch(spec, T, N, EPISODE_STARTS, seed=1)
    loss, metrics, outputs = _loss_with_replay(cfg, net, seq)
    o = outputs["replay"]["seq"]
    means = o["feature_means"].double().numpy()  # [T+1, N, C]: each channel's mean activation
    q = o["feature_control_q"].double().numpy()  # [T+1, N, A, C]
    total, count = 0.0, 0
    for n in range(N):
        episode = _episode_of_slot(seq["terminated"][:, n], seq["truncated"][:, n])
        change = lambda k, n=n: np.abs(means[k + 1, n] - means[k, n])  # noqa: E731
        s, c = _control_loss_slow(q[:, n], seq["action"][:, n], change, episode, cfg.agent.pixel_control_discount)
        total, count = total + s, count + c
    want = total / count
    np.testing.assert_allclose(float(metrics["aux/feature_control/loss"]), want, rtol=1e-5)
    base, _ = impala_loss(cfg.agent, replay_to_batch(seq, torch.device("cpu"), HostStaging()), outputs)
    np.testing.assert_allclose(float(loss - base), cfg.agent.feature_control_cost * want, rtol=1e-4)
