"""MiniGrid (Chevalier-Boisvert et al. 2023, arXiv:2306.13831; the `minigrid` package) behind the vectorised env
contract: long-horizon, sparse-reward gridworlds (DoorKey, KeyCorridor, MultiRoom, FourRooms, ...) that flat agents
find hard, the kind of task FeUdal Networks were built for.

Observations are MiniGrid's symbolic egocentric view, the `image` entry of its observation: a 7x7 grid of
(object type, colour, state) indices in front of the agent, given channels-first as uint8 [3, 7, 7] (scaled by
1/10 in the torso: the largest index is 10). The mission string and the absolute direction are not given (the view
is already egocentric). Actions are MiniGrid's seven (left, right, forward, pickup, drop, toggle, done).

The reward is MiniGrid's: 1 - 0.9 * (steps / max_steps) on success, 0 otherwise, so an episode's return above 0
means the task was solved. An episode is truncated (and bootstrapped) at the env's `max_steps`, which
`env.max_episode_steps` overrides.

Snapshots: MiniGrid envs keep task-specific Python objects (rooms, doors, target objects) that nothing in the
package serialises, so `get_state` returns None and a resumed run starts new episodes, as on Atari (the train loop
says so when it resumes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from decoupled.envs.base import EnvSpec, EnvStep, GymFrames, PerEnvVecEnv

OBS_SCALE = 1.0 / 10.0  # the largest symbolic index (OBJECT_TO_IDX's "agent") is 10


class MiniGridVecEnv(GymFrames, PerEnvVecEnv):
    """`num_envs` copies of a MiniGrid task with the symbolic [3, 7, 7] view."""

    _label = "minigrid"

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        seed: int,
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
    ):
        try:
            import gymnasium as gym
            import minigrid  # noqa: F401 - importing it registers the MiniGrid ids with gymnasium
        except ImportError as e:  # pragma: no cover - the extra is part of `make install`
            raise ImportError("the minigrid backend needs `minigrid`: pip install 'decoupled[minigrid]'") from e

        super().__init__(num_envs, seed)
        self.env_id = self._task = env_id
        kwargs = {} if max_episode_steps is None else {"max_steps": int(max_episode_steps)}
        if render_mode is not None:  # "rgb_array": `render_rgb` gives MiniGrid's own top-down frames
            kwargs["render_mode"] = render_mode
        try:
            self._envs = [gym.make(env_id, **kwargs) for _ in range(num_envs)]
        except gym.error.Error as e:
            raise ValueError(f"unknown MiniGrid env {env_id!r}: {e}") from None
        view = self._envs[0].observation_space["image"]
        self.spec = EnvSpec(
            name=env_id,
            obs_shape=(view.shape[2], view.shape[0], view.shape[1]),
            obs_dtype=np.dtype(np.uint8),
            num_actions=int(self._envs[0].action_space.n),
            frame_skip=1,
            extra={"obs_scale": OBS_SCALE},
        )

    @staticmethod
    def _view(obs: dict[str, Any]) -> np.ndarray:
        return np.ascontiguousarray(np.transpose(obs["image"], (2, 0, 1)))

    def _reset_one(self, i: int, seed: int | None) -> np.ndarray:
        obs, _ = self._envs[i].reset(seed=seed)
        return self._view(obs)

    def _step_one(self, i: int, action: int) -> EnvStep:
        env = self._envs[i]
        obs, r, te, tr, _ = env.step(int(action))
        final_obs = obs = self._view(obs)
        if te or tr:
            obs = self._view(env.reset()[0])  # same-step autoreset: obs starts the next episode
        r = np.float32(r)
        return EnvStep(obs, final_obs, r, r, te, tr, te or tr)

    def settings(self) -> dict[str, Any]:
        from importlib.metadata import version

        return {
            "backend": "minigrid",
            "name": self.env_id,
            "num_envs": self.num_envs,
            "seed": self._seed,
            "frame_skip": 1,
            "max_steps": int(self._envs[0].unwrapped.max_steps),
            "obs_shape": list(self.spec.obs_shape),
            "num_actions": self.spec.num_actions,
            "minigrid_version": version("minigrid"),
        }
