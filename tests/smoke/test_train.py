"""The real training loop, small: run dirs, metrics, checkpoints, resume, signals, failures."""

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from decoupled.runners.training import train as train_mod
from decoupled.runners.training.checkpoint import CheckpointManager
from decoupled.runners.training.config import load_config
from decoupled.runners.training.wandb_reader import read_run_dir

ROOT = Path(__file__).resolve().parents[2]
CATCH = ROOT / "configs" / "impala" / "catch.yaml"
# 16 envs x 20 steps = 320 frames per update; log every update so runs can be compared record by record
SMALL = ["runner.total_env_frames=9600", "runner.log_every_env_frames=320", "runner.checkpoint_every_env_frames=3200"]


def _cfg(*extra):
    return load_config(CATCH, SMALL + list(extra))


def _records(run_dir):
    recs = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time" and not k.startswith("perf/")} for r in recs]


def _stop_after(monkeypatch, n_unrolls, sig=signal.SIGTERM):
    real = train_mod.Actor.unroll
    calls = {"n": 0}

    def unroll(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == n_unrolls:
            os.kill(os.getpid(), sig)
        return real(self, *a, **k)

    monkeypatch.setattr(train_mod.Actor, "unroll", unroll)


def test_run_dir_contents_and_final_counts_agree(tmp_path):
    out = train_mod.train(_cfg(), tmp_path)
    assert out["status"] == "finished" and out["env_frames"] == 9600
    for name in ["config.yaml", "env_settings.json", "metrics.jsonl"]:
        assert (tmp_path / name).is_file()
    assert _records(tmp_path)[-1]["env_frames"] == 9600
    state, manifest = CheckpointManager(tmp_path / "checkpoints").load_latest()
    assert manifest["env_frames"] == 9600 == state["counters"]["env_frames"]
    (segment,) = read_run_dir(tmp_path)
    assert segment["summary"]["env_frames"] == 9600
    assert segment["history"][-1]["env_frames"] == 9600
    assert segment["run_id"] == state["wandb_run_id"]


def test_training_into_a_run_dir_with_checkpoints_is_refused_with_the_resume_command(tmp_path):
    assert not train_mod.has_checkpoints(tmp_path)
    train_mod.train(_cfg("runner.total_env_frames=3200"), tmp_path)
    assert train_mod.has_checkpoints(tmp_path)
    with pytest.raises(FileExistsError, match="continue it with `decoupled train --resume"):
        train_mod.train_from_files(str(CATCH), SMALL, str(tmp_path), None)


def test_sigterm_checkpoints_and_resume_is_bit_identical(tmp_path, monkeypatch):
    ref = train_mod.train(_cfg(), tmp_path / "ref")
    _stop_after(monkeypatch, 13)
    out = train_mod.train(_cfg(), tmp_path / "cut")
    assert out["status"] == "stopped" and out["env_frames"] == 13 * 320
    monkeypatch.undo()
    resumed = train_mod.train(_cfg(), tmp_path / "cut", resume=True)
    assert resumed["env_frames"] == ref["env_frames"] == 9600
    a, _ = CheckpointManager(tmp_path / "ref" / "checkpoints").load_latest()
    b, _ = CheckpointManager(tmp_path / "cut" / "checkpoints").load_latest()
    for k in a["net"]:
        assert torch.equal(a["net"][k], b["net"][k]), k
    assert _records(tmp_path / "ref") == _records(tmp_path / "cut")
    # the same W&B run continued: one id over both segments, steps monotonic within the stitched history
    segs = read_run_dir(tmp_path / "cut")
    assert len(segs) == 2 and segs[0]["run_id"] == segs[1]["run_id"]
    steps = [row["env_frames"] for s in segs for row in s["history"]]
    assert steps == sorted(steps) and steps[-1] == 9600


def test_resume_truncates_metrics_past_the_checkpoint(tmp_path, monkeypatch):
    _stop_after(monkeypatch, 5)
    train_mod.train(_cfg(), tmp_path)
    monkeypatch.undo()
    # pretend the run logged past its last checkpoint before dying
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"env_frames": 99999, "train/episode_return": 1.0}) + "\n")
    train_mod.train(_cfg(), tmp_path, resume=True)
    frames = [r["env_frames"] for r in _records(tmp_path)]
    assert frames == sorted(frames) and 99999 not in frames
    assert "99999" in (tmp_path / "metrics.discarded.jsonl").read_text()


