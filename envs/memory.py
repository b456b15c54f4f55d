"""Delayed cue: a memory task whose reward depends on a cue seen `delay` steps earlier.

The form of bsuite's `memory_len` (Osband et al. 2019, "Behaviour Suite for Reinforcement Learning", Sec. 2.6),
a T-maze reduced to its memory part: at an episode's first step the observation shows a cue (one of `num_cues`,
one-hot); for the next `delay` steps it shows nothing but the time; at step `delay` a query flag is set and the
action taken there is the answer: +1 if it names the cue, -1 otherwise, and the episode ends. Actions before the
query change nothing (reward 0). An episode is `delay + 1` steps. A memoryless policy scores 0 on average
(2 cues: half right); a perfect one scores +1.

Observation (float32, `num_cues + 2` features): [cue one-hot (step 0 only), query flag, time t / delay].

For a recurrent agent unrolled over T steps, the cue and the query lie in different unrolls once delay >= T:
truncated backpropagation then has no gradient path from the answer's loss to the step that must store the cue,
which is what a synthetic-gradient core (agents/nets/dni.py) is for. Vectorised in NumPy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from decoupled.envs.base import EnvSpec, EpisodeTracker, VecEnv


class DelayedCueVecEnv(VecEnv):
    def __init__(self, num_envs: int, seed: int, delay: int = 10, num_cues: int = 2):
        if delay < 1 or num_cues < 2:
            raise ValueError(f"delayed_cue needs delay >= 1 and num_cues >= 2, got delay={delay} num_cues={num_cues}")
        self.num_envs, self.delay, self.num_cues = num_envs, delay, num_cues
        self.spec = EnvSpec(
            name="memory/delayed_cue",
            obs_shape=(num_cues + 2,),
            obs_dtype=np.dtype(np.float32),
            num_actions=num_cues,
            extra={"obs_scale": 1.0},
        )
        self._rng = np.random.default_rng(seed)
        self._seed = seed
        self.t = np.zeros(num_envs, np.int64)
        self.cue = np.zeros(num_envs, np.int64)
        self.tracker = EpisodeTracker(num_envs)

    def _new_episodes(self, mask: np.ndarray) -> None:
        self.t[mask] = 0
        self.cue[mask] = self._rng.integers(0, self.num_cues, size=int(mask.sum()))

    def _obs(self) -> np.ndarray:
        obs = np.zeros((self.num_envs, self.num_cues + 2), np.float32)
        at_start = np.flatnonzero(self.t == 0)
        obs[at_start, self.cue[at_start]] = 1.0
        obs[:, self.num_cues] = self.t == self.delay
        obs[:, self.num_cues + 1] = self.t / self.delay
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
        if actions.shape != (self.num_envs,) or actions.min() < 0 or actions.max() >= self.num_cues:
            raise ValueError(f"delayed_cue expects {self.num_envs} actions in [0, {self.num_cues}), got {actions!r}")
        terminated = self.t == self.delay
        reward = np.where(terminated, np.where(actions == self.cue, 1.0, -1.0), 0.0).astype(np.float32)
        self.t += 1
        final_obs = self._obs()
        self._new_episodes(terminated)
        info = {"final_obs": final_obs, **self.tracker.update(reward, terminated)}
        return self._obs(), reward, terminated, np.zeros(self.num_envs, bool), info

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "delay": self.delay, "num_cues": self.num_cues, "seed": self._seed}

    def get_state(self) -> dict[str, Any]:
        return {
            "rng": self._rng.bit_generator.state,
            "t": self.t.copy(),
            "cue": self.cue.copy(),
            "tracker": self.tracker.get_state(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = state["rng"]
        self.t[:] = state["t"]
        self.cue[:] = state["cue"]
        self.tracker.set_state(state["tracker"])

    def current_obs(self) -> np.ndarray:
        return self._obs()
