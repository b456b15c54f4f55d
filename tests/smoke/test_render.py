"""`decoupled render`: a labyrinth episode as a top-down map and an RGB/depth strip."""

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("vizdoom")


def test_render_writes_map_and_strip(tmp_path):
    from PIL import Image

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "decoupled",
            "render",
            "nav_maze_static_01",
            "--steps",
            "60",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    for name in ["nav_maze_static_01_map.png", "nav_maze_static_01_strip.png"]:
        img = np.asarray(Image.open(tmp_path / name).convert("RGB"))
        assert img.shape[0] > 200 and img.shape[1] > 400
        assert img.std() > 20  # a picture, not a blank canvas


def test_map_shows_walls_goal_and_trajectory(tmp_path):
    from decoupled.runners.evaluation.render import draw_map, play_episode

    ep = play_episode("nav_maze_static_01", 40, seed=1)
    assert len(ep["rgb"]) == 40 and ep["positions"].shape == (41, 2)
    top = ep["top"]
    assert top.walls.any() and not top.walls[top.goal_cell]
    # the trajectory stays inside the maze's floor cells
    rows = (-ep["positions"][:, 1] // top.cell_size).astype(int)
    cols = (ep["positions"][:, 0] // top.cell_size).astype(int)
    assert not top.walls[rows, cols].any()
    assert draw_map(ep, tmp_path / "m.png").stat().st_size > 5000


def test_render_unknown_task_is_a_clear_error(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "decoupled", "render", "nav_maze_nope", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "unknown labyrinth task" in out.stderr


def test_render_with_a_trained_policy(tmp_path):
    from pathlib import Path

    from decoupled.runners.evaluation.render import play_episode
    from decoupled.runners.training.config import load_config
    from decoupled.runners.training.train import train

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(
        root / "configs" / "impala" / "nav_maze_static_01.yaml",
        ["env.num_envs=2", "runner.unroll_length=10", "runner.total_env_frames=80"],
    )
    train(cfg, tmp_path / "run")
    ep = play_episode("nav_maze_static_01", 25, seed=0, run_dir=str(tmp_path / "run"))
    assert len(ep["rgb"]) == 25 and np.isfinite(ep["positions"]).all()


def test_render_an_unreal_run_uses_its_env_and_draws_pixel_control(tmp_path):
    """A run trained on the small 42x42 maze renders in that env (not the task's default 84x84 one), and UNREAL's
    pixel-control map comes out on its 20x20 grid; a run of another task is refused."""
    from pathlib import Path

    import pytest

    from decoupled.runners.evaluation.render import draw_pixel_control, play_episode
    from decoupled.runners.training.config import load_config
    from decoupled.runners.training.train import train

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(
        root / "configs" / "unreal" / "nav_maze_small_sparse.yaml",
        ["env.num_envs=2", "runner.unroll_length=10", "runner.total_env_frames=80", "wandb.mode=disabled"],
    )
    train(cfg, tmp_path / "run")
    ep = play_episode("nav_maze_static_03", 12, seed=0, run_dir=str(tmp_path / "run"))
    assert ep["rgb"][0].shape == (42, 42, 3) and ep["top"].walls.shape == (7, 9)
    maps = np.asarray(ep["pixel_control"]["maps"])
    assert maps.shape == (12, 20, 20) and np.isfinite(maps).all() and maps.std() > 0
    assert draw_pixel_control(ep, tmp_path / "pc.png").stat().st_size > 0
    with pytest.raises(ValueError, match="not the labyrinth task nav_maze_static_02"):
        play_episode("nav_maze_static_02", 5, seed=0, run_dir=str(tmp_path / "run"))
