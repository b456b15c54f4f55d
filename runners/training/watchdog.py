"""Stopping a run that cannot stop itself: stop signals, a hung env step, and the wall-clock limit while one hangs.

`StopFlag` is the training run's signal handling, from its actors' start to its envs' close. A first SIGINT/SIGTERM asks
the loop to stop after the current update (it writes a checkpoint and exits 0). A second one stops the run now,
with the last checkpoint as it is (checkpoints are committed by rename: one is either complete or absent): while
the main thread waits for a rollout (the learner is consistent then) the handler raises `StopNow`, a `SystemExit`
with code 128 + the signal number, and the run closes W&B and TensorBoard within a few seconds; elsewhere (inside
an update, a checkpoint, W&B's finish) the loop stops at the end of what it does. In every case the run has left
`train` (or the process has exited) a few seconds after the second signal (`STOP_NOW_S` for the main thread to get
there, `CLOSE_NOW_S` for each of W&B's closing steps), with a one-line message naming the last checkpoint and the
command that resumes it.

Python runs signal handlers in the main thread only, between bytecodes: a main thread stuck in C code (an env step
that never returns) runs none. So the signals also reach a `Watchdog` thread (`signal.set_wakeup_fd`), which
exits the process itself when the main thread does not. The same thread watches the actors' env steps
(`Actor.busy`). A step running longer than `runner.env_step_timeout_s` (`STOP_HANG_S` once a stop was asked for),
or the run past `runner.max_wall_seconds` plus a grace while the actors act, cannot be recovered in-process (a
thread stuck in C code cannot be interrupted). The watchdog then takes the training state lock (the learner is not
mid-update while the main thread waits for a rollout), writes the learner's checkpoint without the actor's state (a
resume starts new episodes), says where the env is stuck and how to resume, closes the logs within a bound and
exits the process (`os._exit`, after killing env worker processes). Envs that bound their own steps
(`ProcessVecEnv` restarts a worker that does not answer within its `step_timeout_s`, which
`runner.env_step_timeout_s` sets) are left to do so. An env stuck in C code that holds the GIL stops every Python
thread, this one included: only a supervisor outside the process can end that.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOP_NOW_S = 2.0  # after a second signal: how long the main thread has to start closing before the watchdog exits
CLOSE_NOW_S = 1.0  # after a second signal: W&B's bound for each of its three closing steps
HUNG_CLOSE_S = 5.0  # after a hung env step or a wall-clock limit passed while acting: the same bound
LOCK_WAIT_S = 30.0  # a hung env in async mode: how long to wait for the learner to finish an update
STOP_HANG_S = 10.0  # after a stop signal, an env step this long is hung (if runner.env_step_timeout_s is longer)
TICK_S = 0.1
ENV_HUNG_EXIT_CODE = 1  # a hung env step, as any other crash of the run


class StopNow(SystemExit):
    """A second SIGINT/SIGTERM: stop now, keeping the last checkpoint; exit code 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


def _name(signum: int) -> str:
    return signal.Signals(signum).name


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _say(text: str) -> None:
    with contextlib.suppress(Exception):
        print(text, file=sys.stderr, flush=True)


def _innermost(env: Any) -> Any:
    """The env under wrappers that keep it as `inner` (envs/transforms.py)."""
    while getattr(env, "inner", None) is not None:
        env = env.inner
    return env


def watches_itself(env: Any) -> bool:
    """Whether `env` bounds its own steps (`ProcessVecEnv` restarts a worker that does not answer in time)."""
    return isinstance(getattr(_innermost(env), "step_timeout_s", None), int | float)


def set_step_timeout(env: Any, timeout_s: float | None) -> None:
    """`runner.env_step_timeout_s` for an env that bounds its own steps (null: it keeps its own default)."""
    inner = _innermost(env)
    if timeout_s is not None and watches_itself(inner):
        inner.step_timeout_s = float(timeout_s)


def local_actors(source: Any) -> list[Any]:
    """The actors of a rollout source that step their envs in this process (serial: the one; async: each thread's;
    Ray's act in processes of their own)."""
    actor = getattr(source, "actor", None)
    if actor is not None:
        return [actor]
    return [t.actor for t in getattr(source, "threads", [])]


def kill_env_workers() -> None:
    """Kill every env worker process of this process (the process is about to exit without closing its envs)."""
    subproc = sys.modules.get("decoupled.envs.subproc")
    if subproc is not None:
        with contextlib.suppress(Exception):
            subproc.kill_all_workers()


