"""The command line as a user runs it: subprocesses, SIGKILL, resume, eval, plot."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from decoupled.runners.training.checkpoint import CheckpointManager
from decoupled.runners.training.wandb_reader import read_run_dir

ROOT = Path(__file__).resolve().parents[2]
CATCH = ROOT / "configs" / "impala" / "catch.yaml"


def _env():
    # in-process tests start a wandb-core service and export WANDB_SERVICE; a child that inherits it attaches to
    # the parent's service instead of starting its own, which is not how a user runs the CLI
    return {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}


def _cli(*args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "decoupled", *map(str, args)],
        capture_output=True,
        text=True,
        env=_env(),
        **kw,
    )


@pytest.mark.slow
def test_sigkill_then_resume_finishes_with_consistent_counts(tmp_path):
    run = tmp_path / "run"
    total = 240_000
    args = [
        "train",
        CATCH,
        f"runner.total_env_frames={total}",
        "runner.checkpoint_every_env_frames=16000",
        "runner.log_every_env_frames=8000",
        "--run-dir",
        run,
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "decoupled", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=_env(),
    )
    ckpts = run / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpts.is_dir() and len([p for p in ckpts.iterdir() if not p.name.endswith(".tmp")]) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: raise total_env_frames"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    killed_at = CheckpointManager(ckpts).load_latest()[1]["env_frames"]
    assert 0 < killed_at < total

    out = _cli("train", "--resume", run, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"resumed {run} at {killed_at:,}" in out.stdout
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    frames = [r["env_frames"] for r in records]
    assert frames == sorted(frames) and frames[-1] == total
    state, manifest = CheckpointManager(ckpts).load_latest()
    assert manifest["env_frames"] == total == state["counters"]["env_frames"]
    segments = read_run_dir(run)
    assert segments[-1]["summary"]["env_frames"] == total
    # the same W&B run id continued (a killed segment's .wandb file may be empty: wandb-core buffers; the id is in
    # its directory name, and metrics.jsonl is the source of truth)
    ids = {p.name.rsplit("-", 1)[1] for p in run.glob("wandb/offline-run-*")}
    assert ids == {state["wandb_run_id"]} and len(list(run.glob("wandb/offline-run-*"))) == 2


@pytest.mark.slow
def test_sigint_writes_final_checkpoint_and_exits_zero(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "decoupled",
            "train",
            str(CATCH),
            "runner.total_env_frames=5000000",
            "--run-dir",
            str(run),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )
    deadline = time.time() + 60
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "stopping after this update" in out
    manifest = CheckpointManager(run / "checkpoints").load_latest()[1]
    assert 0 < manifest["env_frames"] < 5_000_000


def test_train_refuses_to_overwrite_a_run(tmp_path):
    out = _cli("train", CATCH, "runner.total_env_frames=640", "--run-dir", tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    again = _cli("train", CATCH, "runner.total_env_frames=640", "--run-dir", tmp_path, timeout=120)
    assert again.returncode == 2 and "--resume" in again.stderr


def test_eval_and_plot_a_run(tmp_path):
    run = tmp_path / "run"
    assert _cli("train", CATCH, "runner.total_env_frames=3200", "--run-dir", run, timeout=120).returncode == 0
    out = _cli("eval", run, "--episodes", 7, timeout=120)
    assert out.returncode == 0, out.stderr
    scores = json.loads((run / "eval" / "scores.json").read_text())
    assert len(scores["games"]["catch"]["episode_scores"]) == 7
    assert set(scores["games"]["catch"]["episode_scores"]) <= {-1.0, 1.0}
    assert scores["checkpoint"].endswith("ckpt-000000003200")
    out = _cli("plot", run, timeout=120)
    assert out.returncode == 0, out.stderr
    png = run / "learning_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_random_policy(tmp_path):
    out = _cli("eval", "--policy", "random", "--config", CATCH, "--episodes", 200, "--out", tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    s = json.loads((tmp_path / "scores.json").read_text())["games"]["catch"]["episode_scores"]
    assert len(s) == 200
    # a random paddle catches about 1 ball in 5 or so: far from solved, far from always missing
    assert -0.95 < sum(s) / len(s) < 0.2


def test_resume_of_a_non_run_dir_is_a_clear_error(tmp_path):
    out = _cli("train", "--resume", tmp_path, timeout=60)
    assert out.returncode == 2 and "not a run dir" in out.stderr


def test_environment_has_no_network_for_wandb():
    assert os.environ["WANDB_BASE_URL"].startswith("http://127.0.0.1")
