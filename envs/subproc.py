"""Gymnasium envs in worker processes behind the vectorised env contract.

For envs whose step costs a millisecond or more (the 3D labyrinth, which drives a game engine), one process per
env lets the copies run on all cores while the actor waits. Each worker builds its env from an importable factory
(`"package.module:callable"` + kwargs), so nothing unpicklable crosses the process boundary, and does the
same-step autoreset itself. The numeric entries of each env's step `info` come back stacked in
`info["env_info"][key]` (e.g. the labyrinth's `respawned`, `goal_found`). Dict observations are split: `obs_key`
is the observation the agent's torso sees (transposed to channels-first when `channels_first`), every other key
rides in `info["extras"][key]` as a [B, ...] array, with the finished episode's last values in
`info["final_extras"]`.

A worker that dies (segfault, OOM kill), hangs past `step_timeout_s` (in training: `runner.env_step_timeout_s`)
or raises (an engine crash surfaces as a Python error) is reported with its env index and seed, and restarted with a
new seed derived from the old one: the env's episode is cut there (`truncated=True`, the last observation it sent
as `final_obs`, `info["restarted"][i]=True`, and no episode score reported for it). After `max_restarts` restarts of
one env the failure is raised as `EnvCrashedError` with the last reason (the traceback, for an error).
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing as mp
import os
import shutil
import traceback
import warnings
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from decoupled.envs.base import EnvCrashedError, EnvSpec, EpisodeTracker, VecEnv


def resolve_factory(path: str) -> Callable[..., Any]:
    """`"module.sub:callable"` -> the callable."""
    module, _, name = path.partition(":")
    if not module or not name:
        raise ValueError(f"env factory must look like 'package.module:callable', got {path!r}")
    return getattr(importlib.import_module(module), name)


def _split(obs: Any, obs_key: str | None, channels_first: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    if obs_key is None:
        main, extras = np.asarray(obs), {}
    else:
        main = np.asarray(obs[obs_key])
        extras = {k: np.asarray(v) for k, v in obs.items() if k != obs_key}
    if channels_first and main.ndim == 3:
        main = np.ascontiguousarray(main.transpose(2, 0, 1))
    return main, extras


def _plain_info(info: dict[str, Any]) -> dict[str, Any]:
    """The numeric entries of a gymnasium `info` (numbers, bools, small arrays): what can be stacked over envs."""
    out = {}
    for k, v in info.items():
        if isinstance(v, (bool, int, float, np.number, np.bool_)) or (isinstance(v, np.ndarray) and v.dtype != object):
            out[k] = np.asarray(v)
        elif isinstance(v, tuple) and all(isinstance(x, (int, float, np.number)) for x in v):
            out[k] = np.asarray(v)
    return out


class _SharedSlots:
    """The worker's side of the shared observation buffers: row `index` of each [num_envs, ...] array, for the
    current observation (its main array and every extra) and for the final one of a finished episode."""

    def __init__(self, index: int, layout: dict[str, tuple[str, tuple[int, ...], str]]):
        from multiprocessing import shared_memory

        self.blocks = {k: shared_memory.SharedMemory(name=name) for k, (name, _, _) in layout.items()}
        self.rows = {
            k: np.ndarray(shape, np.dtype(dtype), buffer=self.blocks[k].buf)[index]
            for k, (_, shape, dtype) in layout.items()
        }

    def write(self, prefix: str, split: tuple[np.ndarray, dict[str, np.ndarray]]) -> None:
        main, extras = split
        self.rows[prefix + _MAIN][...] = main
        for k, v in extras.items():
            self.rows[prefix + k][...] = v


_MAIN = "\0main"  # the layout's key of the main observation (no extra can be named so)
_FINAL = "final:"  # the prefix of the final observation's keys


def _worker(conn: Connection, factory: str, kwargs: dict[str, Any], obs_key: str | None, channels_first: bool) -> None:
    """Worker loop: ('reset', seed) | ('step', action) | ('spaces', None) | ('work_dir', None) | ('attach', layout)
    | ('close', None). After 'attach' the observations go into the shared buffers and the replies carry None in
    their place."""
    env = None
    shared: _SharedSlots | None = None
    try:
        # Own process group: the parent can kill the worker together with anything it started (a game engine keeps
        # the pipe open after the worker dies, so only killing the group ends both), and a Ctrl-C in the terminal
        # reaches only the parent, which then closes the workers in order.
        os.setsid()
        env = resolve_factory(factory)(**kwargs)
        while True:
            cmd, arg = conn.recv()
            if cmd == "step":
                obs, reward, terminated, truncated, info = env.step(arg)
                final = None
                if terminated or truncated:
                    final = _split(obs, obs_key, channels_first)
                    obs, _ = env.reset()
                main, extras = _split(obs, obs_key, channels_first)
                if shared is not None:
                    shared.write("", (main, extras))
                    if final is not None:
                        shared.write(_FINAL, final)
                    main, extras, final = None, None, (True if final is not None else None)  # type: ignore[assignment]
                step = (main, extras, float(reward), bool(terminated), bool(truncated), final, _plain_info(info))
                conn.send(("ok", step))
            elif cmd == "reset":
                obs, _ = env.reset(seed=arg)
                split = _split(obs, obs_key, channels_first)
                if shared is not None:
                    shared.write("", split)
                    split = None  # type: ignore[assignment]
                conn.send(("ok", split))
            elif cmd == "attach":
                index, layout = arg
                shared = _SharedSlots(index, layout)
                conn.send(("ok", None))
            elif cmd == "spaces":
                conn.send(("ok", (env.observation_space, env.action_space)))
            elif cmd == "work_dir":  # a scratch dir the env keeps (the labyrinth's engine files), to clean after a kill
                work_dir = getattr(getattr(env, "unwrapped", env), "work_dir", None)
                conn.send(("ok", work_dir if isinstance(work_dir, str) else None))
            elif cmd == "close":
                break
    except (KeyboardInterrupt, EOFError):
        pass
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which decides
        try:
            conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        except (BrokenPipeError, OSError):
            pass
    finally:
        if env is not None:
            try:
                env.close()
            except Exception:  # noqa: BLE001 - engines may crash on close; never fail the worker's exit
                pass
        conn.close()


class ProcessVecEnv(VecEnv):
    """`num_envs` copies of `factory(**kwargs)` (a gymnasium env), one per worker process."""

    def __init__(
        self,
        factory: str,
        num_envs: int,
        seed: int,
        kwargs: dict[str, Any] | None = None,
        obs_key: str | None = None,
        channels_first: bool = True,
        name: str | None = None,
        frame_skip: int = 1,
        obs_scale: float = 1.0 / 255,
        max_restarts: int = 3,
        step_timeout_s: float = 120.0,
        context: str = "forkserver",
        shared_memory: bool = True,
    ):
        self.factory, self.kwargs, self.obs_key, self.channels_first = (
            factory,
            dict(kwargs or {}),
            obs_key,
            channels_first,
        )
        self.num_envs, self._seed, self.max_restarts = num_envs, int(seed), max_restarts
        self.step_timeout_s = step_timeout_s
        # builds, resets and queries (a game engine's start) keep the constructor's bound whatever step_timeout_s
        # becomes (training sets it from runner.env_step_timeout_s): a worker restarted after a hung step must start
        self.start_timeout_s = step_timeout_s
        self._ctx = mp.get_context(context)
        self._owner_pid = os.getpid()
        self._procs: list[Any] = [None] * num_envs
        self._conns: list[Connection | None] = [None] * num_envs
        self._work_dirs: list[str | None] = [None] * num_envs
        self.restarts = np.zeros(num_envs, np.int64)
        # observations through shared memory: {key: (block name, [num_envs, ...] shape, dtype)}, the blocks, and
        # this process's views of them
        self._layout: dict[str, tuple[str, tuple[int, ...], str]] = {}
        self._blocks: dict[str, Any] = {}
        self._views: dict[str, np.ndarray] = {}
        self._seeds = np.array([self._seed + i for i in range(num_envs)], np.int64)
        _LIVE.add(self)
        for i in range(num_envs):
            self._start(i)
        try:
            for i in range(num_envs):  # after all started: the workers build their envs in parallel
                self._remember_work_dir(i)
            obs_space, action_space = self._call_one(0, "spaces", None)
        except _WorkerDied as e:
            self.close()
            raise EnvCrashedError(f"{name or factory}: an env worker (seed {self._seed}+i) failed to start: {e}") from e
        self.observation_space, self.action_space = obs_space, action_space
        main_space = obs_space[obs_key] if obs_key is not None else obs_space
        shape = tuple(main_space.shape)
        if channels_first and len(shape) == 3:
            shape = (shape[2], shape[0], shape[1])
        if not hasattr(action_space, "n"):
            self.close()
            raise ValueError(f"{factory} has action space {action_space}; the platform needs Discrete actions")
        self.spec = EnvSpec(
            name=name or factory,
            obs_shape=shape,
            obs_dtype=np.dtype(main_space.dtype),
            num_actions=int(action_space.n),
            frame_skip=frame_skip,
            extra={"obs_scale": obs_scale if np.dtype(main_space.dtype) == np.uint8 else 1.0},
        )
        self._tracker = EpisodeTracker(num_envs, frame_skip)
        self._last: list[tuple[np.ndarray, dict[str, np.ndarray]] | None] = [None] * num_envs
        if shared_memory:
            self._share(main_space, shape)

    # ------------------------------------------------------------------------------------ shared memory
    def _share(self, main_space: Any, main_shape: tuple[int, ...]) -> None:
        """Shared buffers for the observations (current and final, main and extras) and every worker attached to
        them; where a space has no fixed shape and dtype the observations keep going through the pipes."""
        from multiprocessing import shared_memory

        spaces = {_MAIN: (main_shape, np.dtype(main_space.dtype))}
        if self.obs_key is not None:
            for k, space in self.observation_space.spaces.items():
                if k == self.obs_key:
                    continue
                if getattr(space, "shape", None) is None or getattr(space, "dtype", None) is None:
                    return  # not an array space: the pipes carry it
                spaces[k] = (tuple(space.shape), np.dtype(space.dtype))
        try:
            for prefix in ("", _FINAL):
                for k, (shape, dtype) in spaces.items():
                    full = (self.num_envs, *shape)
                    nbytes = max(1, int(np.prod(full)) * dtype.itemsize)
                    block = shared_memory.SharedMemory(create=True, size=nbytes)
                    self._blocks[prefix + k] = block
                    self._layout[prefix + k] = (block.name, full, dtype.str)
            self._views = {k: np.ndarray(full, np.dtype(dt), buffer=self._blocks[k].buf) for k, (_, full, dt) in
                           self._layout.items()}  # fmt: skip
            replies, failed = self._all("attach", [(i, self._layout) for i in range(self.num_envs)])
            if failed:
                i, why = next(iter(failed.items()))
                raise EnvCrashedError(f"{self.spec.name}: env worker {i} could not attach its shared memory: {why}")
        except BaseException:
            self.close()
            raise

    def _attach(self, i: int) -> None:
        if self._layout:
            self._call_one(i, "attach", (i, self._layout))

    def _read_shared(self, finals: list[Any] | None = None, ended: np.ndarray | None = None) -> None:
        """After the workers wrote their rows: copy the current observations out (and the final ones where an
        episode ended, into `finals`) as the rows of `_last`."""
        main = self._views[_MAIN].copy()
        extras = {k: v.copy() for k, v in self._views.items() if k != _MAIN and not k.startswith(_FINAL)}
        for i in range(self.num_envs):
            self._last[i] = (main[i], {k: v[i] for k, v in extras.items()})
        if finals is not None and ended is not None and ended.any():
            fmain = self._views[_FINAL + _MAIN].copy()
            fextras = {k[len(_FINAL) :]: v.copy() for k, v in self._views.items() if k.startswith(_FINAL)}
            fextras.pop(_MAIN, None)
            for i in np.flatnonzero(ended):
                finals[i] = (fmain[i], {k: v[i] for k, v in fextras.items()})

    def _free_shared(self) -> None:
        self._views = {}
        for block in self._blocks.values():
            with contextlib.suppress(Exception):
                block.close()
            with contextlib.suppress(Exception):
                block.unlink()
        self._blocks, self._layout = {}, {}

    # ------------------------------------------------------------------------------------ processes
    def _start(self, i: int) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=_worker,
            args=(child, self.factory, self.kwargs, self.obs_key, self.channels_first),
            name=f"env-worker-{i}",
            daemon=True,
        )
        proc.start()
        child.close()
        self._procs[i], self._conns[i] = proc, parent

    def _recv(self, i: int, what: str) -> Any:
        """One reply of worker i. A dead, hung or failed worker raises `_WorkerDied` with the reason (after an
        error the worker has exited anyway); the caller decides whether to restart it."""
        conn, proc = self._conns[i], self._procs[i]
        limit = self.step_timeout_s if what == "step" else max(self.step_timeout_s, self.start_timeout_s)
        waited = 0.0
        # poll rather than block: a dead worker's pipe may stay open (its engine process inherited it), and a hung
        # env must not hang the learner
        while not conn.poll(0.5):
            waited += 0.5
            if not proc.is_alive():
                if conn.poll(0.1):  # its last words (an error it raised) arrived as it exited: read them
                    break
                raise _WorkerDied(f"died during {what} (exit code {proc.exitcode})")
            if waited >= limit:
                raise _WorkerDied(f"did not answer {what} within {limit:.0f}s")
        try:
            status, payload = conn.recv()
        except (EOFError, ConnectionResetError, OSError) as e:
            raise _WorkerDied(f"died during {what} (exit code {proc.exitcode}): {e!r}") from e
        if status == "error":
            raise _WorkerDied(f"raised in {what}:\n{payload}")
        return payload

    def _call_one(self, i: int, cmd: str, arg: Any) -> Any:
        self._send(i, cmd, arg)
        return self._recv(i, cmd)

    def _send(self, i: int, cmd: str, arg: Any) -> None:
        try:
            self._conns[i].send((cmd, arg))
        except (BrokenPipeError, OSError) as e:
            # the same words as a death noticed while waiting for the reply: which of the two sees a killed worker
            # first is a race
            self._procs[i].join(timeout=1.0)
            raise _WorkerDied(f"died before {cmd} (exit code {self._procs[i].exitcode}): {e!r}") from e

    def _all(self, cmd: str, args: list[Any]) -> tuple[list[Any], dict[int, str]]:
        """Send `cmd` to every worker, then collect every reply before acting on any failure, so that no reply is
        left unread in a pipe. Returns the replies (None where it failed) and {index: why} of the failures."""
        failed: dict[int, str] = {}
        for i in range(self.num_envs):
            try:
                self._send(i, cmd, args[i])
            except _WorkerDied as e:
                failed[i] = str(e)
        replies: list[Any] = [None] * self.num_envs
        for i in range(self.num_envs):
            if i in failed:
                continue
            try:
                replies[i] = self._recv(i, cmd)
            except _WorkerDied as e:
                failed[i] = str(e)
        return replies, failed

    def _restart(self, i: int, why: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Replace worker i (after it died, hung or raised) and reset its env with a new seed; a replacement that
        fails too counts as another restart. Past `max_restarts` the failure is raised as `EnvCrashedError`."""
        while True:
            self.restarts[i] += 1
            old_seed = int(self._seeds[i])
            if self.restarts[i] > self.max_restarts:
                raise EnvCrashedError(
                    f"{self.spec.name}: env index {i} (seed {old_seed}) failed {int(self.restarts[i])} times "
                    f"(max_restarts={self.max_restarts}); last: {why}"
                )
            self._seeds[i] = old_seed + 7919 * self.num_envs  # a new episode stream, not a replay of the crash
            warnings.warn(
                f"{self.spec.name}: env index {i} (seed {old_seed}) {why.splitlines()[0]}; restarted with seed "
                f"{int(self._seeds[i])} ({int(self.restarts[i])}/{self.max_restarts})",
                stacklevel=3,
            )
            self._kill(i)
            self._start(i)
            try:
                self._remember_work_dir(i)
                self._attach(i)
                return self._call_one(i, "reset", int(self._seeds[i]))
            except _WorkerDied as e:
                why = str(e)

    def _remember_work_dir(self, i: int) -> None:
        self._work_dirs[i] = self._call_one(i, "work_dir", None)

    def _kill(self, i: int) -> None:
        proc, conn = self._procs[i], self._conns[i]
        if conn is not None:
            conn.close()
        if proc is not None:
            _kill_group(proc)
        if self._work_dirs[i] is not None:  # a killed env could not clean up after itself
            shutil.rmtree(self._work_dirs[i], ignore_errors=True)
            self._work_dirs[i] = None

    # ------------------------------------------------------------------------------------ contract
    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            self._seed = int(seed)
            self._seeds = np.array([self._seed + i for i in range(self.num_envs)], np.int64)
        replies, failed = self._all("reset", [int(s) for s in self._seeds])
        for i, reply in enumerate(replies):
            self._last[i] = self._restart(i, failed[i]) if i in failed else reply
        if self._layout:
            self._read_shared()
        self._tracker.reset()
        return np.stack([m for m, _ in self._last])

    def step(self, actions: np.ndarray):
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,):
            raise ValueError(f"actions must have shape ({self.num_envs},), got {actions.shape}")
        if any(last is None for last in self._last):
            raise RuntimeError("ProcessVecEnv.step called before reset()")
        B = self.num_envs
        reward = np.zeros(B, np.float32)
        terminated = np.zeros(B, bool)
        truncated = np.zeros(B, bool)
        restarted = np.zeros(B, bool)
        finals: list[tuple[np.ndarray, dict[str, np.ndarray]]] = list(self._last)
        infos: list[dict[str, np.ndarray]] = [{} for _ in range(B)]
        replies, failed = self._all("step", [int(a) for a in actions])
        ended = np.zeros(B, bool)  # episodes that ended in the env (not cut by a restart)
        for i, reply in enumerate(replies):
            if i in failed:  # the episode is cut here: its last obs stands in as the final one
                self._last[i] = self._restart(i, failed[i])
                truncated[i] = restarted[i] = True
                continue
            main, extras, r, te, tr, final, env_info = reply
            reward[i], terminated[i], truncated[i] = r, te, tr
            infos[i] = env_info
            ended[i] = final is not None
            if main is not None:  # through the pipe; else the rows are read from shared memory below
                finals[i] = final if final is not None else (main, extras)
                self._last[i] = (main, extras)
        if self._layout:
            self._read_shared(finals, ended)
            for i in np.flatnonzero(~ended & ~restarted):
                finals[i] = self._last[i]
        obs = np.stack([m for m, _ in self._last])
        info: dict[str, Any] = {
            "final_obs": np.stack([m for m, _ in finals]),
            "extras": _stack_extras([e for _, e in self._last]),
            "final_extras": _stack_extras([e for _, e in finals]),
            "restarted": restarted,
            "env_info": _stack_common(infos),
        }
        # a cut episode is not a finished game: its partial score is not reported
        info.update(self._tracker.update(reward.astype(np.float64), terminated | truncated, discard=restarted))
        return obs, reward, terminated, truncated, info

    def last_extras(self) -> dict[str, np.ndarray]:
        """The extras [B, ...] of the observations the last `reset` or `step` returned (a reset's are not returned
        by `reset` itself, whose contract gives the observations only)."""
        if any(last is None for last in self._last):
            raise RuntimeError("ProcessVecEnv.last_extras called before reset()")
        return _stack_extras([e for _, e in self._last])

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "factory": self.factory,
            "kwargs": self.kwargs,
            "seeds": [int(s) for s in self._seeds],
            "restarts": [int(r) for r in self.restarts],
            "worker_pids": [p.pid for p in self._procs if p is not None],
        }

    def worker_pid(self, i: int) -> int:
        return self._procs[i].pid

    def close(self) -> None:
        for conn in self._conns:
            if conn is None:
                continue
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for i, proc in enumerate(self._procs):
            if proc is None:
                continue
            proc.join(5)
            _kill_group(proc)  # whatever the worker left behind (an engine that outlived it)
            if self._conns[i] is not None:
                self._conns[i].close()
        self._procs = [None] * self.num_envs
        self._conns = [None] * self.num_envs
        self._free_shared()

    def __del__(self) -> None:
        owner = os.getpid() == getattr(self, "_owner_pid", None)
        if owner and any(p is not None for p in getattr(self, "_procs", [])):
            try:
                self.close()
            except Exception:  # noqa: BLE001
                pass


