"""The env layer: one vectorised contract (`decoupled.envs.base.VecEnv`) over every backend.

`make_vec_env` is the one entry point the runners use. Backends are found in a registry: the built-in ones below,
those added with `register_env_backend`, and those that installed packages declare under the entry-point group
`decoupled.envs` (each entry point names an `EnvBackend`; docs/extending.md walks through one). Backends import
their optional packages lazily, so installing the core package does not pull ale-py, envpool or minatar.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from decoupled.envs.base import EnvCrashedError, EnvSpec, EpisodeTracker, VecEnv
from decoupled.envs.config import (
    AtariEnvConfig,
    CatchEnvConfig,
    EnvConfigBase,
    GymEnvConfig,
    LabyrinthEnvConfig,
    MemoryEnvConfig,
    MinAtarEnvConfig,
    MiniGridEnvConfig,
)
from decoupled.plugins import EntryPointRegistry

__all__ = [
    "EnvBackend",
    "EnvConfigBase",
    "EnvCrashedError",
    "EnvSpec",
    "EpisodeTracker",
    "VecEnv",
    "env_backends",
    "get_env_backend",
    "make_vec_env",
    "probe_spec",
    "register_env_backend",
]


@dataclass(frozen=True)
class EnvBackend:
    """One env backend: its registered name, its config section and the function that builds it.

    `make(env_id, num_envs, seed, *, mode, **options) -> VecEnv` builds `num_envs` copies seeded `seed + i`;
    `mode="eval"` asks for the evaluation form of the task (unclipped rewards, whole games as episodes) where the
    backend has one; `options` are `config_class.options()` of the run's env section. `observations` says what the
    backend gives, so that a config pairing image torsos with vector observations is refused at load ("either": the
    backend cannot tell before it is built). `extras`: the per-step extras its envs give besides the observation
    (`info["extras"][key]`, e.g. the labyrinth's depth and position), so that an auxiliary task they cannot feed is
    refused at load.
    """

    name: str
    config_class: type[EnvConfigBase]
    make: Callable[..., VecEnv]
    observations: Literal["image", "vector", "either"] = "either"
    description: str = ""
    extras: tuple[str, ...] = ()


def _catch(env_id: str, num_envs: int, seed: int, *, mode: str, **options: Any) -> VecEnv:
    from decoupled.envs.catch import CatchVecEnv

    return CatchVecEnv(num_envs, seed, **options)


def _memory(env_id: str, num_envs: int, seed: int, *, mode: str, **options: Any) -> VecEnv:
    from decoupled.envs.memory import DelayedCueVecEnv

    if env_id != "delayed_cue":
        raise ValueError(f"unknown memory task {env_id!r}; the memory backend has: delayed_cue")
    return DelayedCueVecEnv(num_envs, seed, **options)


def _gym(env_id: str, num_envs: int, seed: int, *, mode: str, **options: Any) -> VecEnv:
    from decoupled.envs.classic import ClassicVecEnv

    return ClassicVecEnv(env_id, num_envs, seed, **options)


def _minatar(env_id: str, num_envs: int, seed: int, *, mode: str, **options: Any) -> VecEnv:
    from decoupled.envs.minatar import MinAtarVecEnv

    return MinAtarVecEnv(env_id, num_envs, seed, **options)


def _minigrid(env_id: str, num_envs: int, seed: int, *, mode: str, **options: Any) -> VecEnv:
    from decoupled.envs.minigrid import MiniGridVecEnv

    return MiniGridVecEnv(env_id, num_envs, seed, **options)


def _atari(env_id: str, num_envs: int, seed: int, *, mode: str, **options: Any) -> VecEnv:
    from decoupled.envs.atari import EnvpoolAtariVecEnv

    return EnvpoolAtariVecEnv(env_id, num_envs, seed, mode=mode, **options)


def _atari_gym(env_id: str, num_envs: int, seed: int, *, mode: str, **options: Any) -> VecEnv:
    from decoupled.envs.atari import GymAtariVecEnv

    return GymAtariVecEnv(env_id, num_envs, seed, mode=mode, **options)


def _labyrinth(env_id: str, num_envs: int, seed: int, *, mode: str, **options: Any) -> VecEnv:
    from decoupled.envs.subproc import ProcessVecEnv

    frame_skip = int(options.get("frame_skip", 4))
    max_restarts = int(options.pop("max_restarts", 3))
    return ProcessVecEnv(
        "decoupled.envs.labyrinth:LabyrinthEnv",
        num_envs,
        seed,
        kwargs={"task": env_id, **options},
        obs_key="rgb",
        channels_first=True,
        name=f"labyrinth/{env_id}",
        frame_skip=frame_skip,
        max_restarts=max_restarts,
    )


_BUILTIN = (
    EnvBackend("catch", CatchEnvConfig, _catch, "image", "bsuite's Catch as a small image (envs/catch.py)"),
    EnvBackend("memory", MemoryEnvConfig, _memory, "vector", "the delayed-cue memory task (envs/memory.py)"),
    EnvBackend("gym", GymEnvConfig, _gym, "either", "any gymnasium env with discrete actions (envs/classic.py)"),
    EnvBackend("classic", GymEnvConfig, _gym, "vector", "the gym backend for classic-control tasks (vectors)"),
    EnvBackend("minatar", MinAtarEnvConfig, _minatar, "image", "MinAtar's five games (envs/minatar.py)"),
    EnvBackend("minigrid", MiniGridEnvConfig, _minigrid, "image", "MiniGrid's gridworlds (envs/minigrid.py)"),
    EnvBackend("atari", AtariEnvConfig, _atari, "image", "Atari on envpool (envs/atari.py)"),
    EnvBackend("atari_gym", AtariEnvConfig, _atari_gym, "image", "Atari on gymnasium + ale-py (envs/atari.py)"),
    EnvBackend(
        "labyrinth",
        LabyrinthEnvConfig,
        _labyrinth,
        "image",
        "3D mazes on ViZDoom (envs/labyrinth.py)",
        extras=("depth", "position", "yaw", "velocity"),
    ),
)
_REGISTRY: EntryPointRegistry[EnvBackend] = EntryPointRegistry("decoupled.envs", EnvBackend, "env backend")
for _backend in _BUILTIN:
    _REGISTRY.register(_backend.name, _backend)


def register_env_backend(backend: EnvBackend, *, replace: bool = False) -> None:
    """Add a backend under `backend.name` (an error if the name is taken, unless `replace`)."""
    _REGISTRY.register(backend.name, backend, replace=replace)


def env_backends() -> dict[str, EnvBackend]:
    """Every backend: built-in, registered and declared by installed packages (entry points loaded here)."""
    return _REGISTRY.all()


def get_env_backend(name: str) -> EnvBackend:
    """The backend registered as `name`; a `KeyError` that lists the names there are otherwise."""
    return _REGISTRY.get(name)


def make_vec_env(
    backend: str,
    env_id: str,
    num_envs: int,
    seed: int,
    *,
    mode: Literal["train", "eval"] = "train",
    options: dict[str, Any] | None = None,
) -> VecEnv:
    """Build `num_envs` copies of `env_id` on `backend`, seeded from `seed` (env i gets `seed + i`).

    `mode="eval"` asks for the evaluation form of the task: unclipped rewards and whole games as episodes
    (no life-loss terminals), whatever the training form uses. `options` are the backend's own settings
    (e.g. `protocol`, `frame_stack` for Atari; `rows`, `columns` for Catch), and `transform` (with `transform_seed`,
    `transform_noise`) a task variant applied around any image backend (envs/transforms.py).
    """
    try:
        entry = get_env_backend(backend)
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    opts = dict(options or {})
    transform = opts.pop("transform", None)
    t_seed, t_noise = int(opts.pop("transform_seed", 0)), float(opts.pop("transform_noise", 0.1))
    env = entry.make(env_id, num_envs, seed, mode=mode, **opts)
    if transform is None:
        return env
    from decoupled.envs.transforms import TransformVecEnv

    try:
        return TransformVecEnv(env, transform, t_seed, t_noise)
    except ValueError:
        env.close()
        raise


def probe_spec(backend: str, env_id: str, options: dict[str, Any] | None = None) -> EnvSpec:
    """The spec of `env_id` on `backend` (what a net for it is built from): one copy built in evaluation form, then
    closed."""
    env = make_vec_env(backend, env_id, 1, 0, mode="eval", options=options)
    try:
        return env.spec
    finally:
        env.close()
