"""The Ray actor's plain class and helpers of `runner.mode: ray`, without starting Ray."""

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from decoupled.agents import get_agent
from decoupled.envs.catch import CatchVecEnv
from decoupled.runners.training.config import ConfigError, load_config
from decoupled.runners.training.preflight import probe_ray_address, ray_address_endpoint
from decoupled.runners.training.ray_actors import (
    MAX_TEMP_DIR_CHARS,
    ROLLOUT_TIMEOUT_S,
    RayRollouts,
    RolloutWorker,
    _writable,
    ray_temp_dir,
)

ROOT = Path(__file__).resolve().parents[2]
CATCH = ROOT / "configs" / "impala" / "catch.yaml"
RAY = ["runner.mode=ray", "runner.num_actors=2", "runner.unroll_length=5"]


def _params(cfg, worker):
    """The learner's parameters as they come out of Ray's object store: numpy arrays, read-only."""
    net = get_agent(cfg.agent_name).make_net(worker.actor.envs[0].spec, cfg.agent)
    state = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    for v in state.values():
        v.setflags(write=False)
    return net, state


def test_ray_config_section():
    cfg = load_config(CATCH, [*RAY, "runner.ray.address=auto", "runner.ray.num_cpus_per_actor=0.5"])
    assert cfg.runner.actor_count == 2 and cfg.runner.ray.address == "auto"
    assert cfg.runner.ray.num_cpus_per_actor == 0.5 and cfg.runner.ray.object_store_mb == 256
    assert load_config(CATCH, RAY).runner.ray.temp_dir == ""
    with pytest.raises(ConfigError, match=r"runner\.ray\.bogus"):
        load_config(CATCH, [*RAY, "runner.ray.bogus=1"])
    with pytest.raises(ConfigError, match="split evenly"):
        load_config(CATCH, ["runner.mode=ray", "runner.num_actors=3"])  # 16 envs


def test_worker_acts_rollouts_with_the_learners_parameters():
    cfg = load_config(CATCH, RAY)
    worker = RolloutWorker(cfg.to_dict(), actor_id=1, seed=8)
    try:
        net, params = _params(cfg, worker)
        out = worker.rollout(params, 3)
        assert out["data"]["obs"].shape[:2] == (6, 8)  # T+1 slots, 16 envs / 2 actors
        assert out["policy_version"] == 3 and out["actor_id"] == 1 and out["env_restarts"] == 0
        assert out["actor_pid"] == worker.pid()
        for k, v in net.state_dict().items():
            assert torch.equal(worker.net.state_dict()[k], v)
        stale = {k: np.zeros_like(v) for k, v in params.items()}
        assert worker.rollout(stale, 2)["policy_version"] == 3  # an older version is not loaded
        assert torch.equal(next(iter(worker.net.state_dict().values())), next(iter(net.state_dict().values())))
        assert worker.rollout(None, 3)["data"]["reward"].shape == (6, 8)  # slot 0 repeats the last slot
    finally:
        worker.close()


def test_worker_rebuilds_crashed_envs_and_counts_them(monkeypatch):
    real, calls = CatchVecEnv.step, {"n": 0}

    def step(self, actions):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("emulator exploded")
        return real(self, actions)

    monkeypatch.setattr(CatchVecEnv, "step", step)
    cfg = load_config(CATCH, RAY)
    worker = RolloutWorker(cfg.to_dict(), actor_id=0, seed=0)
    try:
        out = worker.rollout(_params(cfg, worker)[1], 0)
        assert out["env_restarts"] == 1 and out["data"]["obs"].shape[:2] == (6, 8)
    finally:
        worker.close()


def test_rollouts_from_the_object_store_become_writable():
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    arr.setflags(write=False)
    out = _writable({"data": {"obs": arr}, "initial_state": [arr], "policy_version": 0})
    assert out["data"]["obs"].flags.writeable and out["initial_state"][0].flags.writeable
    np.testing.assert_array_equal(out["data"]["obs"], arr)


def test_ray_temp_dir_reaches_a_deep_run_dir_through_a_short_link(tmp_path):
    short, note = ray_temp_dir("/tmp/r", tmp_path)
    assert short == Path("/tmp/r") and note is None
    deep = tmp_path / ("d" * 80)
    link, note = ray_temp_dir("", deep)
    try:
        assert len(str(link)) <= MAX_TEMP_DIR_CHARS and link.is_symlink()
        assert link.resolve() == (deep / "ray").resolve() and (deep / "ray").is_dir()
        assert note and "too long" in note and str(link) in note
    finally:
        link.unlink()


def test_an_actor_silent_for_too_long_stops_the_run():
    source = object.__new__(RayRollouts)  # only the bookkeeping: no Ray
    source.heard_from = [time.monotonic(), time.monotonic() - 10]
    source._check_heard_from()
    source.heard_from[1] = time.monotonic() - ROLLOUT_TIMEOUT_S - 1
    with pytest.raises(RuntimeError, match="ray actor 1 sent no rollout"):
        source._check_heard_from()


@pytest.mark.parametrize(
    "address, endpoint",
    [
        ("auto", None),
        ("10.0.0.5:6379", ("10.0.0.5", 6379)),
        ("head.cluster", ("head.cluster", 6379)),
        ("ray://head:10001", ("head", 10001)),
        ("ray://head", ("head", 10001)),
        ("[::1]:7000", ("::1", 7000)),
    ],
)
def test_cluster_addresses_name_their_endpoint(address, endpoint):
    assert ray_address_endpoint(address) == endpoint


def test_a_cluster_address_where_nothing_listens_is_refused_at_once(tmp_path):
    """Ray itself retries such an address for about 1.5 minutes; `decoupled train` names the key in under a second,
    before the run dir exists."""
    import socket

    from decoupled.runners.training.preflight import preflight

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed: nothing listens there
    assert "nothing accepts connections at 127.0.0.1" in probe_ray_address(f"127.0.0.1:{port}", timeout_s=2)
    assert "not a number" in probe_ray_address("ray://head:port")
    cfg = load_config(CATCH, [*RAY, f"runner.ray.address=127.0.0.1:{port}"])
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r"runner.ray.address.*cannot join a Ray cluster at 127.0.0.1:"):
        preflight(cfg)
    assert time.monotonic() - t0 < 10
    with socket.socket() as listening:  # something that answers: the probe lets Ray take it from there
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        assert probe_ray_address(f"127.0.0.1:{listening.getsockname()[1]}") is None


def test_a_killed_runs_short_link_is_removed_when_its_ray_dir_is_linked_again(tmp_path, monkeypatch):
    """A run killed with SIGKILL cannot remove its short link; the next link to the same dir (its resume) does, and
    a live process's link or a link elsewhere is left alone."""
    import os
    import subprocess

    deep = tmp_path / ("d" * 60) / "run"
    wanted = (deep / "ray").absolute()
    wanted.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = Path(f"/tmp/decoupled-ray-{dead.pid}-abc123")
    alive = Path(f"/tmp/decoupled-ray-{os.getpid()}-abc124")
    other = Path(f"/tmp/decoupled-ray-{dead.pid}-abc125")
    for link, target in [(stale, wanted), (alive, wanted), (other, tmp_path)]:
        link.symlink_to(target, target_is_directory=True)
    made = None
    try:
        made, note = ray_temp_dir("", deep)
        assert note is not None and made.is_symlink()
        assert not stale.is_symlink() and alive.is_symlink() and other.is_symlink()
    finally:
        for link in (stale, alive, other, made):
            if link is not None and link.is_symlink():
                link.unlink()
