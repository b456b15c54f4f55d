"""`runner.mode: ray` end to end on a local Ray (small object store, no traffic off the machine): Catch trains,
resumes, survives a SIGKILLed actor, stops (with a checkpoint) past its restart budget, joins a cluster started with
`ray start --head`, and refuses a config that asks for more CPUs than Ray has."""

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from decoupled.runners.training import train as train_mod  # noqa: E402
from decoupled.runners.training.checkpoint import CheckpointManager  # noqa: E402
from decoupled.runners.training.config import ConfigError, load_config  # noqa: E402
from decoupled.runners.training.ray_actors import (  # noqa: E402
    RAY_PERF_METRICS,
    RayRollouts,
    RolloutWorker,
    rollout_nbytes,
    start_local_ray,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CATCH = ROOT / "configs" / "impala" / "catch_ray.yaml"
SMALL = [
    "runner.total_env_frames=6400",
    "runner.log_every_env_frames=640",
    "runner.checkpoint_every_env_frames=3200",
    "runner.ray.object_store_mb=128",
]


def _records(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def short_dir():
    """Ray's temp dirs: short paths (Ray's Unix sockets live under them)."""
    path = Path(tempfile.mkdtemp(prefix="dray-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """A short Catch run whose own local Ray starts with it and stops at its end."""
    assert not ray.is_initialized()
    run_dir = tmp_path_factory.mktemp("ray_run")
    cfg = load_config(CATCH, SMALL)  # Ray's files under RUN_DIR/ray (through a short link if the path is long)
    out = train_mod.train(cfg, run_dir)
    return run_dir, out


@pytest.fixture(scope="module")
def shared_ray(first_run, short_dir):
    """One local Ray for the remaining tests (each run then joins the Ray this process runs and leaves it up)."""
    start_local_ray(short_dir / "shared", 128, num_cpus=2)
    yield ray
    ray.shutdown()


def _kill_after(monkeypatch, nth):
    """SIGKILL the process of the actor that sent the `nth` rollout, once."""
    real, seen = RayRollouts.next, {"n": 0, "killed": None}

    def next_(self):
        out = real(self)
        seen["n"] += 1
        if seen["n"] == nth:
            seen["killed"] = out["actor_pid"]
            os.kill(out["actor_pid"], signal.SIGKILL)
            # until Ray has failed the dead process's calls: else, on a loaded machine, the other actor could
            # deliver every remaining rollout first and the run end before the death is seen
            import ray

            i = self.pids.index(out["actor_pid"])
            refs = [ref for ref, (actor, _) in self.inflight.items() if actor == i]
            ray.wait(refs, num_returns=len(refs), timeout=60)
        return out

    monkeypatch.setattr(RayRollouts, "next", next_)
    return seen


def test_catch_trains_in_ray_mode(first_run):
    run_dir, out = first_run
    assert out["status"] == "finished" and out["env_frames"] == 6400
    recs = _records(run_dir)
    assert recs[-1]["env_frames"] == 6400 and recs[-1]["train/updates"] == 40  # rollouts: 20 steps x 8 envs
    assert recs[-1]["actor/restarts"] == 0 and recs[-1]["actor/env_restarts"] == 0
    lags = sorted(r["train/policy_lag"] for r in recs)  # ~ actors x queue_size; more while an actor lags behind
    assert lags[0] >= 0 and lags[len(lags) // 2] <= 4, lags
    state, manifest = CheckpointManager(run_dir / "checkpoints").load_latest()
    assert manifest["env_frames"] == 6400 and state["actor"] is None
    assert any((run_dir / "ray").glob("session_*"))  # Ray's session files and logs in the run dir
    assert (run_dir / "ray" / "home" / "ray_bootstrap_config.yaml").exists()
    assert not list(Path("/tmp").glob(f"decoupled-ray-{os.getpid()}-*"))  # a short link, if any, is gone
    assert not ray.is_initialized()  # the run stopped the Ray it started


def test_a_ray_run_logs_the_per_rollout_costs(first_run):
    """perf/ray_*: bytes per rollout (the arrays' nbytes), the learner's wait/get/copy, the actor's load/unroll and the
    parameter put: in every record, plausible."""
    run_dir, _ = first_run
    worker = RolloutWorker(load_config(CATCH, SMALL).to_dict(), actor_id=0, seed=0)  # the same rollouts, no Ray
    try:
        out = worker.rollout(None, 0)
    finally:
        worker.close()
    expected = sum(v.nbytes for v in out["data"].values()) + sum(s.nbytes for s in out["initial_state"])
    assert rollout_nbytes(out) == expected > 0
    assert out["perf"]["unroll_s"] > 0 and out["perf"]["load_s"] >= 0
    for rec in _records(run_dir):
        assert set(RAY_PERF_METRICS) <= set(rec), sorted(k for k in rec if k.startswith("perf/"))
        assert rec["perf/ray_rollout_bytes"] == expected  # every rollout alike: 20 steps x 8 envs
        assert rec["perf/ray_params_bytes"] > 0
        assert rec["perf/ray_actor_unroll_s"] > 0 and rec["perf/ray_put_s"] > 0
        for key in ("perf/ray_wait_s", "perf/ray_get_s", "perf/ray_copy_s", "perf/ray_actor_load_s"):
            assert 0 <= rec[key] < 60, (key, rec[key])


def test_resume_of_a_ray_run(first_run, shared_ray):
    run_dir, _ = first_run
    cfg = load_config(CATCH, [*SMALL, "runner.total_env_frames=8320"])
    out = train_mod.train(cfg, run_dir, resume=True)
    assert out["status"] == "finished" and out["env_frames"] == 8320
    frames = [r["env_frames"] for r in _records(run_dir)]
    assert frames == sorted(frames) and frames[-1] == 8320
    assert ray.is_initialized()  # a Ray the run did not start stays up


def test_a_killed_actor_is_restarted_and_the_run_finishes(tmp_path, shared_ray, monkeypatch, capfd):
    seen = _kill_after(monkeypatch, 3)
    cfg = load_config(CATCH, [*SMALL, "runner.queue_size=2"])
    out = train_mod.train(cfg, tmp_path)
    assert seen["killed"] is not None
    assert out["status"] == "finished" and out["env_frames"] == 6400
    assert _records(tmp_path)[-1]["actor/restarts"] == 1
    assert "died (1/10)" in capfd.readouterr().err


def test_too_many_actor_deaths_stop_the_run_with_a_checkpoint(tmp_path, shared_ray, monkeypatch):
    _kill_after(monkeypatch, 2)
    cfg = load_config(CATCH, [*SMALL, "runner.max_env_restarts=0"])
    with pytest.raises(RuntimeError, match=r"died 1 times \(runner.max_env_restarts=0\)"):
        train_mod.train(cfg, tmp_path)
    _, manifest = CheckpointManager(tmp_path / "checkpoints").load_latest()
    assert manifest["env_frames"] > 0  # the crash path saved the learner


def test_a_ray_run_killed_whole_resumes_from_its_checkpoint(tmp_path):
    """SIGKILL of the whole run (the driver, the local Ray it started and its actors, as a machine losing power or
    an OOM kill of the process group would) leaves a run that `--resume` finishes from its last checkpoint."""
    import subprocess
    import time

    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "decoupled", "train", str(CATCH), "runner.total_env_frames=32000"]
    cmd += ["runner.checkpoint_every_env_frames=3200", "runner.log_every_env_frames=640"]
    cmd += ["runner.ray.object_store_mb=128"]
    run = subprocess.Popen([*cmd, "--run-dir", str(run_dir)], start_new_session=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        # a finished checkpoint, not the ckpt-*.tmp one being written (killing then leaves nothing to resume)
        while not [p for p in (run_dir / "checkpoints").glob("ckpt-*") if not p.name.endswith(".tmp")]:
            assert run.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.2)
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(60)
    killed_at = _records(run_dir)[-1]["env_frames"] if (run_dir / "metrics.jsonl").exists() else 0
    assert killed_at < 32000
    out = subprocess.run([*cmd[:4], "--resume", str(run_dir)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed" in out.stdout + out.stderr
    frames = [r["env_frames"] for r in _records(run_dir)]
    assert frames[-1] == 32000 and frames == sorted(frames)
    # the killed run's short link to its Ray dir (if its path needed one) went with the resume
    links = [p for p in Path("/tmp").glob("decoupled-ray-*") if p.is_symlink()]
    assert not [p for p in links if Path(os.readlink(p)) == run_dir / "ray"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def ray_cluster(short_dir):
    """A cluster started as a user starts one, `ray start --head`, in a process group of its own (killed at the
    end: `ray stop` would also stop the Ray of this test process). Its environment as docs/cluster.md says: a HOME
    with a local-provider bootstrap file (no cloud-metadata probe), no usage stats; token authentication off."""
    import socket
    import subprocess
    import time

    home = short_dir / "home"
    home.mkdir(exist_ok=True)
    (home / "ray_bootstrap_config.yaml").write_text("provider:\n  type: local\n")
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    port = _free_port()
    # the venv's own `ray` (the test command runs .venv/bin/pytest without the venv's bin on PATH)
    ray_bin = Path(sys.executable).with_name("ray")
    cmd = [str(ray_bin) if ray_bin.exists() else shutil.which("ray") or "ray", "start", "--head", "--block"]
    cmd += ["--port", str(port), "--num-cpus", "2"]
    cmd += ["--disable-usage-stats", "--include-dashboard=false", "--object-store-memory", str(100 * 2**20)]
    cmd += ["--temp-dir", str(short_dir / "cluster")]
    log = open(short_dir / "ray_start.log", "w")
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None, (short_dir / "ray_start.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "ray start --head did not listen within 120 s"
                time.sleep(0.5)
        yield port, env
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, signal.SIGKILL)
            head.wait(30)
        log.close()


def test_a_run_joins_a_cluster_started_with_ray_start(tmp_path, ray_cluster):
    """`runner.ray.address=HOST:PORT` (the path of a remote cluster) joins the cluster `ray start --head` runs; the
    run's actors are that cluster's processes, and the cluster keeps running after the run."""
    import subprocess

    port, env = ray_cluster
    run_dir = tmp_path / "joined"
    cmd = [sys.executable, "-m", "decoupled", "train", str(CATCH), *SMALL, f"runner.ray.address=127.0.0.1:{port}"]
    out = subprocess.run([*cmd, "--run-dir", str(run_dir)], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"on the Ray cluster at 127.0.0.1:{port}" in out.stdout
    assert _records(run_dir)[-1]["env_frames"] == 6400
    assert not (run_dir / "ray").exists()  # no Ray of the run's own
    settings = json.loads((run_dir / "env_settings.json").read_text())
    assert settings["devices"] == {"learner": "cpu", "actors": "cpu"}
    # the cluster is still up: a second run joins it too
    again = subprocess.run([*cmd, "--run-dir", str(tmp_path / "again")], env=env, capture_output=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]


def test_more_cpus_than_ray_has_fail_fast(tmp_path, shared_ray):
    cfg = load_config(CATCH, [*SMALL, "runner.ray.num_cpus_per_actor=32"])
    with pytest.raises(ConfigError, match=r"= 64 CPUs, but .* has 2: Ray would wait for them forever"):
        train_mod.train(cfg, tmp_path)


@pytest.mark.parametrize(
    "config, overrides",
    [
        ("impala/catch.yaml", ["agent.core=dni_lstm"]),  # a recurrent core with a learner hook of its own
        ("unreal/catch.yaml", []),  # replay on the learner's side
        ("feudal/catch.yaml", []),  # rollouts that overlap the previous one
        ("nav/nav_maze_small_static.yaml", ["env.num_envs=2"]),  # env extras (depth, positions) as aux targets
    ],
)
def test_recurrent_and_replay_agents_run_in_ray_mode(tmp_path, shared_ray, config, overrides):
    ray_mode = ["runner.mode=ray", "runner.num_actors=1", "runner.queue_size=1", "runner.total_env_frames=1920"]
    more = ["runner.log_every_env_frames=640", "runner.checkpoint_every_env_frames=100000"]
    cfg = load_config(ROOT / "configs" / config, ray_mode + more + overrides)
    out = train_mod.train(cfg, tmp_path)
    assert out["status"] == "finished" and out["env_frames"] >= 1920
    recs = _records(tmp_path)
    assert recs[-1]["actor/restarts"] == 0 and all(r["loss/total"] == r["loss/total"] for r in recs)


def test_agents_built_from_other_runs_run_in_ray_mode(tmp_path, shared_ray):
    """Progressive columns and distillation teachers are loaded inside each actor's process from their run dirs."""
    pytest.importorskip("minatar")
    small = [
        "runner.total_env_frames=400",
        "env.num_envs=4",
        "runner.unroll_length=10",
        "runner.log_every_env_frames=1",
    ]
    src = tmp_path / "src"
    train_mod.train(load_config(ROOT / "configs" / "impala" / "minatar_breakout.yaml", small), src)
    ray_mode = ["runner.mode=ray", "runner.num_actors=2", "runner.total_env_frames=800"]
    for config, key in [
        ("progressive/minatar_breakout_hflip.yaml", "columns"),
        ("distill/minatar_breakout.yaml", "teachers"),
    ]:
        cfg = load_config(ROOT / "configs" / config, [*small, *ray_mode, f"agent.{key}=[{src}]"])
        out = train_mod.train(cfg, tmp_path / key)
        assert out["status"] == "finished" and out["env_frames"] == 800, config
        assert _records(tmp_path / key)[-1]["actor/restarts"] == 0


@pytest.mark.learning
def test_ray_mode_learns_catch(tmp_path_factory, shared_ray):
    """catch_ray.yaml as shipped (2 Ray actors, 160k frames, a few minutes on 2 cores) solves Catch."""
    import numpy as np

    from decoupled.runners.evaluation.evaluate import load_policy, run_episodes

    run_dir = tmp_path_factory.mktemp("ray_learn")
    assert train_mod.train(load_config(CATCH), run_dir)["status"] == "finished"
    cfg, net, _ = load_policy(run_dir)
    scores = np.asarray(run_episodes(cfg, 200, seed=1000, net=net)["episode_scores"])
    assert scores.mean() >= 0.9, f"catch mean return {scores.mean():.3f} over 200 episodes (random: -0.6)"
