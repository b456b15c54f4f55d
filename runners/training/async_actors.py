"""Rollout sources for the training loop: serial (the actor runs when the learner asks) and async (actor threads
produce rollouts into a bounded queue while the learner consumes them).

In async mode each actor thread owns its envs and its own copy of the net. After every update the learner
publishes its parameters (`ParamSnapshot`, a CPU copy tagged with the policy version); an actor picks up the
newest one before each unroll, so a rollout is acted by one policy version and V-trace corrects the lag. What
crosses between the threads is the rollout message of `actor_learner` (numpy arrays plus the policy
version) and the parameter snapshot (a dict of tensors): the same two messages that Ray actors on other
machines would exchange. The queue is bounded (`runner.queue_size`), which bounds the policy lag.

Envpool and torch release the GIL while they work, so threads overlap env stepping, acting and learning.

An env that raises inside an actor thread does not stop training: the actor logs the error, closes its envs,
builds new ones (from a new seed) and starts new episodes; the learner goes on with the other rollouts. After
`max_env_restarts` such restarts the error reaches the learner, which checkpoints and stops as in serial mode.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from decoupled.envs.base import EnvCrashedError, VecEnv
from decoupled.runners.training.actor_learner import Actor


class ParamSnapshot:
    """The learner's newest parameters for the actors: a CPU copy of the state dict and its policy version."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict[str, torch.Tensor] | None = None
        self.version = -1

    def publish(self, net: torch.nn.Module, version: int) -> None:
        state = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
        with self._lock:
            self._state, self.version = state, version

    def pull(self, net: torch.nn.Module, have_version: int) -> int:
        """Load the newest parameters into `net` when they are newer than `have_version`; return its version."""
        with self._lock:
            state, version = self._state, self.version
        if state is None or version <= have_version:
            return have_version
        net.load_state_dict(state)
        return version


class RolloutPerf:
    """Where the actors' time went since the last metrics record, per agent step of an actor's batch (every env of
    the batch stepping once), for the perf/ metrics of each record:

    - `perf/actor_env_wait_ms`: waiting for the envs' steps (what the pipelining of env groups does not hide);
    - `perf/actor_act_ms`: the rest of an unroll: the net's forward pass, sampling, buffer writes, the rollout copy;
    - async only: `perf/actor_param_pull_ms` (loading the learner's newest parameters) and `perf/actor_queue_put_ms`
      (blocked on a full queue: the learner is the bottleneck);
    - `perf/process_cpu_share`: CPU seconds this process (and, in processes mode, its actor processes with their env
      worker processes) got per wall-clock second (up to the core count), and
      `perf/machine_load_1min`: the machine's 1-minute load average, ours included. A speed that falls while the
      load rises beyond our own threads while our CPU share falls is the machine being shared, not our code;
    - `perf/cpu_steal_fraction` (Linux): the share of the machine's CPU time the hypervisor gave to other virtual
      machines (`steal` in /proc/stat), which no load average inside this one shows: a speed that falls with the
      load steady and this rising is the host being shared.

    With several actor threads the times are summed over them and divided by their summed steps."""

    KEYS = ("unroll_s", "env_wait_s", "pull_s", "put_s", "steps", "cpu_s")  # cpu_s: of actors in other processes

    def __init__(self) -> None:
        self._last = self._now({k: 0.0 for k in self.KEYS})
        self._last_cpu_times = cpu_times()

    @staticmethod
    def _now(totals: dict[str, float]) -> dict[str, float]:
        return {"wall": time.perf_counter(), "cpu": time.process_time() + totals["cpu_s"], **totals}

    def metrics(self, timings: list[dict[str, float]], with_queue: bool) -> dict[str, float]:
        """`timings`: each actor's running totals of KEYS (a key it does not keep counts 0)."""
        now = self._now({k: sum(t.get(k, 0.0) for t in timings) for k in self.KEYS})
        d = {k: now[k] - self._last[k] for k in now}
        self._last = now
        out: dict[str, float] = {}
        if d["steps"] > 0:
            ms = 1000.0 / d["steps"]
            out["perf/actor_env_wait_ms"] = d["env_wait_s"] * ms
            out["perf/actor_act_ms"] = (d["unroll_s"] - d["env_wait_s"]) * ms
            if with_queue:
                out["perf/actor_param_pull_ms"] = d["pull_s"] * ms
                out["perf/actor_queue_put_ms"] = d["put_s"] * ms
        if d["wall"] > 0:
            out["perf/process_cpu_share"] = d["cpu"] / d["wall"]
        try:
            out["perf/machine_load_1min"] = os.getloadavg()[0]
        except OSError:  # not on this platform
            pass
        times, last = cpu_times(), self._last_cpu_times
        self._last_cpu_times = times
        if times is not None and last is not None and sum(times) > sum(last):
            out["perf/cpu_steal_fraction"] = (times[7] - last[7]) / (sum(times) - sum(last))
        return out


