"""Rollouts from actor processes on this machine (`runner.mode: processes`), handed over in shared memory.

Sample Factory's layout (Petrenko et al. 2020, "Sample Factory: Egocentric 3D Control from Pixels at 100000 FPS with
Asynchronous Reinforcement Learning"): each actor is a process of its own, with its envs, a CPU copy of the net and
its own Python interpreter, so acting (env stepping, inference and the Python between them) never waits for the
learner's interpreter lock, and each process can run single-threaded torch: no OpenMP team whose one descheduled
thread stalls the others when the machine is shared.

What crosses the process boundary, and how:

- **rollouts**: each actor owns `runner.queue_size + 2` rollout slots in shared memory (`multiprocessing.
  shared_memory`, allocated by the learner from `actor_learner.rollout_layout`): one being acted into, up to
  `queue_size` waiting for the learner, one the learner trains on. At the end of an unroll the actor copies its
  buffer into a free slot (`Actor.unroll(into=...)`, the one copy an actor thread makes too) and sends only the
  slot's index and the small rest of the message (policy version, core state at slot 0, finished episodes,
  timings) through its pipe: no pickling of arrays. A learner batch is `runner.num_actors` rollouts side by side
  (env.num_envs columns whatever the actor count, as IMPALA batches several actors' unrolls); with one actor it is
  the slot's memory itself, no copy. The slots go back to their actors when the learner asks for the next batch.
- **parameters**: one shared tensor per state-dict entry and the policy version, written by the learner after every
  update and read by an actor before each rollout when a newer version is there, under a sequence lock (never half
  of two versions, and no lock an actor could die holding). A rollout is acted by one version, so V-trace corrects
  the lag as in async mode.

Each actor is a `ray_actors.RolloutWorker` (built in its process from the run's config, as a Ray actor is), with
`runner.actor_threads` torch threads, in a session of its own (a terminal's Ctrl-C or a SIGTERM to the run's process
group reaches the learner, which stops the actors). The layout is TorchBeast's (monobeast: actor processes with a
CPU copy of the net each, shared rollout buffers) with Sample Factory's single-threaded processes; Sample Factory's
separate policy workers (batched inference for many env workers) are not copied.

Faults: an env that raises is rebuilt inside the actor (`actor/env_restarts`); an actor process that dies (killed,
out of memory, a segfault in an env) or sends nothing for ROLLOUT_TIMEOUT_S is replaced by a new process with new
episodes (`actor/restarts`); after `runner.max_env_restarts` deaths of one actor the run stops with an error, which
the training loop turns into a checkpoint to resume from. A Python error inside an actor stops the run with that
actor's traceback, also one sent after the learner's last batch (`check()` at the run's end). An actor whose learner
is gone (killed with SIGKILL) ends at its next rollout, when its pipe is found closed; its envs' step timeout is its
own (`env_step_timeout_s` for envs in worker processes), the learner's env-step watchdog does not see it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import traceback
from multiprocessing import shared_memory
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np
import psutil
import torch

from decoupled.runners.training.async_actors import RolloutPerf
from decoupled.runners.training.ray_actors import ROLLOUT_TIMEOUT_S, ActorProcessCounts, _derived_seed


class SharedParams:
    """The learner's newest parameters in shared memory: a tensor per state-dict entry and the policy version, under a
    sequence lock (no lock an actor could die holding): the learner makes the sequence odd, writes, makes it even; an
    actor copies and keeps the copy only when the sequence was even and unchanged across it (else copies again)."""

    def __init__(self, net: torch.nn.Module, ctx: Any):
        self.tensors = {k: v.detach().to("cpu", copy=True).share_memory_() for k, v in net.state_dict().items()}
        self.version = ctx.Value("q", -1, lock=False)
        self.seq = ctx.Value("q", 0, lock=False)

    def publish(self, net: torch.nn.Module, version: int) -> None:
        self.seq.value += 1  # odd: being written
        with torch.no_grad():
            for k, v in net.state_dict().items():
                self.tensors[k].copy_(v)
        self.version.value = version
        self.seq.value += 1  # even: whole

    def pull(self, net: torch.nn.Module, have_version: int) -> int:
        """Load the newest parameters into `net` when they are newer than `have_version`; return its version."""
        while True:
            before = self.seq.value
            version = int(self.version.value)
            if before % 2 == 0 and version <= have_version:
                return have_version
            if before % 2 == 0:
                net.load_state_dict(self.tensors)
                if self.seq.value == before:
                    return version
            time.sleep(0.0005)  # the learner is writing: copy again once it is done


class RolloutSlots:
    """`count` rollout slots of `layout` (key -> (shape, dtype)) in one shared-memory block: created by the learner,
    attached by name in the actor process."""

    def __init__(self, layout: dict[str, tuple[tuple, Any]], count: int, name: str | None = None):
        offsets, size = {}, 0
        for key, (shape, dtype) in layout.items():
            size = (size + 63) // 64 * 64  # each array 64-byte aligned
            offsets[key] = size
            size += int(np.prod(shape)) * np.dtype(dtype).itemsize
        self.slot_bytes = (size + 63) // 64 * 64
        self.owner = name is None
        if self.owner:
            _check_room(self.slot_bytes * count)
            self.shm = shared_memory.SharedMemory(create=True, size=max(1, self.slot_bytes * count))
        else:
            self.shm = _attach(name)
        self.slots = [
            {
                key: np.ndarray(shape, np.dtype(dtype), self.shm.buf, i * self.slot_bytes + offsets[key])
                for key, (shape, dtype) in layout.items()
            }
            for i in range(count)
        ]

    @property
    def name(self) -> str:
        return self.shm.name

    def close(self) -> None:
        self.slots = []
        with contextlib.suppress(Exception):
            self.shm.close()
        if self.owner:
            with contextlib.suppress(FileNotFoundError):
                self.shm.unlink()


def _check_room(nbytes: int, where: str = "/dev/shm") -> None:
    """Shared memory is only reserved when created; an actor writing past what `where` has left dies of SIGBUS. Say
    so before anything starts instead."""
    try:
        st = os.statvfs(where)
    except OSError:  # not Linux: nothing to check
        return
    free = st.f_bavail * st.f_frsize
    if nbytes > free:
        raise MemoryError(
            f"processes mode needs {nbytes / 2**20:.0f} MB of shared memory for an actor's rollout slots, and {where} "
            f"has {free / 2**20:.0f} MB free: lower runner.queue_size or env.num_envs, use runner.mode=async, or give "
            "the machine more shared memory (Docker: --shm-size=2g)"
        )


def _attach(name: str) -> shared_memory.SharedMemory:
    """Attach to the learner's block without registering it with a resource tracker a second time (Python < 3.13
    registers every attach; the learner, which created it, unlinks it)."""
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, track=False)  # type: ignore[call-arg]
    from multiprocessing import resource_tracker

    register = resource_tracker.register
    resource_tracker.register = lambda *args, **kwargs: None  # type: ignore[assignment]
    try:
        return shared_memory.SharedMemory(name=name)
    finally:
        resource_tracker.register = register  # type: ignore[assignment]


def _actor_main(
    config: dict[str, Any],
    actor_id: int,
    seed: int,
    resume: bool,
    num_threads: int,
    params: SharedParams,
    slots_name: str,
    layout: dict[str, tuple[tuple, Any]],
    num_slots: int,
    conn: Connection,
) -> None:
    """An actor process: act rollouts into free slots until told to stop (None) or the learner's pipe closes."""
    # a session of its own: Ctrl-C in a terminal and a SIGTERM to the run's process group are the learner's to
    # handle (it stops the actors and writes its checkpoint); a learner that is gone closes this actor's pipe
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    slots = None
    worker = None
    try:
        from decoupled.runners.training.ray_actors import RolloutWorker

        worker = RolloutWorker(config, actor_id, seed, resume, num_threads)
        slots = RolloutSlots(layout, num_slots, name=slots_name)
        free = list(range(num_slots))
        totals = {"pull_s": 0.0, "put_s": 0.0}
        conn.send(("ready", os.getpid()))
        while True:
            while conn.poll() or not free:  # slots the learner gave back; wait for one when none is free
                blocked, t0 = not free, time.perf_counter()
                msg = conn.recv()
                if blocked:  # every slot full: the learner is the bottleneck
                    totals["put_s"] += time.perf_counter() - t0
                if msg is None:
                    return
                free.append(msg)
            t0 = time.perf_counter()
            worker.version = params.pull(worker.net, worker.version)
            totals["pull_s"] += time.perf_counter() - t0
            slot = free.pop(0)
            out = worker.rollout(None, worker.version, into=slots.slots[slot])
            del out["data"]  # in the slot
            out["perf"] = {**worker.actor.timing, **totals}
            conn.send(("rollout", slot, out))
    except (EOFError, BrokenPipeError):  # the learner is gone
        return
    except BaseException:  # noqa: BLE001 - the learner raises it with this traceback
        with contextlib.suppress(Exception):
            conn.send(("error", traceback.format_exc()))
    finally:
        if slots is not None:
            slots.close()
        if worker is not None:
            with contextlib.suppress(Exception):
                worker.close()


