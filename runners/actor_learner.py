"""The actor and the learner, and the message that passes between them.

The actor steps a `VecEnv` with a copy of the policy and produces *rollouts*: a dict of numpy arrays, time-major
[T+1, B, ...] in TorchBeast's layout (slot 0 repeats the last slot of the previous unroll), plus the core state
at slot 0 and the policy version that acted. The learner turns rollouts into updates. The message is plain numpy
so actors can later live in other threads or processes (or Ray actors on other machines) without the learner
changing. Serial mode alternates the two in one thread with one shared net.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from agents.base import AgentDef
from envs.base import VecEnv

# Per-slot keys of a rollout. Slot t: obs_t, and the action / reward / done flags of the transition *into*
# obs_t with the behaviour logits that chose that action; `truncation_value` is the actor's value of the final
# observation when that transition truncated the episode (0 otherwise).
ROLLOUT_KEYS = ("obs", "action", "reward", "terminated", "truncated", "behaviour_logits", "truncation_value")


def net_inputs(obs: Any, first: Any, prev_action: Any, prev_reward: Any, device: torch.device | str) -> dict:
    """The net's inputs from time-major arrays [T, B, ...] (numpy or torch): the one place that builds them."""
    return {
        "obs": torch.as_tensor(obs).to(device),
        "first": torch.as_tensor(first).to(device, torch.bool),
        "prev_action": torch.as_tensor(prev_action).to(device, torch.int64),
        "prev_reward": torch.as_tensor(prev_reward).to(device, torch.float32),
    }


