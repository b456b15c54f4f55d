"""The async actor-learner (actor threads + bounded queue) and env groups, small and real."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from decoupled.envs import make_vec_env
from decoupled.envs.base import EnvCrashedError
from decoupled.envs.catch import CatchVecEnv
from decoupled.runners.training import train as train_mod
from decoupled.runners.training.actor_learner import Actor
from decoupled.runners.training.async_actors import ParamSnapshot
from decoupled.runners.training.checkpoint import CheckpointManager
from decoupled.runners.training.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
CATCH = ROOT / "configs" / "impala" / "catch.yaml"
SMALL = ["runner.total_env_frames=9600", "runner.log_every_env_frames=960", "runner.checkpoint_every_env_frames=3200"]


def _records(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _crash_on_steps(monkeypatch, steps):
    """Catch envs raise on the given global step counts (counted over every Catch env in the process)."""
    real = CatchVecEnv.step
    calls = {"n": 0}

    def step(self, actions):
        calls["n"] += 1
        if calls["n"] in steps:
            raise RuntimeError(f"emulator exploded at call {calls['n']}")
        return real(self, actions)

    monkeypatch.setattr(CatchVecEnv, "step", step)
    return calls


def test_async_mode_trains_with_bounded_policy_lag(tmp_path):
    cfg = load_config(CATCH, SMALL + ["runner.mode=async", "runner.env_groups=2", "runner.queue_size=1"])
    out = train_mod.train(cfg, tmp_path)
    assert out["status"] == "finished" and out["env_frames"] == 9600
    recs = _records(tmp_path)
    assert recs[-1]["env_frames"] == 9600 and recs[-1]["train/updates"] == 30
    lags = [r["train/policy_lag"] for r in recs]
    # a rollout can wait in the queue (1) while the next is acted (1) and the learner updates: lag <= 2 (+1 for a
    # rollout acted with parameters picked up just before the learner's next publish)
    assert all(0 <= lag <= 3 for lag in lags), lags
    assert "perf/learner_wait_fraction" in recs[-1] and recs[-1]["actor/env_restarts"] == 0
    # where the actors' time went, per agent step: env waits, acting, parameter pulls, a full queue; the CPU share
    for rec in recs:
        parts = [rec[f"perf/actor_{k}_ms"] for k in ("env_wait", "act", "param_pull", "queue_put")]
        assert all(p >= 0 for p in parts) and rec["perf/actor_act_ms"] > 0, parts
        assert 0 < rec["perf/process_cpu_share"] <= (os.cpu_count() or 1) + 0.5
        assert rec["perf/machine_load_1min"] >= 0
        assert 0 <= rec.get("perf/cpu_steal_fraction", 0.0) <= 1
    if Path("/proc/stat").is_file():  # Linux: the host's steal time is in (nearly) every record
        assert sum("perf/cpu_steal_fraction" in r for r in recs) >= len(recs) - 1
    state, _ = CheckpointManager(tmp_path / "checkpoints").load_latest()
    assert state["actor"] is None  # async rollouts in flight are not snapshotted


@pytest.mark.learning
@pytest.mark.parametrize("mode", ["serial", "async"])
def test_serial_and_async_learn_catch_alike(tmp_path, mode):
    from decoupled.runners.evaluation.evaluate import load_policy, run_episodes

    cfg = load_config(CATCH, [f"runner.mode={mode}"])
    assert train_mod.train(cfg, tmp_path)["status"] == "finished"
    cfg, net, _ = load_policy(tmp_path)
    scores = np.asarray(run_episodes(cfg, 200, seed=1000, net=net)["episode_scores"])
    assert scores.mean() >= 0.9, f"{mode}: catch mean return {scores.mean():.3f} over 200 episodes (random: -0.6)"


def test_async_actor_restarts_a_crashed_env_and_the_learner_goes_on(tmp_path, monkeypatch, capfd):
    calls = _crash_on_steps(monkeypatch, {100, 250})
    cfg = load_config(CATCH, SMALL + ["runner.mode=async"])
    out = train_mod.train(cfg, tmp_path)
    assert calls["n"] > 250
    assert out["status"] == "finished" and out["env_frames"] == 9600
    assert _records(tmp_path)[-1]["actor/env_restarts"] == 2
    err = capfd.readouterr().err
    assert err.count("env crash") == 2 and "emulator exploded at call 100" in err and "rebuilding its envs" in err


def test_async_env_crashes_past_the_limit_stop_the_run_with_a_checkpoint(tmp_path, monkeypatch):
    _crash_on_steps(monkeypatch, set(range(60, 10_000, 40)))
    cfg = load_config(CATCH, SMALL + ["runner.mode=async", "runner.max_env_restarts=2"])
    with pytest.raises(RuntimeError, match="actor thread 0 failed") as info:
        train_mod.train(cfg, tmp_path)
    assert isinstance(info.value.__cause__, EnvCrashedError)
    assert "crashed 3 times" in str(info.value.__cause__)
    monkeypatch.undo()
    assert CheckpointManager(tmp_path / "checkpoints").list()  # the learner's updates so far are kept
    out = train_mod.train(load_config(tmp_path / "config.yaml"), tmp_path, resume=True)
    assert out["status"] == "finished" and out["env_frames"] == 9600


def test_async_run_stops_and_resumes(tmp_path):
    cfg = load_config(CATCH, SMALL[1:] + ["runner.mode=async", "runner.num_actors=2", "runner.total_env_frames=3200"])
    assert train_mod.train(cfg, tmp_path)["env_frames"] == 3200
    cfg = load_config(tmp_path / "config.yaml", ["runner.total_env_frames=6400"])
    out = train_mod.train(cfg, tmp_path, resume=True)
    assert out["status"] == "finished" and out["env_frames"] == 6400 and out["actor_restarts"] == 1
    assert [r["env_frames"] for r in _records(tmp_path)][-1] == 6400


class _FixedPolicy(torch.nn.Module):
    """Logits that make the sampled action a function of the observation (deterministic whatever the RNG)."""

    def __init__(self, num_actions):
        super().__init__()
        self.num_actions = num_actions
        self.w = torch.nn.Parameter(torch.zeros(1))

    def initial_state(self, batch_size, device="cpu"):
        return (torch.zeros(batch_size, 1, device=device),)

    def forward(self, inputs, state):
        obs = inputs["obs"].float().flatten(2)  # [T,B,N]
        choice = (obs.argmax(-1) + inputs["prev_action"]) % self.num_actions  # [T,B]
        logits = torch.nn.functional.one_hot(choice, self.num_actions).float() * 1e4
        baseline = obs.sum(-1)
        return {"policy_logits": logits, "baseline": baseline}, (state[0] + 1,)


@pytest.mark.parametrize("groups", [2, 4])
def test_env_groups_give_the_rollouts_of_one_group(groups):
    B, T = 8, 7
    pytest.importorskip("minatar")  # per-env seeds (seed + i); Catch draws every env from one RNG
    env = make_vec_env("minatar", "breakout", B, 0)
    A = env.spec.num_actions
    one = Actor([env], _FixedPolicy(A), T, torch.device("cpu"))
    envs = [make_vec_env("minatar", "breakout", B // groups, 0) for _ in range(groups)]
    split = Actor(envs, _FixedPolicy(A), T, torch.device("cpu"))
    one.start(5)
    split.start(5)
    ended = 0
    for _ in range(6):  # episodes end inside these (ball missed): autoresets are covered
        a, b = one.unroll(), split.unroll()
        for k, v in a["data"].items():
            np.testing.assert_array_equal(v, b["data"][k], err_msg=k)
        for x, y in zip(a["initial_state"], b["initial_state"], strict=True):
            np.testing.assert_array_equal(x, y)
        assert sorted(a["episodes"]["returns"]) == sorted(b["episodes"]["returns"])
        ended += len(a["episodes"]["returns"])
    assert ended > 0
    assert one.get_state()["core_state"][0][0].shape == (B, 1)
    assert [s[0].shape for s in split.get_state()["core_state"]] == [(B // groups, 1)] * groups
    one.close()
    split.close()


def test_envpool_step_async_then_wait_equals_step():
    pytest.importorskip("envpool")
    a = make_vec_env("atari", "Breakout", 4, 3)
    b = make_vec_env("atari", "Breakout", 4, 3)
    try:
        np.testing.assert_array_equal(a.reset(seed=3), b.reset(seed=3))
        rng = np.random.default_rng(0)
        for _ in range(300):
            act = rng.integers(0, 4, 4)
            ra = a.step(act)
            b.step_async(act)
            rb = b.step_wait()
            for x, y in zip(ra[:4], rb[:4], strict=True):
                np.testing.assert_array_equal(x, y)
            np.testing.assert_array_equal(ra[4]["episode_return"], rb[4]["episode_return"])
        with pytest.raises(RuntimeError, match="without a step_async"):
            b.step_wait()
        b.step_async(act)
        with pytest.raises(RuntimeError, match="twice"):
            b.step_async(act)
        b.reset(seed=4)  # collects the step in flight
        b.step(act)
    finally:
        a.close()
        b.close()


def test_param_snapshot_hands_over_only_newer_parameters():
    src, dst = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    snap = ParamSnapshot()
    assert snap.pull(dst, -1) == -1  # nothing published yet
    snap.publish(src, 4)
    with torch.no_grad():
        src.weight.add_(1.0)  # later changes of the learner's net do not leak into the snapshot
    assert snap.pull(dst, 3) == 4
    assert not torch.equal(dst.weight, src.weight) and torch.equal(dst.weight + 1.0, src.weight)
    with torch.no_grad():
        dst.weight.zero_()
    assert snap.pull(dst, 4) == 4 and torch.count_nonzero(dst.weight) == 0  # not newer: untouched


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["runner.env_groups=3"], "must split evenly"),
        (["runner.mode=async", "runner.num_actors=3"], "must split evenly"),
        (["runner.num_actors=2"], "needs runner.mode=async"),
        (["runner.mode=threads"], "runner.mode"),
    ],
)
def test_bad_async_settings_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CATCH, overrides)


def test_max_wall_seconds_stops_the_run_with_a_checkpoint_and_a_resume_adds_nothing(tmp_path):
    budget = ["runner.total_env_frames=100000000", "runner.max_wall_seconds=1.0"]
    cfg = load_config(CATCH, SMALL + ["runner.mode=async", *budget])
    out = train_mod.train(cfg, tmp_path)
    assert out["status"] == "time_limit" and 0 < out["env_frames"] < 100_000_000
    _, manifest = CheckpointManager(tmp_path / "checkpoints").load_latest()
    assert manifest["env_frames"] == out["env_frames"] and manifest["meta"]["wall_time"] >= 1.0
    again = train_mod.train(load_config(tmp_path / "config.yaml"), tmp_path, resume=True)
    assert again["status"] == "time_limit" and again["env_frames"] == out["env_frames"]  # the budget is spent
    target = out["env_frames"] + 640
    extend = [f"runner.total_env_frames={target}", "runner.max_wall_seconds=null"]
    more = train_mod.train(load_config(tmp_path / "config.yaml", extend), tmp_path, resume=True)
    assert more["status"] == "finished" and more["env_frames"] == target


@pytest.mark.parametrize("overlap, groups", [(3, 1), (5, 2), (7, 1)])
def test_overlapping_rollouts_repeat_the_previous_transitions_with_the_state_before_them(overlap, groups):
    """An actor with overlap o sends [o + T + 1] slots: its own T transitions exactly as an actor without overlap
    makes them, behind the previous rollout's last o (the first rollout: episode starts), with the core state
    before its first slot; snapshots carry the leading slots so a resumed actor goes on exactly."""
    B, T = 8, 7
    pytest.importorskip("minatar")
    A = make_vec_env("minatar", "breakout", 1, 0).spec.num_actions

    def actor(o):
        envs = [make_vec_env("minatar", "breakout", B // groups, 0) for _ in range(groups)]
        return Actor(envs, _FixedPolicy(A), T, torch.device("cpu"), overlap=o)

    plain, lapped = actor(0), actor(overlap)
    plain.start(5)
    lapped.start(5)
    previous = None
    for _ in range(5):
        a, b = plain.unroll(), lapped.unroll()
        assert b["overlap"] == overlap and a["overlap"] == 0
        for k, v in a["data"].items():
            np.testing.assert_array_equal(b["data"][k][overlap:], v, err_msg=k)
            if previous is None:
                assert (b["data"]["terminated"][: overlap + 1]).all()  # the first rollout: episode starts
            else:
                np.testing.assert_array_equal(b["data"][k][: overlap + 1], previous["data"][k][T - overlap :], k)
        if previous is not None:  # _FixedPolicy's state counts steps: the lead state is o steps before slot o's
            np.testing.assert_array_equal(b["initial_state"][0], a["initial_state"][0] - overlap)
        previous = a
    snapshot = lapped.get_state()
    again = actor(overlap)
    again.set_state(snapshot)
    x, y = lapped.unroll(), again.unroll()
    for k, v in x["data"].items():
        np.testing.assert_array_equal(v, y["data"][k], err_msg=k)
    np.testing.assert_array_equal(x["initial_state"][0], y["initial_state"][0])
    with pytest.raises(ValueError, match="another overlap"):
        plain.set_state(snapshot)
    for a in (plain, lapped, again):
        a.close()
