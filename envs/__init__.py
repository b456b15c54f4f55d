"""The env layer: one vectorised contract (`envs.base.VecEnv`) over every backend.

`make_vec_env` is the one entry point the runners use. Backends import their optional packages lazily so that
installing the core package does not pull ale-py, envpool or minatar.
"""

from __future__ import annotations

from typing import Any, Literal

from envs.base import EnvCrashedError, EnvSpec, EpisodeTracker, VecEnv

BACKENDS = ("catch", "memory", "classic", "minatar", "atari", "atari_gym", "labyrinth")

__all__ = ["BACKENDS", "EnvCrashedError", "EnvSpec", "EpisodeTracker", "VecEnv", "make_vec_env"]


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
    (e.g. `protocol`, `frame_stack` for Atari; `rows`, `columns` for Catch).
    """
    options = dict(options or {})
    if backend == "catch":
        from envs.catch import CatchVecEnv

        return CatchVecEnv(num_envs, seed, **options)
    if backend == "memory":
        from envs.memory import DelayedCueVecEnv

        if env_id != "delayed_cue":
            raise ValueError(f"unknown memory task {env_id!r}; the memory backend has: delayed_cue")
        return DelayedCueVecEnv(num_envs, seed, **options)
    if backend == "classic":
        from envs.classic import ClassicVecEnv

        return ClassicVecEnv(env_id, num_envs, seed, **options)
    if backend == "minatar":
        from envs.minatar import MinAtarVecEnv

        return MinAtarVecEnv(env_id, num_envs, seed, **options)
    if backend == "atari":
        from envs.atari import EnvpoolAtariVecEnv

        return EnvpoolAtariVecEnv(env_id, num_envs, seed, mode=mode, **options)
    if backend == "atari_gym":
        from envs.atari import GymAtariVecEnv

        return GymAtariVecEnv(env_id, num_envs, seed, mode=mode, **options)
    if backend == "labyrinth":
        from envs.subproc import ProcessVecEnv

        frame_skip = int(options.get("frame_skip", 4))
        max_restarts = int(options.pop("max_restarts", 3))
        return ProcessVecEnv(
            "envs.labyrinth:LabyrinthEnv",
            num_envs,
            seed,
            kwargs={"task": env_id, **options},
            obs_key="rgb",
            channels_first=True,
            name=f"labyrinth/{env_id}",
            frame_skip=frame_skip,
            max_restarts=max_restarts,
        )
    raise ValueError(f"unknown env backend {backend!r}; choose one of {', '.join(BACKENDS)}")