def sample_actions(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One action per row of `logits [B, A]`, sampled from the softmax policy."""
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(-1)


def _to_numpy_state(state: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    return [s.detach().cpu().numpy().copy() for s in state]


@dataclass
class EpisodeStats:
    """Finished games since the last drain: unclipped returns and lengths in frames."""

    returns: list[float] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)

    def add(self, info: dict[str, Any]) -> None:
        done = info["episode_done"]
        if done.any():
            self.returns.extend(float(x) for x in info["episode_return"][done])
            self.frames.extend(int(x) for x in info["episode_frames"][done])

    def drain(self) -> tuple[list[float], list[int]]:
        out = (self.returns, self.frames)
        self.returns, self.frames = [], []
        return out


class Actor:
    """Steps `env` with `net` and returns rollouts of `unroll_length` transitions."""

    def __init__(self, env: VecEnv, net: torch.nn.Module, unroll_length: int, device: torch.device):
        self.env, self.net, self.T, self.device = env, net, unroll_length, device
        B = env.num_envs
        self.B = B
        spec = env.spec
        A = spec.num_actions
        self.buf = {
            "obs": np.zeros((self.T + 1, B, *spec.obs_shape), spec.obs_dtype),
            "action": np.zeros((self.T + 1, B), np.int64),
            "reward": np.zeros((self.T + 1, B), np.float32),
            "terminated": np.zeros((self.T + 1, B), bool),
            "truncated": np.zeros((self.T + 1, B), bool),
            "behaviour_logits": np.zeros((self.T + 1, B, A), np.float32),
            "truncation_value": np.zeros((self.T + 1, B), np.float32),
        }
        self.stats = EpisodeStats()
        self.state: tuple[torch.Tensor, ...] | None = None
        self.started = False

    # -------------------------------------------------------------------------------------------- state
    def start(self, seed: int) -> None:
        """Reset the envs and the core: slot 0 of the first rollout is the first obs with `first` set."""
        obs = self.env.reset(seed=seed)
        for v in self.buf.values():
            v[0] = 0
        self.buf["obs"][0] = obs
        self.buf["terminated"][0] = True  # marks slot 0 as an episode start (TorchBeast #23: done == new episode)
        self.state = self.net.initial_state(self.B, self.device)
        self.started = True

    def get_state(self) -> dict[str, Any] | None:
        """Everything to continue exactly: the pending slot, the core state and the env snapshot (if any)."""
        env_state = self.env.get_state()
        if env_state is None:
            return None
        return {
            "last_slot": {k: v[0].copy() for k, v in self.buf.items()},
            "core_state": _to_numpy_state(self.state),
            "env": env_state,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.env.set_state(state["env"])
        for k, v in state["last_slot"].items():
            self.buf[k][0] = v
        self.state = tuple(torch.as_tensor(s, device=self.device) for s in state["core_state"])
        self.started = True

    # -------------------------------------------------------------------------------------------- acting
    def _inputs(self, t: int) -> dict[str, torch.Tensor]:
        b, now = self.buf, slice(t, t + 1)  # [1,B,...]
        first = b["terminated"][now] | b["truncated"][now]
        return net_inputs(b["obs"][now], first, b["action"][now], b["reward"][now], self.device)

    @torch.no_grad()
    def unroll(self, policy_version: int = 0) -> dict[str, Any]:
        """Act for T steps. Returns the rollout message (numpy arrays [T+1, B, ...] plus metadata)."""
        assert self.started, "call start() or set_state() first"
        b = self.buf
        initial_state = _to_numpy_state(self.state)
        for t in range(self.T):
            outputs, new_state = self.net(self._inputs(t), self.state)
            logits = outputs["policy_logits"][0]  # [B,A]
            action = sample_actions(logits)
            action_np = action.cpu().numpy()
            obs, reward, terminated, truncated, info = self.env.step(action_np)
            self.stats.add(info)
            b["obs"][t + 1] = obs
            b["action"][t + 1] = action_np
            b["reward"][t + 1] = reward
            b["terminated"][t + 1] = terminated
            b["truncated"][t + 1] = truncated
            b["behaviour_logits"][t + 1] = logits.cpu().numpy()
            b["truncation_value"][t + 1] = 0.0
            cut = truncated & ~terminated
            if cut.any():
                b["truncation_value"][t + 1] = self._final_values(info["final_obs"], action, reward, new_state, cut)
            self.state = new_state
        rollout = {k: v.copy() for k, v in b.items()}
        for v in b.values():  # the last slot becomes slot 0 of the next unroll
            v[0] = v[self.T]
        return {"data": rollout, "initial_state": initial_state, "policy_version": policy_version}

    def _final_values(self, final_obs, action, reward, state, mask) -> np.ndarray:
        """V(final obs) of truncated episodes, continuing each env's core state (no reset: same episode)."""
        not_first = np.zeros((1, self.B), bool)
        inputs = net_inputs(final_obs[None], not_first, action[None], np.asarray(reward)[None], self.device)
        outputs, _ = self.net(inputs, state)
        return np.where(mask, outputs["baseline"][0].cpu().numpy(), 0.0).astype(np.float32)


def rollout_to_batch(rollout: dict[str, Any], device: torch.device) -> tuple[dict[str, torch.Tensor], tuple]:
    """Numpy rollout -> torch batch (uint8 obs stay uint8) plus the initial core state."""
    batch = {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in rollout["data"].items()}
    batch["first"] = batch["terminated"] | batch["truncated"]
    state = tuple(torch.from_numpy(s).to(device) for s in rollout["initial_state"])
    return batch, state


class NonFiniteError(RuntimeError):
    pass


class Learner:
    """Turns rollouts into updates of `net` with `agent.loss_fn`; guards every update against non-finite values."""

    def __init__(
        self,
        agent: AgentDef,
        agent_cfg: Any,
        net: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        max_grad_norm: float | None,
        max_nonfinite_updates: int,
    ):
        self.agent, self.cfg, self.net, self.optimizer, self.device = agent, agent_cfg, net, optimizer, device
        self.max_grad_norm = max_grad_norm
        self.max_nonfinite = max_nonfinite_updates
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self.version = 0

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, rollout: dict[str, Any]) -> dict[str, float]:
        batch, state = rollout_to_batch(rollout, self.device)
        inputs = net_inputs(batch["obs"], batch["first"], batch["action"], batch["reward"], self.device)
        outputs, _ = self.net(inputs, state)
        loss, metrics = self.agent.loss_fn(self.cfg, batch, outputs)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.net.parameters() if p.grad is not None]
        max_norm = self.max_grad_norm if self.max_grad_norm is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        result = {k: float(v) for k, v in metrics.items()}
        result["train/grad_norm"] = float(grad_norm)
        if not (math.isfinite(result["loss/total"]) and math.isfinite(result["train/grad_norm"])):
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_in_a_row += 1
            self.nonfinite_total += 1
            if self.nonfinite_in_a_row >= self.max_nonfinite:
                raise NonFiniteError(
                    f"{self.nonfinite_in_a_row} updates in a row had a non-finite loss or gradient "
                    f"(loss={result['loss/total']}, grad_norm={result['train/grad_norm']}); the parameters were "
                    "not touched by them. Lower optim.lr or raise optim.eps, then resume from the last checkpoint "
                    "with `decoupled train --resume RUN_DIR optim.lr=...`."
                )
        else:
            self.nonfinite_in_a_row = 0
            self.optimizer.step()
            self.version += 1
        result["train/nonfinite_skips"] = self.nonfinite_total
        result["train/lr"] = self.optimizer.param_groups[0]["lr"]
        return result
