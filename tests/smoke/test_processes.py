"""Processes mode: actor processes handing rollouts and parameters to the learner in shared memory, small and real."""

import json
import multiprocessing
import os
import signal
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from decoupled.runners.training import train as train_mod
from decoupled.runners.training.checkpoint import CheckpointManager
from decoupled.runners.training.config import ConfigError, default_actor_processes, load_config, usable_cpus
from decoupled.runners.training.process_actors import ProcessRollouts, RolloutSlots, SharedParams, _side_by_side

ROOT = Path(__file__).resolve().parents[2]
CATCH = ROOT / "configs" / "impala" / "catch.yaml"
SMALL = [
    "runner.mode=processes",
    "runner.num_actors=2",
    "runner.total_env_frames=9600",
    "runner.log_every_env_frames=960",
    "runner.checkpoint_every_env_frames=3200",
    "wandb.mode=disabled",
]


def _records(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _our_blocks():
    return {p.name for p in Path("/dev/shm").glob("psm_*")} if Path("/dev/shm").is_dir() else set()


def test_catch_trains_with_actor_processes_and_resumes(tmp_path):
    before = _our_blocks()
    cfg = load_config(CATCH, SMALL)
    out = train_mod.train(cfg, tmp_path)
    assert out["status"] == "finished" and out["env_frames"] == 9600
    recs = _records(tmp_path)
    assert recs[-1]["train/updates"] == 30 and recs[-1]["actor/restarts"] == 0  # both actors in every batch
    assert all(0 <= r["train/policy_lag"] <= 6 for r in recs)  # 2 actors x (queue 1 + acting + held)
    for rec in recs:  # the actors' timings come back from their processes; their CPU time counts in the share
        assert rec["perf/actor_act_ms"] > 0 and rec["perf/actor_env_wait_ms"] >= 0
        assert rec["perf/actor_param_pull_ms"] >= 0 and rec["perf/actor_queue_put_ms"] >= 0
        assert 0 < rec["perf/process_cpu_share"] <= (os.cpu_count() or 1) + 0.5
    settings = json.loads((tmp_path / "env_settings.json").read_text())
    assert settings["devices"]["actors"] == "cpu"
    assert settings["learner_torch_threads"] == max(1, usable_cpus() - 2)  # the cores the 2 actors leave
    assert _our_blocks() <= before  # the shared memory of the rollout slots is freed at the end
    longer = load_config(CATCH, [*SMALL, "runner.total_env_frames=12800"])
    resumed = train_mod.train(longer, tmp_path, resume=True, resume_overrides=["runner.total_env_frames=12800"])
    assert resumed["status"] == "finished" and resumed["env_frames"] == 12800


def _kill_after(monkeypatch, nth):
    """SIGKILL the process of the actor that sent the `nth` rollout, once, and wait until it is gone."""
    real, seen = ProcessRollouts.next, {"n": 0, "killed": None}

    def next_(self):
        out = real(self)
        seen["n"] += 1
        if seen["n"] == nth:
            proc = self.procs[out["actor_id"]]
            seen["killed"] = proc.pid
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(30)
        return out

    monkeypatch.setattr(ProcessRollouts, "next", next_)
    return seen


def test_a_killed_actor_process_is_replaced_and_the_run_finishes(tmp_path, monkeypatch, capfd):
    seen = _kill_after(monkeypatch, 3)
    out = train_mod.train(load_config(CATCH, SMALL), tmp_path)
    assert seen["killed"] is not None
    assert out["status"] == "finished" and out["env_frames"] == 9600
    assert _records(tmp_path)[-1]["actor/restarts"] == 1
    err = capfd.readouterr().err
    assert "killed by signal 9" in err and "death 1/10" in err


def test_too_many_actor_deaths_stop_the_run_with_a_checkpoint(tmp_path, monkeypatch):
    _kill_after(monkeypatch, 2)
    cfg = load_config(CATCH, [*SMALL, "runner.max_env_restarts=0"])
    with pytest.raises(RuntimeError, match=r"died 1 times \(runner.max_env_restarts=0\)"):
        train_mod.train(cfg, tmp_path)
    _, manifest = CheckpointManager(tmp_path / "checkpoints").load_latest()
    assert manifest["env_frames"] > 0  # the crash path saved the learner


def test_auto_actor_count_follows_the_cores_and_splits_the_envs():
    assert default_actor_processes(2, 16) == 1  # one core for the learner, one actor
    assert default_actor_processes(4, 16) == 2  # 3 cores left: 3 does not split 16
    assert default_actor_processes(16, 16) == 8
    assert default_actor_processes(64, 16) == 16
    assert default_actor_processes(1, 16) == 1
    assert default_actor_processes(256, 128) == 64  # at most runner.num_actors' upper bound
    cfg = load_config(CATCH, ["runner.mode=processes"])
    want = default_actor_processes(usable_cpus(), cfg.env.num_envs)
    assert cfg.runner.num_actors == want and cfg.to_dict()["runner"]["num_actors"] == want  # config.yaml keeps it
    assert load_config(CATCH, ["runner.mode=async"]).runner.num_actors == 1
    with pytest.raises(ConfigError, match="runner.num_actors"):
        load_config(CATCH, ["runner.num_actors=0", "runner.mode=processes"])
    with pytest.raises(ConfigError, match="needs runner.mode=async, processes or ray"):
        load_config(CATCH, ["runner.num_actors=2"])


def test_rollout_slots_and_parameters_cross_processes_intact():
    """What one process writes into a slot or publishes as parameters, another reads bit for bit."""
    ctx = torch.multiprocessing.get_context("spawn")
    layout = {"obs": ((3, 2, 4, 4), np.dtype(np.uint8)), "reward": ((3, 2), np.dtype(np.float32))}
    slots = RolloutSlots(layout, 2)
    net = torch.nn.Linear(3, 2)
    params = SharedParams(net, ctx)
    try:
        params.publish(net, 5)
        other = torch.nn.Linear(3, 2)
        assert params.pull(other, 5) == 5  # not newer: nothing loaded
        assert not torch.equal(other.weight, net.weight)
        assert params.pull(other, 4) == 5 and torch.equal(other.weight, net.weight)
        proc = ctx.Process(target=_fill_slot, args=(slots.name, layout, 2, params))
        proc.start()
        proc.join(60)
        assert proc.exitcode == 0
        assert (slots.slots[1]["obs"] == 7).all() and (slots.slots[1]["reward"] == 0.5).all()
        assert (slots.slots[0]["obs"] == 0).all()  # the other slot untouched
    finally:
        slots.close()


def _fill_slot(name, layout, count, params):
    slots = RolloutSlots(layout, count, name=name)
    net = torch.nn.Linear(3, 2)
    assert params.pull(net, -1) == 5 and torch.equal(net.weight, params.tensors["weight"])
    slots.slots[1]["obs"][:] = 7
    slots.slots[1]["reward"][:] = 0.5
    slots.close()


def test_a_batch_puts_the_actors_rollouts_side_by_side():
    def rollout(actor, value, version, returns):
        data = {"obs": np.full((3, 2, 4), value, np.uint8), "reward": np.full((3, 2), value, np.float32)}
        state = [np.full((2, 5), value, np.float32), np.full((2, 5), -value, np.float32)]
        episodes = {"returns": returns, "frames": [10] * len(returns)}
        return {"data": data, "initial_state": state, "policy_version": version, "episodes": episodes,
                "overlap": 0, "actor_id": actor}  # fmt: skip

    one = rollout(0, 1, 7, [1.0])
    assert _side_by_side([one]) is one  # one actor: the slot itself, no copy
    both = _side_by_side([one, rollout(1, 2, 5, [2.0, 3.0])])
    assert both["data"]["obs"].shape == (3, 4, 4) and both["data"]["reward"].shape == (3, 4)
    assert (both["data"]["obs"][:, :2] == 1).all() and (both["data"]["obs"][:, 2:] == 2).all()
    assert both["initial_state"][0].shape == (4, 5) and (both["initial_state"][1][2:] == -2).all()
    assert both["policy_version"] == 5  # the oldest acting policy: the lag the learner reports
    assert both["episodes"] == {"returns": [1.0, 2.0, 3.0], "frames": [10, 10, 10]}
    assert both["actor_ids"] == [0, 1]


def test_actor_cpu_counts_their_env_workers_and_keeps_what_ended_processes_used():
    """The actors' CPU time is read from the OS when the metrics are made (not the lagging figure an actor sent with
    its last rollout), over each actor process and its children (env worker processes), and what a process used
    stays counted after it ends."""
    import subprocess
    import sys
    import time
    from types import SimpleNamespace

    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\ntime.sleep(30)"
    parent = f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {spin!r}])\ntime.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", parent])  # an "actor" that idles while its "env worker" spins
    rollouts = SimpleNamespace(procs=[proc], _cpu_seen={}, _cpu_ended=0.0)
    try:
        readings, deadline = [], time.monotonic() + 20
        while time.monotonic() < deadline:
            readings.append(ProcessRollouts.actor_cpu_seconds(rollouts))
            if readings[-1] >= 0.6:
                break
            time.sleep(0.1)
        assert readings[-1] >= 0.6, readings  # the spinning grandchild's CPU counts (the actor alone uses ~0.05 s)
        assert readings == sorted(readings)
        assert len(rollouts._cpu_seen) == 2  # the actor and its worker
    finally:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.kill()
        proc.wait()
    time.sleep(0.2)
    after = ProcessRollouts.actor_cpu_seconds(rollouts)
    assert after >= readings[-1] and rollouts._cpu_seen == {}  # gone, and what they used still counted


