"""MinAtar (Young & Tian 2019, arXiv:1903.03176): five miniature Atari games on a 10x10 grid, fast on a CPU.

We drive `minatar.Environment` directly rather than its gym wrapper: it is the reference implementation, it lets us
seed each copy's RNG, and its observation is already the binary [10, 10, C] grid. Observations are returned
channels-first uint8 [C, 10, 10] (0/1) so the same torso code handles MinAtar and Atari; `obs_scale` is 1.0.

Defaults follow the paper: sticky actions with probability 0.1 and difficulty ramping on. Actions index the game's
*minimal* action set (e.g. 3 actions in Breakout), not MinAtar's full 6.

Seeding: `Environment.seed(s)` replaces one `RandomState` shared by the sticky-action draw and the game itself, so
env i is fully determined by `seed + i` and its action sequence.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from envs.base import EnvCrashedError, EnvSpec, EpisodeTracker, VecEnv

GAMES = ("asterix", "breakout", "freeway", "seaquest", "space_invaders")
# MinAtar's full action set, in its order (minatar/environments/*.py `action_map`).
_ACTION_MEANINGS = ("NOOP", "LEFT", "UP", "RIGHT", "DOWN", "FIRE")
# Attributes of a game object that are configuration, not state; everything else in `vars(game)` is snapshotted.
_NOT_STATE = ("random", "channels", "action_map")


def canonical_game(env_id: str) -> str:
    """`breakout`, `Breakout`, `MinAtar/Breakout-v1`, `SpaceInvaders`, `space_invaders` -> MinAtar's module name."""
    name = env_id.split("/")[-1]
    name = re.sub(r"-v\d+$", "", name)
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()
    if name not in GAMES:
        raise ValueError(f"unknown MinAtar game {env_id!r}; choose one of {', '.join(GAMES)}")
    return name


