"""Rollouts from Ray actors (`runner.mode: ray`): actors in other processes, or on other machines of a Ray cluster,
feeding the same learner as the async actor threads.

Each Ray actor is a `RolloutWorker`, a plain class (unit-testable without Ray) that owns its env groups, built
inside its process from the run's config (passed as a dict and validated there), and a CPU copy of the agent's
net. The learner publishes its parameters once per policy version with one `ray.put` of a numpy state dict; every
rollout call carries the newest reference and the worker loads it when it is newer than its own. Each actor keeps
`runner.queue_size` rollout calls in flight; the learner takes whichever finishes first (`ray.wait`). What comes
back is the rollout message of `actor_learner.Actor.unroll` (numpy arrays, the core state at slot 0, the policy
version that acted, the finished episodes), so the learner is the same as in async mode and V-trace corrects the
lag.

Faults: an env that raises inside a worker is rebuilt there, as in an actor thread (`actor/env_restarts`). A worker
process that dies (killed, out of memory, its machine gone) is restarted by Ray (`max_restarts`); the rollouts it
had in flight are dropped and counted once per death (`actor/restarts`), and the new process starts new episodes.
After `runner.max_env_restarts` deaths of one actor the run stops with an error, which the training loop turns into
a checkpoint to resume from.

Where Ray runs: `runner.ray.address: ""` starts a local Ray inside the run (with a small object store, its session
files under `runner.ray.temp_dir`, by default RUN_DIR/ray, no dashboard, no usage stats, no token authentication,
and a `HOME` for its processes holding `ray_bootstrap_config.yaml` so that Ray does not probe cloud metadata
addresses); `close()` stops it. Any other address joins a running cluster with the cluster's own settings
(authentication included); the run then only kills its own actors.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from decoupled.envs.base import EnvCrashedError, VecEnv

# Ray puts Unix sockets under its temp dir: <temp_dir>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store. A
# socket path must fit in 108 bytes (107 characters), which leaves this many characters for the temp dir itself.
SESSION_SUFFIX = "/session_2026-12-04_03-05-23_123456_1234567/sockets/plasma_store"
MAX_TEMP_DIR_CHARS = 107 - len(SESSION_SUFFIX)
# The longest an actor may go without a rollout (its start-up, env building and restarts included) before the run
# stops with an error rather than go on without it or wait forever.
ROLLOUT_TIMEOUT_S = 600.0


def _derived_seed(seed: int, salt: int) -> int:
    return int(np.random.SeedSequence([seed, salt]).generate_state(1)[0] & 0x3FFFFFFF)


def _was_restarted() -> bool:
    """Whether this process is a Ray actor that Ray restarted after its previous process died."""
    if "ray" not in sys.modules:
        return False
    try:
        import warnings

        import ray

        with warnings.catch_warnings():  # Ray's own property uses a deprecated API inside (Ray 2.60)
            warnings.simplefilter("ignore")
            return bool(ray.is_initialized() and ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # noqa: BLE001 - not inside a Ray actor
        return False


class RolloutWorker:
    """One actor's envs and net, acting rollouts on request. A plain class: `ray.remote` wraps it in `RayRollouts`.

    `config` is the run's config as a dict (`ConfigBase.to_dict()`), validated again here; the worker builds
    `runner.num_actors`-th of `env.num_envs` in `runner.env_groups` groups, env i seeded `seed + i`, as the async
    actors do. `resume` is passed to the agent's `init_net` (e.g. a distillation student's teachers are loaded into
    every copy of the net)."""

    def __init__(self, config: dict[str, Any], actor_id: int, seed: int, resume: bool = False, num_threads: int = 1):
        from decoupled.agents import get_agent
        from decoupled.runners.training.actor_learner import Actor
        from decoupled.runners.training.config import validate_config

        torch.set_num_threads(max(1, num_threads))  # torch's own threads would fight the env steps for the CPUs
        self.cfg = cfg = validate_config(config)
        self.actor_id = actor_id
        r = cfg.runner
        self.per_group = cfg.env.num_envs // r.actor_count // r.env_groups
        if _was_restarted():  # a new process after a crash: new episodes, not the ones of the first process
            seed = _derived_seed(seed, os.getpid())
        self.seed = seed
        self.max_env_restarts = r.max_env_restarts
        self.env_restarts = 0
        agent = get_agent(cfg.agent_name)
        envs = self.make_envs(seed)
        try:
            net = agent.make_net(envs[0].spec, cfg.agent)
            if agent.init_net is not None:
                from decoupled.runners.training.checkpoint import load_run_checkpoint

                agent.init_net(cfg.agent, net, lambda path: load_run_checkpoint(Path(path)), resume)
            net.requires_grad_(False)
            self.actor = Actor(envs, net, r.unroll_length, torch.device("cpu"), agent.overlap(cfg.agent))
        except BaseException:
            for env in envs:
                env.close()
            raise
        self.net = net
        self.version = -1

    def make_envs(self, seed: int) -> list[VecEnv]:
        """This actor's env groups; group g's env i gets seed `seed + g * per_group + i` (as in train.py)."""
        from decoupled.envs import make_vec_env
        from decoupled.runners.training.watchdog import set_step_timeout

        cfg, envs = self.cfg, []
        try:
            for g in range(cfg.runner.env_groups):
                env = make_vec_env(
                    cfg.env.backend, cfg.env.id, self.per_group, seed + g * self.per_group, options=cfg.env.options()
                )
                envs.append(env)
                set_step_timeout(env, cfg.runner.env_step_timeout_s)
        except BaseException:
            for env in envs:
                env.close()
            raise
        return envs

    def pid(self) -> int:
        return os.getpid()

    def load_params(self, params: dict[str, np.ndarray] | None, version: int) -> None:
        """Take the learner's parameters when they are newer than the worker's (arrays from Ray's object store are
        read-only: `torch.tensor` copies them)."""
        if params is not None and version > self.version:
            self.net.load_state_dict({k: torch.tensor(v) for k, v in params.items()})
            self.version = version

    def rollout(
        self, params: dict[str, np.ndarray] | None, version: int, into: dict[str, np.ndarray] | None = None
    ) -> dict[str, Any]:
        """One rollout, acted by the newest parameters it was given; an env crash rebuilds the envs (counted, up to
        `runner.max_env_restarts`) and acts the rollout again with new episodes. `out["perf"]` holds the seconds this
        call spent loading parameters (`load_s`, 0 when they were not newer) and acting the rollout (`unroll_s`).
        `into`: arrays that receive the rollout's data (`Actor.unroll`), e.g. a slot in shared memory."""
        t0 = time.perf_counter()
        self.load_params(params, version)
        t1 = time.perf_counter()
        while True:
            try:
                if not self.actor.started:
                    self.actor.start(self.seed)
                out = self.actor.unroll(self.version, into)
                break
            except EnvCrashedError as exc:
                self._restart_envs(exc)
        out["perf"] = {"load_s": t1 - t0, "unroll_s": time.perf_counter() - t1}
        out["actor_id"] = self.actor_id
        out["actor_pid"] = os.getpid()
        out["env_restarts"] = self.env_restarts  # in this process, since it started
        return out

    def _restart_envs(self, exc: BaseException) -> None:
        from decoupled.runners.training.async_actors import ActorThread

        # the same rebuild as an actor thread's (it uses only actor_id, actor, make_envs, seed and the counters)
        ActorThread._restart_envs(self, exc)  # type: ignore[arg-type]

    def close(self) -> None:
        self.actor.close()


