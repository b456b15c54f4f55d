"""Gymnasium classic-control tasks (CartPole, Acrobot, MountainCar) behind the vectorised env contract.

The copies are stepped in a python loop: these tasks cost microseconds per step, so a subprocess vector env would
only add overhead. We do the same-step autoreset ourselves (see `envs.base`) instead of relying on gymnasium's
vector autoreset modes, whose defaults changed between 0.29, 1.0 and 1.1 (Gymnasium #1103, PR #1227).

Unlike the emulator backends, these envs can be snapshotted exactly (`get_state` / `set_state`): their whole
state is a small float vector, an RNG and a step counter, so a resumed run continues bit-identically.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.base import EnvCrashedError, EnvSpec, EpisodeTracker, VecEnv

# Attributes of `env.unwrapped`, beyond `state`, that some classic-control tasks carry between steps
# (CartPole counts the steps taken after termination to warn about stepping a finished episode).
_EXTRA_UNWRAPPED_ATTRS = ("steps_beyond_terminated",)


def _find_time_limit(env: Any) -> Any | None:
    """The `TimeLimit` wrapper in `env`'s wrapper chain, or None."""
    from gymnasium.wrappers import TimeLimit

    while env is not None:
        if isinstance(env, TimeLimit):
            return env
        env = getattr(env, "env", None)
    return None


def _plain(value: Any) -> Any:
    """Numpy scalars -> python scalars, so a snapshot needs no numpy scalar types to unpickle."""
    if isinstance(value, np.generic):
        return value.item()
    return value