class StopFlag:
    """SIGINT/SIGTERM ask the loop to stop after the current update, checkpoint and exit 0; a second one stops the
    run now (`StopNow`, exit 128 + signal number) with the last checkpoint as it is. Also runs the `Watchdog`.

    `phase` is what the main thread does: "setup", "acting" (waiting for a rollout: a second signal raises
    `StopNow` there), "learning" (an update, logging, a checkpoint: it stops at the end of it) or "closing"."""

    def __init__(self, run_dir: Path | None = None, last_checkpoint: Callable[[], Path | None] | None = None):
        self.requested = False
        self.stop_now: int | None = None  # the signal number of a second signal
        self.phase = "setup"
        self.run_dir = run_dir
        self.last_checkpoint = last_checkpoint or (lambda: None)
        self.watchdog = Watchdog(self)
        self._old: dict[int, Any] = {}
        self._old_wakeup: int | None = None
        self._pipe: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._logs_claimed_by: str | None = None
        self._said = False

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():  # signal handlers can only live there
            for sig in SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.set_blocking(w, False)
            old = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
            if old != -1:  # someone else's (an event loop's): theirs stays, and only the handlers see signals
                signal.set_wakeup_fd(old)
                os.close(r)
                os.close(w)
            else:
                self._old_wakeup, self._pipe = old, (r, w)
        self.watchdog.start(self._pipe[0] if self._pipe else None)
        return self

    def __exit__(self, *exc: object) -> None:
        # the run is closed (after a second signal too: `StopNow` goes on up, and a caller in this process lives on)
        self.watchdog.stop()
        if self._pipe is not None:
            signal.set_wakeup_fd(self._old_wakeup if self._old_wakeup is not None else -1)
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        name = _name(signum)
        if not self.requested:
            self.requested = True
            print(
                f"\n{name}: stopping after this update, writing a checkpoint (a second {name} stops at once, keeping "
                "the last checkpoint)",
                flush=True,
            )
            return
        if self.stop_now is None:
            self.stop_now = signum
            self.watchdog.second_signal(signum)
        if self.phase == "acting":
            raise StopNow(signum)

    @contextlib.contextmanager
    def acting(self) -> Iterator[None]:
        """The main thread waits for a rollout: the learner is consistent, a second signal may stop it here."""
        self.phase = "acting"
        try:
            yield
        finally:
            self.phase = "learning"

    def claim_logs(self, by: str) -> bool:
        """Whoever closes the logs (the main thread, or the watchdog before it exits the process) claims them first:
        False when the other one has."""
        with self._lock:
            if self._logs_claimed_by not in (None, by):
                return False
            self._logs_claimed_by = by
            if by == "main":
                self.phase = "closing"
            return True

    def say_stop_now(self, signum: int) -> None:
        """The one line a second signal leaves: what is kept and how to continue."""
        with self._lock:
            if self._said:
                return
            self._said = True
        ckpt = None
        with contextlib.suppress(Exception):
            ckpt = self.last_checkpoint()
        kept = f"the last checkpoint is {ckpt}" if ckpt is not None else "no checkpoint was written yet"
        resume = f"; resume with: decoupled train --resume {self.run_dir}" if ckpt is not None else ""
        _say(f"second {_name(signum)}: stopping now; {kept}{resume}")