def ray_temp_dir(setting: str, run_dir: Path) -> tuple[Path, str | None]:
    """The temp dir of a local Ray: `setting`, or RUN_DIR/ray. When that path is too long for Ray's Unix sockets, a
    short symlink to it under /tmp stands in for it (the files stay where they were meant to go; `close` removes
    the link). Returns (the dir to give Ray, a note saying what was done, or None)."""
    wanted = Path(setting).expanduser() if setting else Path(run_dir) / "ray"
    wanted = wanted.absolute()
    if len(str(wanted)) <= MAX_TEMP_DIR_CHARS:
        return wanted, None
    wanted.mkdir(parents=True, exist_ok=True)
    base = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
    _remove_stale_links(Path(base), wanted)
    for _ in range(100):
        link = Path(base) / f"decoupled-ray-{os.getpid()}-{os.urandom(3).hex()}"
        try:
            link.symlink_to(wanted, target_is_directory=True)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"could not make a short link to Ray's temp dir under {base}")
    note = (
        f"Ray's temp dir {wanted} is {len(str(wanted))} characters, too long for its Unix sockets (at most "
        f"{MAX_TEMP_DIR_CHARS}): Ray reaches it through the link {link} (removed at the end of the run)"
    )
    return link, note


def _remove_stale_links(base: Path, wanted: Path) -> None:
    """Links to `wanted` left by a run of it that was killed (SIGKILL, power loss: no `close`), found by the dead
    process id in their names; a resume of that run removes them."""
    for link in base.glob("decoupled-ray-*-*"):
        try:
            pid = int(link.name.split("-")[2])
            if not link.is_symlink() or Path(os.readlink(link)) != wanted:
                continue
            os.kill(pid, 0)  # alive (or not ours to ask): leave it
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                link.unlink()
        except (ValueError, IndexError, OSError):
            continue


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables while Ray starts its processes (which inherit them), then put them back."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start_local_ray(temp_dir: Path, object_store_mb: int, num_cpus: int | None = None) -> None:
    """A local Ray for this run: no dashboard, no usage stats, no token authentication, no cloud-metadata probe
    (its processes get a HOME holding ray_bootstrap_config.yaml with a local provider), files under `temp_dir`."""
    import ray

    temp_dir.mkdir(parents=True, exist_ok=True)
    home = temp_dir / "home"
    home.mkdir(exist_ok=True)
    (home / "ray_bootstrap_config.yaml").write_text("provider:\n  type: local\n")
    with _environ(HOME=str(home), RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled"):
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=True,
            object_store_memory=object_store_mb * 1024 * 1024,
            _temp_dir=str(temp_dir),
            configure_logging=False,
        )


