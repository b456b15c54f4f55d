"""The actor's truncation value (runners/training/actor_learner.py): where an episode is truncated, the rollout
carries V(final observation) computed with the core state carried on from the episode (not reset), and the learner
bootstraps from it there (and from nothing where an episode terminated)."""

from __future__ import annotations

import numpy as np
import torch

from decoupled.agents.impala import ImpalaConfig, ImpalaNet, vtrace_inputs
from decoupled.agents.ops.vtrace import vtrace_from_logits
from decoupled.envs.base import EnvSpec, VecEnv
from decoupled.runners.training.actor_learner import Actor, net_inputs, rollout_to_batch

T = 9


class ScriptedEnv(VecEnv):
    """Two envs with vector observations: env 0's episodes are truncated (time limit) after 3 steps, env 1's
    terminate after 4. Every observation differs; `finals` keeps each step's final observations."""

    def __init__(self) -> None:
        self.spec = EnvSpec("scripted", (3,), np.dtype(np.float32), 2)
        self.num_envs = 2
        self.t = np.zeros(2, np.int64)
        self.episode = np.zeros(2, np.int64)
        self.finals: list[np.ndarray] = []

    def _obs(self) -> np.ndarray:
        rows = [[0.4 * self.t[i] - 0.5, 0.7 * self.episode[i] + 0.1 * i, np.sin(self.t[i] + i)] for i in range(2)]
        return np.array(rows, np.float32)

    def reset(self, seed: int | None = None) -> np.ndarray:
        self.t[:] = 0
        return self._obs()

    def step(self, actions: np.ndarray):
        self.t += 1
        final = self._obs()
        self.finals.append(final.copy())
        truncated = np.array([self.t[0] == 3, False])
        terminated = np.array([False, self.t[1] == 4])
        reward = np.where(np.asarray(actions) == 1, 0.5, -0.25).astype(np.float32)
        done = truncated | terminated
        self.t[done] = 0
        self.episode[done] += 1
        info = {"final_obs": final, "episode_done": done, "episode_return": np.where(done, 1.0, np.nan),
                "episode_frames": np.where(done, self.t, 0)}  # fmt: skip
        return self._obs(), reward, terminated, truncated, info


def _one_step(net, obs, first, prev_action, prev_reward, state):
    inputs = net_inputs(np.asarray(obs)[None, None], np.array([[first]]), np.array([[prev_action]]),
                        np.array([[prev_reward]], np.float32), "cpu")  # fmt: skip
    out, state = net(inputs, state)
    return float(out["baseline"][0, 0]), state


def test_truncation_value_is_v_of_the_final_obs_with_the_continued_core_state_and_is_bootstrapped():
    torch.manual_seed(0)
    cfg = ImpalaConfig(torso="mlp", hidden_sizes=(16,), core="lstm", lstm_size=8, discount=0.9)
    env = ScriptedEnv()
    net = ImpalaNet(env.spec, cfg)
    actor = Actor(env, net, T, torch.device("cpu"))
    actor.start(0)
    rollout = actor.unroll()
    d = rollout["data"]
    assert d["truncated"][1:, 0].sum() == 3 and d["terminated"][1:, 1].sum() == 2  # slots 3, 6, 9; 4, 8

    # the reference: the net stepped by hand along each env's stream, one slot at a time
    expected = np.zeros((T + 1, 2), np.float32)
    with torch.no_grad():
        for b in range(2):
            state = tuple(torch.as_tensor(s[b : b + 1]) for s in rollout["initial_state"])
            for s in range(T):
                first = bool(d["terminated"][s, b] or d["truncated"][s, b])
                _, state = _one_step(net, d["obs"][s, b], first, d["action"][s, b], d["reward"][s, b], state)
                if d["truncated"][s + 1, b]:  # the episode goes on into its final obs: same state, no reset
                    final = env.finals[s][b]
                    assert not np.allclose(final, d["obs"][s + 1, b])  # slot s+1 holds the next episode's first obs
                    v, _ = _one_step(net, final, False, d["action"][s + 1, b], d["reward"][s + 1, b], state)
                    expected[s + 1, b] = v
    np.testing.assert_allclose(d["truncation_value"], expected, rtol=1e-5, atol=1e-6)
    assert np.all(d["truncation_value"][:, 1] == 0.0)  # terminations: nothing to bootstrap from

    # the learner: the truncated transition bootstraps from the truncation value with the full discount, the
    # terminated one from nothing; on-policy V-trace's target there is r + gamma V(final obs)
    batch, state = rollout_to_batch(rollout, torch.device("cpu"))
    with torch.no_grad():
        out, _ = net(net_inputs(batch["obs"], batch["first"], batch["action"], batch["reward"], "cpu"), state)
    vi = vtrace_inputs(cfg, batch, out["baseline"])
    vt = vtrace_from_logits(out["policy_logits"][:-1], out["policy_logits"][:-1], batch["action"][1:],
                            values=out["baseline"][:-1], **vi)  # fmt: skip
    for s in range(T):
        if d["truncated"][s + 1, 0]:
            assert vi["discounts"][s, 0] == cfg.discount and vi["continues"][s, 0] == 0
            assert vi["next_values"][s, 0] == float(d["truncation_value"][s + 1, 0])  # the actor's value, as is
            want = d["reward"][s + 1, 0] + cfg.discount * expected[s + 1, 0]
            np.testing.assert_allclose(float(vt.vs[s, 0]), want, rtol=1e-5, atol=1e-6)
        if d["terminated"][s + 1, 1]:
            assert vi["discounts"][s, 1] == 0.0 and vi["continues"][s, 1] == 0
            np.testing.assert_allclose(float(vt.vs[s, 1]), d["reward"][s + 1, 1], rtol=1e-5, atol=1e-6)
