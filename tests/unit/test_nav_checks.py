"""`decoupled bench nav-depth` (the Nav agent's D1 depth head trained alone on random-walk frames): the baselines it
reports, the frames and targets it collects, the benchmark run for real at a tiny size, and its usage errors."""

import argparse
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from decoupled.runners.bench import BenchUsageError
from decoupled.runners.bench.nav_checks import bench_nav_depth, majority_baselines


def _args(*argv: str) -> argparse.Namespace:
    """The arguments as the command line parses them (the subparser registered in bench/commands.py)."""
    from decoupled.runners.bench import commands

    parser = argparse.ArgumentParser()
    commands.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["bench", "nav-depth", *argv])


def _labyrinth():
    for module in ("vizdoom", "labmaze", "omg"):
        pytest.importorskip(module)


def test_majority_baselines_predict_each_pixels_most_frequent_training_class():
    train = np.ones((10, 4, 16), np.int8)  # class 1 everywhere...
    train[:7, 0, 0] = 3  # ...but pixel (0, 0) is mostly 3
    train[:, 1, :] = 5  # and row 1 is always 5: globally, 1 (40 pixels) beats 5 (16) and 3 (1)
    test = np.ones((4, 4, 16), np.int8)
    test[:, 0, 0] = 3
    test[:, 1, :] = 5
    test[0] = 6  # one test frame all class 6: nobody predicts it
    out = majority_baselines(train, test)
    assert out["majority_pixel_accuracy"] == pytest.approx(3 / 4)
    assert out["majority_global_class"] == 1
    assert out["majority_global_accuracy"] == pytest.approx(3 * 47 / (4 * 64))


def test_collected_frames_and_targets_are_the_envs_observations_and_nav_depth_targets():
    _labyrinth()
    from decoupled.envs.labyrinth import LabyrinthEnv, nav_depth_targets
    from decoupled.runners.bench.nav_checks import collect_frames
    from decoupled.runners.training.config import load_config

    cfg = load_config(_args().config)  # the bench's default config: the small static maze at 42x42
    got = collect_frames(cfg, 15, 1, env_seed=7, action_seed=11)
    assert got["obs"].shape == (15, 3, 42, 42) and got["depth_classes"].shape == (15, 4, 16)
    # the same walk replayed on one env in this process: same frames, targets straight from nav_depth_targets
    opts = {k: v for k, v in cfg.env.options().items() if k != "max_restarts"}
    env = LabyrinthEnv(cfg.env.id, **opts)
    try:
        rng = np.random.default_rng(11)
        obs, _ = env.reset(seed=7)
        for t in range(15):
            assert np.array_equal(got["obs"][t], obs["rgb"].transpose(2, 0, 1)), t
            assert np.array_equal(got["depth_classes"][t], nav_depth_targets(obs["depth"])), t
            obs, *_ = env.step(int(rng.integers(0, 8, 1)[0]))
    finally:
        env.close()
    assert len(np.unique(got["depth_classes"])) > 1


def test_bench_nav_depth_runs_end_to_end_and_prints_a_line_per_seed_and_a_summary(tmp_path):
    _labyrinth()
    out = tmp_path / "nd"
    cmd = [sys.executable, "-m", "decoupled", "bench", "nav-depth", "--seeds", "1", "--train-frames", "300",
           "--test-frames", "100", "--steps", "40", "--num-envs", "2", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seed_line, summary = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert seed_line["bench"] == "nav_depth" and seed_line["seed"] == 0 and seed_line["task"] == "nav_maze_static_03"
    assert seed_line["obs_shape"] == [3, 42, 42] and seed_line["train_frames"] == 300 and seed_line["steps"] == 40
    for key in ("test_accuracy", "train_accuracy", "majority_pixel_accuracy", "majority_global_accuracy"):
        assert 0.0 <= seed_line[key] <= 1.0, key
    assert seed_line["chance_accuracy"] == 0.125 and len(seed_line["test_accuracy_by_row"]) == 4
    assert sum(seed_line["test_class_shares"]) == pytest.approx(1.0, abs=1e-3)
    assert 0 <= seed_line["majority_global_class"] < 8
    assert seed_line["test_mazes_in_train"] == seed_line["test_mazes"] == seed_line["train_mazes"] == 1  # static
    steps = [s for s, _ in seed_line["accuracy_curve"]]
    assert steps[0] == 0 and steps[-1] == 40 and steps == sorted(steps)
    assert seed_line["accuracy_curve"][-1][1] == seed_line["test_accuracy"]
    losses = [v for _, v in seed_line["loss_curve"]]
    # an untrained head is near uniform: the summed 64-pixel cross-entropy starts at about 64 ln 8 = 133, and falls
    assert 64 * math.log(8) * 0.9 < losses[0] < 64 * math.log(8) * 1.1 and losses[-1] < losses[0]
    assert summary["what"] == "summary" and summary["seeds"] == 1
    assert summary["test_accuracy_median"] == seed_line["test_accuracy"] and summary["chance_accuracy"] == 0.125
    assert summary["majority_pixel_accuracy_median"] == seed_line["majority_pixel_accuracy"]
    assert (out / "nav_depth.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds", "0"], "--seeds must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--num-envs", "65"], "--num-envs must be between 1 and 64"),
        (["--task", "nav_maze_static_9"], "unknown labyrinth task 'nav_maze_static_9'"),
        (["--config", "impala/nav_maze_static_01"], "no depth_conv task"),
        (["--config", "impala/catch"], "depth needs the labyrinth"),
    ],
)
def test_bad_arguments_are_usage_errors(argv, message, tmp_path):
    with pytest.raises(BenchUsageError, match=message):
        bench_nav_depth(_args(*argv, "--out", str(tmp_path / "nd")))
    assert not (tmp_path / "nd").exists()  # refused before anything ran


def test_the_command_line_answers_a_bad_argument_with_exit_2_and_the_message(tmp_path):
    cmd = [sys.executable, "-m", "decoupled", "bench", "nav-depth", "--train-frames", "0"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--train-frames must be at least 1" in proc.stderr, proc.stderr[-2000:]
    assert proc.stdout == ""