def rollout_nbytes(rollout: dict[str, Any]) -> int:
    """Bytes of a rollout's arrays (its data and the core state at slot 0): what each rollout moves to the learner."""
    return sum(v.nbytes for v in rollout["data"].values()) + sum(s.nbytes for s in rollout["initial_state"])


# the per-rollout costs of ray mode that `RayRollouts.perf_metrics` reports (means since its last call)
RAY_PERF_METRICS = (
    "perf/ray_rollout_bytes",  # a rollout's arrays (rollout_nbytes)
    "perf/ray_wait_s",  # the learner in ray.wait until a rollout was ready (waiting for the actors)
    "perf/ray_get_s",  # ray.get of a ready rollout: fetch from the object store and deserialise
    "perf/ray_copy_s",  # copying it out of the read-only object store (_writable)
    "perf/ray_actor_load_s",  # the actor loading newer parameters, per rollout call
    "perf/ray_actor_unroll_s",  # the actor acting the rollout
    "perf/ray_put_s",  # per policy version: the parameters to numpy and ray.put
    "perf/ray_params_bytes",  # the parameters put per version
)


def _writable(rollout: dict[str, Any]) -> dict[str, Any]:
    """Arrays out of Ray's object store are read-only views of it: copies that torch (and replay) may write."""
    out = dict(rollout)
    out["data"] = {k: np.array(v) for k, v in rollout["data"].items()}
    out["initial_state"] = [np.array(s) for s in rollout["initial_state"]]
    return out