def _side_by_side(rollouts: list[dict[str, Any]]) -> dict[str, Any]:
    """Rollouts of several actors as one: their columns side by side (a copy), their core states likewise, every
    finished episode, the oldest policy version that acted (the lag the learner reports)."""
    if len(rollouts) == 1:
        return rollouts[0]
    first = rollouts[0]
    return {
        "data": {k: np.concatenate([r["data"][k] for r in rollouts], axis=1) for k in first["data"]},
        "initial_state": [np.concatenate(parts, axis=0) for parts in zip(*(r["initial_state"] for r in rollouts))],
        "policy_version": min(int(r["policy_version"]) for r in rollouts),
        "episodes": {k: [x for r in rollouts for x in r["episodes"][k]] for k in first["episodes"]},
        "overlap": first.get("overlap", 0),
        "actor_id": first["actor_id"],
        "actor_ids": [r["actor_id"] for r in rollouts],
    }


class ProcessRollouts(ActorProcessCounts):
    """Actor processes feeding the learner through shared memory: the interface of `AsyncRollouts` (start, publish,
    next, check, actor_state, env_restarts, close). The processes start with the learner's first parameters.
    `layout`: one actor's rollout arrays (`actor_learner.rollout_layout` for its share of the envs)."""

    mode = "processes"
    threads: list = []  # no actor runs in this process: the env-step watchdog has nothing to watch here

    def __init__(self, cfg: Any, seeds: list[int], layout: dict[str, tuple[tuple, Any]], resume: bool = False):
        r = cfg.runner
        self.config, self.seeds, self.resume = cfg.to_dict(), list(seeds), resume
        self.num_actors, self.max_restarts = r.actor_count, r.max_env_restarts
        self._init_counts(self.num_actors)
        self.num_threads = r.actor_threads
        self.num_slots = r.queue_size + 2  # acting, waiting (queue_size), held by the learner
        self.layout = layout
        self.ctx = torch.multiprocessing.get_context("spawn")
        self.params: SharedParams | None = None
        self.slots: list[RolloutSlots] = []
        try:
            for _ in range(self.num_actors):
                self.slots.append(RolloutSlots(layout, self.num_slots))
        except BaseException:
            for made in self.slots:
                made.close()
            raise
        self.procs: list[Any] = [None] * self.num_actors
        self.conns: list[Connection | None] = [None] * self.num_actors
        self.heard_from = [time.monotonic()] * self.num_actors
        self.started = False
        self._held: list[tuple[int, int, dict]] = []  # (actor, slot, message) of the batch being built or trained on
        self._next_actor = 0  # round robin over actors with a message ready
        self._inbox: list[tuple[int, tuple]] = []  # (actor, message) read ahead by check()
        self._timing_done = [dict.fromkeys(RolloutPerf.KEYS, 0.0) for _ in range(self.num_actors)]
        self._timing_now = [dict.fromkeys(RolloutPerf.KEYS, 0.0) for _ in range(self.num_actors)]
        self._perf = RolloutPerf()
        self._cpu_seen: dict[int, tuple[psutil.Process, float]] = {}  # pid: (process, CPU seconds last read)
        self._cpu_ended = 0.0  # CPU seconds of processes that are gone, as last read

    # -------------------------------------------------------------------------------------------- the interface
    def publish(self, net: torch.nn.Module, version: int) -> None:
        if self.params is None:
            self.params = SharedParams(net, self.ctx)
        self.params.publish(net, version)
        if not self.started:
            self.started = True
            for i in range(self.num_actors):
                self._spawn(i, self.seeds[i] + self.seed_offset)

    def _spawn(self, i: int, seed: int) -> None:
        ours, theirs = self.ctx.Pipe(duplex=True)
        args = (self.config, i, seed, self.resume, self.num_threads, self.params)
        args += (self.slots[i].name, self.layout, self.num_slots, theirs)
        # not a daemon: an actor may start env worker processes of its own (the 3D labyrinth); it ends when the learner
        # tells it to or its pipe to the learner closes
        proc = self.ctx.Process(target=_actor_main, args=args, name=f"decoupled-actor-{i}", daemon=False)
        proc.start()
        theirs.close()
        self.procs[i], self.conns[i] = proc, ours
        self.heard_from[i] = time.monotonic()

    def check(self) -> None:
        """Raise the error of an actor process that failed after the learner's last batch (the training loop asks at
        its end, as it does of actor threads); during training next() raises it. Rollouts read here wait for next()."""
        for i, conn in enumerate(self.conns):
            if conn is None:
                continue
            with contextlib.suppress(EOFError, OSError):  # an ended process: next() replaces it
                while conn.poll():
                    msg = conn.recv()
                    if msg[0] == "error":
                        raise RuntimeError(f"actor process {i} failed:\n{msg[1]}")
                    self._inbox.append((i, msg))

    def next(self) -> dict[str, Any]:
        """The next learner batch: `runner.num_actors` rollouts (whichever arrive first) side by side, env.num_envs
        columns whatever the actor count, as a batch of several actors' unrolls in IMPALA. With one actor the batch
        is the slot itself (no copy); its slots go back to the actors at the next call."""
        if not self.started:
            raise RuntimeError("publish the learner's parameters before asking for rollouts")
        self._release()
        while len(self._held) < self.num_actors:
            self._held.append(self._receive())
        return _side_by_side([out for _, _, out in self._held])

    def _receive(self) -> tuple[int, int, dict[str, Any]]:
        """(actor, slot, message) of the next rollout an actor finished; dead and hung actors are replaced."""
        while self._inbox:  # read ahead by check()
            i, msg = self._inbox.pop(0)
            if msg[0] == "rollout":
                return self._accept(i, msg)
        while True:
            ready = wait([c for c in self.conns if c is not None], timeout=0.25)
            order = [(self._next_actor + k) % self.num_actors for k in range(self.num_actors)]
            for i in order:
                conn = self.conns[i]
                if conn is None or conn not in ready:
                    continue
                try:
                    msg = conn.recv()
                except (EOFError, OSError) as exc:
                    self._replace(i, f"its process ended ({self._exit_reason(i)}): {exc!r}")
                    continue
                self.heard_from[i] = time.monotonic()
                if msg[0] == "error":
                    raise RuntimeError(f"actor process {i} failed:\n{msg[1]}")
                if msg[0] == "ready":
                    continue
                return self._accept(i, msg)
            now = time.monotonic()
            for i, proc in enumerate(self.procs):
                if proc is not None and not proc.is_alive() and self.conns[i] not in ready:
                    self._replace(i, f"its process ended ({self._exit_reason(i)})")
                elif now - self.heard_from[i] > ROLLOUT_TIMEOUT_S:
                    self._replace(i, f"it sent nothing for {ROLLOUT_TIMEOUT_S:.0f} s (a hung env?)")

    def _accept(self, i: int, msg: tuple) -> tuple[int, int, dict[str, Any]]:
        _, slot, out = msg
        self._account(i, out)
        out["data"] = self.slots[i].slots[slot]
        self._next_actor = (i + 1) % self.num_actors
        return i, slot, out

    def _release(self) -> None:
        """Give the slots of the learner's previous batch back to their actors."""
        held, self._held = self._held, []
        for i, slot, _ in held:
            conn = self.conns[i]
            if conn is not None:
                with contextlib.suppress(OSError):  # a dead actor: its replacement starts with every slot free
                    conn.send(slot)

    def _account(self, i: int, out: dict[str, Any]) -> None:
        perf = out.pop("perf", {})
        self._timing_now[i] = {k: perf.get(k, 0.0) for k in RolloutPerf.KEYS}
        self._env_restarts_now[i] = out.pop("env_restarts", 0)
        out.pop("actor_pid", None)

    def _exit_reason(self, i: int) -> str:
        proc = self.procs[i]
        if proc is not None:
            proc.join(timeout=1.0)  # its pipe can close a moment before its exit code is there
        code = None if proc is None else proc.exitcode
        if code is not None and code < 0:
            return f"killed by signal {-code}"
        return f"exit code {code}"

    def _replace(self, i: int, why: str) -> None:
        """Actor i is dead or hung: a new process with new episodes, or the run's end after too many deaths."""
        self.deaths[i] += 1
        self._stop_process(i, timeout_s=0.0)
        # rollouts of it collected for the batch being built: its new process starts with every slot free and may
        # write them before the learner reads them, so they are dropped
        self._held = [h for h in self._held if h[0] != i]
        self._inbox = [m for m in self._inbox if m[0] != i]
        self._process_ended(i)
        self._timing_done[i] = {k: self._timing_done[i][k] + self._timing_now[i][k] for k in RolloutPerf.KEYS}
        self._timing_now[i] = dict.fromkeys(RolloutPerf.KEYS, 0.0)
        if self.deaths[i] > self.max_restarts:
            raise RuntimeError(
                f"actor process {i} died {self.deaths[i]} times (runner.max_env_restarts={self.max_restarts}); "
                f"last: {why}"
            )
        seed = _derived_seed(self.seeds[i] + self.seed_offset, 1_000_003 * self.deaths[i])
        print(
            f"actor process {i}: {why}; starting a new one with new episodes (seed {seed}; death "
            f"{self.deaths[i]}/{self.max_restarts})",
            file=sys.stderr,
            flush=True,
        )
        self._spawn(i, seed)

    def perf_metrics(self) -> dict[str, float]:
        """The perf/ metrics of RolloutPerf since the last call, over every actor process (their CPU time
        included in `perf/process_cpu_share`)."""
        timings = [
            {k: done[k] + now[k] for k in RolloutPerf.KEYS}
            for done, now in zip(self._timing_done, self._timing_now, strict=True)
        ]
        return self._perf.metrics([*timings, {"cpu_s": self.actor_cpu_seconds()}], with_queue=True)

    def actor_cpu_seconds(self) -> float:
        """CPU seconds the actor processes and their children (env worker processes) have used, read now from the
        OS (so the learner's CPU share covers the same wall-clock window for every process; a time an actor sent with
        its last rollout would lag by up to an unroll). A process that ended counts with its last reading."""
        live: dict[int, tuple[psutil.Process, float]] = {}
        for proc in self.procs:
            if proc is None or proc.pid is None:
                continue
            try:
                top = psutil.Process(proc.pid)
                family = [top, *top.children(recursive=True)]
            except psutil.Error:  # gone since the last look
                continue
            for p in family:
                seen = self._cpu_seen.get(p.pid)
                p = seen[0] if seen is not None else p  # the object read before: psutil then notices a reused pid
                try:
                    t = p.cpu_times()
                    live[p.pid] = (p, t.user + t.system)
                except psutil.Error:
                    pass
        for pid, (_, seconds) in self._cpu_seen.items():
            if pid not in live:
                self._cpu_ended += seconds
        self._cpu_seen = live
        return self._cpu_ended + sum(seconds for _, seconds in live.values())

    def actor_state(self) -> None:
        return None  # episodes in other processes are not snapshotted: a resume starts new episodes

    def _stop_process(self, i: int, timeout_s: float) -> None:
        proc, conn = self.procs[i], self.conns[i]
        self.procs[i] = self.conns[i] = None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.send(None)
        if proc is not None:
            proc.join(timeout=timeout_s)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5.0)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5.0)
        if conn is not None:
            conn.close()
        if proc is not None and proc.is_alive():  # a replacement would share its slots with it
            raise RuntimeError(f"actor process {i} (pid {proc.pid}) did not end after SIGKILL")

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the actor processes (each closes its envs), then free the shared memory."""
        for i in range(self.num_actors):
            conn = self.conns[i]
            if conn is not None:
                with contextlib.suppress(OSError):
                    conn.send(None)
        deadline = time.monotonic() + timeout_s
        for i in range(self.num_actors):
            try:
                self._stop_process(i, timeout_s=max(0.0, deadline - time.monotonic()))
            except RuntimeError as e:  # stuck in the kernel (e.g. a hung device): nothing more to do from here
                print(f"{e}; leaving it", file=sys.stderr, flush=True)
        self._held = []
        for s in self.slots:
            s.close()
        self.slots = []
        self.params = None
