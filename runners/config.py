"""Run configs: typed, validated once at load, before any env or process starts.

A config is a YAML file with the sections `agent`, `env`, `optim`, `runner` and `wandb`, plus dotted overrides
from the command line (`runner.total_env_frames=200000`). Unknown keys, wrong types and out-of-range values are
all collected and reported together, each with its full dotted path, as a `ConfigError`.

Counts carry their unit in their name: `*_env_frames` count emulator frames (what papers report), `unroll_length`
counts agent steps. On Atari one agent step is `frame_skip` (4) emulator frames.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from agents import agent_names, get_agent
from agents.base import AgentConfigBase


class ConfigError(ValueError):
    """A config that cannot run. `errors` lists (dotted_path, message) pairs."""

    def __init__(self, errors: list[tuple[str, str]], source: str = ""):
        self.errors = errors
        lines = [f"  {path}: {msg}" for path, msg in errors]
        where = f" in {source}" if source else ""
        super().__init__(f"invalid config{where}:\n" + "\n".join(lines))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------------------------- env sections
class _EnvBase(_Section):
    num_envs: int = Field(16, ge=1, le=4096, description="envs stepped together by the actor")


class CatchEnvConfig(_EnvBase):
    backend: Literal["catch"]
    id: Literal["catch"] = "catch"
    rows: int = Field(10, ge=2, le=100)
    columns: int = Field(5, ge=1, le=100)

    def options(self) -> dict[str, Any]:
        return {"rows": self.rows, "columns": self.columns}


class MemoryEnvConfig(_EnvBase):
    backend: Literal["memory"]
    id: Literal["delayed_cue"] = "delayed_cue"
    delay: int = Field(10, ge=1, le=10_000, description="steps between the cue and the query (envs/memory.py)")
    num_cues: int = Field(2, ge=2, le=64)

    def options(self) -> dict[str, Any]:
        return {"delay": self.delay, "num_cues": self.num_cues}


class ClassicEnvConfig(_EnvBase):
    backend: Literal["classic"]
    id: str = Field(description="a gymnasium classic-control id with discrete actions, e.g. CartPole-v1")
    max_episode_steps: int | None = Field(None, ge=1)

    def options(self) -> dict[str, Any]:
        return {"max_episode_steps": self.max_episode_steps}


class MinAtarEnvConfig(_EnvBase):
    backend: Literal["minatar"]
    id: Literal["breakout", "asterix", "freeway", "seaquest", "space_invaders"]
    sticky_action_prob: float = Field(0.1, ge=0.0, le=1.0, description="MinAtar's default (Young & Tian 2019)")
    difficulty_ramping: bool = True
    max_episode_steps: int | None = Field(None, ge=1)

    def options(self) -> dict[str, Any]:
        return {
            "sticky_action_prob": self.sticky_action_prob,
            "difficulty_ramping": self.difficulty_ramping,
            "max_episode_steps": self.max_episode_steps,
        }


class AtariEnvConfig(_EnvBase):
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
        }


class LabyrinthEnvConfig(_EnvBase):
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
        }


EnvConfig = Annotated[
    CatchEnvConfig | MemoryEnvConfig | ClassicEnvConfig | MinAtarEnvConfig | AtariEnvConfig | LabyrinthEnvConfig,
    Field(discriminator="backend"),
]
_ENV_TAGS = {"catch", "memory", "classic", "minatar", "atari", "atari_gym", "labyrinth"}


# ----------------------------------------------------------------------------------------------- other sections
class OptimConfig(_Section):
    name: Literal["rmsprop", "rmsprop_tf", "adam"] = Field(
        "rmsprop",
        description="rmsprop: torch's (eps added outside the square root, mean square starts at 0); rmsprop_tf: "
        "TensorFlow's, as the IMPALA paper's code used it (eps inside the square root, mean square starts at 1)",
    )
    lr: float = Field(6e-4, gt=0.0, le=1.0, description="IMPALA Atari: 0.0006")
    lr_schedule: Literal["linear", "constant"] = Field("linear", description="linear: anneal to 0 over the run")
    alpha: float = Field(0.99, gt=0.0, lt=1.0, description="RMSProp decay")
    eps: float = Field(0.01, gt=0.0, description="RMSProp/Adam epsilon (rmsprop_tf: inside the square root)")
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    max_grad_norm: float | None = Field(40.0, gt=0.0, description="global gradient-norm clip; null: none")


class RunnerConfig(_Section):
    mode: Literal["serial", "async"] = Field(
        "serial",
        description="serial: actor and learner alternate in one thread (deterministic); async: actor threads fill a "
        "bounded queue of rollouts while the learner trains on them (V-trace corrects the lag)",
    )
    num_actors: int = Field(1, ge=1, le=64, description="async: actor threads (env.num_envs split between them)")
    env_groups: int = Field(
        1,
        ge=1,
        le=16,
        description="an actor's envs in this many groups stepped in a pipeline: while one group steps (envpool "
        "threads), the net acts for the next; 2 overlaps env stepping with inference",
    )
    queue_size: int = Field(1, ge=1, le=64, description="async: rollouts waiting for the learner (bounds policy lag)")
    max_env_restarts: int = Field(
        10, ge=0, description="async: times an actor rebuilds its envs after an env crash before the run stops"
    )
    seed: int = Field(0, ge=0)
    total_env_frames: int = Field(gt=0, description="training budget in emulator frames")
    unroll_length: int = Field(20, ge=1, le=10_000, description="agent steps per unroll (IMPALA: 20)")
    log_every_env_frames: int = Field(10_000, ge=1, description="a metrics.jsonl line at least this often")
    progress_every_seconds: float = Field(10.0, gt=0.0, description="the console progress line")
    max_wall_seconds: float | None = Field(
        None, gt=0.0, description="also stop (with a checkpoint) once the run has trained this long; null: no limit"
    )
    checkpoint_every_env_frames: int = Field(1_000_000, ge=1)
    checkpoint_every_seconds: float | None = Field(600.0, gt=0.0)
    keep_checkpoints: int = Field(3, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads; null: torch's default")
    deterministic: bool = Field(True, description="serial mode on CPU: bit-identical runs and resumes")
    max_nonfinite_updates: int = Field(
        10, ge=1, description="consecutive updates with a non-finite loss or gradient (skipped) before the run stops"
    )

    @property
    def actor_count(self) -> int:
        """Actors that step envs: num_actors in async mode, the one serial actor otherwise."""
        return self.num_actors if self.mode == "async" else 1


class WandbConfig(_Section):
    mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="offline by default; the WANDB_MODE environment variable overrides it"
    )
    project: str = "decoupled"
    entity: str | None = None
    group: str | None = None
    tags: tuple[str, ...] = ()
    init_timeout_s: float = Field(30.0, gt=0.0, le=600.0)


class ConfigBase(_Section):
    env: EnvConfig
    optim: OptimConfig = OptimConfig()
    runner: RunnerConfig
    wandb: WandbConfig = WandbConfig()

    @model_validator(mode="after")
    def _torso_fits_env(self) -> ConfigBase:
        torso = getattr(self.agent, "torso", None)  # type: ignore[attr-defined]
        if torso is not None and torso != "mlp" and self.env.backend in ("classic", "memory"):
            raise ValueError(
                f"agent.torso={torso} needs image observations; env backend {self.env.backend} gives vectors"
            )
        return self

    @model_validator(mode="after")
    def _envs_split_evenly(self) -> ConfigBase:
        r = self.runner
        actors = r.actor_count
        if r.mode == "serial" and r.num_actors != 1:
            raise ValueError("runner.num_actors > 1 needs runner.mode=async")
        if self.env.num_envs % (actors * r.env_groups):
            raise ValueError(
                f"env.num_envs={self.env.num_envs} must split evenly into runner.num_actors={actors} x "
                f"runner.env_groups={r.env_groups} groups"
            )
        return self

    @property
    def agent_name(self) -> str:
        return self.agent.name  # type: ignore[attr-defined]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


_MODELS: dict[str, type[ConfigBase]] = {}


def config_model(agent: str) -> type[ConfigBase]:
    """The full config class for one agent: the shared sections plus that agent's own `agent` section."""
    if agent not in _MODELS:
        agent_cfg: type[AgentConfigBase] = get_agent(agent).config_class
        _MODELS[agent] = create_model(f"{agent.title()}RunConfig", __base__=ConfigBase, agent=(agent_cfg, ...))
    return _MODELS[agent]