def _to_plain(value: Any) -> Any:
    """A game attribute -> numpy arrays and python scalars/containers only (no numpy scalars)."""
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return [_to_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_to_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot snapshot a MinAtar attribute of type {type(value).__name__}")


class MinAtarVecEnv(VecEnv):
    """`num_envs` copies of one MinAtar game; obs uint8 [C, 10, 10]; minimal action set."""

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        seed: int,
        sticky_action_prob: float = 0.1,
        difficulty_ramping: bool = True,
        max_episode_steps: int | None = None,
    ):
        import minatar

        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if not 0.0 <= sticky_action_prob <= 1.0:
            raise ValueError(f"sticky_action_prob must be in [0, 1], got {sticky_action_prob}")
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1 or None, got {max_episode_steps}")
        self.game = canonical_game(env_id)
        self.env_id = env_id
        self.num_envs = num_envs
        self._seed = int(seed)
        self._max_episode_steps = max_episode_steps
        self._envs = [
            minatar.Environment(self.game, sticky_action_prob=sticky_action_prob, difficulty_ramping=difficulty_ramping)
            for _ in range(num_envs)
        ]
        self._action_set = np.asarray(self._envs[0].minimal_action_set(), np.int64)
        h, w, c = self._envs[0].state_shape()
        self.spec = EnvSpec(
            name=f"minatar/{self.game}",
            obs_shape=(c, h, w),
            obs_dtype=np.dtype(np.uint8),
            num_actions=len(self._action_set),
            frame_skip=1,
            extra={
                "obs_scale": 1.0,
                "action_meanings": [_ACTION_MEANINGS[a] for a in self._action_set],
            },
        )
        self._tracker = EpisodeTracker(num_envs, frame_skip=1)
        self._steps = np.zeros(num_envs, np.int64)
        self._obs: np.ndarray | None = None
        self._seeded_once = False

    def _seed_of(self, i: int) -> int:
        return self._seed + i

    def _crash(self, what: str, i: int, exc: BaseException) -> EnvCrashedError:
        return EnvCrashedError(
            f"minatar backend: {self.game} env index {i} (seed {self._seed_of(i)}) raised in {what}: {exc!r}"
        )

    def _observe(self, i: int) -> np.ndarray:
        return np.ascontiguousarray(self._envs[i].state().transpose(2, 0, 1), dtype=np.uint8)

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Reset all copies; the first reset (or one given a seed) seeds env i with `seed + i`."""
        if seed is not None:
            self._seed = int(seed)
        reseed = seed is not None or not self._seeded_once
        obs = np.empty((self.num_envs, *self.spec.obs_shape), np.uint8)
        for i, env in enumerate(self._envs):
            try:
                if reseed:
                    env.seed(self._seed_of(i))
                    env.last_action = 0
                env.reset()
            except Exception as exc:
                raise self._crash("reset", i, exc) from exc
            obs[i] = self._observe(i)
        self._seeded_once = True
        self._steps[:] = 0
        self._tracker.reset()
        self._obs = obs
        return obs.copy()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._obs is None:
            raise RuntimeError("MinAtarVecEnv.step called before reset()")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,):
            raise ValueError(f"actions must have shape ({self.num_envs},), got {actions.shape}")
        obs = np.empty_like(self._obs)
        final_obs = np.empty_like(self._obs)
        reward = np.zeros(self.num_envs, np.float32)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        self._steps += 1
        for i, env in enumerate(self._envs):
            try:
                r, done = env.act(int(self._action_set[int(actions[i])]))
                final_obs[i] = self._observe(i)
                terminated[i] = bool(done)
                truncated[i] = (
                    not done and self._max_episode_steps is not None and self._steps[i] >= self._max_episode_steps
                )
                if terminated[i] or truncated[i]:
                    env.reset()  # same-step autoreset
                    self._steps[i] = 0
                    obs[i] = self._observe(i)
                else:
                    obs[i] = final_obs[i]
            except Exception as exc:
                raise self._crash("step", i, exc) from exc
            reward[i] = r
        info: dict[str, Any] = {"final_obs": final_obs}
        info.update(self._tracker.update(reward.astype(np.float64), terminated | truncated))
        self._obs = obs
        return obs.copy(), reward, terminated, truncated, info

    def settings(self) -> dict[str, Any]:
        """Read back from the built `minatar.Environment` objects. Breakout and Freeway have no difficulty ramp,
        so their `difficulty_ramping` reads back as None whatever was asked."""
        from importlib.metadata import version

        env = self._envs[0]
        ramping = getattr(env.env, "ramping", None)
        return {
            "backend": "minatar",
            "name": self.spec.name,
            "game": env.game_name(),
            "num_envs": self.num_envs,
            "seed": self._seed,
            "frame_skip": self.spec.frame_skip,
            "sticky_action_prob": float(env.sticky_action_prob),
            "difficulty_ramping": None if ramping is None else bool(ramping),
            "max_episode_steps": self._max_episode_steps,
            "minimal_action_set": [int(a) for a in self._action_set],
            "obs_shape": list(self.spec.obs_shape),
            "obs_scale": self.spec.extra["obs_scale"],
            "minatar_version": version("minatar"),
        }

    def get_state(self) -> dict[str, Any]:
        """A snapshot of every game's attributes, its RNG and the sticky last action. MinAtar games keep their
        state in plain attributes (ints, bools, small arrays, lists of lists), so this is exact."""
        if self._obs is None:
            raise RuntimeError("MinAtarVecEnv.get_state called before reset()")
        envs = []
        for env in self._envs:
            rng = env.random.get_state()  # ('MT19937', keys uint32[624], pos, has_gauss, cached_gaussian)
            envs.append(
                {
                    "game": {k: _to_plain(v) for k, v in vars(env.env).items() if k not in _NOT_STATE},
                    "rng": [str(rng[0]), rng[1].copy(), int(rng[2]), int(rng[3]), float(rng[4])],
                    "last_action": int(env.last_action),
                }
            )
        return {
            "backend": "minatar",
            "game": self.game,
            "num_envs": self.num_envs,
            "seed": self._seed,
            "steps": self._steps.copy(),
            "obs": self._obs.copy(),
            "tracker": self._tracker.get_state(),
            "envs": envs,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("backend") != "minatar" or state.get("game") != self.game:
            raise ValueError(f"snapshot is for {state.get('backend')}/{state.get('game')}, not minatar/{self.game}")
        if int(state["num_envs"]) != self.num_envs:
            raise ValueError(f"snapshot has {state['num_envs']} envs, this env has {self.num_envs}")
        for env, entry in zip(self._envs, state["envs"]):
            rng = np.random.RandomState()
            kind, keys, pos, has_gauss, cached = entry["rng"]
            rng.set_state((kind, np.asarray(keys, np.uint32), int(pos), int(has_gauss), float(cached)))
            env.random = rng
            env.env.random = rng  # one RandomState shared by sticky actions and the game, as `Environment.seed` does
            for k, v in entry["game"].items():
                setattr(env.env, k, _to_plain(v))
            env.last_action = int(entry["last_action"])
        self._seed = int(state["seed"])
        self._seeded_once = True
        self._steps[:] = np.asarray(state["steps"])
        self._obs = np.array(state["obs"], dtype=np.uint8)
        self._tracker.set_state(state["tracker"])