def test_check_raises_an_actor_error_sent_after_the_last_batch_and_keeps_rollouts_for_next():
    """The training loop's check() at a run's end sees an actor process's late error, as it sees an actor thread's;
    a rollout check() reads on the way stays for next()."""
    rollouts = object.__new__(ProcessRollouts)
    layout = {"reward": ((3, 2), np.dtype(np.float32))}
    rollouts.slots = [RolloutSlots(layout, 2), RolloutSlots(layout, 2)]
    pipes = [multiprocessing.Pipe(duplex=True) for _ in range(2)]
    try:
        rollouts.conns = [ours for ours, _ in pipes]
        rollouts.num_actors, rollouts._next_actor, rollouts._inbox = 2, 0, []
        rollouts._timing_now, rollouts._env_restarts_now = [{}, {}], [0, 0]
        rollouts.check()  # nothing sent: nothing to raise
        pipes[1][1].send(("rollout", 1, {"episodes": {}, "perf": {}}))
        rollouts.check()
        assert rollouts._inbox and rollouts._inbox[0][0] == 1
        actor, slot, out = rollouts._receive()  # the read-ahead rollout, without waiting on the pipes
        assert (actor, slot) == (1, 1) and out["data"] is rollouts.slots[1].slots[1]
        pipes[0][1].send(("error", "Traceback ...\nValueError: late"))
        with pytest.raises(RuntimeError, match="(?s)actor process 0 failed:.*ValueError: late"):
            rollouts.check()
    finally:
        for ours, theirs in pipes:
            ours.close()
            theirs.close()
        for s in rollouts.slots:
            s.close()
