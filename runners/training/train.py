"""`decoupled train`: the training loop, run dirs, checkpoints, resume and stop signals.

The run dir (`runs/<agent>__<env>__<seed>__<time>/`) holds `config.yaml` (resolved), `env_settings.json` (the
protocol preset and the settings read back from the built env), `metrics.jsonl` (the source of truth),
`checkpoints/` and W&B's files. `train(..., resume=True)` continues from the newest checkpoint that verifies:
parameters, optimizer, counters, every RNG, the actor's pending slot and core state, the env snapshot where the
backend has one (then the resumed run is bit-identical to an uninterrupted one in serial mode on CPU), and the
W&B run id.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from decoupled.agents import AgentDef, get_agent
from decoupled.agents.base import trainable_parameters
from decoupled.envs import VecEnv, make_vec_env
from decoupled.runners.training.actor_learner import (  # noqa: F401 - Learner, NonFiniteError: re-exported
    Actor,
    Learner,
    NonFiniteError,
    rollout_layout,
)
from decoupled.runners.training.async_actors import AsyncRollouts, SerialRollouts
from decoupled.runners.training.checkpoint import (  # load_run_checkpoint: re-exported
    CheckpointError,
    CheckpointManager,
    CheckpointWriteError,
    check_writable,
    load_run_checkpoint,
)
from decoupled.runners.training.config import ConfigBase, dump_config, load_config, usable_cpus
from decoupled.runners.training.logger import Logger, TensorBoardSink, WandbSink, truncate_metrics
from decoupled.runners.training.preflight import preflight
from decoupled.runners.training.watchdog import (  # noqa: F401 - StopFlag re-exported
    CLOSE_NOW_S,
    HUNG_CLOSE_S,
    StopFlag,
    StopNow,
    local_actors,
    released,
    set_step_timeout,
)


def run_name(cfg: ConfigBase) -> str:
    return f"{cfg.agent_name}__{cfg.env.id}__{cfg.runner.seed}__{time.strftime('%Y%m%d-%H%M%S')}"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runner.device=cuda but no CUDA device is visible; use runner.device=auto or cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - libraries (and old env code) still draw from the global RNG
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def make_optimizer(cfg: ConfigBase, params) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=o.lr, alpha=o.alpha, eps=o.eps, momentum=o.momentum)
    if o.name == "rmsprop_tf":  # tf.train.RMSPropOptimizer's semantics, as in the IMPALA paper's code
        from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike

        return RMSpropTFLike(params, lr=o.lr, alpha=o.alpha, eps=o.eps, momentum=o.momentum)
    return torch.optim.Adam(params, lr=o.lr, eps=o.eps)


def make_learner(cfg: ConfigBase, agent: AgentDef, net: torch.nn.Module, device: torch.device, replay=None) -> Learner:
    """The learner of `net`: the agent's learner hooks, and the optimiser over the parameters no hook trains itself."""
    hooks = agent.learner_hooks(cfg.agent, net)
    optimizer = make_optimizer(cfg, trainable_parameters(net, hooks))
    r = cfg.runner
    return Learner(
        agent, cfg.agent, net, optimizer, device, cfg.optim.max_grad_norm, r.max_nonfinite_updates, replay, hooks
    )


def lr_at(cfg: ConfigBase, env_frames: int) -> float:
    if cfg.optim.lr_schedule == "constant":
        return cfg.optim.lr
    return cfg.optim.lr * max(0.0, 1.0 - env_frames / cfg.runner.total_env_frames)


class Progress:
    def __init__(self, total_env_frames: int, every_s: float, frame_skip: int = 1):
        self.total, self.every, self.frame_skip = total_env_frames, every_s, frame_skip
        self.last_t = time.time()
        self.last_frames = 0
        self.recent: deque[float] = deque(maxlen=100)
        self.start: tuple[float, int] | None = None  # (time, env frames) of the first print: the rate for time left

    def time_left(self, env_frames: int, now: float) -> str:
        """The time to the frame budget at the average rate since the first progress line (this process's)."""
        if self.start is None or env_frames <= self.start[1] or now <= self.start[0]:
            return "n/a"
        rate = (env_frames - self.start[1]) / (now - self.start[0])
        return time.strftime("%H:%M:%S", time.gmtime(max(self.total - env_frames, 0) / rate))

    def sps(self, env_frames: int) -> float:
        dt = max(time.time() - self.last_t, 1e-9)
        return (env_frames - self.last_frames) / dt

    def maybe_print(self, env_frames: int, elapsed: float, force: bool = False) -> None:
        if not force and time.time() - self.last_t < self.every:
            return
        ret = f"{np.mean(self.recent):.2f} (last {len(self.recent)} episodes)" if self.recent else "n/a"
        pct = 100.0 * env_frames / self.total
        fps = self.sps(env_frames)
        rate = f"{fps:,.0f} frames/s" + (f" ({fps / self.frame_skip:,.0f} steps/s)" if self.frame_skip > 1 else "")
        now = time.time()
        if self.start is None:
            self.start = (self.last_t, self.last_frames)
        print(
            f"frames {env_frames:,}/{self.total:,} ({pct:.0f}%) | {rate} | "
            f"return {ret} | {time.strftime('%H:%M:%S', time.gmtime(elapsed))} | "
            f"left {self.time_left(env_frames, now)}",
            flush=True,
        )
        self.last_t, self.last_frames = now, env_frames


