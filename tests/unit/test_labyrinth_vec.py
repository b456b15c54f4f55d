"""The labyrinth behind the platform's env contract: worker processes, seeds, restarts, training."""

import os
import signal
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("vizdoom")
pytest.importorskip("labmaze")
pytest.importorskip("omg")

from decoupled.envs import make_vec_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def venv():
    env = make_vec_env("labyrinth", "nav_maze_static_01", 2, seed=3)
    yield env
    env.close()


def test_contract_and_extras(venv):
    from env_contract import check_contract

    check_contract(venv, steps=60)
    assert venv.spec.obs_shape == (3, 84, 84) and venv.spec.frame_skip == 4 and venv.spec.num_actions == 8
    _, _, _, _, info = venv.step(np.array([2, 2]))
    extras = info["extras"]
    assert extras["depth"].shape == (2, 84, 84) and extras["position"].shape == (2, 2)
    assert extras["velocity"].shape == (2, 3) and extras["yaw"].shape == (2, 1)


def test_seeded_streams_are_identical():
    def stream(seed):
        env = make_vec_env("labyrinth", "nav_maze_static_01", 2, seed=seed)
        try:
            obs = [env.reset()]
            rng = np.random.default_rng(0)
            for _ in range(40):
                o, r, _, _, info = env.step(rng.integers(0, 8, 2))
                obs.append(o)
                obs.append(info["extras"]["position"])
            return obs
        finally:
            env.close()

    a, b, c = stream(7), stream(7), stream(8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_dead_worker_is_restarted_with_a_report(venv):
    venv.reset()
    work_dir = venv._work_dirs[0]
    assert work_dir is not None and os.path.isdir(work_dir)
    os.kill(venv.worker_pid(0), signal.SIGKILL)
    with pytest.warns(UserWarning, match=r"env index 0 \(seed 3\) died"):
        obs, _, _, truncated, info = venv.step(np.array([2, 2]))
    assert truncated[0] and info["restarted"][0] and obs.shape == (2, 3, 84, 84)
    assert not os.path.exists(work_dir)  # the killed env's engine files are cleaned up
    venv.step(np.array([2, 2]))


def test_impala_trains_on_the_labyrinth(tmp_path):
    from decoupled.runners.training.config import load_config
    from decoupled.runners.training.train import train

    cfg = load_config(
        ROOT / "configs" / "impala" / "nav_maze_static_01.yaml",
        ["env.num_envs=2", "runner.unroll_length=10", "runner.total_env_frames=160", "runner.log_every_env_frames=1"],
    )
    out = train(cfg, tmp_path)
    assert out["status"] == "finished" and out["env_frames"] == 160  # 2 updates x 2 envs x 10 steps x 4 frames
    assert not list(Path.cwd().glob("_vizdoom*"))


def test_unreal_trains_on_the_small_sparse_maze(tmp_path):
    """configs/unreal/nav_maze_small_sparse.yaml end to end: env.maze_size etc. reach the worker processes (42x42 RGB,
    the 7x9 maze's 450-step episodes) and every auxiliary loss is computed on the 20x20 pixel-control grid."""
    import json

    from decoupled.envs.labyrinth import CELL_SIZE
    from decoupled.runners.training.config import load_config
    from decoupled.runners.training.train import train

    cfg = load_config(
        ROOT / "configs" / "unreal" / "nav_maze_small_sparse.yaml",
        ["env.num_envs=2", "runner.unroll_length=10", "runner.total_env_frames=2400", "runner.log_every_env_frames=1",
         "agent.replay_start_steps=40", "wandb.mode=disabled"],
    )  # fmt: skip
    assert cfg.env.options()["maze_size"] == (7, 9)
    out = train(cfg, tmp_path)
    assert out["status"] == "finished" and out["env_frames"] == 2400
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("aux/pixel_control/loss", "aux/reward_prediction/loss", "aux/value_replay/loss"):
        assert np.isfinite(last[key]), key
    venv = make_vec_env("labyrinth", cfg.env.id, 1, seed=0, options=cfg.env.options())
    try:
        assert venv.reset().shape == (1, 3, 42, 42)
        for _ in range(20):
            _, _, _, _, info = venv.step(np.array([2]))
            x, y = info["extras"]["position"][0]
            assert 0 < x < 9 * CELL_SIZE and -7 * CELL_SIZE < y < 0, "the worker's maze is not the 7x9 one"
    finally:
        venv.close()


def test_env_info_reaches_the_learner(venv):
    venv.reset()
    _, _, _, _, info = venv.step(np.array([2, 2]))
    env_info = info["env_info"]
    assert env_info["respawned"].shape == (2,) and env_info["respawned"].dtype == bool
    assert env_info["cell"].shape == (2, 2)
    assert "episode_goals" in env_info and "goal_found" in env_info