def cpu_times(stat: str = "/proc/stat") -> tuple[int, ...] | None:
    """The machine's CPU time so far in clock ticks, all cores: user, nice, system, idle, iowait, irq, softirq, steal
    (the first line of /proc/stat; guest time is inside user already), or None where there is no such file."""
    try:
        with open(stat) as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    return tuple(int(x) for x in fields[1:9])


class SerialRollouts:
    """The actor acts when the learner asks, with the learner's own net: deterministic, for tests and debugging."""

    mode = "serial"

    def __init__(self, actor: Actor, version: Callable[[], int], seed: int):
        self.actor, self._version, self.seed = actor, version, seed
        self.env_restarts = 0
        self._perf = RolloutPerf()

    def perf_metrics(self) -> dict[str, float]:
        """The perf/ metrics of RolloutPerf since the last call."""
        return self._perf.metrics([self.actor.timing], with_queue=False)

    def start(self, seed_offset: int = 0) -> None:
        """New episodes in every env (the alternative to restoring an actor snapshot)."""
        self.actor.start(self.seed + seed_offset)

    def next(self) -> dict[str, Any]:
        return self.actor.unroll(self._version())

    def check(self) -> None:
        pass

    def publish(self, net: torch.nn.Module, version: int) -> None:
        pass  # the actor acts with the learner's net itself

    def actor_state(self) -> dict[str, Any] | None:
        return self.actor.get_state()

    def close(self, timeout_s: float = 30.0) -> None:
        self.actor.close()  # in this thread: nothing to wait for


