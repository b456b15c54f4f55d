"""The actor and the learner, and the message that passes between them.

The actor steps a `VecEnv` with a copy of the policy and produces *rollouts*: a dict of numpy arrays, time-major
[T+1, B, ...] in TorchBeast's layout (slot 0 repeats the last slot of the previous unroll), plus the core state
at slot 0 and the policy version that acted. The learner turns rollouts into updates. The message is plain numpy
so actors can later live in other threads or processes (or Ray actors on other machines) without the learner
changing. Serial mode alternates the two in one thread with one shared net.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from decoupled.agents.base import AgentDef, LearnerHook
from decoupled.envs.base import EnvCrashedError, VecEnv

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


def _cat_states(states: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """Core states of env groups -> one state over all columns (every core keeps the batch in dim 0)."""
    if len(states) == 1:
        return states[0]
    return tuple(torch.cat(parts, 0) for parts in zip(*states, strict=True))


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


def rollout_layout(spec: Any, net: torch.nn.Module, num_envs: int, slots: int) -> dict[str, tuple[tuple, Any]]:
    """Shape and dtype of each array of a rollout's `data` ([slots, num_envs, ...]) for envs of `spec` acted by
    `net`: the ROLLOUT_KEYS, and the per-slot arrays the net asks the env for (`net.env_targets(B).fields`)."""
    S, B = slots, num_envs
    layout: dict[str, tuple[tuple, Any]] = {
        "obs": ((S, B, *spec.obs_shape), np.dtype(spec.obs_dtype)),
        "action": ((S, B), np.dtype(np.int64)),
        "reward": ((S, B), np.dtype(np.float32)),
        "terminated": ((S, B), np.dtype(bool)),
        "truncated": ((S, B), np.dtype(bool)),
        "behaviour_logits": ((S, B, spec.num_actions), np.dtype(np.float32)),
        "truncation_value": ((S, B), np.dtype(np.float32)),
    }
    make_targets = getattr(net, "env_targets", None)
    targets = make_targets(B) if callable(make_targets) else None
    for key, (shape, dtype) in (targets.fields if targets is not None else {}).items():
        layout[key] = ((S, B, *shape), np.dtype(dtype))
    return layout


class Actor:
    """Steps env groups with `net` and returns rollouts of `unroll_length` transitions.

    `envs` is one `VecEnv` or a list of them ("env groups") whose envs are the B columns of every rollout, in
    order. With two or more groups the groups are pipelined: group g's actions go out with `step_async`, and
    while its envs step (envpool steps them in threads of its own) the net chooses the actions of the next group;
    `step_wait` collects them. Each group keeps its own core state; the rollout stores one state over all columns.
    Rollout storage is allocated once and each rollout message is a copy of it.

    `overlap` (an agent's `AgentDef.overlap`, 0 for most): each rollout also carries the previous rollout's last
    `overlap` transitions in front of its own, [overlap + T + 1] slots with the core state at the first, so that
    a loss needing a few steps of look-ahead (FuN's transition policy gradient needs s_{t+c}) can be computed for
    every step, one update late for the last ones. The rollout's `overlap` key says how many leading transitions
    are repeats (counted once, in the rollout that made them). Before the first rollout the leading slots repeat
    the first observation as episode starts.
    """

    def __init__(
        self,
        envs: VecEnv | list[VecEnv],
        net: torch.nn.Module,
        unroll_length: int,
        device: torch.device,
        overlap: int = 0,
    ):
        self.envs = list(envs) if isinstance(envs, list | tuple) else [envs]
        self.net, self.T, self.device = net, unroll_length, device
        if not 0 <= overlap <= unroll_length:
            raise ValueError(f"an actor's overlap must be in [0, unroll_length={unroll_length}], got {overlap}")
        self.overlap = overlap
        self.slots = overlap + unroll_length + 1
        self.cols = []
        start = 0
        for env in self.envs:
            self.cols.append(slice(start, start + env.num_envs))
            start += env.num_envs
        B = self.B = start
        spec = self.envs[0].spec
        if any(e.spec.obs_shape != spec.obs_shape or e.spec.num_actions != spec.num_actions for e in self.envs):
            raise ValueError("the env groups of one actor must share observation shape and action count")
        # per-slot arrays the net needs from the env's extras (aux targets, the nav agent's velocity input)
        make_targets = getattr(net, "env_targets", None)
        self.targets = make_targets(B) if callable(make_targets) else None
        self.buf = {k: np.zeros(shape, dtype) for k, (shape, dtype) in rollout_layout(spec, net, B, self.slots).items()}
        self.input_keys = tuple(getattr(net, "extra_inputs", {}))
        self.stats = EpisodeStats()
        self.states: list[tuple[torch.Tensor, ...]] = []  # per group: the core state before the next slot to act on
        self.lead_states: list[tuple[torch.Tensor, ...]] = []  # overlap > 0: the core state before slot 0
        self._pending: list[tuple[torch.Tensor, torch.Tensor, tuple] | None] = [None] * len(self.envs)
        self.started = False
        # the env call in progress: (group, method, time.monotonic() at its start, thread id), for the watchdog
        self.busy: tuple[int, str, float, int] | None = None
        # running totals for the perf/actor_* metrics (async_actors.RolloutPerf): seconds in unroll() and, of them,
        # waiting for the envs' steps; steps acted (one per slot of the batch)
        self.timing = {"unroll_s": 0.0, "env_wait_s": 0.0, "steps": 0}

    # -------------------------------------------------------------------------------------------- state
    def start(self, seed: int) -> None:
        """Reset the envs and the core: slot 0 of the first rollout is the first obs with `first` set. Group g's
        env i is seeded with `seed + (its column)`, so the columns get seeds seed..seed+B-1 whatever the grouping."""
        lead = slice(0, self.overlap + 1)  # slot 0, and the overlap slots in front of it
        for v in self.buf.values():
            v[lead] = 0
        for env, cols in zip(self.envs, self.cols, strict=True):
            self.buf["obs"][lead, cols] = env.reset(seed=seed + cols.start)
            if self.targets is not None:
                extras = env.last_extras() if hasattr(env, "last_extras") else {}
                first = np.ones(env.num_envs, bool)
                for key, value in self.targets.record(cols, extras, {}, first).items():
                    self.buf[key][lead, cols] = value
        self.buf["terminated"][lead] = True  # marks slot 0 as an episode start (TorchBeast #23: done == new episode)
        self.states = [self.net.initial_state(env.num_envs, self.device) for env in self.envs]
        self.lead_states = list(self.states)
        self.stats = EpisodeStats()
        self.started = True

    def get_state(self) -> dict[str, Any] | None:
        """Everything to continue exactly: the pending slot, the core state and the env snapshots (if any)."""
        env_states = [env.get_state() for env in self.envs]
        if any(s is None for s in env_states):
            return None
        state = {
            "last_slot": {k: v[0].copy() for k, v in self.buf.items()},
            "core_state": [_to_numpy_state(s) for s in self.states],
            "env": env_states,
        }
        if self.overlap:  # the leading slots and the core state before them
            state["lead_slots"] = {k: v[: self.overlap + 1].copy() for k, v in self.buf.items()}
            state["lead_core_state"] = [_to_numpy_state(s) for s in self.lead_states]
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        if isinstance(state["env"], dict):  # written before env groups existed: one group
            state = {**state, "env": [state["env"]], "core_state": [state["core_state"]]}
        if len(state["env"]) != len(self.envs):
            raise ValueError(f"the snapshot has {len(state['env'])} env groups, this actor {len(self.envs)}")
        for env, env_state in zip(self.envs, state["env"], strict=True):
            env.set_state(env_state)
        if ("lead_slots" in state) != (self.overlap > 0) or (
            self.overlap and len(state["lead_slots"]["reward"]) != self.overlap + 1
        ):
            raise ValueError(f"the snapshot was taken with another overlap than this actor's {self.overlap}")
        for k, v in state["last_slot"].items():
            self.buf[k][0] = v
        for k, v in state.get("lead_slots", {}).items():
            self.buf[k][: self.overlap + 1] = v
        self.states = [tuple(torch.as_tensor(x, device=self.device) for x in s) for s in state["core_state"]]
        lead = state.get("lead_core_state", state["core_state"])
        self.lead_states = [tuple(torch.as_tensor(x, device=self.device) for x in s) for s in lead]
        self.started = True

    def close(self) -> None:
        for env in self.envs:
            env.close()

    # -------------------------------------------------------------------------------------------- acting
    def _send(self, g: int, t: int) -> None:
        """Choose group g's actions at slot t and hand them to its envs."""
        b, cols = self.buf, self.cols[g]
        if self.overlap and t == self.T:  # slot T leads the next rollout's overlap: keep the state before it
            self.lead_states[g] = self.states[g]
        now = slice(t, t + 1)  # [1,B_g,...]
        first = b["terminated"][now, cols] | b["truncated"][now, cols]
        inputs = net_inputs(b["obs"][now, cols], first, b["action"][now, cols], b["reward"][now, cols], self.device)
        for key in self.input_keys:
            inputs[key] = torch.as_tensor(b[key][now, cols]).to(self.device)
        outputs, new_state = self.net(inputs, self.states[g])
        logits = outputs["policy_logits"][0]  # [B_g,A]
        action = sample_actions(logits)
        # one device->host transfer per step: the actions and the logits together
        host = torch.cat([logits, action.unsqueeze(-1).to(logits.dtype)], -1).cpu().numpy()
        action_np = host[:, -1].astype(np.int64)
        self._call_env(g, "step_async", action_np)
        self._pending[g] = (action_np, host[:, :-1], new_state)

    def _receive(self, g: int, t: int) -> None:
        """Collect group g's step and store it at slot t+1."""
        action_np, logits_np, new_state = self._pending[g]
        self._pending[g] = None
        t_wait = time.perf_counter()
        obs, reward, terminated, truncated, info = self._call_env(g, "step_wait")
        self.timing["env_wait_s"] += time.perf_counter() - t_wait
        self.stats.add(info)
        b, cols, nxt = self.buf, self.cols[g], t + 1
        b["obs"][nxt, cols] = obs
        b["action"][nxt, cols] = action_np
        b["reward"][nxt, cols] = reward
        b["terminated"][nxt, cols] = terminated
        b["truncated"][nxt, cols] = truncated
        b["behaviour_logits"][nxt, cols] = logits_np
        b["truncation_value"][nxt, cols] = 0.0
        if self.targets is not None:
            done = np.asarray(terminated | truncated, bool)
            for key, value in self.targets.record(cols, info.get("extras", {}), info.get("env_info", {}), done).items():
                b[key][nxt, cols] = value
        cut = truncated & ~terminated
        if cut.any():
            final_inputs = self.targets.input_arrays(info.get("final_extras", {})) if self.input_keys else {}
            b["truncation_value"][nxt, cols] = self._final_values(
                info["final_obs"], action_np, reward, new_state, cut, final_inputs
            )
        self.states[g] = new_state

    def _call_env(self, g: int, method: str, *args: Any) -> Any:
        """Env calls, with any failure turned into an `EnvCrashedError` that names the group. `busy` says which call
        is in progress since when (a step that never returns is stopped by the training watchdog)."""
        self.busy = (g, method, time.monotonic(), threading.get_ident())
        try:
            return getattr(self.envs[g], method)(*args)
        except (EnvCrashedError, ValueError, TypeError):  # a crash already, or a wrong call (a bug, not a crash)
            raise
        except Exception as exc:
            raise EnvCrashedError(f"env group {g} ({self.envs[g].spec.name}) raised in {method}: {exc!r}") from exc
        finally:
            self.busy = None

    @torch.inference_mode()
    def unroll(self, policy_version: int = 0, into: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        """Act for T steps. Returns the rollout message: numpy arrays [T+1, B, ...], the core state at slot 0, the
        policy version that acted and the games that finished meanwhile. `into`: arrays of `rollout_layout` that
        receive the rollout's data (e.g. a slot in shared memory) instead of new copies."""
        assert self.started, "call start() or set_state() first"
        t_start = time.perf_counter()
        b, o = self.buf, self.overlap
        initial_state = _to_numpy_state(_cat_states(self.lead_states if o else self.states))
        groups = range(len(self.envs))
        for g in groups:
            self._send(g, o)
        for t in range(o, o + self.T):
            for g in groups:
                self._receive(g, t)
                if t + 1 < o + self.T:
                    self._send(g, t + 1)
        if into is None:
            rollout = {k: v.copy() for k, v in b.items()}
        else:
            for k, v in b.items():
                np.copyto(into[k], v)
            rollout = into
        for v in b.values():  # the last slot becomes slot 0 of the next unroll (with the overlap slots before it)
            v[: o + 1] = v[self.T : self.T + o + 1]
        returns, frames = self.stats.drain()
        self.timing["unroll_s"] += time.perf_counter() - t_start
        self.timing["steps"] += self.T
        return {
            "data": rollout,
            "initial_state": initial_state,
            "policy_version": policy_version,
            "episodes": {"returns": returns, "frames": frames},
            "overlap": o,
        }

    def _final_values(self, final_obs, action, reward, state, mask, extra_inputs=None) -> np.ndarray:
        """V(final obs) of truncated episodes, continuing each env's core state (no reset: same episode)."""
        n = len(mask)
        not_first = np.zeros((1, n), bool)
        inputs = net_inputs(final_obs[None], not_first, action[None], np.asarray(reward)[None], self.device)
        for key, value in (extra_inputs or {}).items():
            inputs[key] = torch.as_tensor(value[None]).to(self.device)
        outputs, _ = self.net(inputs, state)
        return np.where(mask, outputs["baseline"][0].cpu().numpy(), 0.0).astype(np.float32)


class HostStaging:
    """Page-locked host buffers reused batch after batch, so that host->GPU copies of rollouts run asynchronously.
    Only used with CUDA (on the CPU a batch is the numpy memory itself). A buffer is rewritten only after the
    learner's previous update has read its metrics back, which waits for the copies that used it."""

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}

    def to_device(self, key: str, array: np.ndarray, device: torch.device) -> torch.Tensor:
        src = torch.from_numpy(np.ascontiguousarray(array))
        if device.type != "cuda":
            return src.to(device)
        buf = self.buffers.get(key)
        if buf is None or buf.shape != src.shape or buf.dtype != src.dtype:
            buf = self.buffers[key] = torch.empty(src.shape, dtype=src.dtype, pin_memory=True)
        buf.copy_(src)
        return buf.to(device, non_blocking=True)


def rollout_to_batch(
    rollout: dict[str, Any], device: torch.device, staging: HostStaging | None = None
) -> tuple[dict[str, torch.Tensor], tuple]:
    """Numpy rollout -> torch batch (uint8 obs stay uint8) plus the initial core state."""
    staging = staging or HostStaging()
    batch = {k: staging.to_device(k, v, device) for k, v in rollout["data"].items()}
    batch["first"] = batch["terminated"] | batch["truncated"]
    state = tuple(staging.to_device(f"state{i}", s, device) for i, s in enumerate(rollout["initial_state"]))
    return batch, state


def replay_to_batch(sample: Any, device: torch.device, staging: HostStaging, key: str = "replay") -> Any:
    """An agent's replay sample (nested dicts / lists of numpy arrays) -> the same structure of tensors; every dict
    with `terminated` and `truncated` also gets `first`, as a rollout batch does."""
    if isinstance(sample, dict):
        out = {k: replay_to_batch(v, device, staging, f"{key}/{k}") for k, v in sample.items()}
        if "terminated" in out and "truncated" in out:
            out["first"] = out["terminated"] | out["truncated"]
        return out
    if isinstance(sample, list | tuple):
        return tuple(replay_to_batch(v, device, staging, f"{key}/{i}") for i, v in enumerate(sample))
    return staging.to_device(key, np.asarray(sample), device)


class NonFiniteError(RuntimeError):
    pass


# A gradient clip that did not act in the first CLIP_CHECK_UPDATES updates and is more than CLIP_NEVER_ACTS_RATIO
# times the largest gradient norm among them is reported as one that will not act. A heuristic: 40 read on a mean
# loss was 29-67x the largest norm of the MinAtar configs' first updates; delayed_cue's tuned clip is 2x its largest.
CLIP_CHECK_UPDATES = 50
CLIP_NEVER_ACTS_RATIO = 10.0


class Learner:
    """Turns rollouts into updates of `net` with `agent.loss_fn` and the agent's learner hooks (see
    `decoupled.agents.base.LearnerHook`); guards every update against non-finite values."""

    def __init__(
        self,
        agent: AgentDef,
        agent_cfg: Any,
        net: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        max_grad_norm: float | None,
        max_nonfinite_updates: int,
        replay: Any = None,
        hooks: list[LearnerHook] | None = None,
    ):
        self.agent, self.cfg, self.net, self.optimizer, self.device = agent, agent_cfg, net, optimizer, device
        self.replay = replay  # the agent's replay (envs/replay.py), for agents that learn from replay
        self.max_grad_norm = max_grad_norm
        self.max_nonfinite = max_nonfinite_updates
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self.version = 0
        self.staging = HostStaging()
        # the first updates say whether optim.max_grad_norm can act at all (`_check_the_clip`)
        self.clip_check_updates, self.clip_updates_seen = CLIP_CHECK_UPDATES, 0
        self.largest_grad_norm, self.clip_acted = 0.0, False
        # the agent's extra training steps (e.g. a dni_lstm core's synthetic-gradient module and its optimiser)
        self.hooks = list(agent.learner_hooks(agent_cfg, net) if hooks is None else hooks)
        names = [h.name for h in self.hooks]
        if len(set(names)) != len(names) or "replay" in names:
            raise ValueError(
                f"learner hooks need distinct names other than 'replay', got {names} (one dni_lstm core "
                "per net is supported)"
            )

    def extra_state(self) -> dict[str, Any]:
        """What a checkpoint needs beyond the net and the agent's optimiser: each learner hook's state (e.g. the
        synthetic-gradient module's optimiser), the replay contents."""
        out: dict[str, Any] = {hook.name: hook.state_dict() for hook in self.hooks}
        if self.replay is not None:
            out["replay"] = self.replay.state_dict()
        return out

    def load_extra_state(self, state: dict[str, Any]) -> None:
        for hook in self.hooks:
            if hook.name not in state:
                raise ValueError(
                    f"the checkpoint has no state for the learner hook {hook.name!r} ({type(hook).__name__}); it was "
                    "written by a run without it (e.g. another agent.core)"
                )
            hook.load_state_dict(state[hook.name])
        if self.replay is not None:
            if "replay" in state:
                self.replay.load_state_dict(state["replay"])
            else:  # e.g. auxiliary costs raised from 0 on resume: nothing was replayed before
                print("the checkpoint holds no replay contents: the replay starts empty", file=sys.stderr, flush=True)

    def clip_threshold(self, batch: dict[str, Any]) -> float:
        """The gradient-norm clip for this update's loss: `optim.max_grad_norm` is in summed-loss units, so it is
        divided by the agent's `loss_sum_factor` (the transitions a mean-reduced loss averages over; 1 for a sum)."""
        if self.max_grad_norm is None:
            return math.inf
        factor = self.agent.loss_sum_factor(self.cfg, batch) if self.agent.loss_sum_factor is not None else 1.0
        return self.max_grad_norm / factor

    def _check_the_clip(self, max_norm: float, grad_norm: float) -> None:
        """Over the first `clip_check_updates` updates: a clip that never acted and sits far above every gradient
        norm seen will not act (e.g. a value tuned for one loss reduction used with the other); say so once."""
        if self.clip_updates_seen >= self.clip_check_updates or math.isinf(max_norm) or not math.isfinite(grad_norm):
            return
        self.clip_updates_seen += 1
        self.largest_grad_norm = max(self.largest_grad_norm, grad_norm)
        self.clip_acted = self.clip_acted or grad_norm > max_norm
        if self.clip_updates_seen < self.clip_check_updates or self.clip_acted:
            return
        if max_norm <= CLIP_NEVER_ACTS_RATIO * self.largest_grad_norm:
            return
        units = "" if max_norm == self.max_grad_norm else f" (summed-loss units: {max_norm:.3g} on this mean loss)"
        ratio = max_norm / max(self.largest_grad_norm, 1e-30)
        print(
            f"warning: optim.max_grad_norm={self.max_grad_norm:g}{units} never acted in the first "
            f"{self.clip_check_updates} updates and is {ratio:.3g}x their largest gradient norm "
            f"({self.largest_grad_norm:.3g}): a clip this far above its gradients will not act. Lower it, or set "
            "optim.max_grad_norm=null to train without a clip.",
            file=sys.stderr,
            flush=True,
        )

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, rollout: dict[str, Any]) -> dict[str, float]:
        lag = self.version - int(rollout["policy_version"])  # updates between the acting policy and this one
        batch, state = rollout_to_batch(rollout, self.device, self.staging)
        for hook in self.hooks:
            state = hook.prepare_state(state)  # e.g. a leaf, whose gradient is a synthetic-gradient target
        inputs = net_inputs(batch["obs"], batch["first"], batch["action"], batch["reward"], self.device)
        for key in getattr(self.net, "extra_inputs", {}):  # e.g. the nav agent's velocity, recorded by the actor
            inputs[key] = batch[key]
        outputs, _ = self.net(inputs, state)
        if self.replay is not None:
            self.replay.add(rollout)
            sample = self.agent.sample_replay(self.cfg, self.replay)
            if sample is not None:
                batch["replay"] = replay_to_batch(sample, self.device, self.staging)
                outputs["replay"] = self.agent.replay_outputs(self.cfg, self.net, batch["replay"])
        loss, metrics = self.agent.loss_fn(self.cfg, batch, outputs)
        for hook in self.hooks:
            term, hook_metrics = hook.extra_loss(batch, outputs)
            if term is not None:
                loss = loss + term
            metrics = {**metrics, **hook_metrics}
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.net.parameters() if p.grad is not None]
        max_norm = self.clip_threshold(batch)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        result = {k: float(v) for k, v in metrics.items()}
        result["train/grad_norm"] = float(grad_norm)  # of the loss as computed (a mean's gradient under `mean`)
        result["train/grad_clipped"] = float(result["train/grad_norm"] > max_norm)  # its mean: the fraction clipped
        self._check_the_clip(max_norm, result["train/grad_norm"])
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
            for hook in self.hooks:
                result.update(hook.after_update(state, batch, outputs))
        if self.replay is not None:
            result["aux/replay/steps"] = self.replay.num_steps
        result["train/nonfinite_skips"] = self.nonfinite_total
        result["train/policy_lag"] = lag
        result["train/lr"] = self.optimizer.param_groups[0]["lr"]
        return result
