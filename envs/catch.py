"""Catch: a small deterministic task for fast learning tests (as in bsuite's `catch`, Osband et al. 2019).

A ball starts in a random column of the top row and falls one row per step; the agent moves a paddle along the
bottom row (left, stay, right). When the ball reaches the bottom row the episode ends with +1 if the paddle is
under it and -1 otherwise. Vectorised in NumPy: no Python loop over envs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from decoupled.envs.base import EnvSpec, EpisodeTracker, VecEnv


class CatchVecEnv(VecEnv):
    def __init__(self, num_envs: int, seed: int, rows: int = 10, columns: int = 5):
        if rows < 2 or columns < 1:
            raise ValueError(f"catch needs rows >= 2 and columns >= 1, got rows={rows} columns={columns}")
        self.num_envs, self.rows, self.columns = num_envs, rows, columns
        self.spec = EnvSpec(
            name="catch",
            obs_shape=(1, rows, columns),
            obs_dtype=np.dtype(np.uint8),
            num_actions=3,
            extra={"obs_scale": 1.0, "action_meanings": ["LEFT", "STAY", "RIGHT"]},
        )
        self._rng = np.random.default_rng(seed)
        self._seed = seed
        self.ball_row = np.zeros(num_envs, np.int64)
        self.ball_col = np.zeros(num_envs, np.int64)
        self.paddle = np.zeros(num_envs, np.int64)
        self.tracker = EpisodeTracker(num_envs)

    def _new_episodes(self, mask: np.ndarray) -> None:
        n = int(mask.sum())
        self.ball_row[mask] = 0
        self.ball_col[mask] = self._rng.integers(0, self.columns, size=n)
        self.paddle[mask] = self.columns // 2

    def _obs(self) -> np.ndarray:
        obs = np.zeros((self.num_envs, 1, self.rows, self.columns), np.uint8)
        idx = np.arange(self.num_envs)
        obs[idx, 0, self.ball_row, self.ball_col] = 1
        obs[idx, 0, self.rows - 1, self.paddle] = 1
        return obs

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
            self._seed = seed
        self._new_episodes(np.ones(self.num_envs, bool))
        self.tracker.reset()
        return self._obs()

    def step(self, actions: np.ndarray):
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,) or actions.min() < 0 or actions.max() > 2:
            raise ValueError(f"catch expects {self.num_envs} actions in {{0,1,2}}, got {actions!r}")
        self.paddle = np.clip(self.paddle + actions - 1, 0, self.columns - 1)
        self.ball_row += 1
        terminated = self.ball_row == self.rows - 1
        reward = np.where(terminated, np.where(self.paddle == self.ball_col, 1.0, -1.0), 0.0).astype(np.float32)
        final_obs = self._obs()
        self._new_episodes(terminated)
        info = {"final_obs": final_obs, **self.tracker.update(reward, terminated)}
        return self._obs(), reward, terminated, np.zeros(self.num_envs, bool), info

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "rows": self.rows, "columns": self.columns, "seed": self._seed}

    def get_state(self) -> dict[str, Any]:
        return {
            "rng": self._rng.bit_generator.state,
            "ball_row": self.ball_row.copy(),
            "ball_col": self.ball_col.copy(),
            "paddle": self.paddle.copy(),
            "tracker": self.tracker.get_state(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = state["rng"]
        self.ball_row[:] = state["ball_row"]
        self.ball_col[:] = state["ball_col"]
        self.paddle[:] = state["paddle"]
        self.tracker.set_state(state["tracker"])

    def current_obs(self) -> np.ndarray:
        return self._obs()