# ----------------------------------------------------------------------------------------------- loading
def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a nested dict, returning a new dict."""
    out = json.loads(json.dumps(raw))  # deep copy of plain data
    errors: list[tuple[str, str]] = []
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            errors.append((item, "overrides look like section.key=value, e.g. runner.total_env_frames=200000"))
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as e:
            errors.append((key, f"cannot parse value {text!r}: {e}"))
            continue
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                errors.append((key, f"{'.'.join(parts[: i + 1])} is a value, not a section"))
                break
            node = child
        else:
            node[parts[-1]] = value
    if errors:
        raise ConfigError(errors, "overrides")
    return out


def _path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    # a discriminated union adds its tag to the location (env.catch.rows): drop it so the path is the YAML's
    if len(parts) > 1 and parts[0] == "env" and parts[1] in _ENV_TAGS:
        parts.pop(1)
    return ".".join(parts) if parts else "<root>"


def validate_config(raw: dict[str, Any], source: str = "") -> ConfigBase:
    if not isinstance(raw, dict):
        raise ConfigError([("<root>", "a config is a mapping with sections agent, env, optim, runner, wandb")], source)
    agent = raw.get("agent")
    name = agent.get("name") if isinstance(agent, dict) else None
    if name not in agent_names():
        msg = f"must name an agent: one of {', '.join(agent_names())} (got {name!r})"
        raise ConfigError([("agent.name", msg)], source)
    try:
        return config_model(name).model_validate(raw)
    except ValidationError as e:
        errors = []
        for err in e.errors():
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling; see the config reference in the README)"
            errors.append((_path(err["loc"]), msg))
        raise ConfigError(errors, source) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> ConfigBase:
    """Read a YAML config, apply dotted overrides and validate everything."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([("<file>", f"no config file at {path}")], str(path))
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError([("<file>", f"not valid YAML: {e}")], str(path)) from None
    return validate_config(apply_overrides(raw, overrides or []), str(path))


def dump_config(cfg: ConfigBase, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
