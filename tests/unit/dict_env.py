"""A tiny dict-observation env for the worker-process tests (imported by the workers by module path)."""

import gymnasium as gym
import numpy as np


class DictCartPole(gym.Wrapper):
    """CartPole whose observation is {"state": obs, "double": 2 * obs}."""

    def __init__(self) -> None:
        super().__init__(gym.make("CartPole-v1"))
        box = self.env.observation_space
        self.observation_space = gym.spaces.Dict(
            {"state": box, "double": gym.spaces.Box(2 * box.low, 2 * box.high, dtype=np.float32)}
        )

    def _wrap(self, obs):
        return {"state": obs, "double": (2 * obs).astype(np.float32)}

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return self._wrap(obs), info

    def step(self, action):
        obs, r, te, tr, info = self.env.step(action)
        return self._wrap(obs), r, te, tr, info
