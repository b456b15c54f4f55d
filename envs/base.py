"""The env contract every backend implements.

A `VecEnv` steps `num_envs` copies of one task in lock-step and *resets them in the same step*: when
`terminated[i] or truncated[i]`, the returned `obs[i]` is already the first observation of env i's next episode
and the last observation of the finished one is in `info["final_obs"][i]`. Every transition the agent sees is
therefore real (no action-ignored "reset steps"), and `terminated` / `truncated` stay apart so the learner
bootstraps on truncation but never on termination.

Rewards returned by `step` are the *training* rewards (clipped when the protocol says so); the unclipped
game score lives in the episode statistics: `info["episode_done"][i]` is True when env i finished a whole
game (for Atari with life loss as terminal: game over, not life loss), and then `info["episode_return"][i]`
and `info["episode_frames"][i]` hold its unclipped score and its length in emulator frames.

Pixel observations are uint8 and stay uint8 until the torso; vector observations (classic control) are float32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import numpy as np


@dataclass(frozen=True)
class EnvSpec:
    """What an agent needs to know to build its net for an env."""

    name: str
    obs_shape: tuple[int, ...]
    obs_dtype: np.dtype
    num_actions: int
    frame_skip: int = 1  # emulator frames per agent step: env_frames = agent_steps * frame_skip
    extra: dict[str, Any] = field(default_factory=dict)


class VecEnv:
    """Base class of the vectorised env contract (see the module docstring).

    Subclasses implement `_reset`, `_step` and `close`, and may implement `get_state` / `set_state` when the
    backend can be snapshotted (then a resumed run continues bit-identically).
    """

    spec: EnvSpec
    num_envs: int

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Reset every env. `seed` seeds env i with `seed + i`. Returns obs [B, *obs_shape]."""
        raise NotImplementedError

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every env with `actions [B]`. Returns obs, reward [B] f32, terminated [B] bool, truncated [B] bool,
        info with at least `final_obs`, `episode_done`, `episode_return`, `episode_frames`."""
        raise NotImplementedError

    def step_async(self, actions: np.ndarray) -> None:
        """Start `step(actions)`; `step_wait()` returns its result. Backends that step in threads of their own
        (envpool) override the pair so that the caller can work while the envs step; here they are one `step`."""
        self._pending_actions = np.asarray(actions)

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        actions = getattr(self, "_pending_actions", None)
        if actions is None:
            raise RuntimeError(f"{type(self).__name__}.step_wait called without a step_async before it")
        self._pending_actions = None
        return self.step(actions)

    def settings(self) -> dict[str, Any]:
        """The resolved settings of the built env, read back from the backend where it can tell."""
        return {"name": self.spec.name, "num_envs": self.num_envs, "frame_skip": self.spec.frame_skip}

    def get_state(self) -> dict[str, Any] | None:
        """A snapshot (numpy arrays and plain numbers only) to continue exactly after a resume, or None."""
        return None

    def set_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot restore a snapshot")

    def close(self) -> None:
        pass

    def __enter__(self) -> VecEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EpisodeTracker:
    """Accumulates the unclipped score and the frame count of the game each env is in.

    Backends call `update(raw_reward, game_over)` once per step, after the step; it returns the
    `episode_done / episode_return / episode_frames` entries of `info` for that step.
    """

    def __init__(self, num_envs: int, frame_skip: int = 1):
        self.frame_skip = frame_skip
        self.returns = np.zeros(num_envs, np.float64)
        self.frames = np.zeros(num_envs, np.int64)

    def update(
        self, raw_reward: np.ndarray, game_over: np.ndarray, discard: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """`discard[i]`: env i's game was cut short (its worker died): start over without reporting a score."""
        self.returns += raw_reward
        self.frames += self.frame_skip
        done = np.asarray(game_over, bool).copy()
        if discard is not None:
            done &= ~np.asarray(discard, bool)
        out = {
            "episode_done": done,
            "episode_return": np.where(done, self.returns, np.nan),
            "episode_frames": np.where(done, self.frames, 0),
        }
        reset = done if discard is None else done | np.asarray(discard, bool)
        self.returns[reset] = 0.0
        self.frames[reset] = 0
        return out

    def reset(self) -> None:
        self.returns[:] = 0.0
        self.frames[:] = 0

    def get_state(self) -> dict[str, np.ndarray]:
        return {"returns": self.returns.copy(), "frames": self.frames.copy()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.returns[:] = np.asarray(state["returns"])
        self.frames[:] = np.asarray(state["frames"])


class EnvCrashedError(RuntimeError):
    """An env raised inside reset/step. The message names the backend, the env index and its seed."""


class EnvStep(NamedTuple):
    """What one copy's step returns to `PerEnvVecEnv.step` (see `PerEnvVecEnv._step_one`)."""

    obs: np.ndarray  # the obs the agent sees next: the next episode's first obs when the episode ended
    final_obs: np.ndarray  # the obs the action led to (the last one of the episode when it ended)
    reward: float  # the training reward returned to the agent (clipped where the protocol says so)
    raw_reward: float  # the unclipped reward, summed into the episode statistics
    terminated: bool
    truncated: bool
    game_over: bool  # closes the episode statistics (for Atari with life loss as terminal: game over only)


class PerEnvVecEnv(VecEnv):
    """A `VecEnv` over one python env object per copy, stepped in a python loop.

    The classic-control, MinAtar and gymnasium-Atari backends all work this way; this class owns what they share so
    that it is written once: the seeding rule (env i gets `seed + i`; the first reset always seeds, later resets
    without a seed continue each env's RNG), the checks on `step`, the same-step autoreset bookkeeping (obs /
    final_obs / reward / terminated / truncated arrays), the episode statistics and the `EnvCrashedError` that
    names the backend, the task, the env index and its seed. A subclass builds its envs into `_envs` (closed by
    `close`), sets `spec`, `_label` and `_task`, and implements two hooks for one copy: `_reset_one` and `_step_one`
    (plus `_step_info` for extra `info` entries). Backends that can be snapshotted build their `get_state` /
    `set_state` on `_snapshot`, `_check_snapshot` and `_restore`, so every snapshot has the same layout.
    """

    #: How crash messages name the backend ("classic", "minatar", "gymnasium/ale-py").
    _label: ClassVar[str]
    #: How crash messages name the task (an env id or a game); set by the subclass.
    _task: str
    #: The copy `step` is stepping now (None between steps).
    stepping: int | None = None

    def __init__(self, num_envs: int, seed: int, frame_skip: int = 1):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.num_envs = num_envs
        self._seed = int(seed)
        self._tracker = EpisodeTracker(num_envs, frame_skip=frame_skip)
        self._obs: np.ndarray | None = None
        self._seeded_once = False

    # ------------------------------------------------------------------ hooks
    def _reset_one(self, i: int, seed: int | None) -> np.ndarray:
        """Reset env i, re-seeding it with `seed` unless that is None; return its first obs."""
        raise NotImplementedError

    def _step_one(self, i: int, action: int) -> EnvStep:
        """Step env i with `action`, resetting it in the same step when its episode ends."""
        raise NotImplementedError

    def _step_info(self) -> dict[str, Any]:
        """Backend entries of `info`, read after all copies have stepped (placed after `final_obs`)."""
        return {}

    # ------------------------------------------------------------------ contract
    def _seed_of(self, i: int) -> int:
        return self._seed + i

    def _crash(self, what: str, i: int, exc: BaseException) -> EnvCrashedError:
        return EnvCrashedError(
            f"{self._label} backend: {self._task} env index {i} (seed {self._seed_of(i)}) raised in {what}: {exc!r}"
        )

    def _require_reset(self, what: str) -> None:
        if self._obs is None:
            raise RuntimeError(f"{type(self).__name__}.{what} called before reset()")

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Reset all copies. The first reset always seeds (with the constructor's seed unless `seed` is given),
        so two envs built with one seed produce one stream; later `reset()` calls continue each env's RNG."""
        if seed is not None:
            self._seed = int(seed)
        reseed = seed is not None or not self._seeded_once
        obs = np.empty((self.num_envs, *self.spec.obs_shape), self.spec.obs_dtype)
        for i in range(self.num_envs):
            try:
                obs[i] = self._reset_one(i, self._seed_of(i) if reseed else None)
            except Exception as exc:
                raise self._crash("reset", i, exc) from exc
        self._seeded_once = True
        self._tracker.reset()
        self._obs = obs
        return obs.copy()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        self._require_reset("step")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,):
            raise ValueError(f"actions must have shape ({self.num_envs},), got {actions.shape}")
        obs = np.empty_like(self._obs)
        final_obs = np.empty_like(self._obs)
        reward = np.zeros(self.num_envs, np.float32)
        raw_reward = np.zeros(self.num_envs, np.float64)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        game_over = np.zeros(self.num_envs, bool)
        for i in range(self.num_envs):
            self.stepping = i  # which copy a step that never returns is stuck in (the training watchdog says so)
            try:
                s = self._step_one(i, int(actions[i]))
            except Exception as exc:
                raise self._crash("step", i, exc) from exc
            obs[i] = s.obs
            final_obs[i] = s.final_obs
            reward[i] = s.reward
            raw_reward[i] = s.raw_reward
            terminated[i] = s.terminated
            truncated[i] = s.truncated
            game_over[i] = s.game_over
        self.stepping = None
        info: dict[str, Any] = {"final_obs": final_obs, **self._step_info()}
        info.update(self._tracker.update(raw_reward, game_over))
        self._obs = obs
        return obs.copy(), reward, terminated, truncated, info

    # ------------------------------------------------------------------ snapshots (for backends that have them)
    def _snapshot(self, key: str, envs: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        """The layout every backend's snapshot shares: the backend and the task it is for (the attribute `key`
        names), the seed, backend entries (`extra`), the current obs, the episode statistics and one entry per
        env. Call `_require_reset("get_state")` first."""
        return {
            "backend": self._label,
            key: getattr(self, key),
            "num_envs": self.num_envs,
            "seed": self._seed,
            **extra,
            "obs": self._obs.copy(),
            "tracker": self._tracker.get_state(),
            "envs": envs,
        }

    def _check_snapshot(self, state: dict[str, Any], key: str) -> None:
        """Refuse a snapshot taken from another backend, task or number of envs (see `_snapshot`)."""
        task = getattr(self, key)
        if state.get("backend") != self._label or state.get(key) != task:
            raise ValueError(f"snapshot is for {state.get('backend')}/{state.get(key)}, not {self._label}/{task}")
        if int(state["num_envs"]) != self.num_envs or len(state["envs"]) != self.num_envs:
            raise ValueError(f"snapshot has {state['num_envs']} envs, this env has {self.num_envs}")

    def _restore(self, state: dict[str, Any]) -> None:
        """Restore what `_snapshot` saved besides the envs themselves and the backend entries."""
        self._seed = int(state["seed"])
        self._seeded_once = True
        self._obs = np.array(state["obs"], dtype=self.spec.obs_dtype)
        self._tracker.set_state(state["tracker"])

    def close(self) -> None:
        for env in getattr(self, "_envs", []):
            close = getattr(env, "close", None)  # MinAtar's `Environment` has nothing to close
            if close is not None:
                close()


class GymFrames:
    """`render_rgb(i)` for backends whose copies are gymnasium envs in `_envs`, built with render_mode="rgb_array"
    when frames are wanted (evaluation videos)."""

    _envs: list[Any]
    env_id: str

    def render_rgb(self, i: int) -> np.ndarray:
        """Copy i's frame as RGB [H, W, 3] uint8 (the env must be built with render_mode="rgb_array")."""
        frame = self._envs[i].render()
        if frame is None:
            raise ValueError(f"{self.env_id}: no frame; build the env with render_mode='rgb_array'")
        return np.asarray(frame, np.uint8)
