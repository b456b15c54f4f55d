"""`decoupled plot`: any key, groups of runs with a mean and a bootstrap band, smoothing, readable ticks, and a
clear exit 2 when there is nothing to plot."""

import json
import subprocess
import sys

import numpy as np
import pytest

from decoupled.runners.evaluation.plot import NothingToPlot, human, mean_band, plot_run, smooth


def _run(path, values, key="train/episode_return", step=1000):
    path.mkdir(parents=True)
    lines = [json.dumps({"env_frames": (i + 1) * step, "perf/wall_time_s": 6.0 * (i + 1), key: v, "loss/total": -v})
             for i, v in enumerate(values)]  # fmt: skip
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return path


def test_ticks_read_as_thousands_millions_and_billions():
    assert [human(x) for x in (0, 750, 500_000, 1_000_000, 2_500_000, 3e9)] == ["0", "750", "500k", "1M", "2.5M", "3B"]


def test_smoothing_is_a_trailing_moving_average():
    assert smooth(np.array([1.0, 2.0, 3.0, 4.0]), 2).tolist() == [1.0, 1.5, 2.5, 3.5]
    assert smooth(np.array([1.0, 5.0]), 1).tolist() == [1.0, 5.0]


def test_the_group_mean_and_its_band_over_runs():
    x = np.array([0.0, 10.0])
    grid, mean, low, high = mean_band([x, x], [np.array([1.0, 1.0]), np.array([3.0, 5.0])], points=3)
    assert grid.tolist() == [0.0, 5.0, 10.0] and mean.tolist() == [2.0, 2.5, 3.0]
    assert np.all(low >= [1.0, 1.0, 1.0]) and np.all(high <= [3.0, 4.0, 5.0]) and np.all(low < high)
    # only the x range every run covers
    grid, *_ = mean_band([np.array([0.0, 10.0]), np.array([5.0, 20.0])], [np.zeros(2), np.zeros(2)], points=2)
    assert grid.tolist() == [5.0, 10.0]


def test_plot_groups_runs_by_label_for_any_key(tmp_path):
    runs = [_run(tmp_path / f"r{i}", [0.1 * i, 0.2 * i, 0.5 * i]) for i in range(4)]
    out = plot_run(runs, tmp_path / "c.png", key="loss/total", labels=["a", "a", "b", "b"], smoothing=2)
    assert out.stat().st_size > 0
    with pytest.raises(NothingToPlot, match="no aux/x values yet; it has loss/total"):
        plot_run(runs[:1], tmp_path / "d.png", key="aux/x")
    with pytest.raises(ValueError, match="2 labels for 1 runs"):
        plot_run(runs[:1], labels=["a", "b"])


def test_the_command_exits_2_with_a_message_when_there_is_nothing_to_plot(tmp_path):
    run = _run(tmp_path / "r", [1.0, 2.0])
    (tmp_path / "eval").mkdir()

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "decoupled", "plot", *map(str, args)], capture_output=True,
                              text=True, timeout=120)  # fmt: skip

    ok = cli(run, run, "--labels", "x,x", "--key", "loss/total", "--out", tmp_path / "p.png")
    assert ok.returncode == 0 and (tmp_path / "p.png").is_file()
    r = cli(tmp_path / "eval")
    assert r.returncode == 2 and "no metrics.jsonl" in r.stderr and "Traceback" not in r.stderr
    r = cli(run, "--key", "eval/return")
    assert r.returncode == 2 and "no eval/return values yet" in r.stderr