class _WorkerDied(RuntimeError):
    pass


_LIVE: weakref.WeakSet[ProcessVecEnv] = weakref.WeakSet()  # this process's envs, for `kill_all_workers`


def kill_all_workers() -> None:
    """SIGKILL the workers of every open `ProcessVecEnv` of this process (with whatever they started) and remove
    their scratch dirs, without waiting: for a process about to exit without closing its envs (the training
    watchdog's exit after a hung env step or a second stop signal)."""
    for env in list(_LIVE):
        if os.getpid() != getattr(env, "_owner_pid", None):
            continue
        for proc in list(getattr(env, "_procs", [])):
            if proc is not None:
                try:
                    os.killpg(proc.pid, 9)
                except (ProcessLookupError, PermissionError, OSError):
                    pass
        for work_dir in list(getattr(env, "_work_dirs", [])):
            if work_dir is not None:
                shutil.rmtree(work_dir, ignore_errors=True)
        with contextlib.suppress(Exception):
            env._free_shared()


def _kill_group(proc: Any) -> None:
    """SIGKILL the worker's process group (the worker made itself its leader) and reap the worker."""
    try:
        os.killpg(proc.pid, 9)
    except (ProcessLookupError, PermissionError, OSError):
        pass
    proc.join(5)


def _stack_common(infos: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack the keys every env reported with one shape (a restarted env reports none this step: then none are)."""
    keys = set(infos[0]).intersection(*infos[1:]) if infos else set()
    out = {}
    for k in sorted(keys):
        values = [np.asarray(x[k]) for x in infos]
        if len({v.shape for v in values}) == 1:
            out[k] = np.stack(values)
    return out


def _stack_extras(extras: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not extras or not extras[0]:
        return {}
    return {k: np.stack([e[k] for e in extras]) for k in extras[0]}
