"""Task variants as env transforms (envs/transforms.py): each is what it says on the observations the agent sees, in
lockstep with the untransformed env; `noisy` is frozen; bad requests are refused; settings record the transform."""

from __future__ import annotations

import numpy as np
import pytest

from decoupled.envs import make_vec_env
from decoupled.envs.base import EnvSpec
from decoupled.envs.transforms import ObsTransform


def _lockstep(backend: str, env_id: str, transform: str, steps: int = 6, **opts):
    """(raw obs, transformed obs, transformed final_obs, raw final_obs) over `steps` steps of the same actions."""
    raw = make_vec_env(backend, env_id, 2, 3, options=opts)
    tra = make_vec_env(backend, env_id, 2, 3, options={**opts, "transform": transform})
    try:
        pairs = [(raw.reset(3), tra.reset(3))]
        rng = np.random.default_rng(0)
        for _ in range(steps):
            a = rng.integers(0, raw.spec.num_actions, 2)
            o1, r1, *_, i1 = raw.step(a)
            o2, r2, *_, i2 = tra.step(a)
            np.testing.assert_array_equal(r1, r2)  # rewards and dynamics are the inner env's
            pairs.append((o1, o2))
            pairs.append((i1["final_obs"], i2["final_obs"]))
        return pairs, raw.spec, tra.spec, tra.settings()
    finally:
        raw.close()
        tra.close()


@pytest.mark.parametrize(
    "transform, flip",
    [("hflip", lambda o: o[..., ::-1]), ("vflip", lambda o: o[..., ::-1, :]), ("vhflip", lambda o: o[..., ::-1, ::-1])],
)
@pytest.mark.parametrize("backend, env_id", [("minatar", "breakout"), ("catch", "catch")])
def test_flips_mirror_every_observation(backend, env_id, transform, flip):
    pytest.importorskip("minatar") if backend == "minatar" else None
    pairs, raw_spec, spec, settings = _lockstep(backend, env_id, transform)
    for raw, out in pairs:
        np.testing.assert_array_equal(out, flip(raw))
    assert spec.obs_shape == raw_spec.obs_shape and spec.obs_dtype == raw_spec.obs_dtype
    assert settings["transform"] == transform and settings["name"].endswith(f"[{transform}]")


def test_noisy_is_frozen_noise_of_the_asked_size_and_seeded():
    pytest.importorskip("minatar")
    pairs, _, spec, settings = _lockstep("minatar", "breakout", "noisy")
    deltas = [out - raw.astype(np.float32) for raw, out in pairs]
    for d in deltas[1:]:  # the same pattern on every frame, channel and env
        np.testing.assert_allclose(d, deltas[0], atol=1e-6)
    np.testing.assert_allclose(deltas[0][0, 0], deltas[0][1, 3], atol=1e-6)
    assert spec.obs_dtype == np.float32 and settings["transform_noise"] == 0.1
    assert 0.08 < float(deltas[0][0, 0].std()) < 0.12
    other, *_ = _lockstep("minatar", "breakout", "noisy", steps=1, transform_seed=1)
    assert not np.allclose(other[0][1] - other[0][0], deltas[0])


def test_noisy_pixels_stay_uint8_with_noise_in_grey_levels():
    spec = EnvSpec("pixels", (4, 84, 84), np.dtype(np.uint8), 6, 4, {"obs_scale": 1 / 255})
    t = ObsTransform("noisy", spec, seed=0, noise=0.1)
    obs = np.full((2, 4, 84, 84), 128, np.uint8)
    out = t(obs)
    assert out.dtype == np.uint8 and 20 < (out.astype(float) - 128).std() < 31  # 25.5 grey levels
    np.testing.assert_array_equal(out, t(obs))


def test_white_inverts_a_binary_grid_and_black_is_refused_there():
    pytest.importorskip("minatar")
    pairs, *_ = _lockstep("minatar", "breakout", "white")
    for raw, out in pairs:
        np.testing.assert_array_equal(out, 1 - raw)
    with pytest.raises(ValueError, match="already 0"):
        make_vec_env("minatar", "breakout", 1, 0, options={"transform": "black"})


def test_black_and_white_set_the_background_of_pixels():
    spec = EnvSpec("pixels", (1, 6, 6), np.dtype(np.uint8), 3, 1, {"obs_scale": 1 / 255})
    obs = np.full((1, 1, 6, 6), 87, np.uint8)
    obs[0, 0, 2, 3] = 200  # the ball
    for name, fill in (("black", 0), ("white", 255)):
        out = ObsTransform(name, spec)(obs)
        assert out[0, 0, 2, 3] == 200 and (out == fill).sum() == 35


def test_zoom_scales_by_three_quarters_into_the_centre():
    spec = EnvSpec("pixels", (1, 8, 8), np.dtype(np.uint8), 3, 1, {"obs_scale": 1 / 255})
    obs = np.zeros((1, 1, 8, 8), np.uint8)
    obs[..., 0, 0] = 255
    obs[..., 7, 7] = 250
    obs[..., 4, 4] = 9  # keep 0 the background
    out = ObsTransform("zoom", spec)(obs)
    assert out.shape == obs.shape
    # a 6x6 copy at offset 1 keeps both corners; the one-pixel border is background
    assert out[0, 0, 1, 1] == 255 and out[0, 0, 6, 6] == 250 and out[0, 0, 4, 4] == 9
    assert out[0, 0, 0].max() == 0 and out[0, 0, 7].max() == 0 and out[0, 0, :, 0].max() == 0


def test_transforms_need_images():
    with pytest.raises(ValueError, match="image observations"):
        make_vec_env("gym", "CartPole-v1", 1, 0, options={"transform": "hflip"})


def test_the_env_section_carries_the_transform_to_every_env_it_builds():
    from decoupled.api import load_config

    cfg = load_config("impala/catch", ["env.transform=vflip"])
    assert cfg.env.options()["transform"] == "vflip"
    assert "transform" not in load_config("impala/catch").env.options()  # no transform: options as before
    with make_vec_env(cfg.env.backend, cfg.env.id, 1, 0, mode="eval", options=cfg.env.options()) as env:
        assert env.settings()["transform"] == "vflip"


def test_a_multi_game_envs_game_planes_are_left_as_they_are():
    pytest.importorskip("minatar")
    opts = {"channels": "union", "full_action_set": True, "games": ["breakout", "space_invaders"]}
    for name in ("white", "zoom", "noisy", "hflip"):
        pairs, *_ = _lockstep("minatar", "multi", name, steps=2, **opts)
        for raw, out in pairs:
            np.testing.assert_array_equal(out[:, -2:], raw[:, -2:].astype(out.dtype))
