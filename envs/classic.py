"""Any gymnasium env with a Discrete action space and a Box observation behind the vectorised env contract
(backend `gym`, also known by its older name `classic`): the classic-control tasks (CartPole, Acrobot, MountainCar),
and a user's own env by its registered id or as `module:Env-v0` (gymnasium imports the module, which registers it).

The copies are stepped in a python loop: these tasks cost microseconds per step, so a subprocess vector env would
only add overhead. We do the same-step autoreset ourselves (see `envs.base`) instead of relying on gymnasium's
vector autoreset modes, whose defaults changed between 0.29, 1.0 and 1.1 (Gymnasium #1103, PR #1227).

The classic-control tasks can be snapshotted exactly (`get_state` / `set_state`): their whole state is a small
float vector, an RNG and a step counter, so a resumed run continues bit-identically. Any other env cannot be
(gymnasium has no general way to save an env), so `get_state` returns None and a resumed run starts new episodes,
as it does on Atari; the train loop says so when it resumes. Observations keep a uint8 Box's dtype (images stay
uint8 until the torso, scaled by 1/255 there) and are float32 otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from decoupled.envs.base import EnvSpec, EnvStep, GymFrames, PerEnvVecEnv

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


def _snapshotable(env: Any) -> bool:
    """Whether get_state can save this env exactly: gymnasium's classic-control tasks, whose whole state is known."""
    return type(env.unwrapped).__module__.startswith("gymnasium.envs.classic_control")


class ClassicVecEnv(GymFrames, PerEnvVecEnv):
    """`num_envs` copies of a gymnasium env with a Discrete action space and a Box observation."""

    _label = "classic"

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        seed: int,
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
    ):
        import gymnasium as gym

        super().__init__(num_envs, seed)
        self.env_id = env_id
        self._task = env_id
        kwargs = {} if max_episode_steps is None else {"max_episode_steps": int(max_episode_steps)}
        if render_mode is not None:  # "rgb_array": `render_rgb` gives frames (evaluation videos)
            kwargs["render_mode"] = render_mode
        self._envs = [gym.make(env_id, **kwargs) for _ in range(num_envs)]
        space = self._envs[0].action_space
        if not isinstance(space, gym.spaces.Discrete) or int(space.start) != 0:
            self.close()
            raise ValueError(
                f"gym backend supports Discrete action spaces starting at 0 only; {env_id} has {space}. "
                "Continuous-control tasks need a different policy head."
            )
        obs_space = self._envs[0].observation_space
        if not isinstance(obs_space, gym.spaces.Box):
            self.close()
            raise ValueError(f"gym backend needs a Box observation space; {env_id} has {obs_space}")
        image = obs_space.dtype == np.uint8
        self.spec = EnvSpec(
            name=env_id,
            obs_shape=tuple(obs_space.shape),
            obs_dtype=np.dtype(np.uint8 if image else np.float32),
            num_actions=int(space.n),
            frame_skip=1,
            extra={"obs_scale": 1.0 / 255 if image else 1.0},
        )

    # ------------------------------------------------------------------ per-env hooks
    def _reset_one(self, i: int, seed: int | None) -> np.ndarray:
        obs, _ = self._envs[i].reset(seed=seed)
        return obs

    def _step_one(self, i: int, action: int) -> EnvStep:
        env = self._envs[i]
        final_obs, r, te, tr, _ = env.step(action)
        obs = final_obs
        if te or tr:
            obs, _ = env.reset()  # same-step autoreset: obs starts the next episode
        r = np.float32(r)  # the episode statistics sum the float32 reward the agent gets
        return EnvStep(obs, final_obs, r, r, te, tr, te or tr)

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
    def get_state(self) -> dict[str, Any] | None:
        """Everything needed to continue bit-identically: each env's physical state, its RNG, its TimeLimit
        counter, the current obs and the episode statistics. Plain python values and numpy arrays only. None for
        an env that is not a classic-control task (nothing general saves a gymnasium env)."""
        if not all(_snapshotable(env) for env in self._envs):
            return None
        self._require_reset("get_state")
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
        return self._snapshot("env_id", envs)

    def set_state(self, state: dict[str, Any]) -> None:
        self._check_snapshot(state, "env_id")
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
        self._restore(state)
