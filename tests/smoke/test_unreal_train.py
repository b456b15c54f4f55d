"""UNREAL end to end, small: every auxiliary loss logged under aux/<task>/, checkpoints holding the replay,
resume (bit-identical in serial mode), and the zero-weight agent training exactly as the base agent."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from decoupled.runners.training import train as train_mod
from decoupled.runners.training.checkpoint import CheckpointManager
from decoupled.runners.training.config import load_config

ROOT = Path(__file__).resolve().parents[2]
CATCH = ROOT / "configs" / "unreal" / "catch.yaml"
SMALL = ["runner.total_env_frames=6400", "runner.log_every_env_frames=320", "runner.checkpoint_every_env_frames=3200"]
TASKS = ("pixel_control", "reward_prediction", "value_replay")


def _records(run_dir):
    recs = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time" and not k.startswith("perf/")} for r in recs]


def test_unreal_breakout_logs_aux_losses_checkpoints_and_resumes_with_its_replay(tmp_path):
    pytest.importorskip("envpool")
    small = ["env.num_envs=4", "runner.unroll_length=5", "runner.log_every_env_frames=80",
             "agent.replay_start_steps=40", "agent.replay_capacity_steps=200", "runner.total_env_frames=1600",
             "runner.checkpoint_every_env_frames=800"]  # fmt: skip
    cfg = load_config(ROOT / "configs" / "unreal" / "breakout.yaml", small)
    out = train_mod.train(cfg, tmp_path)
    assert out["status"] == "finished"
    records = _records(tmp_path)
    last = records[-1]
    for task in TASKS:
        assert any(f"aux/{task}/loss" in r for r in records), task
    assert 0 <= last["aux/reward_prediction/accuracy"] <= 1 and last["aux/replay/steps"] == 200
    state, _ = CheckpointManager(tmp_path / "checkpoints").load_latest()
    replay = state["learner_extra"]["replay"]
    assert replay["data"]["obs"].shape == (40, 6, 4, 84, 84)  # 200 steps in sequences of 5 (+1 slot)
    more = load_config(tmp_path / "config.yaml", ["runner.total_env_frames=2400"])
    resumed = train_mod.train(more, tmp_path, resume=True)
    assert resumed["status"] == "finished" and resumed["env_frames"] == 2400
    after = _records(tmp_path)
    first_new = next(r for r in after if r["env_frames"] > 1600)
    assert first_new["aux/replay/steps"] == 200  # full from the first update after the resume: it was restored


def test_unreal_serial_resume_is_bit_identical(tmp_path, monkeypatch):
    cfg = load_config(CATCH, SMALL)
    ref = train_mod.train(cfg, tmp_path / "ref")
    real = train_mod.Actor.unroll
    calls = {"n": 0}

    def unroll(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 13:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, *a, **k)

    monkeypatch.setattr(train_mod.Actor, "unroll", unroll)
    cut = train_mod.train(cfg, tmp_path / "cut")
    assert cut["status"] == "stopped"
    monkeypatch.undo()
    train_mod.train(cfg, tmp_path / "cut", resume=True)
    a, _ = CheckpointManager(tmp_path / "ref" / "checkpoints").load_latest()
    b, _ = CheckpointManager(tmp_path / "cut" / "checkpoints").load_latest()
    for k in a["net"]:
        assert torch.equal(a["net"][k], b["net"][k]), k
    assert _records(tmp_path / "ref") == _records(tmp_path / "cut")
    assert ref["env_frames"] == 6400 and any("aux/pixel_control/loss" in r for r in _records(tmp_path / "ref"))


def test_unreal_with_every_auxiliary_weight_at_zero_is_exactly_the_base_agent(tmp_path):
    base_keys = ["runner.total_env_frames=3200", "runner.log_every_env_frames=320", "agent.core=lstm",
                 "agent.lstm_size=64"]  # fmt: skip
    impala = load_config(ROOT / "configs" / "impala" / "catch.yaml", base_keys)
    zero = load_config(CATCH, base_keys + ["agent.pixel_control_cost=0", "agent.reward_prediction_cost=0",
                                           "agent.value_replay_cost=0"])  # fmt: skip
    train_mod.train(impala, tmp_path / "impala")
    train_mod.train(zero, tmp_path / "unreal")
    a, _ = CheckpointManager(tmp_path / "impala" / "checkpoints").load_latest()
    b, _ = CheckpointManager(tmp_path / "unreal" / "checkpoints").load_latest()
    assert a["net"].keys() == b["net"].keys()
    for k in a["net"]:
        assert torch.equal(a["net"][k], b["net"][k]), k
    assert _records(tmp_path / "impala") == _records(tmp_path / "unreal")


@pytest.mark.parametrize("core", ["dni_lstm", "none"])
def test_unreal_heads_work_with_any_core(tmp_path, core):
    cfg = load_config(CATCH, ["runner.total_env_frames=1920", "runner.log_every_env_frames=320",
                              "agent.replay_start_steps=320", f"agent.core={core}"])  # fmt: skip
    out = train_mod.train(cfg, tmp_path)
    assert out["status"] == "finished"
    last = _records(tmp_path)[-1]
    assert all(f"aux/{t}/loss" in last for t in TASKS)
    if core == "dni_lstm":
        assert "dni/sg_loss" in last


def test_impala_replay_ratio_mixes_replayed_sequences_into_every_batch(tmp_path):
    """agent.replay_ratio (LASER-style): each update also learns, with V-trace, from replayed sequences whose stored
    behaviour logits are older than the current policy (rho departs from 1), and the replay is checkpointed."""
    cfg = load_config(ROOT / "configs" / "impala" / "catch.yaml",
                      ["runner.total_env_frames=6400", "runner.log_every_env_frames=640", "agent.replay_ratio=0.5",
                       "agent.replay_start_steps=320", "agent.replay_capacity_steps=3200"])  # fmt: skip
    out = train_mod.train(cfg, tmp_path)
    assert out["status"] == "finished"
    recs = [r for r in _records(tmp_path) if "replay/loss" in r]
    assert len(recs) >= 5 and all(r["aux/replay/steps"] <= 3200 for r in recs)
    assert any(abs(r["replay/rho_mean"] - 1.0) > 1e-3 for r in recs)  # off-policy data, corrected
    state, _ = CheckpointManager(tmp_path / "checkpoints").load_latest()
    assert state["learner_extra"]["replay"]["data"]["behaviour_logits"].shape[-1] == 3
    from decoupled.agents import get_agent
    from decoupled.envs.replay import SequenceReplay

    rep = SequenceReplay(1000, 20, (1, 10, 5), np.float32, (), 0, num_actions=3)
    rep.add({"data": {k: np.zeros((21, 16, *s)) for k, s in [("obs", (1, 10, 5)), ("action", ()), ("reward", ()),
             ("terminated", ()), ("truncated", ()), ("truncation_value", ()), ("behaviour_logits", (3,))]},
             "initial_state": []})  # fmt: skip
    sample = get_agent("impala").sample_replay(cfg.agent, rep)
    assert sample["seq"]["obs"].shape[1] == 8  # replay_ratio 0.5 of the 16 on-policy sequences