class Watchdog:
    """A thread that reads the stop signals (see `StopFlag`) and, while armed by the training loop, watches the
    actors' env steps and the wall-clock limit; when the main thread cannot act, it stops the process itself."""

    def __init__(self, flag: StopFlag):
        self.flag = flag
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._fd: int | None = None
        self._lock = threading.Lock()
        self.signals_seen = 0
        self._first_seen: tuple[int, float] | None = None
        self._noted = False
        self.stop_now_at: tuple[int, float] | None = None
        self.run: dict[str, Any] | None = None  # what `arm` gave: the training loop's state and closures
        self._excused_until = 0.0

    # ------------------------------------------------------------------------------------------ life
    def start(self, signal_fd: int | None) -> None:
        self._fd = signal_fd
        self._thread = threading.Thread(target=self._loop, name="decoupled-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)

    def arm(
        self,
        *,
        actors: Callable[[], list[Any]],
        state_lock: threading.Lock,
        save: Callable[[], Path | None],
        close_logs: Callable[[str, float], None],
        step_timeout_s: float | None,
        max_wall_s: float | None,
        wall_time: Callable[[], float],
    ) -> None:
        """Watch the training loop: `actors()` (their `busy` env calls), `save()` (under `state_lock`: the learner's
        checkpoint, None when the last one holds it already), `close_logs(status, timeout_s)`."""
        self.run = {
            "actors": actors, "lock": state_lock, "save": save, "close_logs": close_logs,
            "step_timeout_s": step_timeout_s, "max_wall_s": max_wall_s, "wall_time": wall_time,
        }  # fmt: skip

    def disarm(self) -> None:
        self.run = None

    def second_signal(self, signum: int) -> None:
        with self._lock:
            if self.stop_now_at is None:
                self.stop_now_at = (signum, time.monotonic())

    # ------------------------------------------------------------------------------------------ loop
    def _loop(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            self._wait_for_signals()
            now = time.monotonic()
            if now - last > 5.0:  # this process was stopped (SIGSTOP, a suspended machine): nothing was slow
                self._excused_until = now
            last = now
            try:
                self._check(now)
            except Exception as e:  # noqa: BLE001 - the watchdog must not die quietly, nor take the run down
                _say(f"watchdog: {type(e).__name__}: {e}; it stops watching")
                return

    def _wait_for_signals(self) -> None:
        if self._fd is None:
            self._stop.wait(TICK_S)
            return
        try:
            ready, _, _ = select.select([self._fd], [], [], TICK_S)
            data = os.read(self._fd, 64) if ready else b""
        except (OSError, ValueError):  # closed by StopFlag's exit
            self._stop.wait(TICK_S)
            return
        for signum in data:
            if signum not in SIGNALS:
                continue
            self.signals_seen += 1
            if self.signals_seen == 1:
                self._first_seen = (signum, time.monotonic())
            else:
                self.second_signal(signum)

    def _check(self, now: float) -> None:
        flag = self.flag
        if self.stop_now_at is not None:
            signum, t = self.stop_now_at
            closing = flag.phase == "closing"
            if now >= t + STOP_NOW_S + (3 * CLOSE_NOW_S + 1.0 if closing else 0.0):
                self._stop_now(signum)
            return
        if self._first_seen is not None and not flag.requested and not self._noted and now > self._first_seen[1] + 1:
            self._noted = True  # the main thread has not run its handler: it is stuck (in C code)
            busy = self._busy_step(now)
            where = f" ({busy[3]} for {busy[1]:.0f} s)" if busy else ""
            name = _name(self._first_seen[0])
            _say(
                f"{name}: the main thread is busy{where}; the run stops after this update (or {STOP_HANG_S:g} s into "
                f"an env step that does not return). A second {name} stops it now, keeping the last checkpoint"
            )
        run = self.run
        if run is None:
            return
        busy = self._busy_step(now)
        limit = run["step_timeout_s"]
        if limit is not None and (flag.requested or self._first_seen is not None):
            limit = min(limit, STOP_HANG_S)  # a stop was asked for (a scheduler's SIGKILL may follow): do not wait
        if busy is not None and limit is not None and busy[1] > limit:
            self._env_hung(run, busy, limit)
        max_wall = run["max_wall_s"]
        if max_wall is not None and run["wall_time"]() >= max_wall + max(2.0, min(60.0, 0.05 * max_wall)):
            if run["lock"].acquire(blocking=False):  # not mid-update: the actors are acting past the limit
                self._time_limit(run, busy)

    def _busy_step(self, now: float) -> tuple[Any, float, int | None, str] | None:
        """The longest env call in progress: (actor, seconds, thread id, where), or None. Envs that bound their own
        steps are not watched."""
        run = self.run
        if run is None:
            return None
        longest = None
        for actor in run["actors"]():
            busy = getattr(actor, "busy", None)
            if busy is None:
                continue
            g, method, since, ident = busy
            try:
                env = actor.envs[g]
            except IndexError:
                continue
            if watches_itself(env):
                continue
            seconds = now - max(since, self._excused_until)
            if longest is None or seconds > longest[1]:
                longest = (actor, seconds, ident, _describe(env, g, method, len(actor.envs)))
        return longest

    # ------------------------------------------------------------------------------------------ exits
    def _env_hung(self, run: dict[str, Any], busy: tuple[Any, float, int | None, str], limit: float) -> None:
        """An env step past its limit: the learner's checkpoint, where the env is stuck, exit. After a stop signal
        (`limit` is `STOP_HANG_S` then) that is the stop asked for: status "stopped", exit 0; else a hung env."""
        _, seconds, ident, where = busy
        asked = limit < run["step_timeout_s"]
        if asked:
            head = f"stop requested, but an env step has run for {seconds:.0f} s in {where}: not waiting for it"
        else:
            head = f"env step hung for {seconds:.0f} s in {where} (runner.env_step_timeout_s={limit:g}): stopping"
        lines = [head]
        stack = sys._current_frames().get(ident) if ident is not None else None
        if stack is not None:
            lines.append("where the env is stuck:\n" + "".join(traceback.format_stack(stack)[-8:]).rstrip())
        got = run["lock"].acquire(timeout=LOCK_WAIT_S)
        if got and self.run is None:  # the main thread went on meanwhile (the step returned, or it crashed)
            run["lock"].release()
            return
        lines.append(self._keep(run, got))
        if not asked:
            lines.append(
                "An env stuck in a step cannot be restarted in-process (a thread in C code cannot be interrupted). "
                "Fix the env (or raise runner.env_step_timeout_s) and continue with: "
                f"decoupled train --resume {self.flag.run_dir}"
            )
        else:
            lines.append(f"Continue with: decoupled train --resume {self.flag.run_dir}")
        _say("\n".join(lines))
        self._close_logs(run, "stopped" if asked else "env_hung", HUNG_CLOSE_S)
        self._exit(0 if asked else ENV_HUNG_EXIT_CODE)

    def _time_limit(self, run: dict[str, Any], busy: tuple[Any, float, int | None, str] | None) -> None:
        """Called holding the state lock."""
        if self.run is None:
            run["lock"].release()
            return
        over = run["wall_time"]() - run["max_wall_s"]
        acting = f"an env step has been running for {busy[1]:.0f} s in {busy[3]}" if busy else "the actors act"
        lines = [
            f"runner.max_wall_seconds={run['max_wall_s']:g} passed {over:.0f} s ago while {acting}: stopping the run",
            self._keep(run, True),
            f"Continue with: decoupled train --resume {self.flag.run_dir} (with a larger runner.max_wall_seconds)",
        ]
        _say("\n".join(lines))
        self._close_logs(run, "time_limit", HUNG_CLOSE_S)
        self._exit(0)

    def _keep(self, run: dict[str, Any], locked: bool) -> str:
        """Write the learner's checkpoint when the state lock is held; say what the run keeps."""
        if not locked:
            return f"The learner is mid-update: the last checkpoint {self._last()} is the one to resume from."
        try:
            path = run["save"]()
        except Exception as e:  # noqa: BLE001
            return f"Could not write a checkpoint ({type(e).__name__}: {e}); the last one is {self._last()}."
        if path is None:
            return f"The last checkpoint {self._last()} holds the learner as of its last update."
        return f"Saved {path} (the learner as of its last update; the envs start new episodes on resume)."

    def _last(self) -> str:
        try:
            return str(self.flag.last_checkpoint() or "(none yet)")
        except Exception:  # noqa: BLE001
            return "(unknown)"

    def _stop_now(self, signum: int) -> None:
        """A second signal the main thread did not act on within the bound (or did not finish acting on)."""
        self.flag.say_stop_now(signum)
        run = self.run
        if run is not None:
            self._close_logs(run, "stopped", CLOSE_NOW_S)
        self._exit(128 + signum)

    def _close_logs(self, run: dict[str, Any], status: str, timeout_s: float) -> None:
        """Close the logs within about 3 x `timeout_s` (W&B's three closing steps), unless the main thread is at it."""
        if not self.flag.claim_logs("watchdog"):
            return
        t = threading.Thread(target=run["close_logs"], args=(status, timeout_s), name="watchdog-close", daemon=True)
        t.start()
        t.join(3 * timeout_s + 2.0)

    def _exit(self, code: int) -> None:
        kill_env_workers()
        _flush()
        os._exit(code)


def _describe(env: Any, group: int, method: str, groups: int) -> str:
    """`<env name> (env group g, env index i, seed s)`, as far as the env tells."""
    inner = _innermost(env)
    parts = [f"env group {group}"] if groups > 1 else []
    i = getattr(inner, "stepping", None)
    if i is not None:
        seed = getattr(inner, "_seed_of", None)
        parts.append(f"env index {i}" + (f", seed {seed(i)}" if seed is not None else ""))
    name = getattr(getattr(env, "spec", None), "name", type(env).__name__)
    return f"{name}.{method}" + (f" ({', '.join(parts)})" if parts else "")


@contextlib.contextmanager
def released(lock: threading.Lock) -> Iterator[None]:
    """`lock` (held by this thread) released for the block, held again after it."""
    lock.release()
    try:
        yield
    finally:
        lock.acquire()