def test_nonfinite_updates_are_skipped_then_stop_the_run(tmp_path, monkeypatch):
    agent = train_mod.get_agent("impala")
    calls = {"n": 0}

    def nan_loss(cfg, batch, outputs):
        loss, metrics = agent.loss_fn(cfg, batch, outputs)
        calls["n"] += 1
        if calls["n"] >= 4:
            loss = loss * float("nan")
            metrics = {**metrics, "loss/total": loss.detach()}
        return loss, metrics

    patched = type(agent)(**{**agent.__dict__, "loss_fn": nan_loss})
    monkeypatch.setattr(train_mod, "get_agent", lambda name: patched)
    with pytest.raises(train_mod.NonFiniteError, match="non-finite"):
        train_mod.train(_cfg("runner.max_nonfinite_updates=3"), tmp_path)
    state, manifest = CheckpointManager(tmp_path / "checkpoints").load_latest()
    assert state["counters"]["updates"] == 5  # 3 good + 2 skipped; the 3rd skip in a row stops the run
    assert all(torch.isfinite(v).all() for v in state["net"].values())
    assert state["actor"] is None  # crash checkpoint: envs restart on resume


def test_env_crash_saves_checkpoint_and_run_resumes(tmp_path, monkeypatch):
    from decoupled.envs.catch import CatchVecEnv

    real = CatchVecEnv.step
    calls = {"n": 0}

    def step(self, actions):
        calls["n"] += 1
        if calls["n"] == 150:
            raise RuntimeError("emulator exploded")
        return real(self, actions)

    monkeypatch.setattr(CatchVecEnv, "step", step)
    with pytest.raises(RuntimeError, match="emulator exploded"):
        train_mod.train(_cfg(), tmp_path)
    monkeypatch.undo()
    state, _ = CheckpointManager(tmp_path / "checkpoints").load_latest()
    assert state["counters"]["env_frames"] == 7 * 320  # the updates before the crash are kept
    out = train_mod.train(_cfg(), tmp_path, resume=True)
    assert out["status"] == "finished" and out["env_frames"] == 9600


def test_lstm_core_trains_and_resumes(tmp_path, monkeypatch):
    extra = ["agent.core=lstm", "agent.lstm_size=16"]
    ref = train_mod.train(_cfg(*extra), tmp_path / "ref")
    _stop_after(monkeypatch, 9)
    train_mod.train(_cfg(*extra), tmp_path / "cut")
    monkeypatch.undo()
    train_mod.train(_cfg(*extra), tmp_path / "cut", resume=True)
    assert ref["env_frames"] == 9600
    assert _records(tmp_path / "ref") == _records(tmp_path / "cut")


def test_dni_core_trains_logs_checkpoints_m_and_resumes_bit_identically(tmp_path, monkeypatch):
    extra = ["agent.core=dni_lstm", "agent.lstm_size=16", "agent.dni.context=[reward]", "agent.dni.aux_cost=0.1"]
    ref = train_mod.train(_cfg(*extra), tmp_path / "ref")
    _stop_after(monkeypatch, 9)
    train_mod.train(_cfg(*extra), tmp_path / "cut")
    monkeypatch.undo()
    train_mod.train(_cfg(*extra), tmp_path / "cut", resume=True)
    assert ref["env_frames"] == 9600
    recs = _records(tmp_path / "ref")
    assert recs == _records(tmp_path / "cut")  # M and its optimiser came back from the checkpoint exactly
    for key in ("dni/sg_loss", "dni/cosine", "dni/pred_norm", "dni/target_norm", "dni/injected_norm", "dni/aux_loss"):
        assert all(np.isfinite(r[key]) for r in recs if key in r) and any(key in r for r in recs), key
    assert recs[-1]["dni/pred_norm"] > 0  # M has left its zero start
    state, _ = CheckpointManager(tmp_path / "ref" / "checkpoints").load_latest()
    assert any(k.startswith("core.sg.") for k in state["net"])
    dni = state["learner_extra"]["dni"]
    # one M step per update, except where every env starts an episode at the window's start (Catch's envs finish
    # together: nothing to regress there); Adam's moments are saved
    assert 20 <= dni["updates"] < 30 and dni["optimizer"]["state"]


def test_episode_returns_are_logged_unclipped_and_finite(tmp_path):
    train_mod.train(_cfg(), tmp_path)
    rets = [r["train/episode_return"] for r in _records(tmp_path) if "train/episode_return" in r]
    assert rets and all(-1.0 <= x <= 1.0 for x in rets)
    assert np.isfinite(rets).all()


