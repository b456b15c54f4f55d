"""A hung env cannot hang a run.

`decoupled train` runs as a user runs it, on a user's gymnasium env (`module:Id`, stepped in-process by the gym
backend) whose `step()` never returns once the process has taken `HANG_AFTER` env steps. `HANG_MODE=c` blocks
SIGINT/SIGTERM in the stepping thread before it sleeps, as a step stuck in C code that never returns to the
interpreter does (Python's signal handlers cannot run there); `py` sleeps where they still run; `slow` makes every
later step take 2 s (a run that still trains, slowly). Each run checkpoints every 40 env frames (4 updates), so it
hangs at 150 env frames with its last periodic checkpoint at 120.

* the watchdog (`runner.env_step_timeout_s`) turns the hung step into a failure: checkpoint, message, non-zero exit;
* one SIGTERM to a hung run stops it once the step has run 10 s (not the step timeout's 60 s), with a checkpoint;
* a second SIGTERM stops a hung run at once (exit 143, no traceback), the last checkpoint intact;
* a second SIGINT stops a run mid-rollout at once (exit 130, no traceback);
* `runner.max_wall_seconds` fires while the env hangs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from decoupled.runners.training.checkpoint import CheckpointManager

HANG_ENV = """
import os
import signal
import time

import gymnasium as gym
import numpy as np

_steps = 0  # env steps this process took, over every copy


