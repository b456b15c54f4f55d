"""Task variants as observation transforms: the "Pong Soup" of Progressive Neural Networks (Rusu et al. 2016,
arXiv:1606.04671, Sec. 5.1), for any image env (Atari, MinAtar, Catch, MiniGrid, the 3D labyrinths).

`env.transform` picks one, applied to every observation after the protocol's own preprocessing (grayscale, resize,
frame stack) and before the agent sees it, in training and in `decoupled eval` alike (the env section's options
carry it to every place that builds the env):

- `hflip`, `vflip`, `vhflip`: mirror left-right, top-bottom, both.
- `noisy`: add Gaussian noise that is drawn once from `env.transform_seed` and frozen (the same pattern on every
  frame and in every copy of the env), of standard deviation `env.transform_noise` in the units the net sees (the
  observation times its `obs_scale`: 0.1 is 25.5 grey levels on Atari's uint8 pixels, which stay uint8; binary grids
  such as MinAtar's become float32).
- `black`, `white`: the background (each frame's most common value) set to black or white. On binary grids
  (MinAtar, Catch), whose background is already 0, `black` is refused and `white` inverts every channel (the
  background becomes 1 everywhere, as the inverted "white" target of the paper's synthetic check); white is the top
  of the net's input range (255 for pixels).
- `zoom`: the image scaled by 0.75 (nearest neighbour) and translated to the centre, the border filled with the
  background.

Rewards, episodes and snapshots are the inner env's: the transform holds no state beyond its frozen noise. A
multi-game MinAtar env's game planes (the last `game_planes` channels) are left as they are.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from decoupled.envs.base import EnvSpec, VecEnv

TRANSFORMS = ("hflip", "vflip", "vhflip", "noisy", "black", "white", "zoom")
ZOOM = 0.75


def _is_binary(spec: EnvSpec) -> bool:
    """A grid of 0/1 cells (MinAtar, Catch): its obs_scale is 1, not 1/255."""
    return float(spec.extra.get("obs_scale", 1.0)) == 1.0


def _background(frames: np.ndarray) -> np.ndarray:
    """The most common value of each frame [..., H, W] -> [..., 1, 1]."""
    flat = frames.reshape(-1, frames.shape[-2] * frames.shape[-1])
    modes = np.array([np.bincount(f).argmax() if f.dtype == np.uint8 else _mode(f) for f in flat], frames.dtype)
    return modes.reshape(*frames.shape[:-2], 1, 1)


def _mode(values: np.ndarray) -> Any:
    uniq, counts = np.unique(values, return_counts=True)
    return uniq[counts.argmax()]


class ObsTransform:
    """One transform of observations [B, C, H, W] (or [C, H, W]) of an env with `spec`."""

    def __init__(self, name: str, spec: EnvSpec, seed: int = 0, noise: float = 0.1):
        if name not in TRANSFORMS:
            raise ValueError(f"unknown env.transform {name!r}; choose one of {', '.join(TRANSFORMS)}")
        if len(spec.obs_shape) != 3:
            raise ValueError(
                f"env.transform={name} needs image observations [C, H, W]; {spec.name} gives {spec.obs_shape}"
            )
        self.name, self.seed, self.noise = name, int(seed), float(noise)
        self.binary = _is_binary(spec)
        self.keep = int(spec.extra.get("game_planes", 0))  # a multi-game env's game planes stay as they are
        self.fill = min(255, round(1.0 / float(spec.extra.get("obs_scale", 1.0))))  # white: the top of the net's 0..1
        if name == "black" and self.binary:
            raise ValueError(
                f"env.transform=black: {spec.name}'s background is already 0 (a binary grid); use white (inverts it)"
            )
        self.in_dtype = np.dtype(spec.obs_dtype)
        self.out_dtype = self.in_dtype
        self.pattern: np.ndarray | None = None
        if name == "noisy":
            scale = float(spec.extra.get("obs_scale", 1.0))
            h, w = spec.obs_shape[-2:]
            # in stored units: sigma / obs_scale (25.5 grey levels for 0.1 on uint8 pixels scaled by 1/255)
            self.pattern = np.random.default_rng(self.seed).normal(0.0, self.noise / scale, (h, w)).astype(np.float32)
            if self.binary:
                self.out_dtype = np.dtype(np.float32)
        self.spec = EnvSpec(
            name=f"{spec.name}[{name}]",
            obs_shape=tuple(spec.obs_shape),
            obs_dtype=self.out_dtype,
            num_actions=spec.num_actions,
            frame_skip=spec.frame_skip,
            extra=dict(spec.extra),
        )

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        if not self.keep:
            return self._apply(obs)
        head = self._apply(obs[..., : -self.keep, :, :])
        return np.concatenate([head, obs[..., -self.keep :, :, :].astype(head.dtype)], axis=-3)

    def _apply(self, obs: np.ndarray) -> np.ndarray:
        n = self.name
        if n == "hflip":
            return np.ascontiguousarray(obs[..., ::-1])
        if n == "vflip":
            return np.ascontiguousarray(obs[..., ::-1, :])
        if n == "vhflip":
            return np.ascontiguousarray(obs[..., ::-1, ::-1])
        if n == "noisy":
            noisy = obs.astype(np.float32) + self.pattern
            if self.out_dtype == np.uint8:
                return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
            return noisy.astype(self.out_dtype)
        if n == "white" and self.binary:
            return (1 - obs).astype(self.out_dtype)
        if n in ("black", "white"):
            fill = 0 if n == "black" else self.fill
            return np.where(obs == _background(obs), np.asarray(fill, obs.dtype), obs)
        return self._zoom(obs)

    def _zoom(self, obs: np.ndarray) -> np.ndarray:
        h, w = obs.shape[-2:]
        zh, zw = max(1, round(h * ZOOM)), max(1, round(w * ZOOM))
        top, left = (h - zh) // 2, (w - zw) // 2
        # nearest neighbour at pixel centres: both edges of the image stay in the scaled copy
        rows = np.minimum(((np.arange(zh) + 0.5) * h / zh).astype(int), h - 1)
        cols = np.minimum(((np.arange(zw) + 0.5) * w / zw).astype(int), w - 1)
        fill = np.zeros_like(obs[..., :1, :1]) if self.binary else _background(obs)
        out = np.broadcast_to(fill, obs.shape).copy()
        out[..., top : top + zh, left : left + zw] = obs[..., rows[:, None], cols[None, :]]
        return out


class TransformVecEnv(VecEnv):
    """`inner` with `transform` applied to every observation it returns (reset, step, `final_obs`)."""

    def __init__(self, inner: VecEnv, name: str, seed: int = 0, noise: float = 0.1):
        self.inner = inner
        self.transform = ObsTransform(name, inner.spec, seed, noise)
        self.spec = self.transform.spec
        self.num_envs = inner.num_envs

    def _info(self, info: dict[str, Any]) -> dict[str, Any]:
        final = info.get("final_obs")
        if final is None:
            return info
        if isinstance(final, np.ndarray) and final.dtype != object:
            return {**info, "final_obs": self.transform(final)}
        return {**info, "final_obs": [None if f is None else self.transform(np.asarray(f)) for f in final]}

    def reset(self, seed: int | None = None) -> np.ndarray:
        return self.transform(self.inner.reset(seed))

    def step(self, actions: np.ndarray):
        obs, reward, terminated, truncated, info = self.inner.step(actions)
        return self.transform(obs), reward, terminated, truncated, self._info(info)

    def step_async(self, actions: np.ndarray) -> None:
        self.inner.step_async(actions)

    def step_wait(self):
        obs, reward, terminated, truncated, info = self.inner.step_wait()
        return self.transform(obs), reward, terminated, truncated, self._info(info)

    def settings(self) -> dict[str, Any]:
        out = {**self.inner.settings(), "transform": self.transform.name, "name": self.spec.name}
        out["transform_seed"] = self.transform.seed
        if self.transform.name == "noisy":
            out["transform_noise"] = self.transform.noise
        return out

    def get_state(self) -> dict[str, Any] | None:
        return self.inner.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self.inner.set_state(state)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:  # backend extras (e.g. a labyrinth's restarts counter)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
