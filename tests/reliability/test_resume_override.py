"""A resume whose overrides the checkpoint cannot be restored under is refused before anything in the run changes;
the run still resumes and evaluates as it was, and an accepted override is recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CATCH = ROOT / "configs" / "impala" / "catch.yaml"


def _decoupled(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "decoupled", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
        env={**os.environ},
    )  # fmt: skip


def _snapshot(run: Path) -> dict[str, bytes]:
    """Every file of the run dir but W&B's and TensorBoard's, by path."""
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and "wandb" not in p.parts and not p.name.startswith("events.out")
    }


def test_a_refused_resume_override_leaves_the_run_resumable_and_evaluable(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = _decoupled("train", str(CATCH), "runner.total_env_frames=3200", "--run-dir", str(run), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = _snapshot(run)

    for bad, names in [
        (["agent.hidden_sizes=[32,32]"], "agent.hidden_sizes=[32,32]: torso"),
        (["agent.core=lstm", "runner.total_env_frames=6400"], "agent.core=lstm"),
        (["optim.name=rmsprop"], "optim.name=rmsprop: the checkpoint holds adam's"),
    ]:
        out = _decoupled("train", "--resume", str(run), *bad, cwd=tmp_path)
        assert out.returncode == 2, out.stdout + out.stderr
        assert names in out.stderr and "Nothing in" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
        assert "\n  runner.total_env_frames" not in out.stderr  # an override that fits is not named
        assert _snapshot(run) == before, f"{bad} changed the run dir"

    # the run as it was: plain resume and eval work
    ok = _decoupled("train", "--resume", str(run), "runner.total_env_frames=6400", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "resumed" in ok.stdout
    history = [json.loads(line) for line in (run / "resume_history.jsonl").read_text().splitlines()]
    assert history[-1]["overrides"] == ["runner.total_env_frames=6400"] and history[-1]["env_frames"] >= 3200
    assert "total_env_frames: 6400" in (run / "config.yaml").read_text()
    ev = _decoupled("eval", str(run), "--episodes", "2", "--no-video", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    assert json.loads((run / "eval" / "scores.json").read_text())
