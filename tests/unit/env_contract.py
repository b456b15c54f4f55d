"""Shared checks of the env contract (`envs.base`), run by every backend's unit tests.

Why one helper: the contract (shapes, dtypes, separate terminated/truncated, same-step autoreset, unclipped episode
statistics) is what the runners rely on whatever the backend; testing it once per backend with the same code keeps
the backends from drifting apart (environment API stability).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from decoupled.envs.base import VecEnv


@dataclass
class ContractStats:
    """What `check_contract` saw, so a test can require that autoresets really happened."""

    steps: int = 0
    terminated: int = 0
    truncated: int = 0
    episodes: int = 0


def check_contract(
    env: VecEnv,
    steps: int = 100,
    seed: int = 0,
    actions: Callable[[int, np.random.Generator], np.ndarray] | None = None,
    is_first_obs: Callable[[np.ndarray], bool] | None = None,
    pixels: bool | None = None,
) -> ContractStats:
    """Reset `env`, step it `steps` times and assert the contract on every step.

    `actions(t, rng)` picks the actions (uniform random by default). `is_first_obs(obs_row)` tells whether a single
    env's observation can be the first of an episode; when given it must hold for the reset obs and for every env
    whose game ended on a step (same-step autoreset). `pixels` (default: obs dtype is uint8) also requires uint8 obs.
    """
    spec = env.spec
    batch = env.num_envs
    obs_shape = (batch, *spec.obs_shape)
    if pixels is None:
        pixels = np.dtype(spec.obs_dtype) == np.uint8
    scale = spec.extra.get("obs_scale")
    assert isinstance(scale, float) and scale > 0, f"spec.extra['obs_scale'] must be a positive float, got {scale!r}"
    if pixels:
        assert np.dtype(spec.obs_dtype) == np.uint8, "pixel observations stay uint8 until the torso"
    assert spec.num_actions >= 1 and spec.frame_skip >= 1
    json.dumps(env.settings())  # settings must be JSON-serialisable (written into result files and W&B)

    rng = np.random.default_rng(seed)
    obs = env.reset()
    _check_obs(obs, obs_shape, spec.obs_dtype)
    if is_first_obs is not None:
        assert all(is_first_obs(obs[i]) for i in range(batch)), "reset obs is not a first observation"

    stats = ContractStats()
    for t in range(steps):
        a = actions(t, rng) if actions is not None else rng.integers(0, spec.num_actions, size=batch)
        out = env.step(np.asarray(a))
        assert isinstance(out, tuple) and len(out) == 5
        obs, reward, terminated, truncated, info = out
        _check_obs(obs, obs_shape, spec.obs_dtype)
        assert isinstance(reward, np.ndarray) and reward.dtype == np.float32 and reward.shape == (batch,)
        assert np.all(np.isfinite(reward))
        for name, flag in (("terminated", terminated), ("truncated", truncated)):
            assert isinstance(flag, np.ndarray) and flag.dtype == np.bool_ and flag.shape == (batch,), name
        _check_info(info, obs_shape, spec.obs_dtype, batch)

        done = info["episode_done"]
        # A whole game can only end on a step that also ends the learning episode.
        assert np.all(terminated[done] | truncated[done]), "episode_done without terminated or truncated"
        assert np.all(np.isfinite(info["episode_return"][done]))
        assert np.all(np.isnan(info["episode_return"][~done])), "episode_return must be NaN where not done"
        frames = info["episode_frames"]
        assert np.all(frames[done] > 0) and np.all(frames[done] % spec.frame_skip == 0)
        assert np.all(frames[~done] == 0)
        for i in np.flatnonzero(done):
            # Same-step autoreset: the returned obs already starts the next game; the last one is in final_obs.
            assert not np.array_equal(obs[i], info["final_obs"][i]), f"env {i}: obs after game over == final_obs"
            if is_first_obs is not None:
                assert is_first_obs(obs[i]), f"env {i}: obs after game over is not a first observation"
        stats.steps += 1
        stats.terminated += int(terminated.sum())
        stats.truncated += int(truncated.sum())
        stats.episodes += int(done.sum())
    return stats


def _check_obs(obs: Any, shape: tuple[int, ...], dtype: np.dtype) -> None:
    assert isinstance(obs, np.ndarray), type(obs)
    assert obs.shape == shape, f"obs shape {obs.shape} != {shape}"
    assert obs.dtype == np.dtype(dtype), f"obs dtype {obs.dtype} != {dtype}"
    if obs.dtype.kind == "f":
        assert np.all(np.isfinite(obs))


def _check_info(info: Any, obs_shape: tuple[int, ...], dtype: np.dtype, batch: int) -> None:
    assert isinstance(info, dict)
    for key in ("final_obs", "episode_done", "episode_return", "episode_frames"):
        assert key in info, f"info lacks {key!r}"
    _check_obs(info["final_obs"], obs_shape, dtype)
    assert info["episode_done"].dtype == np.bool_ and info["episode_done"].shape == (batch,)
    assert info["episode_return"].shape == (batch,) and info["episode_return"].dtype.kind == "f"
    assert info["episode_frames"].shape == (batch,) and info["episode_frames"].dtype.kind in "iu"


def run_stream(env: VecEnv, actions: np.ndarray, seed: int | None = None) -> list[tuple[np.ndarray, ...]]:
    """Reset and step `env` with a fixed action sequence [T, B]; returns every step's copied outputs, for
    comparing two envs' streams (determinism tests)."""
    stream = [(env.reset(seed=seed).copy(),)]
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        stream.append(
            (
                obs.copy(),
                reward.copy(),
                terminated.copy(),
                truncated.copy(),
                info["episode_done"].copy(),
                np.nan_to_num(info["episode_return"], nan=-1e9),
            )
        )
    return stream


def streams_equal(a: list[tuple[np.ndarray, ...]], b: list[tuple[np.ndarray, ...]]) -> bool:
    return len(a) == len(b) and all(
        len(x) == len(y) and all(np.array_equal(u, v) for u, v in zip(x, y)) for x, y in zip(a, b)
    )


def roundtrip_checkpoint(state: dict[str, Any], tmp_path: Any) -> dict[str, Any]:
    """Pass an env snapshot through the project's checkpoint writer/reader (torch.save / weights_only=True load),
    the way a resumed run will see it."""
    from decoupled.runners.training.checkpoint import CheckpointManager

    manager = CheckpointManager(tmp_path / "ckpt")
    path = manager.save(1, {"env": state})
    loaded, _ = manager.load(path)
    return loaded["env"]
