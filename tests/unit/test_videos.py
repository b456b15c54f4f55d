"""Evaluation videos for every env with pixels (runners/evaluation/evaluate.py `record_video`, `obs_frame`): MinAtar in
colours per channel, Catch, gymnasium's classic control and MiniGrid through their own frames, at a visible size."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from decoupled.envs.base import EnvSpec
from decoupled.runners.evaluation.evaluate import EvalTask, obs_frame, record_video


def test_a_binary_grid_gets_one_colour_per_channel_and_a_black_background():
    spec = EnvSpec("grid", (3, 4, 4), np.dtype(np.uint8), 3, 1, {"obs_scale": 1.0})
    obs = np.zeros((3, 4, 4), np.uint8)
    obs[0, 0, 0] = obs[1, 1, 1] = obs[2, 2, 2] = 1
    frame = obs_frame(obs, spec)
    assert frame.shape == (4, 4, 3) and frame.dtype == np.uint8
    colours = {tuple(frame[i, i]) for i in range(3)}
    assert len(colours) == 3 and (0, 0, 0) not in colours and tuple(frame[3, 3]) == (0, 0, 0)
    rgb = EnvSpec("rgb", (3, 2, 2), np.dtype(np.uint8), 3, 1, {"obs_scale": 1 / 255})
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 2, 2)
    np.testing.assert_array_equal(obs_frame(pixels, rgb), pixels.transpose(1, 2, 0))


@pytest.mark.parametrize(
    "backend, env_id, package, options",
    [
        ("catch", "catch", None, {"rows": 10, "columns": 5}),
        ("minatar", "breakout", "minatar", {}),
        ("gym", "CartPole-v1", None, {}),
        ("minigrid", "MiniGrid-Empty-5x5-v0", "minigrid", {}),
    ],
)
def test_every_pixel_env_films_an_episode_big_enough_to_see(backend, env_id, package, options, tmp_path):
    if package:
        pytest.importorskip(package)
    task = EvalTask(env_id, backend, env_id, options)
    out = record_video(task, None, seed=0, path=tmp_path / "v.gif", max_steps=30)
    assert out is not None and out["agent_steps"] >= 1
    gif = Image.open(out["path"])
    assert 2 <= gif.n_frames <= out["gif_frames"] and min(gif.size) >= 200  # GIF merges repeated frames


def test_a_labyrinth_video_shows_rgb_next_to_depth_with_its_colour_bar(tmp_path):
    pytest.importorskip("vizdoom")
    from decoupled.api import load_config

    cfg = load_config("impala/nav_maze_static_01")
    task = EvalTask(cfg.env.id, "labyrinth", cfg.env.id, cfg.env.options())
    out = record_video(task, None, seed=0, path=tmp_path / "lab.gif", max_steps=6)
    gif = Image.open(out["path"])
    h, w = gif.size[1], gif.size[0]
    assert out["agent_steps"] == 6 and h >= 200 and w > 2 * h  # RGB | depth | colour bar
    gif.seek(0)
    frame = np.asarray(gif.convert("RGB"))
    rgb, depth = frame[:, :h], frame[:, h : 2 * h]
    assert not np.array_equal(rgb, depth) and depth.std() > 0