class Hang(gym.Env):
    observation_space = gym.spaces.Box(0.0, 1.0, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.eye(4, dtype=np.float32)[0], {}

    def step(self, action):
        global _steps
        _steps += 1
        after = int(os.environ.get("HANG_AFTER", "0"))
        if after and _steps > after:
            mode = os.environ["HANG_MODE"]
            if not os.path.exists(os.environ["HANG_MARK"]):
                open(os.environ["HANG_MARK"], "w").close()
            if mode == "slow":
                time.sleep(2.0)
            else:
                if mode == "c":  # as C code that never returns: Python's signal handlers cannot run in this thread
                    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
                while True:
                    time.sleep(3600)
        self.t += 1
        return np.eye(4, dtype=np.float32)[self.t % 4], float(action), False, self.t >= 10, {}


gym.register("Hang-v0", entry_point=Hang)
"""

BASE = [
    "impala/cartpole", "env.backend=gym", "env.id=hang_env:Hang-v0", "env.num_envs=2", "runner.unroll_length=5",
    "runner.total_env_frames=1000000", "runner.log_every_env_frames=20", "runner.checkpoint_every_env_frames=40",
    "runner.torch_threads=1",
]  # fmt: skip
HANG_AT = 150  # env frames when the 151st env step hangs: 15 updates of 5 steps x 2 envs
LAST_PERIODIC = 120


class Run:
    """One `decoupled train` process in its own session (so that a test can kill it and its children)."""

    def __init__(self, tmp_path: Path, *args: str, hang_after: int = 0, mode: str = "c", wandb: str = "disabled"):
        (tmp_path / "hang_env.py").write_text(HANG_ENV)
        self.run_dir, self.mark = tmp_path / "run", tmp_path / f"hung-{time.monotonic_ns()}"
        env = dict(os.environ, PYTHONPATH=str(tmp_path), WANDB_MODE=wandb)
        env.update(HANG_AFTER=str(hang_after), HANG_MODE=mode, HANG_MARK=str(self.mark))
        self.out, self.err = tmp_path / f"{self.mark.name}.out", tmp_path / f"{self.mark.name}.err"
        cmd = [sys.executable, "-m", "decoupled", "train", *args]
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=err, start_new_session=True)

    @property
    def output(self) -> str:
        return f"--- stdout\n{self.out.read_text()[-4000:]}\n--- stderr\n{self.err.read_text()[-4000:]}"

    def wait_for_hang(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.mark.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"the run never reached the hanging step (exit code {self.proc.returncode})\n{self.output}")
            time.sleep(0.05)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the run did not exit within {timeout:.0f} s\n{self.output}")

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)

    def latest(self) -> tuple[dict, dict]:
        restored = CheckpointManager(self.run_dir / "checkpoints").load_latest()
        assert restored is not None, self.output
        return restored


@pytest.fixture
def runs():
    started: list[Run] = []
    yield started
    for r in started:
        if r.proc.poll() is None:
            r.kill()


def test_a_hung_env_step_is_checkpointed_and_stopped_by_the_watchdog_then_resumes(tmp_path, runs):
    run = Run(tmp_path, *BASE, "runner.env_step_timeout_s=2", "--run-dir", "run", hang_after=HANG_AT)
    runs.append(run)
    run.wait_for_hang()
    t0 = time.monotonic()
    code = run.wait(timeout=60)
    took = time.monotonic() - t0
    assert code not in (0, 2) and code > 0, (code, run.output)
    assert took < 30, (took, run.output)
    err = run.err.read_text()
    assert "env step hung" in err and "hang_env:Hang-v0" in err, run.output
    assert "env index" in err and "decoupled train --resume" in err and "Traceback" not in err, run.output
    state, manifest = run.latest()  # the learner as of its last update, written by the watchdog; no actor state
    assert manifest["env_frames"] == HANG_AT and state["actor"] is None, run.output
    assert json.loads((run.run_dir / "summary.json").read_text())["status"] == "env_hung"

    resumed = Run(tmp_path, "--resume", "run", f"runner.total_env_frames={HANG_AT + 50}")  # the env no longer hangs
    runs.append(resumed)
    assert resumed.wait(timeout=120) == 0, resumed.output
    assert f"resumed {run.run_dir}" in resumed.out.read_text() or "resumed run" in resumed.out.read_text()
    assert resumed.latest()[1]["env_frames"] == HANG_AT + 50


def test_one_sigterm_to_a_hung_run_stops_it_with_a_checkpoint_without_waiting_for_the_step_timeout(tmp_path, runs):
    # the step timeout stays at its default (60 s): once a stop was asked for, the run waits 10 s for a step
    run = Run(tmp_path, *BASE, "--run-dir", "run", hang_after=HANG_AT, mode="py")
    runs.append(run)
    run.wait_for_hang()
    run.proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    code = run.wait(timeout=40)
    took = time.monotonic() - t0
    assert code == 0 and took < 30, (code, took, run.output)  # the stop asked for, with the learner's checkpoint
    out = run.out.read_text() + run.err.read_text()
    assert "stopping after this update" in out and "Traceback" not in out, run.output
    assert "stop requested, but an env step has run for 10 s in hang_env:Hang-v0" in out, run.output
    state, manifest = run.latest()
    assert manifest["env_frames"] == HANG_AT and state["actor"] is None, run.output
    assert json.loads((run.run_dir / "summary.json").read_text())["status"] == "stopped", run.output


def test_a_second_sigterm_stops_a_run_whose_env_hangs_in_c_code(tmp_path, runs):
    run = Run(tmp_path, *BASE, "--run-dir", "run", hang_after=HANG_AT, mode="c", wandb="offline")
    runs.append(run)
    run.wait_for_hang()
    time.sleep(0.5)
    run.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    run.proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    code = run.wait(timeout=20)
    took = time.monotonic() - t0
    assert code == 128 + signal.SIGTERM, (code, run.output)
    assert took < 10, (took, run.output)
    out = run.out.read_text() + run.err.read_text()
    assert "Traceback" not in out, run.output
    assert "second SIGTERM: stopping now" in out and "decoupled train --resume" in out, run.output
    _, manifest = run.latest()  # the last periodic checkpoint, intact
    assert manifest["env_frames"] == LAST_PERIODIC, run.output
    assert json.loads((run.run_dir / "summary.json").read_text())["status"] == "stopped", run.output


def test_a_second_sigint_stops_a_slow_run_mid_rollout_without_a_traceback(tmp_path, runs):
    run = Run(tmp_path, *BASE, "--run-dir", "run", hang_after=HANG_AT, mode="slow")
    runs.append(run)
    run.wait_for_hang()  # from here every env step takes 2 s: the rollout in flight lasts about 10 s more
    run.proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    run.proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    code = run.wait(timeout=20)
    took = time.monotonic() - t0
    assert code == 128 + signal.SIGINT, (code, run.output)
    assert took < 10, (took, run.output)
    out = run.out.read_text() + run.err.read_text()
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, run.output
    assert "stopping after this update" in out and "second SIGINT: stopping now" in out, run.output
    _, manifest = run.latest()
    assert manifest["env_frames"] == LAST_PERIODIC, run.output


def test_max_wall_seconds_fires_while_the_env_hangs(tmp_path, runs):
    # the step watchdog keeps its default (60 s): the wall-clock limit (6 s, plus 2 s of grace) comes first
    run = Run(tmp_path, *BASE, "runner.max_wall_seconds=6", "--run-dir", "run", hang_after=HANG_AT, mode="c")
    runs.append(run)
    run.wait_for_hang()
    code = run.wait(timeout=60)
    assert code == 0, (code, run.output)
    err = run.err.read_text()
    assert "runner.max_wall_seconds" in err and "decoupled train --resume" in err, run.output
    state, manifest = run.latest()
    assert manifest["env_frames"] == HANG_AT and state["counters"]["wall_time"] >= 6, run.output
    assert json.loads((run.run_dir / "summary.json").read_text())["status"] == "time_limit", run.output


def test_a_second_sigterm_during_an_update_stops_at_its_end_without_a_checkpoint(tmp_path, monkeypatch, capsys):
    """In-process: the second signal lands inside an update (no `StopNow` is raised there); the loop ends the update,
    writes no checkpoint from it, and leaves `train` with exit code 143. The handlers are the caller's again."""
    from decoupled.runners.training import train as train_mod
    from decoupled.runners.training.config import load_config

    real = train_mod.Learner.step
    calls = {"n": 0}

    def step(self, rollout):
        calls["n"] += 1
        if calls["n"] == 14:  # two SIGTERMs, both handled inside this update
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, rollout)

    monkeypatch.setattr(train_mod.Learner, "step", step)
    before = signal.getsignal(signal.SIGTERM)
    catch = Path(__file__).resolve().parents[2] / "configs" / "impala" / "catch.yaml"
    small = ["env.num_envs=4", "runner.total_env_frames=9600", "runner.checkpoint_every_env_frames=800"]
    cfg = load_config(catch, [*small, "wandb.mode=disabled", "logger.tensorboard=false"])
    with pytest.raises(SystemExit) as stopped:
        train_mod.train(cfg, tmp_path)
    assert stopped.value.code == 128 + signal.SIGTERM and calls["n"] == 14
    assert "second SIGTERM: stopping now; the last checkpoint is" in capsys.readouterr().err
    _, manifest = CheckpointManager(tmp_path / "checkpoints").load_latest()
    assert manifest["env_frames"] == 800  # 4 envs x 20 steps x 10 updates: the periodic one, nothing newer
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "stopped"
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_worker_process_env_that_hangs_is_restarted_after_the_configured_timeout():
    """Envs in worker processes bound their own steps: `runner.env_step_timeout_s` sets the bound (the watchdog leaves
    them to it), and a worker that does not answer within it (stopped here) is killed and restarted."""
    import numpy as np

    from decoupled.envs.subproc import ProcessVecEnv
    from decoupled.runners.training.watchdog import set_step_timeout, watches_itself

    env = ProcessVecEnv("gymnasium:make", 2, seed=0, kwargs={"id": "CartPole-v1"}, channels_first=False)
    try:
        set_step_timeout(env, 1.0)
        assert env.step_timeout_s == 1.0 and watches_itself(env)
        env.reset()
        stuck = env.worker_pid(1)
        os.kill(stuck, signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.warns(UserWarning, match=r"env index 1 \(seed 1\) did not answer step within 1s"):
            _, _, _, truncated, info = env.step(np.zeros(2, np.int64))
        assert time.monotonic() - t0 < 30
        assert truncated[1] and info["restarted"][1] and env.worker_pid(1) != stuck
        env.step(np.zeros(2, np.int64))  # the new worker steps
    finally:
        env.close()
