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
from typing import Any

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

    def update(self, raw_reward: np.ndarray, game_over: np.ndarray) -> dict[str, np.ndarray]:
        self.returns += raw_reward
        self.frames += self.frame_skip
        done = np.asarray(game_over, bool).copy()
        out = {
            "episode_done": done,
            "episode_return": np.where(done, self.returns, np.nan),
            "episode_frames": np.where(done, self.frames, 0),
        }
        self.returns[done] = 0.0
        self.frames[done] = 0
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