def test_crash_right_after_a_checkpoint_keeps_that_checkpoint_whole(tmp_path, monkeypatch):
    # checkpoint every 10 updates (3200 frames); the update after the 2nd checkpoint fails
    agent = train_mod.get_agent("impala")
    calls = {"n": 0}

    def failing_loss(cfg, batch, outputs):
        calls["n"] += 1
        if calls["n"] == 21:
            raise RuntimeError("loss blew up")
        return agent.loss_fn(cfg, batch, outputs)

    patched = type(agent)(**{**agent.__dict__, "loss_fn": failing_loss})
    monkeypatch.setattr(train_mod, "get_agent", lambda name: patched)
    with pytest.raises(RuntimeError, match="loss blew up"):
        train_mod.train(_cfg(), tmp_path)
    state, manifest = CheckpointManager(tmp_path / "checkpoints").load_latest()
    assert manifest["env_frames"] == 6400
    assert state["actor"] is not None  # the periodic checkpoint was not replaced by an actor-less crash one


def test_second_ctrl_c_writes_no_checkpoint_from_live_state(tmp_path, monkeypatch):
    real = train_mod.Learner.step
    calls = {"n": 0}

    def step(self, rollout):
        calls["n"] += 1
        if calls["n"] == 15:
            raise KeyboardInterrupt
        return real(self, rollout)

    monkeypatch.setattr(train_mod.Learner, "step", step)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(_cfg(), tmp_path)
    _, manifest = CheckpointManager(tmp_path / "checkpoints").load_latest()
    assert manifest["env_frames"] == 3200  # the periodic checkpoint, not a snapshot taken mid-interrupt


def test_train_runs_outside_the_main_thread(tmp_path):
    import threading

    out = {}
    t = threading.Thread(target=lambda: out.update(train_mod.train(_cfg("runner.total_env_frames=1280"), tmp_path)))
    t.start()
    t.join(120)
    assert out.get("status") == "finished" and out["env_frames"] == 1280


def _jsonl(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_offline_wandb_run_holds_every_record_when_train_returns(tmp_path, capsys):
    """Read right after train returns (as a user's `wandb sync` would), the offline run holds every metrics.jsonl
    record and the exit record; or else the last console line and the last metrics.jsonl record say W&B did not
    finish. (W&B's service process writes the file after finish() has returned; it was seen 7 records short.)"""
    train_mod.train(_cfg(), tmp_path)
    (segment,) = read_run_dir(tmp_path)
    records, last_line = _jsonl(tmp_path), capsys.readouterr().out.strip().splitlines()[-1]
    if "wandb/incomplete" in records[-1]:
        assert last_line.startswith("W&B did not finish") and records[-1]["wandb/incomplete"] in last_line
        return
    assert segment["exit_code"] == 0
    assert [row["env_frames"] for row in segment["history"]] == [r["env_frames"] for r in records]
    for row, rec in zip(segment["history"], records, strict=True):
        assert all(row[k] == v for k, v in rec.items() if k != "time" and v is not None), rec["env_frames"]


def test_a_wandb_run_that_does_not_finish_says_so(tmp_path, capsys, monkeypatch):
    """When W&B's offline file does not hold the whole run in time (here finish() returns without finishing, as a
    service process still writing would leave it), the last console line and metrics.jsonl say so."""
    from wandb.sdk.wandb_run import Run

    real_finish, unfinished = Run.finish, []
    monkeypatch.setattr(Run, "finish", lambda self, *a, **k: unfinished.append(self))
    try:
        train_mod.train(_cfg("runner.total_env_frames=3200", "wandb.finish_timeout_s=2"), tmp_path)
    finally:
        monkeypatch.undo()
        for run in unfinished:
            real_finish(run)
    (segment,) = read_run_dir(tmp_path)
    records, last_line = _jsonl(tmp_path), capsys.readouterr().out.strip().splitlines()[-1]
    assert unfinished and "wandb/incomplete" in records[-1] and records[-1]["env_frames"] == 3200
    assert last_line.startswith("W&B did not finish:") and "no exit record" in last_line
    assert records[-1]["wandb/incomplete"] in last_line
    assert [r["env_frames"] for r in records[:-1]] == [320 * (i + 1) for i in range(10)]  # the run's own records
