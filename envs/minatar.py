"""MinAtar (Young & Tian 2019, arXiv:1903.03176): five miniature Atari games on a 10x10 grid, fast on a CPU.

We drive `minatar.Environment` directly rather than its gym wrapper: it is the reference implementation, it lets us
seed each copy's RNG, and its observation is already the binary [10, 10, C] grid. Observations are returned
channels-first uint8 [C, 10, 10] (0/1) so the same torso code handles MinAtar and Atari; `obs_scale` is 1.0.

Defaults follow the paper: sticky actions with probability 0.1 and difficulty ramping on. Actions index the game's
*minimal* action set (e.g. 3 actions in Breakout), not MinAtar's full 6 (`full_action_set=True`: all 6, in MinAtar's
order). `channels="union"` places each game's channels by name into one 27-plane layout shared by the five games
(`UNION_CHANNELS`), so that one net reads every game (transfer between games, multi-game students). `games=[...]`
(with the union layout and the full action set) puts several games in one env, env i playing `games[i % G]`, and adds
G constant planes after the 27 that say which game each observation is from; `eval_game` plays that one game in
every copy with the same layout (per-game evaluation of a multi-game policy).

Seeding: `Environment.seed(s)` replaces one `RandomState` shared by the sticky-action draw and the game itself, so
env i is fully determined by `seed + i` and its action sequence.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from decoupled.envs.base import EnvSpec, EnvStep, PerEnvVecEnv

GAMES = ("asterix", "breakout", "freeway", "seaquest", "space_invaders")
# Every game's channels by name, in one layout (`channels="union"`): the five games' channel names in game order, a
# name shared by two games (trail; friendly and enemy bullets) one channel. An agent then sees every game through
# the same 27 input planes: a column, teacher or student trained on one game reads another.
UNION_CHANNELS = (
    "player", "enemy", "trail", "gold", "paddle", "ball", "brick", "chicken", "car", "speed1", "speed2", "speed3",
    "speed4", "speed5", "sub_front", "sub_back", "friendly_bullet", "enemy_bullet", "enemy_fish", "enemy_sub",
    "oxygen_guage", "diver_guage", "diver", "cannon", "alien", "alien_left", "alien_right",
)  # fmt: skip
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


class MinAtarVecEnv(PerEnvVecEnv):
    """`num_envs` copies of one MinAtar game; obs uint8 [C, 10, 10]; minimal action set."""

    _label = "minatar"

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        seed: int,
        sticky_action_prob: float = 0.1,
        difficulty_ramping: bool = True,
        max_episode_steps: int | None = None,
        channels: str = "game",
        full_action_set: bool = False,
        games: list[str] | tuple[str, ...] | None = None,
        eval_game: str | None = None,
    ):
        import minatar

        super().__init__(num_envs, seed)
        if not 0.0 <= sticky_action_prob <= 1.0:
            raise ValueError(f"sticky_action_prob must be in [0, 1], got {sticky_action_prob}")
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1 or None, got {max_episode_steps}")
        self.games = tuple(canonical_game(g) for g in games) if games else None
        if self.games is not None:  # several games: env i plays games[i % G] (or every env eval_game)
            if len(set(self.games)) != len(self.games) or len(self.games) < 2:
                raise ValueError(f"games must name at least two different MinAtar games, got {games}")
            if channels != "union" or not full_action_set:
                raise ValueError("several MinAtar games in one env need channels='union' and full_action_set=True")
            if eval_game is not None and canonical_game(eval_game) not in self.games:
                raise ValueError(f"eval_game {eval_game!r} is not one of the games {self.games}")
            per_env = [
                canonical_game(eval_game) if eval_game else self.games[i % len(self.games)] for i in range(num_envs)
            ]
            self.game = self._task = "+".join(self.games) if eval_game is None else canonical_game(eval_game)
        else:
            self.game = self._task = canonical_game(env_id)
            per_env = [self.game] * num_envs
        self.per_env_game = per_env
        self.env_id = env_id
        self._max_episode_steps = max_episode_steps
        self._envs = [
            minatar.Environment(g, sticky_action_prob=sticky_action_prob, difficulty_ramping=difficulty_ramping)
            for g in per_env
        ]
        if channels not in ("game", "union"):
            raise ValueError(f"channels must be 'game' or 'union', got {channels!r}")
        self.channels, self.full_action_set = channels, bool(full_action_set)
        minimal = self._envs[0].minimal_action_set()
        self._action_set = np.asarray(range(len(_ACTION_MEANINGS)) if full_action_set else minimal, np.int64)
        h, w, c = self._envs[0].state_shape()
        self._planes: list[np.ndarray] | None = None  # union layout: per env, the plane of each of its game's channels
        if channels == "union":
            self._planes = []
            for env in self._envs:
                own = env.env.channels  # name -> index in the game's own layout
                self._planes.append(np.array([UNION_CHANNELS.index(n) for n in sorted(own, key=own.get)], np.int64))
            c = len(UNION_CHANNELS)
        self._game_plane: list[int] | None = None
        if self.games is not None:  # one constant plane per game says which game an observation is from
            self._game_plane = [c + self.games.index(g) for g in per_env]
            c += len(self.games)
        extra_games = {"games": list(self.games), "game_planes": len(self.games)} if self.games else {}
        self.spec = EnvSpec(
            name=f"minatar/{self.game}",
            obs_shape=(c, h, w),
            obs_dtype=np.dtype(np.uint8),
            num_actions=len(self._action_set),
            frame_skip=1,
            extra={
                "obs_scale": 1.0,
                "action_meanings": [_ACTION_MEANINGS[a] for a in self._action_set],
                **extra_games,
            },
        )
        self._steps = np.zeros(num_envs, np.int64)  # agent steps into each env's episode, for max_episode_steps

    def _observe(self, i: int) -> np.ndarray:
        own = np.ascontiguousarray(self._envs[i].state().transpose(2, 0, 1), dtype=np.uint8)
        if self._planes is None:
            return own
        out = np.zeros(self.spec.obs_shape, np.uint8)
        out[self._planes[i]] = own
        if self._game_plane is not None:
            out[self._game_plane[i]] = 1
        return out

    def _reset_one(self, i: int, seed: int | None) -> np.ndarray:
        env = self._envs[i]
        if seed is not None:
            env.seed(seed)
            env.last_action = 0
        env.reset()
        self._steps[i] = 0
        return self._observe(i)

    def _step_one(self, i: int, action: int) -> EnvStep:
        env = self._envs[i]
        self._steps[i] += 1
        r, done = env.act(int(self._action_set[action]))
        final_obs = obs = self._observe(i)
        terminated = bool(done)
        truncated = not done and self._max_episode_steps is not None and self._steps[i] >= self._max_episode_steps
        if terminated or truncated:
            env.reset()  # same-step autoreset
            self._steps[i] = 0
            obs = self._observe(i)
        return EnvStep(obs, final_obs, r, r, terminated, truncated, terminated or truncated)

    def settings(self) -> dict[str, Any]:
        """Read back from the built `minatar.Environment` objects. Breakout and Freeway have no difficulty ramp,
        so their `difficulty_ramping` reads back as None whatever was asked."""
        from importlib.metadata import version

        env = self._envs[0]
        ramping = getattr(env.env, "ramping", None)
        return {
            "backend": "minatar",
            "name": self.spec.name,
            "game": env.game_name() if self.games is None else self.game,
            "games": list(self.games) if self.games else None,
            "env_games": list(self.per_env_game),
            "num_envs": self.num_envs,
            "seed": self._seed,
            "frame_skip": self.spec.frame_skip,
            "sticky_action_prob": float(env.sticky_action_prob),
            "difficulty_ramping": None if ramping is None else bool(ramping),
            "max_episode_steps": self._max_episode_steps,
            "minimal_action_set": [int(a) for a in self._envs[0].minimal_action_set()] if not self.games else None,
            "action_set": [int(a) for a in self._action_set],
            "channels": self.channels,
            "obs_shape": list(self.spec.obs_shape),
            "obs_scale": self.spec.extra["obs_scale"],
            "minatar_version": version("minatar"),
        }

    def get_state(self) -> dict[str, Any]:
        """A snapshot of every game's attributes, its RNG and the sticky last action. MinAtar games keep their
        state in plain attributes (ints, bools, small arrays, lists of lists), so this is exact."""
        self._require_reset("get_state")
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
        return self._snapshot("game", envs, steps=self._steps.copy())

    def set_state(self, state: dict[str, Any]) -> None:
        self._check_snapshot(state, "game")
        for env, entry in zip(self._envs, state["envs"]):
            rng = np.random.RandomState()
            kind, keys, pos, has_gauss, cached = entry["rng"]
            rng.set_state((kind, np.asarray(keys, np.uint32), int(pos), int(has_gauss), float(cached)))
            env.random = rng
            env.env.random = rng  # one RandomState shared by sticky actions and the game, as `Environment.seed` does
            for k, v in entry["game"].items():
                setattr(env.env, k, _to_plain(v))
            env.last_action = int(entry["last_action"])
        self._steps[:] = np.asarray(state["steps"])
        self._restore(state)