class ActorThread(threading.Thread):
    """Runs `actor.unroll` in a loop and puts the rollouts into `out`; restarts the envs after an env crash."""

    def __init__(
        self,
        actor_id: int,
        actor: Actor,
        make_envs: Callable[[int], list[VecEnv]],
        params: ParamSnapshot,
        out: queue.Queue,
        seed: int,
        max_env_restarts: int,
    ):
        super().__init__(name=f"actor-{actor_id}", daemon=True)
        self.actor_id, self.actor, self.make_envs = actor_id, actor, make_envs
        self.params, self.out, self.seed = params, out, seed
        self.max_env_restarts = max_env_restarts
        self.version = -1
        self.env_restarts = 0
        self.error: BaseException | None = None
        self.stop_event = threading.Event()
        self.pull_s = self.put_s = 0.0  # seconds loading parameters and blocked on a full queue (RolloutPerf)

    def run(self) -> None:
        try:
            if not self.actor.started:
                try:
                    self.actor.start(self.seed)
                except EnvCrashedError as exc:
                    self._restart_envs(exc)
            while not self.stop_event.is_set():
                t0 = time.perf_counter()
                self.version = self.params.pull(self.actor.net, self.version)
                self.pull_s += time.perf_counter() - t0
                try:
                    rollout = self.actor.unroll(self.version)
                except EnvCrashedError as exc:
                    self._restart_envs(exc)
                    continue
                rollout["actor_id"] = self.actor_id
                t0 = time.perf_counter()
                while not self.stop_event.is_set():
                    try:
                        self.out.put(rollout, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                self.put_s += time.perf_counter() - t0
        except BaseException as exc:  # noqa: BLE001 - handed to the learner thread, which raises it
            self.error = exc

    def _restart_envs(self, exc: BaseException) -> None:
        """Close the crashed envs, build new ones and start new episodes; a failure to do so counts as one more
        crash, within the same budget."""
        while True:
            self.env_restarts += 1
            if self.env_restarts > self.max_env_restarts:
                raise EnvCrashedError(
                    f"actor {self.actor_id}: its envs crashed {self.env_restarts} times (runner.max_env_restarts="
                    f"{self.max_env_restarts}); last error: {exc}"
                ) from exc
            seed = int(np.random.SeedSequence([self.seed, self.env_restarts]).generate_state(1)[0] & 0x3FFFFFFF)
            print(
                f"actor {self.actor_id}: env crash ({self.env_restarts}/{self.max_env_restarts}), rebuilding its "
                f"envs with seed {seed} and dropping the unfinished unroll:\n"
                + "".join(traceback.format_exception(exc)).rstrip(),
                file=sys.stderr,
                flush=True,
            )
            try:
                self.actor.close()
            except Exception as close_error:  # noqa: BLE001 - a crashed env may fail to close; build new ones anyway
                print(f"actor {self.actor_id}: closing the crashed envs failed: {close_error!r}", file=sys.stderr)
            self.actor.envs = []
            try:
                self.actor.envs = self.make_envs(seed)
                self.actor.start(seed)
                return
            except Exception as rebuild_error:  # noqa: BLE001 - counted and retried like the crash itself
                exc = rebuild_error


class AsyncRollouts:
    """Actor threads feeding a bounded queue; `next()` returns the oldest rollout and raises an actor's error."""

    mode = "async"

    def __init__(
        self,
        actors: list[Actor],
        make_envs: Callable[[int, int], list[VecEnv]],
        seeds: list[int],
        queue_size: int,
        max_env_restarts: int,
    ):
        self.params = ParamSnapshot()
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.threads = [
            ActorThread(
                i,
                actor,
                lambda seed, i=i: make_envs(i, seed),
                self.params,
                self.queue,
                seeds[i],
                max_env_restarts,
            )
            for i, actor in enumerate(actors)
        ]
        self.started = False
        self._perf = RolloutPerf()

    def perf_metrics(self) -> dict[str, float]:
        """The perf/ metrics of RolloutPerf since the last call, over every actor thread."""
        timings = [{**t.actor.timing, "pull_s": t.pull_s, "put_s": t.put_s} for t in self.threads]
        return self._perf.metrics(timings, with_queue=True)

    def start(self, seed_offset: int = 0) -> None:
        """The actors start new episodes (each in its own thread, once the first parameters are published)."""
        for t in self.threads:
            t.seed += seed_offset

    @property
    def env_restarts(self) -> int:
        return sum(t.env_restarts for t in self.threads)

    def publish(self, net: torch.nn.Module, version: int) -> None:
        self.params.publish(net, version)
        if not self.started:  # the actors start with the learner's first parameters
            self.started = True
            for t in self.threads:
                t.start()

    def check(self) -> None:
        """Raise the error of an actor thread that failed (every actor must be alive while training goes on)."""
        for t in self.threads:
            if t.error is not None:
                raise RuntimeError(f"actor thread {t.actor_id} failed: {t.error!r}") from t.error
            if self.started and not t.is_alive():
                raise RuntimeError(f"actor thread {t.actor_id} stopped without an error")

    def next(self) -> dict[str, Any]:
        if not self.started:
            raise RuntimeError("publish the learner's parameters before asking for rollouts")
        while True:
            self.check()  # before every get: with several actors the queue is rarely empty
            try:
                return self.queue.get(timeout=0.25)
            except queue.Empty:
                pass

    def actor_state(self) -> None:
        return None  # rollouts in flight cannot be snapshotted: a resume starts new episodes

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the actor threads and close each one's current envs (the ones it built after a crash included).
        The envs of a thread that does not stop in time are left open: it may still be stepping them."""
        for t in self.threads:
            t.stop_event.set()
        deadline = time.time() + timeout_s
        for t in self.threads:
            while t.is_alive() and time.time() < deadline:
                try:  # make room for a blocked put
                    self.queue.get_nowait()
                except queue.Empty:
                    pass
                t.join(timeout=0.05)
            if t.is_alive():
                print(
                    f"actor thread {t.actor_id} did not stop within {timeout_s:.0f} s; leaving its envs open",
                    file=sys.stderr,
                )
            else:
                t.actor.close()