class ActorProcessCounts:
    """What the rollout sources whose actors are processes (Ray actors, `process_actors.ProcessRollouts`) keep alike:
    the seed offset new episodes start from, each actor's process deaths, and the env restarts of its processes that
    died and of its current one."""

    def _init_counts(self, num_actors: int) -> None:
        self.seed_offset = 0
        self.deaths = [0] * num_actors
        self._env_restarts_done = [0] * num_actors  # of processes that died
        self._env_restarts_now = [0] * num_actors  # of each actor's current process

    def _process_ended(self, i: int) -> None:
        """Actor i's process is gone: its env restarts stay counted, its successor's start at 0."""
        self._env_restarts_done[i] += self._env_restarts_now[i]
        self._env_restarts_now[i] = 0

    def start(self, seed_offset: int = 0) -> None:
        """The actors start new episodes (seeded with this offset) when their processes start, at the first publish."""
        self.seed_offset = seed_offset

    @property
    def env_restarts(self) -> int:
        return sum(self._env_restarts_done) + sum(self._env_restarts_now)

    @property
    def actor_restarts(self) -> int:
        """Actor processes that died (and were restarted or replaced) during this run's session."""
        return sum(self.deaths)


class RayRollouts(ActorProcessCounts):
    """Ray actors feeding the learner: the interface of `AsyncRollouts` (start, publish, next, check, actor_state,
    env_restarts, close). Joins or starts Ray when built and fails fast when the cluster has fewer CPUs than the
    actors ask for; the actors start with the learner's first parameters."""

    mode = "ray"
    threads: list = []  # no actor runs in this process: the env-step watchdog has nothing to watch here

    def __init__(self, cfg: Any, run_dir: Path, seeds: list[int], resume: bool = False):
        from decoupled.runners.training.config import ConfigError

        try:
            import ray
        except ImportError as e:
            msg = f"ray mode needs Ray ({e}): install the ray extra, pip install 'decoupled[ray]'"
            raise ConfigError([("runner.mode", msg)]) from None
        self.cfg, self.seeds, self.resume = cfg, list(seeds), resume
        r = cfg.runner
        self.ray_cfg = rc = r.ray
        self.num_actors, self.queue_size, self.max_restarts = r.num_actors, r.queue_size, r.max_env_restarts
        self._init_counts(self.num_actors)
        self.started_ray = False
        self.temp_link: Path | None = None  # a short link to Ray's temp dir, removed at close
        self.actors: list[Any] = []
        self.inflight: dict[Any, tuple[int, int]] = {}  # rollout ref -> (actor, its deaths counted when sent)
        # an actor whose death was counted and whose new process has sent nothing yet: calls sent to it meanwhile can
        # fail too (ActorUnavailableError while Ray restarts it, more often on a loaded machine), and are no new death
        self.restarting = [False] * self.num_actors
        self.heard_from = [time.monotonic()] * self.num_actors  # the last rollout (or start, or death) of each actor
        self.pids: list[int | None] = [None] * self.num_actors
        self.params_ref: Any = None
        self.version = -1
        self.started = False
        self._perf: dict[str, float] = {}  # sums since the last perf_metrics()
        self._perf_rollouts = self._perf_puts = 0
        self._params_bytes = 0
        try:
            if rc.address:  # the cluster's own settings apply (its authentication too)
                from decoupled.runners.training.preflight import probe_ray_address

                why = probe_ray_address(rc.address)
                if why is not None:
                    raise ConfigError([("runner.ray.address", f"cannot join a Ray cluster at {rc.address}: {why}")])
                try:
                    ray.init(address=rc.address, log_to_driver=True, configure_logging=False)
                except ConnectionError as e:
                    msg = f"cannot join a Ray cluster at {rc.address}: {e}"
                    raise ConfigError([("runner.ray.address", msg)]) from e
                where = f"the Ray cluster at {rc.address}"
            elif ray.is_initialized():
                where = "the Ray this process already runs"  # e.g. started by a caller: leave it running
            else:
                self.temp_dir, note = ray_temp_dir(rc.temp_dir, run_dir)
                if note:
                    print(note, file=sys.stderr, flush=True)
                    self.temp_link = self.temp_dir
                self.started_ray = True
                start_local_ray(self.temp_dir, rc.object_store_mb)
                where = f"the local Ray this run started (files in {self.temp_dir})"
            have = float(ray.cluster_resources().get("CPU", 0.0))
            need = self.num_actors * rc.num_cpus_per_actor
            if need > have:
                msg = (
                    f"runner.num_actors={self.num_actors} x runner.ray.num_cpus_per_actor={rc.num_cpus_per_actor:g} "
                    f"= {need:g} CPUs, but {where} has {have:g}: Ray would wait for them forever. Lower "
                    "runner.num_actors or runner.ray.num_cpus_per_actor, or add machines to the cluster"
                )
                raise ConfigError([("runner.ray.num_cpus_per_actor", msg)])
            print(f"ray: {self.num_actors} actors x {rc.num_cpus_per_actor:g} CPUs on {where}", flush=True)
        except BaseException:
            self.close()
            raise

    # -------------------------------------------------------------------------------------------- the interface
    def publish(self, net: torch.nn.Module, version: int) -> None:
        import ray

        if self.params_ref is None or version != self.version:
            t0 = time.perf_counter()
            state = {k: v.detach().to("cpu").numpy() for k, v in net.state_dict().items()}
            self.params_ref, self.version = ray.put(state), version
            self._add_perf("perf/ray_put_s", time.perf_counter() - t0)
            self._params_bytes = sum(v.nbytes for v in state.values())
            self._perf_puts += 1
        if not self.started:
            self.started = True
            self._create_actors()

    def _create_actors(self) -> None:
        import ray

        rc, config = self.ray_cfg, self.cfg.to_dict()
        remote = ray.remote(RolloutWorker).options(
            num_cpus=rc.num_cpus_per_actor, max_restarts=self.max_restarts, max_task_retries=0
        )
        threads = max(1, int(rc.num_cpus_per_actor))
        self.actors = [
            remote.remote(config, i, self.seeds[i] + self.seed_offset, self.resume, threads)
            for i in range(self.num_actors)
        ]
        self.heard_from = [time.monotonic()] * self.num_actors
        for i in range(self.num_actors):
            for _ in range(self.queue_size):
                self._send(i)

    def _send(self, i: int) -> None:
        ref = self.actors[i].rollout.remote(self.params_ref, self.version)
        self.inflight[ref] = (i, self.deaths[i])

    def check(self) -> None:
        pass  # a failed actor's error surfaces in next(), from the rollout call it failed

    def next(self) -> dict[str, Any]:
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

        if not self.started:
            raise RuntimeError("publish the learner's parameters before asking for rollouts")
        t_wait = 0.0
        while True:
            t0 = time.perf_counter()
            ready, _ = ray.wait(list(self.inflight), num_returns=1, timeout=0.5)
            t1 = time.perf_counter()
            t_wait += t1 - t0
            if not ready:
                self._check_heard_from()
                continue
            ref = ready[0]
            i, deaths_when_sent = self.inflight.pop(ref)
            try:
                out = ray.get(ref)
                t_get = time.perf_counter() - t1
            except ActorUnavailableError as exc:
                # its process died (Ray restarts it) and every call it had fails so: count the death once, drop
                # the rollouts, ask the new process (calls sent from now on wait until it is up)
                if self.restarting[i]:  # its new process is not up yet: ask again shortly, no new death
                    time.sleep(0.05)
                elif deaths_when_sent == self.deaths[i]:
                    self._actor_died(i, exc, restarting=True)
                    self.restarting[i] = True
                self._send(i)
                continue
            except RayActorError as exc:  # ActorDiedError: dead for good (Ray's max_restarts are spent)
                if deaths_when_sent == self.deaths[i]:
                    self._actor_died(i, exc, restarting=False)
                raise RuntimeError(f"ray actor {i} died and Ray does not restart it: {exc}") from exc
            except RayTaskError as exc:
                raise RuntimeError(f"ray actor {i} failed: {exc}") from exc
            self._send(i)
            self.heard_from[i] = time.monotonic()
            self.restarting[i] = False
            if out["actor_pid"] != self.pids[i]:  # a new process: its own env restart count starts at 0
                self._process_ended(i)
                self.pids[i] = out["actor_pid"]
            self._env_restarts_now[i] = out["env_restarts"]
            t0 = time.perf_counter()
            rollout = _writable(out)
            t_copy = time.perf_counter() - t0
            actor_perf = rollout.pop("perf", None) or {}
            self._perf_rollouts += 1
            self._add_perf("perf/ray_rollout_bytes", rollout_nbytes(rollout))
            self._add_perf("perf/ray_wait_s", t_wait)
            self._add_perf("perf/ray_get_s", t_get)
            self._add_perf("perf/ray_copy_s", t_copy)
            self._add_perf("perf/ray_actor_load_s", actor_perf.get("load_s", 0.0))
            self._add_perf("perf/ray_actor_unroll_s", actor_perf.get("unroll_s", 0.0))
            return rollout

    def _add_perf(self, key: str, value: float) -> None:
        self._perf[key] = self._perf.get(key, 0.0) + value

    def perf_metrics(self) -> dict[str, float]:
        """The RAY_PERF_METRICS since the last call (then reset): means per rollout taken by the learner, and per
        published policy version for `perf/ray_put_s`; a metric without a rollout (or put) in the window is left
        out."""
        out: dict[str, float] = {}
        for key, total in self._perf.items():
            n = self._perf_puts if key == "perf/ray_put_s" else self._perf_rollouts
            if n:
                out[key] = total / n
        if self._perf_puts:
            out["perf/ray_params_bytes"] = float(self._params_bytes)
        self._perf, self._perf_rollouts, self._perf_puts = {}, 0, 0
        return out

    def _check_heard_from(self) -> None:
        """An actor that sent nothing for ROLLOUT_TIMEOUT_S (start-up and restarts included) hangs, or cannot be
        placed: stop rather than go on without it (or wait forever)."""
        now = time.monotonic()
        for i, t in enumerate(self.heard_from):
            if now - t > ROLLOUT_TIMEOUT_S:
                raise RuntimeError(
                    f"ray actor {i} sent no rollout in {ROLLOUT_TIMEOUT_S:.0f} s: a hung env, or no free CPUs to "
                    "(re)start it on (`ray status` shows the cluster)"
                )

    def _actor_died(self, i: int, exc: BaseException, restarting: bool) -> None:
        self.deaths[i] += 1
        self.heard_from[i] = time.monotonic()  # the restart gets its own ROLLOUT_TIMEOUT_S
        if self.deaths[i] > self.max_restarts or not restarting:
            raise RuntimeError(
                f"ray actor {i} died {self.deaths[i]} times (runner.max_env_restarts={self.max_restarts}); last "
                f"error: {exc}"
            ) from exc
        print(
            f"ray actor {i} died ({self.deaths[i]}/{self.max_restarts}): Ray restarts it with new episodes; its "
            f"rollouts in flight are dropped ({type(exc).__name__})",
            file=sys.stderr,
            flush=True,
        )

    def actor_state(self) -> None:
        return None  # episodes in other processes are not snapshotted: a resume starts new episodes

    def actor_pids(self, timeout_s: float = 60.0) -> list[int]:
        """The process id of each actor (asks them; for tests and diagnostics)."""
        import ray

        return ray.get([a.pid.remote() for a in self.actors], timeout=timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        """Kill this run's actors (their envs go with their processes) and stop the local Ray the run started; a
        cluster the run joined keeps running."""
        import ray

        try:
            if ray.is_initialized():
                for a in self.actors:
                    with contextlib.suppress(Exception):
                        ray.kill(a, no_restart=True)
                if self.started_ray or self.ray_cfg.address:
                    ray.shutdown()  # the driver's connection; a joined cluster's processes keep running
        finally:
            self.actors, self.inflight, self.params_ref = [], {}, None
            self.started_ray = False
            if self.temp_link is not None:
                with contextlib.suppress(OSError):
                    self.temp_link.unlink()
                self.temp_link = None
