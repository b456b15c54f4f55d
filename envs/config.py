"""The `env` section of a run config for each built-in backend (typed, validated at load).

Each class is one backend's section: its `backend` literal is the backend's registered name, its fields the
backend's settings, `options()` the keyword arguments its `make` takes. A plug-in backend brings its own section
class, a subclass of `EnvConfigBase` (docs/extending.md).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from decoupled.sections import ConfigSection


class EnvConfigBase(ConfigSection):
    """Base of every env section: unknown keys are an error, and `backend` names the backend (a `Literal` of its
    registered name, which the config's union of env sections switches on). `options()` returns the backend's own
    settings, passed as keyword arguments to the backend's `make` (see `decoupled.envs.EnvBackend`)."""

    backend: str
    id: str
    num_envs: int = Field(16, ge=1, le=4096, description="envs stepped together by the actor")
    transform: Literal["hflip", "vflip", "vhflip", "noisy", "black", "white", "zoom"] | None = Field(
        None,
        description="a task variant of an image env (Progressive Nets' Pong Soup, envs/transforms.py), applied after "
        "the protocol's preprocessing, in training and evaluation; null: the task as it is",
    )
    transform_seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of env.transform=noisy's frozen noise pattern")
    transform_noise: float = Field(0.1, gt=0.0, description="std of env.transform=noisy in the net's input units")

    def options(self) -> dict[str, Any]:
        """The backend's own settings beyond id, num_envs and seed, as keyword arguments of its `make`."""
        return self.transform_options()

    def transform_options(self) -> dict[str, Any]:
        """The `transform*` options `make_vec_env` applies around any backend (none when env.transform is null)."""
        if self.transform is None:
            return {}
        return {
            "transform": self.transform,
            "transform_seed": self.transform_seed,
            "transform_noise": self.transform_noise,
        }


class CatchEnvConfig(EnvConfigBase):
    backend: Literal["catch"]
    id: Literal["catch"] = "catch"
    rows: int = Field(10, ge=2, le=100)
    columns: int = Field(5, ge=1, le=100)

    def options(self) -> dict[str, Any]:
        return {"rows": self.rows, "columns": self.columns} | self.transform_options()


class MemoryEnvConfig(EnvConfigBase):
    backend: Literal["memory"]
    id: Literal["delayed_cue"] = "delayed_cue"
    delay: int = Field(10, ge=1, le=10_000, description="steps between the cue and the query (envs/memory.py)")
    num_cues: int = Field(2, ge=2, le=64)

    def options(self) -> dict[str, Any]:
        return {"delay": self.delay, "num_cues": self.num_cues} | self.transform_options()


class GymEnvConfig(EnvConfigBase):
    backend: Literal["gym", "classic"] = Field(
        description="gym: any registered gymnasium env; classic: the same backend under its older name"
    )
    id: str = Field(
        description="a gymnasium id with a Discrete action space and a Box observation, e.g. CartPole-v1, or "
        "`module:Env-v0` to import the module that registers it first (gymnasium's own form)"
    )
    max_episode_steps: int | None = Field(None, ge=1)

    def options(self) -> dict[str, Any]:
        return {"max_episode_steps": self.max_episode_steps} | self.transform_options()


class MinAtarEnvConfig(EnvConfigBase):
    backend: Literal["minatar"]
    id: Literal["breakout", "asterix", "freeway", "seaquest", "space_invaders", "multi"] = Field(
        description="a MinAtar game, or multi: the games of env.games in one env"
    )
    sticky_action_prob: float = Field(0.1, ge=0.0, le=1.0, description="MinAtar's default (Young & Tian 2019)")
    difficulty_ramping: bool = True
    max_episode_steps: int | None = Field(None, ge=1)
    channels: Literal["game", "union"] = Field(
        "game",
        description="game: the game's own channels; union: every game's channels by name in one 27-plane layout, the "
        "same input for all five games (transfer between games, multi-game students)",
    )
    full_action_set: bool = Field(False, description="all 6 MinAtar actions instead of the game's minimal set")
    games: tuple[Literal["breakout", "asterix", "freeway", "seaquest", "space_invaders"], ...] | None = Field(
        None,
        description="env.id=multi: these games in one env (env i plays games[i % G], G planes name the game); needs "
        "channels=union and full_action_set=true, and env.num_envs a multiple of G",
    )

    @model_validator(mode="after")
    def _multi(self) -> MinAtarEnvConfig:
        if (self.id == "multi") != (self.games is not None):
            raise ValueError("env.id=multi goes with env.games (two or more MinAtar games), and env.games with it")
        if self.games is not None:
            if len(set(self.games)) < 2 or len(set(self.games)) != len(self.games):
                raise ValueError(f"env.games must name two or more different games, got {list(self.games)}")
            if self.channels != "union" or not self.full_action_set:
                raise ValueError(
                    "env.games needs env.channels=union and env.full_action_set=true (one input, one action set)"
                )
            if self.num_envs % len(self.games):
                raise ValueError(f"env.num_envs={self.num_envs} must be a multiple of the {len(self.games)} games")
        return self

    def options(self) -> dict[str, Any]:
        out = {
            "sticky_action_prob": self.sticky_action_prob,
            "difficulty_ramping": self.difficulty_ramping,
            "max_episode_steps": self.max_episode_steps,
        }
        if self.channels != "game" or self.full_action_set:  # only when asked: older runs' options stay as they were
            out |= {"channels": self.channels, "full_action_set": self.full_action_set}
        if self.games is not None:
            out["games"] = list(self.games)
        return out | self.transform_options()


class AtariEnvConfig(EnvConfigBase):
    backend: Literal["atari", "atari_gym"] = Field(description="atari: envpool (fast); atari_gym: gymnasium+ale-py")
    id: str = Field(pattern=r"^[A-Z][A-Za-z0-9]*$", description="ALE game name as in ALE ids, e.g. Breakout")
    protocol: Literal["dqn_noop30", "machado2018"] = "dqn_noop30"
    frame_stack: int = Field(4, ge=1, le=16)
    clip_rewards: bool = Field(True, description="clip training rewards to [-1, 1]; evaluation never clips")
    max_episode_frames: int = Field(108_000, ge=1, description="the episode cap in emulator frames (30 minutes)")

    def options(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "frame_stack": self.frame_stack,
            "clip_rewards": self.clip_rewards,
            "max_episode_frames": self.max_episode_frames,
        } | self.transform_options()


class LabyrinthEnvConfig(EnvConfigBase):
    backend: Literal["labyrinth"]
    id: str = Field(
        pattern=r"^(nav_maze_static_0[123]|nav_maze_random_goal_0[123]|random_maze_0[123]|random_maze)$",
        description="a 3D maze task of envs/labyrinth.py, e.g. nav_maze_static_01",
    )
    num_envs: int = Field(4, ge=1, le=64, description="one worker process per env")
    frame_skip: int = Field(4, ge=1, le=16)
    obs_size: tuple[int, int] = (84, 84)
    resolution: Literal["RES_160X120", "RES_320X240"] = Field(
        "RES_160X120", description="engine render size; depth saturates at ~4.5 cells (160x120), ~9 (320x240)"
    )
    max_restarts: int = Field(3, ge=0, description="restarts of a dead env worker before the run stops")
    apple_density: float = Field(
        0.1, ge=0.0, le=1.0, description="share of lattice cells with a +1 apple (DMLab: 0.1); 0: goal reward only"
    )
    episode_frames: int | None = Field(None, ge=1, description="episode length in frames; null: the task's")
    maze_size: tuple[int, int] | None = Field(
        None,
        description="odd (rows, cols) text maze instead of the task's, e.g. [7, 9]: a smaller fixed maze for a "
        "static or random-goal task, the drawn size for random_maze; null: the task's (DMLab's)",
    )

    @model_validator(mode="after")
    def _odd_maze(self) -> LabyrinthEnvConfig:
        if self.maze_size is not None and any(v < 5 or v % 2 == 0 for v in self.maze_size):
            raise ValueError(f"env.maze_size must be odd and at least 5x5 (labmaze's lattice), got {self.maze_size}")
        return self

    def options(self) -> dict[str, Any]:
        return {
            "maze_size": self.maze_size,
            "frame_skip": self.frame_skip,
            "obs_size": self.obs_size,
            "resolution": self.resolution,
            "max_restarts": self.max_restarts,
            "apple_density": self.apple_density,
            "episode_frames": self.episode_frames,
        } | self.transform_options()


class MiniGridEnvConfig(EnvConfigBase):
    backend: Literal["minigrid"]
    id: str = Field(
        pattern=r"^(MiniGrid|BabyAI)-[A-Za-z0-9_-]+-v[0-9]+$",
        description="a MiniGrid id, e.g. MiniGrid-DoorKey-8x8-v0, MiniGrid-KeyCorridorS3R3-v0 (envs/minigrid.py)",
    )
    max_episode_steps: int | None = Field(None, ge=1, description="the env's max_steps; null: the task's own")

    def options(self) -> dict[str, Any]:
        return {"max_episode_steps": self.max_episode_steps} | self.transform_options()