# evaluator(cfg) -> a callable net -> {"eval/...": value} with close(): evaluation during training. The training package
# does not evaluate itself (runners/evaluation does); the entry points that run training pass the evaluation's.
EvaluatorFactory = Callable[[ConfigBase], Any]


def train(
    cfg: ConfigBase,
    run_dir: Path,
    resume: bool = False,
    evaluator: EvaluatorFactory | None = None,
    resume_overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Train `cfg` in `run_dir` (continuing from its newest checkpoint when `resume`). Returns final counters.
    `evaluator` builds the evaluation during training that `runner.eval_every_env_frames` asks for
    (`decoupled.runners.evaluation.evaluate.make_periodic_evaluator`; `decoupled train` and `decoupled.train` pass
    it)."""
    if cfg.runner.eval_every_env_frames and evaluator is None:
        raise ValueError(
            "runner.eval_every_env_frames needs an evaluator: pass evaluator=make_periodic_evaluator "
            "(decoupled.runners.evaluation.evaluate), or train through `decoupled train` / `decoupled.train`"
        )
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    r = cfg.runner
    agent = get_agent(cfg.agent_name)
    device = pick_device(r.device)
    if r.torch_threads:
        torch.set_num_threads(r.torch_threads)
    elif r.mode == "processes" and device.type == "cpu":  # the cores the actor processes leave to the learner
        torch.set_num_threads(max(1, usable_cpus() - r.num_actors * r.actor_threads))
    if r.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(r.seed)

    ckpts = CheckpointManager(run_dir / "checkpoints", keep=r.keep_checkpoints)
    restored = ckpts.load_latest() if resume else None
    if resume and restored is None:
        print(f"no checkpoint in {run_dir / 'checkpoints'}: starting the run from the beginning", flush=True)

    per_actor = cfg.env.num_envs // r.actor_count
    per_group = per_actor // r.env_groups

    def make_envs(seed: int) -> list[VecEnv]:
        """One actor's env groups; group g's env i gets seed `seed + g * per_group + i`."""
        envs: list[VecEnv] = []
        try:
            for g in range(r.env_groups):
                opts = cfg.env.options()
                envs.append(make_vec_env(cfg.env.backend, cfg.env.id, per_group, seed + g * per_group, options=opts))
                set_step_timeout(envs[-1], r.env_step_timeout_s)  # envs in worker processes restart a hung one
        except BaseException:
            for env in envs:
                env.close()
            raise
        return envs

    seeds = [r.seed + i * per_actor for i in range(r.actor_count)]
    actor_envs: list[list[VecEnv]] = []
    periodic = None
    try:  # whatever fails from here on, every env (and its worker processes) is closed
        elsewhere = r.mode in ("ray", "processes")  # the actors build their envs in their processes
        for seed in seeds[:1] if elsewhere else seeds:  # one actor's envs here, for the env's spec
            actor_envs.append(make_envs(seed))
        if r.eval_every_env_frames and evaluator is not None:
            periodic = evaluator(cfg)
        return _train_with_env(
            cfg, run_dir, actor_envs, make_envs, seeds, agent, device, ckpts, restored, periodic, resume_overrides
        )
    finally:
        for envs in actor_envs:
            for env in envs:
                env.close()
        if periodic is not None:
            periodic.close()


def _train_with_env(
    cfg: ConfigBase,
    run_dir: Path,
    actor_envs: list[list[VecEnv]],
    make_envs: Callable[[int], list[VecEnv]],
    seeds: list[int],
    agent: AgentDef,
    device: torch.device,
    ckpts: CheckpointManager,
    restored: tuple[dict, dict] | None,
    periodic: Any = None,
    resume_overrides: list[str] | None = None,
) -> dict[str, Any]:
    r = cfg.runner
    env = actor_envs[0][0]
    settings = {"protocol": getattr(cfg.env, "protocol", None), **env.settings()}
    settings["num_envs"] = cfg.env.num_envs  # over all actors and groups (the settings above are one group's)
    # where each side runs: Ray actors always act on their process's CPU, actor threads share the learner's device
    settings["devices"] = {"learner": str(device), "actors": "cpu" if r.mode in ("ray", "processes") else str(device)}
    settings["learner_torch_threads"] = torch.get_num_threads()

    def write_run_files() -> None:
        """The run's config and env settings; on a resume only once the checkpoint is restored under them, so that
        a resume that fails leaves the run as it was."""
        (run_dir / "env_settings.json").write_text(json.dumps(settings, indent=2, default=str))
        dump_config(cfg, run_dir / "config.yaml")
        if restored is not None and resume_overrides:
            record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "env_frames": restored[1]["env_frames"]}
            with open(run_dir / "resume_history.jsonl", "a") as f:
                f.write(json.dumps({**record, "overrides": list(resume_overrides)}) + "\n")

    if restored is None:
        write_run_files()

    def build_net() -> torch.nn.Module:
        """The agent's net, filled from other runs where the agent takes any (`AgentDef.init_net`)."""
        built = agent.make_net(env.spec, cfg.agent).to(device)
        if agent.init_net is not None:
            built.init_record = agent.init_net(
                cfg.agent, built, lambda path: load_run_checkpoint(Path(path)), restored is not None
            )
        return built

    net = build_net()
    if getattr(net, "init_record", None):  # what the net was filled from (e.g. the checkpoints of earlier columns)
        (run_dir / "init_sources.json").write_text(json.dumps(net.init_record, indent=2, default=str))
    replay = agent.make_replay(cfg.agent, env.spec, net, r.unroll_length, r.seed) if agent.make_replay else None
    learner = make_learner(cfg, agent, net, device, replay)
    overlap = agent.overlap(cfg.agent)  # leading transitions repeated from the previous rollout (Actor)
    if r.mode == "serial":
        actor = Actor(actor_envs[0], net, r.unroll_length, device, overlap)
        source: SerialRollouts | AsyncRollouts = SerialRollouts(actor, lambda: learner.version, seeds[0])
    elif r.mode == "ray":  # the actors build their own envs in their processes
        from decoupled.runners.training.ray_actors import RayRollouts

        for envs in actor_envs:
            for e in envs:
                e.close()
        source = RayRollouts(cfg, run_dir, seeds, resume=restored is not None)  # type: ignore[assignment]
    elif r.mode == "processes":  # actor processes on this machine; rollouts and parameters in shared memory
        from decoupled.runners.training.process_actors import ProcessRollouts

        per_actor = cfg.env.num_envs // r.actor_count
        layout = rollout_layout(env.spec, net, per_actor, overlap + r.unroll_length + 1)
        for envs in actor_envs:
            for e in envs:
                e.close()
        source = ProcessRollouts(cfg, seeds, layout, resume=restored is not None)  # type: ignore[assignment]
    else:
        actors = []
        for envs in actor_envs:
            actor_net = build_net()
            actor_net.requires_grad_(False)
            actors.append(Actor(envs, actor_net, r.unroll_length, device, overlap))
        source = AsyncRollouts(actors, lambda i, seed: make_envs(seed), seeds, r.queue_size, r.max_env_restarts)
    actor_envs.clear()  # the source owns the envs from here on: its close() closes each actor's current ones
    # stop signals (and the watchdog) until the envs are closed: a second SIGINT/SIGTERM stops the run at once
    with StopFlag(run_dir, lambda: next(iter(ckpts.list()), None)) as stop:
        try:
            return _train_loop(
                cfg, run_dir, env, source, net, learner, ckpts, restored, settings, periodic, write_run_files, stop
            )
        finally:
            source.close(timeout_s=1.0 if stop.stop_now is not None else 30.0)  # after a 2nd signal: a hung actor


def _train_loop(
    cfg: ConfigBase,
    run_dir: Path,
    env: VecEnv,
    source: SerialRollouts | AsyncRollouts,
    net: torch.nn.Module,
    learner: Learner,
    ckpts: CheckpointManager,
    restored: tuple[dict, dict] | None,
    settings: dict[str, Any],
    periodic: Any = None,
    write_run_files: Callable[[], None] | None = None,
    stop: StopFlag | None = None,
) -> dict[str, Any]:
    """Act, learn, log and checkpoint until the frame budget, the wall-clock limit or a stop signal; then write the
    final checkpoint. On a crash, save what is consistent and say how to resume. The watchdog (`stop.watchdog`)
    stops the run when an env step hangs or the wall-clock limit passes while the actors act; the main thread holds
    `state_lock` except while it waits for a rollout, so that the watchdog's checkpoint is never taken mid-update."""
    r = cfg.runner
    stop = stop if stop is not None else StopFlag(run_dir)
    counters, wandb_id = _restore_or_start(run_dir, source, net, learner, ckpts, restored)
    if restored is not None and write_run_files is not None:
        write_run_files()
    wandb = _open_wandb(cfg, run_dir, settings, wandb_id)
    tensorboard = TensorBoardSink(run_dir, counters["env_frames"]) if cfg.logger.tensorboard else None
    logger = Logger(run_dir, wandb, tensorboard)
    meta = {"git_sha": git_sha(), "config_digest": cfg.digest(), "agent": cfg.agent_name, "env_settings": settings}

    def checkpoint(with_actor: bool = True) -> Path:
        state = _checkpoint_state(net, learner, counters, source, wandb.run_id, with_actor)
        return ckpts.save(counters["env_frames"], state, {**meta, "wall_time": counters["wall_time"]})

    best = CheckpointManager(run_dir / "checkpoints" / "best", keep=2) if periodic is not None else None
    final_eval: dict[str, float] = {}

    def evaluate() -> None:
        """One evaluation: eval/ metrics on the env_frames axis; the net as checkpoints/best when it scores best."""
        f = counters["env_frames"]
        video = run_dir / "videos" / f"eval_{f:012d}.gif" if cfg.runner.eval_video else None
        result = periodic(net, video)
        counters["last_eval_frames"] = f
        score = result["eval/episode_return"]
        if counters.get("best_eval") is None or score > counters["best_eval"]:
            counters["best_eval"], counters["best_eval_frames"] = score, f
            state = {"net": net.state_dict(), "counters": dict(counters), "eval": result}
            path = best.save(f, state, {**meta, "eval": result})
            for other in best.list():  # one best: also over a best that a resumed run's abandoned frames left above
                if other != path:
                    shutil.rmtree(other, ignore_errors=True)
        result["eval/best_episode_return"] = counters["best_eval"]
        logger.write(result, f)
        final_eval.clear()
        final_eval.update({k: v for k, v in result.items() if k != "eval/video"})

    progress = Progress(r.total_env_frames, r.progress_every_seconds, env.spec.frame_skip)
    progress.last_frames = counters["env_frames"]  # a resumed run's rates count its own frames only
    window = _LogWindow(counters["env_frames"])
    t_start = time.time() - counters["wall_time"]
    last_ckpt_frames, last_ckpt_time = counters["env_frames"], time.time()
    status = "finished"
    out_of_time = r.max_wall_seconds is not None and counters["wall_time"] >= r.max_wall_seconds
    state_lock = threading.Lock()  # the learner's state: the main thread holds it but while it waits for a rollout

    def save_for_watchdog() -> Path | None:
        """The watchdog's checkpoint, taken holding `state_lock`: the learner as of its last update (the actor is
        mid-unroll), None when the last checkpoint holds that already."""
        if counters["env_frames"] == last_ckpt_frames and ckpts.list():
            return None
        counters["wall_time"] = time.time() - t_start
        return checkpoint(with_actor=False)

    def close_logs(status: str, timeout_s: float) -> None:
        """The watchdog's end of the logs (the main thread does not reach its `finally`)."""
        logger.summary({"env_frames": counters["env_frames"], "status": status, "updates": counters["updates"]})
        logger.close(timeout_s)

    stop.watchdog.arm(
        actors=lambda: local_actors(source),
        state_lock=state_lock,
        save=save_for_watchdog,
        close_logs=close_logs,
        step_timeout_s=r.env_step_timeout_s,
        max_wall_s=r.max_wall_seconds,
        wall_time=lambda: time.time() - t_start,
    )
    print(f"training {cfg.agent_name} on {cfg.env.backend}:{cfg.env.id} -> {run_dir}", flush=True)
    try:
        # the actors (threads, processes, Ray actors) start with these parameters; a failure to start them ends the
        # run through the same path as any crash (logs closed)
        source.publish(net, learner.version)
        with state_lock:
            while counters["env_frames"] < r.total_env_frames and not stop.requested and not out_of_time:
                # one update: a rollout from the actors, a learner step, the new parameters back to the actors
                learner.set_lr(lr_at(cfg, counters["env_frames"]))
                t0 = time.perf_counter()
                with released(state_lock), stop.acting():  # a second stop signal may raise StopNow here
                    rollout = source.next()
                t1 = time.perf_counter()
                metrics = learner.step(rollout)
                source.publish(net, learner.version)
                window.add(metrics, rollout, t_act=t1 - t0, t_learn=time.perf_counter() - t1)
                new_steps = rollout["data"]["reward"][1 + rollout.get("overlap", 0) :].size  # T x B
                counters["env_frames"] += new_steps * env.spec.frame_skip
                counters["updates"] += 1
                counters["episodes"] += len(rollout["episodes"]["returns"])
                counters["wall_time"] = time.time() - t_start
                progress.recent.extend(rollout["episodes"]["returns"])

                f = counters["env_frames"]
                out_of_time = r.max_wall_seconds is not None and counters["wall_time"] >= r.max_wall_seconds
                done = f >= r.total_env_frames or out_of_time
                if f - window.start_frames >= r.log_every_env_frames or done:
                    logger.write(window.record(counters, source), f)
                    window.reset(f)
                if periodic is not None and (
                    f - counters.get("last_eval_frames", 0) >= r.eval_every_env_frames or (done and not out_of_time)
                ):
                    evaluate()
                progress.maybe_print(f, counters["wall_time"], force=done)
                if not done and (
                    f - last_ckpt_frames >= r.checkpoint_every_env_frames
                    or (r.checkpoint_every_seconds and time.time() - last_ckpt_time >= r.checkpoint_every_seconds)
                ):
                    checkpoint()
                    last_ckpt_frames, last_ckpt_time = f, time.time()
            if stop.stop_now is not None:  # a second signal during the last update: stop without a new checkpoint
                raise StopNow(stop.stop_now)
            source.check()  # an actor that died at the very end still fails the run
            if stop.requested:
                status = "stopped"
            elif counters["env_frames"] < r.total_env_frames:
                status = "time_limit"  # runner.max_wall_seconds
            path = checkpoint()
            print(f"{status} at {counters['env_frames']:,} env frames; checkpoint {path}", flush=True)
            stop.watchdog.disarm()  # still holding state_lock: the watchdog takes no checkpoint after this one
    except BaseException as e:
        with state_lock:  # not while the watchdog writes its checkpoint (it then exits the process)
            stop.watchdog.disarm()
        if isinstance(e, StopNow):  # a second SIGINT/SIGTERM: the last checkpoint stays the one to resume from
            status = "stopped"
            stop.say_stop_now(e.signum)
        else:
            status = "crashed"
            _save_after_crash(e, run_dir, counters, last_ckpt_frames, ckpts, checkpoint)
        raise
    finally:
        with state_lock:
            stop.watchdog.disarm()
        if not stop.claim_logs("main"):  # the watchdog is closing them, and then exits the process
            threading.Event().wait(3 * HUNG_CLOSE_S + 10.0)
        summary = {"env_frames": counters["env_frames"], "status": status, "updates": counters["updates"]}
        if final_eval:  # the last evaluation (at the end of a finished run) and the best one
            summary.update({"eval/final_episode_return": final_eval["eval/episode_return"],
                            "eval/final_env_frames": counters.get("last_eval_frames"),
                            "eval/best_episode_return": counters.get("best_eval"),
                            "eval/best_env_frames": counters.get("best_eval_frames")})  # fmt: skip
        try:  # on a full disk these writes fail too: that must not hide why the run stopped
            logger.summary(summary)
        except OSError as write_error:
            print(f"could not write the run's summary: {write_error}", file=sys.stderr, flush=True)
        try:
            wandb_problem = logger.close(CLOSE_NOW_S if stop.stop_now is not None else None)  # short after a 2nd signal
        except OSError as write_error:
            wandb_problem = f"could not close the run's logs: {write_error}"
        if wandb_problem:  # the last console line, as the last metrics.jsonl record, says so
            print(f"{wandb_problem}; metrics.jsonl holds every record (a `wandb sync` now uploads less)", flush=True)
    return {**counters, "status": status, "run_dir": str(run_dir), "wandb_mode": wandb.mode}


def _restore_or_start(
    run_dir: Path,
    source: SerialRollouts | AsyncRollouts,
    net: torch.nn.Module,
    learner: Learner,
    ckpts: CheckpointManager,
    restored: tuple[dict, dict] | None,
) -> tuple[dict[str, Any], str | None]:
    """Put the learner, the RNGs and the actors back where the checkpoint left them (or start the actors afresh);
    returns the run's counters and the W&B run id to continue."""
    counters: dict[str, Any] = {"env_frames": 0, "updates": 0, "episodes": 0, "wall_time": 0.0, "actor_restarts": 0}
    if restored is None:
        # a fresh start in a dir that holds records from an attempt that never checkpointed: set them aside
        truncate_metrics(run_dir / "metrics.jsonl", 0)
        source.start(seed_offset=0)
        return counters, None
    state, manifest = restored
    fits = resumable_into(net, learner)
    try:
        fits(state)
    except Exception:  # noqa: BLE001 - it verifies (its checksums match) but does not fit: the newest one that does
        restored = ckpts.load_latest(accept=fits)  # a CheckpointWarning names each one skipped and why
        if restored is None:
            raise CheckpointError(f"the checkpoints in {ckpts.directory} went away while resuming") from None
        state, manifest = restored
    net.load_state_dict(state["net"])
    learner.optimizer.load_state_dict(state["optimizer"])
    learner.load_extra_state(state.get("learner_extra", {}))
    counters.update(state["counters"])
    learner.version = int(state["policy_version"])
    learner.nonfinite_total = int(state.get("nonfinite_total", 0))
    learner.nonfinite_in_a_row = int(state.get("nonfinite_in_a_row", 0))
    set_rng_state(state["rng"])
    if not _restore_actor(source, state.get("actor")):
        # no snapshot (async mode, a backend without one, another env layout): new episodes from a derived seed
        counters["actor_restarts"] += 1
        source.start(seed_offset=1_000_003 * counters["actor_restarts"])
    dropped = truncate_metrics(run_dir / "metrics.jsonl", counters["env_frames"])
    print(
        f"resumed {run_dir} at {counters['env_frames']:,} env frames from {ckpts.path_for(manifest['env_frames'])}"
        + (f" ({dropped} metrics records past it moved to metrics.discarded.jsonl)" if dropped else ""),
        flush=True,
    )
    return counters, state.get("wandb_run_id")


def check_net_state(net: torch.nn.Module, state: Any) -> None:
    """Raise a ValueError saying why a checkpoint's `state["net"]` cannot be loaded into `net`: no parameters, or
    parameters of other names or shapes (a checkpoint whose checksums match can still hold the wrong content)."""
    saved = state.get("net") if isinstance(state, dict) else None
    if not isinstance(saved, dict):
        raise ValueError(
            "it has no 'net' entry (the parameters)"
            if saved is None
            else f"its 'net' entry is a {type(saved).__name__}, not the parameters"
        )
    own = net.state_dict()
    problems = [
        f"{k} has shape {list(getattr(v, 'shape', [type(v).__name__]))}, the net's {list(own[k].shape)}"
        for k, v in saved.items()
        if k in own and not (isinstance(v, torch.Tensor) and v.shape == own[k].shape)
    ]
    problems += [f"{k} is missing" for k in own if k not in saved]
    problems += [f"{k} is not a parameter of the net" for k in saved if k not in own]
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise ValueError(f"its parameters do not fit the {type(net).__name__}: {'; '.join(problems[:3])}{more}")


def resumable_into(net: torch.nn.Module, learner: Learner) -> Callable[[dict[str, Any]], None]:
    """`accept(state)` for `CheckpointManager.load_latest`: a ValueError unless the state holds what
    `_restore_or_start` puts back into `net` and `learner` (parameters of the net's names and shapes, an optimiser
    state of its parameter groups, the counters and the RNG states)."""

    def check(state: dict[str, Any]) -> None:
        check_net_state(net, state)
        missing = [k for k in ("optimizer", "counters", "policy_version", "rng") if k not in state]
        if missing:
            raise ValueError(f"it has no {', '.join(repr(k) for k in missing)} entry")
        groups = state["optimizer"].get("param_groups") if isinstance(state["optimizer"], dict) else None
        own = [len(g["params"]) for g in learner.optimizer.state_dict()["param_groups"]]
        if not isinstance(groups, list) or [len(g.get("params", ())) for g in groups] != own:
            raise ValueError("its optimiser state does not fit the run's optimiser (other parameter groups)")
        if not isinstance(state["counters"], dict) or type(state["counters"].get("env_frames")) is not int:
            raise ValueError("its counters hold no env_frames")

    return check


def _open_wandb(cfg: ConfigBase, run_dir: Path, settings: dict[str, Any], run_id: str | None) -> WandbSink:
    return WandbSink(
        run_dir,
        {**cfg.to_dict(), "env_settings": settings},
        mode=cfg.wandb.mode,
        project=cfg.wandb.project,
        entity=cfg.wandb.entity,
        group=cfg.wandb.group,
        tags=cfg.wandb.tags,
        name=run_dir.name,
        run_id=run_id,
        timeout_s=cfg.wandb.init_timeout_s,
        finish_timeout_s=cfg.wandb.finish_timeout_s,
    )


def _checkpoint_state(
    net: torch.nn.Module,
    learner: Learner,
    counters: dict[str, Any],
    source: SerialRollouts | AsyncRollouts,
    wandb_run_id: str | None,
    with_actor: bool,
) -> dict[str, Any]:
    """Everything a resume needs (DESIGN: checkpoints hold everything needed to continue exactly)."""
    if not all(torch.isfinite(p).all() for p in net.parameters()):
        raise RuntimeError("refusing to write a checkpoint with non-finite parameters")
    return {
        "net": net.state_dict(),
        "optimizer": learner.optimizer.state_dict(),
        "learner_extra": learner.extra_state(),
        "counters": dict(counters),
        "policy_version": learner.version,
        "nonfinite_total": learner.nonfinite_total,
        "nonfinite_in_a_row": learner.nonfinite_in_a_row,
        "rng": rng_state(),
        "actor": source.actor_state() if with_actor else None,
        "wandb_run_id": wandb_run_id,
    }


class _LogWindow:
    """The updates since the last metrics record: their metrics, finished episodes and time split."""

    def __init__(self, start_frames: int):
        self.reset(start_frames)

    def reset(self, start_frames: int) -> None:
        self.start_frames = start_frames
        self.metrics: dict[str, list[float]] = {}
        self.returns: list[float] = []
        self.lengths: list[int] = []
        self.t_act = self.t_learn = 0.0

    def add(self, metrics: dict[str, float], rollout: dict[str, Any], t_act: float, t_learn: float) -> None:
        for k, v in metrics.items():
            self.metrics.setdefault(k, []).append(v)
        self.returns.extend(rollout["episodes"]["returns"])
        self.lengths.extend(rollout["episodes"]["frames"])
        self.t_act += t_act
        self.t_learn += t_learn

    def record(self, counters: dict[str, Any], source: SerialRollouts | AsyncRollouts) -> dict[str, float]:
        record = {k: float(np.mean(v)) for k, v in self.metrics.items() if v}
        if self.returns:
            record["train/episode_return"] = float(np.mean(self.returns))
            record["train/episode_frames"] = float(np.mean(self.lengths))
        record["train/episodes"] = counters["episodes"]
        record["train/updates"] = counters["updates"]
        elapsed = max(self.t_act + self.t_learn, 1e-9)
        record["perf/env_frames_per_s"] = (counters["env_frames"] - self.start_frames) / elapsed
        # serial: the share of time spent acting; async: the share the learner waited for rollouts
        record["perf/act_fraction" if source.mode == "serial" else "perf/learner_wait_fraction"] = self.t_act / elapsed
        record["actor/env_restarts"] = source.env_restarts
        if hasattr(source, "actor_restarts"):  # ray: actor processes that died and were restarted
            record["actor/restarts"] = source.actor_restarts
        if hasattr(source, "perf_metrics"):  # the actors' time (async_actors.RolloutPerf; ray: moving rollouts, params)
            record.update(source.perf_metrics())
        record["perf/wall_time_s"] = counters["wall_time"]
        return record


def _save_after_crash(
    e: BaseException,
    run_dir: Path,
    counters: dict[str, Any],
    last_ckpt_frames: int,
    ckpts: CheckpointManager,
    checkpoint: Callable[..., Path],
) -> None:
    """Keep what a crash left consistent and say how to continue."""
    if isinstance(e, KeyboardInterrupt):
        # a second Ctrl-C can land anywhere (inside optimizer.step, between the update and its counters): the
        # live state may be inconsistent, so keep the last checkpoint as it is
        print(f"interrupted; the last checkpoint is the one to resume from: {run_dir}", file=sys.stderr, flush=True)
        return
    if isinstance(e, CheckpointWriteError):
        # the file system refused the checkpoint (disk full, file size limit, permissions): another attempt fails
        # the same way, and the error's message names the intact previous checkpoint and the resume command
        return
    if counters["env_frames"] == last_ckpt_frames and ckpts.list():
        # no update since the last checkpoint: it already holds this learner state, and the actor state too
        print(
            f"{type(e).__name__} at {counters['env_frames']:,} env frames, right after a checkpoint. Fix the cause "
            f"and continue with: decoupled train --resume {run_dir}",
            file=sys.stderr,
            flush=True,
        )
        return
    # nothing is lost: the learner is consistent as of its last update (env crashes happen while acting,
    # non-finite updates are refused before the optimizer step); the actor's partial unroll is not, so this
    # checkpoint restarts the envs on resume
    try:
        path = checkpoint(with_actor=False)
        print(
            f"{type(e).__name__} at {counters['env_frames']:,} env frames; saved {path}. Fix the cause and "
            f"continue with: decoupled train --resume {run_dir}",
            file=sys.stderr,
            flush=True,
        )
    except Exception as save_error:  # noqa: BLE001
        print(f"could not write a checkpoint after the crash: {save_error}", file=sys.stderr, flush=True)


def _restore_actor(source: SerialRollouts | AsyncRollouts, snapshot: dict[str, Any] | None) -> bool:
    """Put a serial actor back where the checkpoint left it; False when there is nothing to restore into."""
    if snapshot is None or not isinstance(source, SerialRollouts):
        if not isinstance(source, SerialRollouts):
            why = f"the actors run apart from the learner ({source.mode} mode)"
        else:
            why = "the env cannot be snapshotted"
        print(
            f"resuming with new episodes: {why}, so the episodes in flight at the checkpoint are not restored",
            file=sys.stderr,
            flush=True,
        )
        return False
    try:
        source.actor.set_state(snapshot)
    except ValueError as exc:  # e.g. runner.env_groups changed since the checkpoint
        print(f"not restoring the actor's envs ({exc}): starting new episodes", file=sys.stderr, flush=True)
        return False
    return True


def make_policy_net(cfg: ConfigBase, state: dict[str, Any], spec: Any) -> torch.nn.Module:
    """The run's net for an env of `spec`, with the checkpoint `state`'s parameters, in eval mode."""
    net = get_agent(cfg.agent_name).make_net(spec, cfg.agent)
    net.load_state_dict(state["net"])
    return net.eval()


def has_checkpoints(run_dir: Path) -> bool:
    """Whether `run_dir` holds anything to resume from (`train(..., resume=True)` picks the newest that verifies)."""
    ckpt_dir = Path(run_dir) / "checkpoints"  # a lock file alone (a start that failed before training) is nothing
    return ckpt_dir.is_dir() and any(p.name.startswith("ckpt-") for p in ckpt_dir.iterdir())


def start_run(
    cfg: ConfigBase,
    run_dir: str | Path | None = None,
    evaluator: EvaluatorFactory | None = None,
    check: bool = True,
) -> dict[str, Any]:
    """Train `cfg` in a new run dir (default `runs/<agent>__<env>__<seed>__<time>`, under `$DECOUPLED_RUNS` if set);
    a dir that already holds checkpoints is refused with the command that continues it. `preflight` runs first:
    a run that cannot work is refused before the run dir exists (`check=False`: the caller ran it)."""
    run = Path(run_dir) if run_dir else Path(os.environ.get("DECOUPLED_RUNS", "runs")) / run_name(cfg)
    if has_checkpoints(run):
        raise FileExistsError(f"{run} already holds checkpoints: continue it with `decoupled train --resume {run}`")
    if check:
        preflight(cfg)
    check_writable(run)  # a dir that cannot be written: a clear error now, not a traceback at the first write
    return train(cfg, run, resume=False, evaluator=evaluator)


def resume_run(
    run_dir: str | Path, overrides: list[str] | None = None, evaluator: EvaluatorFactory | None = None
) -> dict[str, Any]:
    """Continue a run dir from its newest valid checkpoint, with its own config and dotted `overrides`.

    Overrides are checked against the checkpoint before anything is written: one that changes the shape of the net
    the checkpoint holds is refused (`ResumeOverrideError`, naming it) and the run is left as it was. The run's
    `config.yaml` takes the overrides only once the checkpoint has been restored into the new config; each resume's
    overrides are kept in `resume_history.jsonl`."""
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(f"{run} is not a run dir (no config.yaml); pass the dir `decoupled train` made")
    overrides = list(overrides or [])
    cfg = load_config(run / "config.yaml", overrides)
    check_writable(run)
    if overrides:
        preflight(cfg)
        check_resume_overrides(run, load_config(run / "config.yaml"), overrides)
    return train(cfg, run, resume=True, evaluator=evaluator, resume_overrides=overrides)


class ResumeOverrideError(ValueError):
    """A resume override that the run's checkpoint cannot be restored into (it changes the net's shapes)."""


def _shapes(net: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _shape_mismatch(expected: dict[str, tuple[int, ...]], got: dict[str, tuple[int, ...]]) -> list[str]:
    """What differs between two nets' parameter shapes, as short lines (the first few)."""
    lines = [
        f"{k}: checkpoint {list(expected[k])}, now {list(got[k])}"
        for k in expected
        if k in got and expected[k] != got[k]
    ]
    lines += [f"{k}: in the checkpoint, not in the new net" for k in expected if k not in got]
    lines += [f"{k}: in the new net, not in the checkpoint" for k in got if k not in expected]
    return lines


def check_resume_overrides(run: Path, base: ConfigBase, overrides: list[str]) -> None:
    """Refuse, before anything in `run` changes, resume overrides under which the newest checkpoint's net no longer
    fits: each such override is named with the parameters whose shapes it changes."""
    from decoupled.envs import probe_spec
    from decoupled.runners.training.config import ConfigError, apply_overrides, read_config_file, validate_config

    specs: dict[str, Any] = {}

    def meta_net(cfg: ConfigBase) -> torch.nn.Module:
        """`cfg`'s net with shapes only (torch's meta device: no memory, no random draws)."""
        key = json.dumps([cfg.env.backend, cfg.env.id, cfg.env.options()], sort_keys=True, default=str)
        if key not in specs:
            specs[key] = probe_spec(cfg.env.backend, cfg.env.id, cfg.env.options())
        agent = get_agent(cfg.agent_name)
        try:
            with torch.device("meta"):
                return agent.make_net(specs[key], cfg.agent)
        except (NotImplementedError, RuntimeError) as exc:
            if "meta" not in str(exc).lower():
                raise
        with torch.random.fork_rng(devices=[]):  # a net that computes values while built (a plug-in's): on the CPU
            return agent.make_net(specs[key], cfg.agent)

    if not has_checkpoints(run):
        return  # nothing to restore into: the run starts over under the new config
    base_net = meta_net(base)  # the checkpoint the run itself would resume from (content checked, as resume does)
    restored = CheckpointManager(run / "checkpoints").load_latest(accept=lambda st: check_net_state(base_net, st))
    if restored is None:
        return
    saved = {k: tuple(v.shape) for k, v in restored[0]["net"].items()}
    _, raw = read_config_file(run / "config.yaml")

    def misfits(cfg: ConfigBase) -> list[str]:
        """Why the checkpoint cannot be restored under `cfg`: parameter shapes, or another optimiser's state."""
        found = _shape_mismatch(saved, _shapes(meta_net(cfg)))
        if cfg.optim.name != base.optim.name:
            found.append(f"the checkpoint holds {base.optim.name}'s optimiser state, not {cfg.optim.name}'s")
        return found

    if not misfits(load_config(run / "config.yaml", overrides)):
        return
    changed: list[str] = []
    for item in overrides:  # which of them does it, one at a time against the run's own config
        try:
            alone = validate_config(apply_overrides(raw, [item]), str(run / "config.yaml"))
        except ConfigError:
            changed.append(f"  {item} (only valid with the others)")
            continue
        if alone.to_dict() == base.to_dict():
            continue
        mismatch = misfits(alone)
        if mismatch:
            more = f"; and {len(mismatch) - 3} more" if len(mismatch) > 3 else ""
            changed.append(f"  {item}: {'; '.join(mismatch[:3])}{more}")
    listed = "\n".join(changed) or "  " + " ".join(overrides) + " (together)"
    raise ResumeOverrideError(
        f"cannot resume {run} with these overrides: its checkpoint does not fit the net or optimiser they make\n"
        f"{listed}\n"
        f"Nothing in {run} was changed: resume without them (`decoupled train --resume {run}`), or start a new run "
        "with them."
    )


def train_from_files(
    config_path: str | None,
    overrides: list[str],
    run_dir: str | None,
    resume_dir: str | None,
    evaluator: EvaluatorFactory | None = None,
) -> dict[str, Any]:
    """The CLI's entry: validate before anything starts, pick the run dir, train."""
    if resume_dir is not None:
        return resume_run(resume_dir, overrides, evaluator)
    return start_run(load_config(config_path, overrides), run_dir, evaluator)
