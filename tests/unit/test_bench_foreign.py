"""`decoupled bench throughput`'s peers from other projects (runners/bench/foreign.py): their progress lines read into
agent steps, the rate after the warm-up, a missing virtual environment answered with how to build it, and the
measurement itself run end to end on a stand-in interpreter that prints CleanRL's progress lines (the real peers'
venvs are built by `make peers`, which the tests do not need)."""

import stat
import sys

import psutil
import pytest

from decoupled.runners.bench import foreign
from decoupled.runners.cli import main


def test_sample_factory_lines_give_its_learners_frame_count_and_other_lines_nothing():
    lines = [
        (1.0, "[2026-12-04 18:00:01,000][01234] Using optimizer Adam"),
        (5.0, "[...][01234] Fps is (10 sec: nan, 60 sec: nan, 300 sec: nan). Total num frames: 0. Throughput: 0: nan."),
        (10.0, "[...] Fps is (10 sec: 640.0). Total num frames: 6400. Throughput: 0: 640.0. Samples: 6720"),
        (15.0, "[...] Fps is (10 sec: 700.0). Total num frames: 9920. Throughput: 0: 704.0. Samples: 9920"),
    ]  # fmt: skip
    assert foreign.steps_seen("sf", lines, {}) == [(5.0, 0), (10.0, 6400), (15.0, 9920)]


def test_cleanrl_lines_count_one_rollout_of_envs_times_steps_each():
    lines = [(2.0, "global_step=512, episodic_return=1.0"), (3.0, "SPS: 300"), (4.5, "SPS: 320"), (6.0, "SPS: 330")]
    points = foreign.steps_seen("cleanrl", lines, {"num_envs": 8, "num_steps": 128})
    assert points == [(3.0, 1024), (4.5, 2048), (6.0, 3072)]


def test_rate_after_the_warmup_and_the_last_third_against_the_first():
    # 100 steps/s for 30 s, then 50 steps/s: the window after a 10-s warm-up runs 10..60 s
    points = [(float(t), 100 * t if t <= 30 else 3000 + 50 * (t - 30)) for t in range(0, 61)]
    out = foreign.rate_after(points, warmup=10.0)
    assert out["steps_per_s"] == pytest.approx((points[60][1] - points[10][1]) / 50.0)
    assert out["last_third_over_first"] == pytest.approx(0.5, abs=1e-3)
    # three reports: a rate, but no third of the window holds two of them, so its steadiness is unknown (None)
    sparse = foreign.rate_after([(10.0, 0), (20.0, 1000), (30.0, 1500)], warmup=0.0)
    assert sparse["steps_per_s"] == pytest.approx(75.0) and sparse["last_third_over_first"] is None
    with pytest.raises(RuntimeError, match="fewer than two progress reports after the 59.5-second warm-up"):
        foreign.rate_after(points, warmup=59.5)  # one point left (60 s)
    with pytest.raises(RuntimeError, match="raise --seconds"):
        foreign.rate_after([], warmup=0.0)


def test_a_missing_peer_venv_is_a_usage_error_naming_make_peers(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(foreign.VENVS_ENV, str(tmp_path / "none"))
    rc = main(["bench", "throughput", "--only", "sf_appo", "--seconds", "1", "--repeats", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "make peers" in err and str(tmp_path / "none" / "sample_factory") in err and "sample_factory.txt" in err


def _stand_in_venv(root, script: str) -> None:
    """A venv folder whose bin/python is a shell script (it ignores the peer's arguments) that leaves a child process
    behind, as Sample Factory's workers are, and writes the child's pid for the test."""
    python = root / "cleanrl" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {root}/child.pid\n{script}\n")
    python.chmod(python.stat().st_mode | stat.S_IXUSR)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and /proc")
def test_a_peer_is_measured_from_its_own_output_and_its_process_tree_is_ended(tmp_path, monkeypatch):
    _stand_in_venv(tmp_path, "while true; do echo 'SPS: 1'; sleep 0.1; done")
    monkeypatch.setenv(foreign.VENVS_ENV, str(tmp_path))
    out = foreign.measure({"what": "cleanrl_ppo", "game": "Breakout", "warmup": 0.5, "seconds": 2.0})
    # one line per 0.1 s (a little slower with the shell's own time), 8 x 128 agent steps each
    assert 1024 / 0.2 < out["steps_per_s"] < 1024 / 0.1 * 1.05
    assert out["peak_rss_mb"] > 0 and out["num_envs"] == 8 and out["deviations"]
    _assert_ended(int((tmp_path / "child.pid").read_text()))


def _assert_ended(pid: int) -> None:
    try:
        assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, "the peer's child process outlived it"
    except psutil.NoSuchProcess:
        pass


def test_a_peer_that_dies_early_is_reported_with_its_last_output(tmp_path, monkeypatch):
    _stand_in_venv(tmp_path, "echo 'ModuleNotFoundError: No module named envpool'; exit 3")
    monkeypatch.setenv(foreign.VENVS_ENV, str(tmp_path))
    with pytest.raises(RuntimeError, match=r"(?s)cleanrl_ppo exited with 3 .*No module named envpool"):
        foreign.measure({"what": "cleanrl_ppo", "game": "Breakout", "warmup": 0.5, "seconds": 5.0})
    _assert_ended(int((tmp_path / "child.pid").read_text()))