class ClassicVecEnv(VecEnv):
    """`num_envs` copies of a gymnasium classic-control task with a Discrete action space; float32 obs."""

    def __init__(self, env_id: str, num_envs: int, seed: int, max_episode_steps: int | None = None):
        import gymnasium as gym

        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.env_id = env_id
        self.num_envs = num_envs
        self._seed = int(seed)
        kwargs = {} if max_episode_steps is None else {"max_episode_steps": int(max_episode_steps)}
        self._envs = [gym.make(env_id, **kwargs) for _ in range(num_envs)]
        space = self._envs[0].action_space
        if not isinstance(space, gym.spaces.Discrete) or int(space.start) != 0:
            self.close()
            raise ValueError(
                f"classic backend supports Discrete action spaces starting at 0 only; {env_id} has {space}. "
                "Continuous-control tasks need a different policy head."
            )
        obs_space = self._envs[0].observation_space
        if not isinstance(obs_space, gym.spaces.Box):
            self.close()
            raise ValueError(f"classic backend needs a Box observation space; {env_id} has {obs_space}")
        self.spec = EnvSpec(
            name=env_id,
            obs_shape=tuple(obs_space.shape),
            obs_dtype=np.dtype(np.float32),
            num_actions=int(space.n),
            frame_skip=1,
            extra={"obs_scale": 1.0},
        )
        self._tracker = EpisodeTracker(num_envs, frame_skip=1)
        self._obs: np.ndarray | None = None
        self._seeded_once = False

    # ------------------------------------------------------------------ contract
    def _seed_of(self, i: int) -> int:
        return self._seed + i

    def _crash(self, what: str, i: int, exc: BaseException) -> EnvCrashedError:
        return EnvCrashedError(
            f"classic backend: {self.env_id} env index {i} (seed {self._seed_of(i)}) raised in {what}: {exc!r}"
        )

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Reset all copies. The first reset always seeds (with the constructor's seed unless `seed` is given),
        so two envs built with one seed produce one stream; later `reset()` calls continue each env's RNG."""
        if seed is not None:
            self._seed = int(seed)
        reseed = seed is not None or not self._seeded_once
        obs = np.empty((self.num_envs, *self.spec.obs_shape), np.float32)
        for i, env in enumerate(self._envs):
            try:
                obs[i], _ = env.reset(seed=self._seed_of(i) if reseed else None)
            except Exception as exc:
                raise self._crash("reset", i, exc) from exc
        self._seeded_once = True
        self._tracker.reset()
        self._obs = obs
        return obs.copy()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._obs is None:
            raise RuntimeError("ClassicVecEnv.step called before reset()")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,):
            raise ValueError(f"actions must have shape ({self.num_envs},), got {actions.shape}")
        obs = np.empty_like(self._obs)
        final_obs = np.empty_like(self._obs)
        reward = np.zeros(self.num_envs, np.float32)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        for i, env in enumerate(self._envs):
            try:
                o, r, te, tr, _ = env.step(int(actions[i]))
                final_obs[i] = o
                if te or tr:
                    o, _ = env.reset()  # same-step autoreset: obs[i] starts the next episode
            except Exception as exc:
                raise self._crash("step", i, exc) from exc
            obs[i] = o
            reward[i] = r
            terminated[i] = te
            truncated[i] = tr
        info: dict[str, Any] = {"final_obs": final_obs}
        info.update(self._tracker.update(reward.astype(np.float64), terminated | truncated))
        self._obs = obs
        return obs.copy(), reward, terminated, truncated, info

    def settings(self) -> dict[str, Any]:
        """Read back from the built envs: the TimeLimit actually wrapped around them and their spaces."""
        import gymnasium as gym

        limit = _find_time_limit(self._envs[0])
        return {
            "backend": "classic",
            "name": self.env_id,
            "num_envs": self.num_envs,
            "seed": self._seed,
            "frame_skip": self.spec.frame_skip,
            "max_episode_steps": None if limit is None else int(limit._max_episode_steps),
            "obs_shape": list(self._envs[0].observation_space.shape),
            "num_actions": int(self._envs[0].action_space.n),
            "obs_scale": self.spec.extra["obs_scale"],
            "gymnasium_version": gym.__version__,
        }

    # ------------------------------------------------------------------ snapshots
    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically: each env's physical state, its RNG, its TimeLimit
        counter, the current obs and the episode statistics. Plain python values and numpy arrays only."""
        if self._obs is None:
            raise RuntimeError("ClassicVecEnv.get_state called before reset()")
        envs = []
        for env in self._envs:
            u = env.unwrapped
            state = u.state
            entry: dict[str, Any] = {
                # MountainCar keeps a tuple of floats, CartPole/Acrobot an ndarray: restore the same kind.
                "state": np.array(state, dtype=np.float64),
                "state_is_tuple": isinstance(state, tuple),
                "np_random": u.np_random.bit_generator.state,
                "extra": {k: _plain(getattr(u, k)) for k in _EXTRA_UNWRAPPED_ATTRS if hasattr(u, k)},
            }
            limit = _find_time_limit(env)
            entry["elapsed_steps"] = None if limit is None else int(limit._elapsed_steps)
            envs.append(entry)
        return {
            "backend": "classic",
            "env_id": self.env_id,
            "num_envs": self.num_envs,
            "seed": self._seed,
            "obs": self._obs.copy(),
            "tracker": self._tracker.get_state(),
            "envs": envs,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("backend") != "classic" or state.get("env_id") != self.env_id:
            raise ValueError(f"snapshot is for {state.get('backend')}/{state.get('env_id')}, not classic/{self.env_id}")
        if int(state["num_envs"]) != self.num_envs or len(state["envs"]) != self.num_envs:
            raise ValueError(f"snapshot has {state['num_envs']} envs, this env has {self.num_envs}")
        for env, entry in zip(self._envs, state["envs"]):
            env.reset()  # satisfies OrderEnforcing and creates the attributes we then overwrite
            u = env.unwrapped
            s = np.array(entry["state"], dtype=np.float64)
            u.state = tuple(float(x) for x in s) if entry["state_is_tuple"] else s
            u.np_random.bit_generator.state = entry["np_random"]
            for k, v in entry["extra"].items():
                setattr(u, k, v)
            limit = _find_time_limit(env)
            if limit is not None and entry["elapsed_steps"] is not None:
                limit._elapsed_steps = int(entry["elapsed_steps"])
        self._seed = int(state["seed"])
        self._seeded_once = True
        self._obs = np.array(state["obs"], dtype=np.float32)
        self._tracker.set_state(state["tracker"])

    def close(self) -> None:
        for env in getattr(self, "_envs", []):
            env.close()
