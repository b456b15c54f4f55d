"""`decoupled bench ...`: speed measurements, printed as one JSON line per measurement.

Benchmarks, not tests: they measure on whatever machine runs them and assert nothing. Record their output in
BENCHMARKS.md with the command, the machine and the date. Each measurement repeats `--repeats` times and reports
the median, because the machines we run on are shared and noisy; peers are measured in the same run so that
ratios, not absolute numbers, carry the comparison.

    decoupled bench labyrinth [--task T] [--num-envs 4] [--seconds 10] [--repeats 3]
    decoupled bench throughput [--game Breakout] [--num-envs 16] [--seconds 30] [--repeats 3] [--only a,b]
    decoupled bench peer --algo ppo --game Pong --seconds 3600 --out DIR  # an SB3 learning curve (bench/peer.py)
    decoupled bench dni --task recall --truncation 3 --seeds 3   # BPTT vs synthetic gradients (runners/bench/dni.py)
    decoupled bench minatar --seeds 3        # impala on the five MinAtar games (runners/bench/learning.py)
    decoupled bench unreal --configs configs/unreal/minatar_breakout.yaml --seeds 3   # UNREAL vs its base agent
    decoupled bench feudal --tasks minigrid_doorkey --seeds 3   # FeUdal Networks vs the LSTM baseline, goal ablation
    decoupled bench dpd --actions 1,16              # Distilling Policy Distillation's tabular check (variants, |A|)
    decoupled bench sobolev --seeds 3             # Sobolev Training's regression functions: regular vs Sobolev
    decoupled bench transfer --targets hflip,white  # Progressive Nets vs baselines 1-4 on task variants (AUC ratios)
    decoupled bench feudal-oracle --seeds 3    # FuN's Worker follows an oracle Manager's goals (bench/feudal_checks.py)
    decoupled bench feudal-subgoals RUN        # where a trained FuN policy's sub-goals fall (key, door, goal; Fig. 2b)
    decoupled bench nav-depth --seeds 3        # the Nav agent's depth head alone, supervised (bench/nav_checks.py)
    decoupled bench nav --seeds 3              # the Nav agent vs +D2 vs +D1D2L: curves, goal timing, aux, probe
    decoupled bench backends --episodes 200   # envpool vs gymnasium + ale-py random-policy scores (bench/backends.py)

`bench throughput` measures, each in a process of its own (so that peak memory is that measurement's), in
round-robin order over the repeats (so that a noisy spell hits every measurement alike):

- `env`: envpool stepping alone with random actions, the training config's env settings;
- `impala_ff`, `impala_lstm`, `impala_dni`: `decoupled train` of `configs/impala/breakout.yaml` (feed-forward Nature
  CNN, with the LSTM core, with the synthetic-gradient `dni_lstm` core) on the game, agent steps/s from its metrics
  after a warm-up; `unreal`: the same for `configs/unreal/breakout.yaml` (the LSTM agent plus UNREAL's auxiliary
  tasks on replay; its peer is `impala_lstm`); `impala_ff_t10`: the feed-forward agent with configs/impala/pong.yaml's
  unroll of 10 and orthogonal init (half the learner batch of `impala_ff`);
- `ray_1`, `ray_2`, `ray_4`: `impala_ff` with its actors as 1, 2 or 4 Ray actors (`runner.mode: ray`, the envs split
  evenly, a local Ray started by the run; its peer is `impala_ff`, the async actor thread), plus the medians per
  rollout of the `perf/ray_*` metrics (ray_actors.RAY_PERF_METRICS: bytes per rollout and per parameter version, the
  learner's ray.wait / ray.get / copy, the actor's parameter load and unroll, the parameter ray.put, in ms; their
  peak memory is the learner process's, without the actors');
- `nav`, `impala_lstm_maze`: not on the game but on the 3D labyrinth nav_maze_static_01 (4 envs in worker
  processes, observations through shared memory): `configs/nav/nav_maze_static_01.yaml` (the navigation agent with
  its depth and loop-closure tasks) and its peer `configs/impala/nav_maze_static_01.yaml` (the LSTM IMPALA agent);
- `sb3_a2c`, `sb3_ppo`: Stable-Baselines3's A2C (CnnPolicy, 16 envs) and PPO (CnnPolicy, its Atari defaults: 8 envs,
  n_steps 128, 4 epochs, batch 256) on the same game's NoFrameskip-v4 env with SB3's Atari wrappers;
- `sf_appo`, `sf_appo_1w`, `cleanrl_ppo`: Sample Factory 2.1.1's APPO (its envpool Atari example with impala_ff's
  16 envs x unroll 20 per batch, GAE (its V-trace path crashes in 2.1.1), Nature CNN; 2 worker processes x 8
  envs, or 1 x 16) and CleanRL's ppo_atari_envpool.py (its defaults), each run by the interpreter of its own
  virtual environment (`make peers`; without it they are skipped, or refused when named in --only); their settings
  and every deviation from ours are in runners/bench/foreign.py and in each record, and their peak memory is their
  whole process tree's;

then a line of ratios. Every process imports `runners` first, so every one of them (SB3's too) runs torch with
passive OpenMP waiting (see decoupled/__init__.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from decoupled.runners.bench import BenchUsageError, emit
from decoupled.runners.bench.foreign import FOREIGN_PEERS, rate_after


def _steps_per_second(step_fn, batch: int, seconds: float, warmup: int = 20) -> float:
    for _ in range(warmup):
        step_fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step_fn()
        n += 1
    return n * batch / (time.perf_counter() - t0)


def bench_labyrinth(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Agent steps/s of the labyrinth (RGB + depth + pose, frame skip 4) in worker processes, against one env in
    this process (the peer: what a single env costs), and the maze generator's time per maze."""
    import tempfile

    from decoupled.envs.labyrinth import TASKS, LabyrinthEnv, generate_maze, write_wad

    if args.task not in TASKS:
        raise BenchUsageError(f"unknown labyrinth task {args.task!r}; --task takes one of {', '.join(TASKS)}")
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in ("01", "02", "03"):
            gen, total = [], []
            for r in range(args.repeats):
                t0 = time.perf_counter()
                layouts = [generate_maze(size, 1000 * r + k) for k in range(20)]
                t1 = time.perf_counter()
                for k, layout in enumerate(layouts):
                    write_wad([layout], f"{tmp}/m{k}.wad")
                t2 = time.perf_counter()
                gen.append((t1 - t0) / 20 * 1000)
                total.append((t2 - t0) / 20 * 1000)
            record = {"bench": "labyrinth", "what": "maze_ms", "size": size}
            record["generate_median"] = round(statistics.median(gen), 3)
            record["generate_and_write_wad_median"] = round(statistics.median(total), 3)
            out.append(emit(record))

    # the peers, round-robin over the repeats: one env in this process (no worker, no transfer), and the same
    # workers with their observations through shared memory (the default) and through the pipes
    from decoupled.envs.subproc import ProcessVecEnv

    rng = np.random.default_rng(0)
    env = LabyrinthEnv(args.task)
    workers = {
        shared: ProcessVecEnv(
            "decoupled.envs.labyrinth:LabyrinthEnv",
            args.num_envs,
            0,
            kwargs={"task": args.task},
            obs_key="rgb",
            frame_skip=4,
            shared_memory=shared,
        )  # fmt: skip
        for shared in (True, False)
    }
    single: list[float] = []
    vec: dict[bool, list[float]] = {True: [], False: []}
    try:
        env.reset(seed=0)
        for venv in workers.values():
            venv.reset()

        def one() -> None:
            _, _, te, tr, _ = env.step(int(rng.integers(8)))
            if te or tr:
                env.reset()

        for _ in range(args.repeats):
            single.append(_steps_per_second(one, 1, args.seconds))
            for shared, venv in workers.items():
                vec[shared].append(_steps_per_second(lambda v=venv: v.step(rng.integers(0, 8, v.num_envs)),
                                                     args.num_envs, args.seconds))  # fmt: skip
    finally:
        env.close()
        for venv in workers.values():
            venv.close()
    one_env = statistics.median(single)
    record = {"bench": "labyrinth", "what": "steps_per_s_single_env_in_process", "task": args.task}
    out.append(emit({**record, "median": round(one_env, 1), "runs": [round(x, 1) for x in single]}))
    for shared, what in ((True, "steps_per_s_vec_env_workers"), (False, "steps_per_s_vec_env_workers_pipes")):
        med = statistics.median(vec[shared])
        record = {"bench": "labyrinth", "what": what, "task": args.task, "num_envs": args.num_envs}
        record["observations"] = "shared memory" if shared else "pipes"
        record.update(median=round(med, 1), runs=[round(x, 1) for x in vec[shared]])
        out.append(emit({**record, "ratio_to_single_env": round(med / one_env, 2)}))
    return out


# ------------------------------------------------------------------------------------------------- throughput
THROUGHPUT_CONFIG = "configs/impala/breakout.yaml"
# name -> overrides of THROUGHPUT_CONFIG for the training measurements
TRAIN_VARIANTS: dict[str, list[str]] = {
    "impala_ff": [],
    "impala_lstm": ["agent.core=lstm", "agent.lstm_size=256"],
    "impala_dni": ["agent.core=dni_lstm", "agent.lstm_size=256"],
    "impala_ff_t10": ["runner.unroll_length=10", "agent.init=orthogonal"],  # the Pong recipe's learner batches
}
# training measurements with a config of their own (the same game and env count are set on them)
VARIANT_CONFIGS: dict[str, str] = {"unreal": "configs/unreal/breakout.yaml", "feudal": "configs/feudal/frostbite.yaml"}
TRAIN_VARIANTS["unreal"] = []
TRAIN_VARIANTS["feudal"] = []  # FeUdal Networks with its config's 100-step unroll
# policy distillation: a student of the same Nature-CNN net learning on-policy from a Nature-CNN teacher (a freshly
# initialised IMPALA net saved as a run: its speed is that of any trained one), without and with the Sobolev term
TRAIN_VARIANTS["distill"] = ["agent.name=distill", "agent.variant=on_policy_distill"]
TRAIN_VARIANTS["distill_sobolev"] = [*TRAIN_VARIANTS["distill"], "agent.sobolev_cost=1.0"]
# impala_ff (the async actor thread of THROUGHPUT_CONFIG) with its actors as 1, 2 or 4 Ray actors instead: the same
# envs (env.num_envs split evenly), unroll and queue size per actor, on a local Ray started by the run (its start-up
# and the actors' lie in the warm-up). Each actor asks Ray for 1 CPU, or an even share of the machine's CPUs when
# they are fewer than the actors (Ray refuses more than it has).
RAY_ACTORS = {"ray_1": 1, "ray_2": 2, "ray_4": 4}
for _name, _n in RAY_ACTORS.items():
    TRAIN_VARIANTS[_name] = ["runner.mode=ray", f"runner.num_actors={_n}"]
# impala_ff with its actors as processes on this machine (rollouts and parameters in shared memory), as many as
# `runner.num_actors: auto` gives for the cores (one per core beyond the learner's), single-threaded torch in each,
# the learner's torch on the cores they leave (1 of 2 here)
TRAIN_VARIANTS["impala_ff_proc"] = ["runner.mode=processes"]
TRAIN_VARIANTS["impala_ff_1t"] = ["runner.torch_threads=1"]  # the async actor thread, single-threaded torch
OURS_FF = ("impala_ff", "impala_ff_proc", "impala_ff_1t")  # each compared with the peers
# measurements on a 3D labyrinth instead of the game: their configs keep their own env (nav_maze_static_01, 4 envs in
# worker processes); `nav` (the navigation agent with its depth and loop-closure tasks) against `impala_lstm_maze`
# (the LSTM IMPALA agent on the same maze, configs/impala/nav_maze_static_01.yaml)
OWN_ENV: dict[str, str] = {
    "nav": "configs/nav/nav_maze_static_01.yaml",
    "impala_lstm_maze": "configs/impala/nav_maze_static_01.yaml",
}
for _name, _config in OWN_ENV.items():
    VARIANT_CONFIGS[_name] = _config
    TRAIN_VARIANTS[_name] = ["env.num_envs=4"]
# the actor-side perf/ metrics of async_actors.RolloutPerf whose medians a training measurement reports
ACTOR_PERF_METRICS = (
    "perf/actor_env_wait_ms", "perf/actor_act_ms", "perf/actor_param_pull_ms", "perf/actor_queue_put_ms",
    "perf/process_cpu_share", "perf/machine_load_1min", "perf/cpu_steal_fraction",
)  # fmt: skip
# last, other projects' trainers, each in a virtual environment of its own (runners/bench/foreign.py; `make peers`)
THROUGHPUT_MEASUREMENTS = ("env", *TRAIN_VARIANTS, "sb3_a2c", "sb3_ppo", "breakdown", *FOREIGN_PEERS)


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


class _TreeMemory:
    """The peak resident memory of this process and its children (actor processes, env workers), sampled every
    half second in a thread while the block runs: how the foreign peers' memory is measured too."""

    def __enter__(self) -> _TreeMemory:
        import threading

        from decoupled.runners.bench.foreign import _tree_rss_mb

        self.peak_mb, self._stop = 0.0, threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                self.peak_mb = max(self.peak_mb, _tree_rss_mb(os.getpid()))
                self._stop.wait(0.5)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


def _config_path(name: str) -> str:
    from decoupled.configs import resolve

    return str(resolve(name))  # a path, or a packaged config (configs/impala/breakout.yaml from any directory)


def _measure_env(a: dict[str, Any]) -> dict[str, Any]:
    from decoupled.envs import make_vec_env
    from decoupled.runners.training.config import load_config

    cfg = load_config(_config_path(a["config"]), [f"env.id={a['game']}", f"env.num_envs={a['num_envs']}"])
    env = make_vec_env(cfg.env.backend, cfg.env.id, cfg.env.num_envs, 0, options=cfg.env.options())
    rng = np.random.default_rng(0)
    n, A = env.num_envs, env.spec.num_actions
    try:
        env.reset(seed=0)
        sps = _steps_per_second(lambda: env.step(rng.integers(0, A, n)), n, a["seconds"], warmup=100)
    finally:
        env.close()
    return {"steps_per_s": sps}


def _measure_train(a: dict[str, Any]) -> dict[str, Any]:
    import json as json_mod
    import tempfile

    from decoupled.runners.training.config import load_config
    from decoupled.runners.training.ray_actors import RAY_PERF_METRICS
    from decoupled.runners.training.train import train

    game = [] if a["what"] in OWN_ENV else [f"env.id={a['game']}", f"env.num_envs={a['num_envs']}"]
    overrides = [
        *game,
        "runner.total_env_frames=1000000000",
        f"runner.max_wall_seconds={a['warmup'] + a['seconds']}",
        "runner.log_every_env_frames=1",  # a record per update: a loaded machine still gives a rate in a short window
        "runner.progress_every_seconds=1000000",
        "runner.checkpoint_every_env_frames=1000000000",
        "runner.checkpoint_every_seconds=null",
        "wandb.mode=disabled",
        *TRAIN_VARIANTS[a["what"]],
    ]
    if a["what"] in RAY_ACTORS:
        cpus = os.cpu_count() or 1
        overrides.append(f"runner.ray.num_cpus_per_actor={min(1.0, cpus / RAY_ACTORS[a['what']]):g}")
    with tempfile.TemporaryDirectory() as tmp, _TreeMemory() as memory:
        if a["what"].startswith("distill"):
            overrides.append(f"agent.teachers=[{_teacher_run(a, f'{tmp}/teacher')}]")
        cfg = load_config(_config_path(VARIANT_CONFIGS.get(a["what"], a["config"])), overrides)
        train(cfg, f"{tmp}/run")
        recs = [json_mod.loads(line) for line in open(f"{tmp}/run/metrics.jsonl")]
        frame_skip = json_mod.load(open(f"{tmp}/run/env_settings.json"))["frame_skip"]
    after = [r for r in recs if r["perf/wall_time_s"] >= a["warmup"]]
    recs = after if len(after) >= 2 else recs[-2:]  # a slow machine: the last window
    if len(recs) < 2:
        raise RuntimeError(f"{a['what']}: fewer than two metrics records; raise --seconds")
    # the rate and its steadiness (last third of the window against the first) as the foreign peers' are computed
    points = [(r["perf/wall_time_s"], r["env_frames"] // frame_skip) for r in recs]
    out = {**rate_after(points, points[0][0]), "mode": cfg.runner.mode, "env_groups": cfg.runner.env_groups}
    out["peak_rss_mb"] = round(max(memory.peak_mb, _peak_rss_mb()), 1)  # the actor processes' memory included
    lags = [r["train/policy_lag"] for r in recs if "train/policy_lag" in r]
    if lags:
        out["policy_lag_mean"] = round(float(np.mean(lags)), 2)
    waits = [r["perf/learner_wait_fraction"] for r in recs if "perf/learner_wait_fraction" in r]
    if waits:
        out["learner_wait_fraction"] = round(float(np.mean(waits)), 3)
    for key in ACTOR_PERF_METRICS:  # where the actors' time went, and the CPU the process got (RolloutPerf)
        values = [r[key] for r in recs if key in r]
        if values:
            out[key.removeprefix("perf/")] = round(float(np.median(values)), 3)
    if cfg.runner.mode in ("processes", "ray"):
        out["num_actors"] = cfg.runner.num_actors
    if cfg.runner.mode == "ray":  # a record per update, one rollout each: medians per rollout (per version: put)
        out["num_cpus_per_actor"] = cfg.runner.ray.num_cpus_per_actor
        for key in RAY_PERF_METRICS:
            values = [r[key] for r in recs if key in r]
            if not values:
                continue
            name = key.removeprefix("perf/")
            if name.endswith("_bytes"):
                out[name] = int(np.median(values))
            else:  # milliseconds: the medians over repeats keep 4 decimals
                out[name.removesuffix("_s") + "_ms"] = round(float(np.median(values)) * 1000.0, 4)
    return out


def _teacher_run(a: dict[str, Any], run_dir: str) -> str:
    """A run dir holding a freshly initialised net of the throughput config (a teacher for the distill variants)."""
    import torch

    from decoupled.agents import get_agent
    from decoupled.envs import make_vec_env
    from decoupled.runners.training.checkpoint import CheckpointManager
    from decoupled.runners.training.config import dump_config, load_config

    cfg = load_config(_config_path(a["config"]), [f"env.id={a['game']}", "wandb.mode=disabled"])
    env = make_vec_env(cfg.env.backend, cfg.env.id, 1, 0, mode="eval", options=cfg.env.options())
    try:
        net = get_agent(cfg.agent_name).make_net(env.spec, cfg.agent)
    finally:
        env.close()
    Path(run_dir).mkdir(parents=True)
    dump_config(cfg, Path(run_dir) / "config.yaml")
    with torch.no_grad():
        CheckpointManager(Path(run_dir) / "checkpoints").save(0, {"net": net.state_dict()})
    return run_dir


def _measure_breakdown(a: dict[str, Any]) -> dict[str, Any]:
    """Where one agent step's time goes: each part of the feed-forward training step timed alone, in one process,
    in milliseconds per agent step (16 envs, unroll 20), parts interleaved so that noise hits them alike."""
    import torch

    from decoupled.agents import get_agent
    from decoupled.envs import make_vec_env
    from decoupled.runners.training.actor_learner import Actor, net_inputs, rollout_to_batch, sample_actions
    from decoupled.runners.training.async_actors import ParamSnapshot
    from decoupled.runners.training.config import load_config
    from decoupled.runners.training.train import make_learner

    cfg = load_config(_config_path(a["config"]), [f"env.id={a['game']}", f"env.num_envs={a['num_envs']}"])
    env = make_vec_env(cfg.env.backend, cfg.env.id, cfg.env.num_envs, 0, options=cfg.env.options())
    agent = get_agent(cfg.agent_name)
    nets = {
        layout: agent.make_net(env.spec, cfg.agent.model_copy(update={"channels_last": layout}))
        for layout in (True, False)
    }
    net = nets[True]
    learner = make_learner(cfg, agent, net, torch.device("cpu"))
    learner_nchw = make_learner(cfg, agent, nets[False], torch.device("cpu"))
    actor = Actor([env], net, cfg.runner.unroll_length, torch.device("cpu"))
    B, T = env.num_envs, cfg.runner.unroll_length
    rng = np.random.default_rng(0)
    try:
        actor.start(0)
        rollout = actor.unroll()
        obs = rollout["data"]["obs"][-1:]
        first, prev_a, prev_r = np.zeros((1, B), bool), np.zeros((1, B), np.int64), np.zeros((1, B), np.float32)
        snapshot, actor_net = ParamSnapshot(), agent.make_net(env.spec, cfg.agent)

        def env_step():
            env.step(rng.integers(0, env.spec.num_actions, B))

        def act():
            with torch.inference_mode():
                out, _ = net(net_inputs(obs, first, prev_a, prev_r, "cpu"), ())
                sample_actions(out["policy_logits"][0]).numpy()

        def copies():  # the rollout message copy the actor makes, and the learner's numpy -> torch batch
            msg = {**rollout, "data": {k: v.copy() for k, v in rollout["data"].items()}}
            rollout_to_batch(msg, torch.device("cpu"))

        def params():  # the learner publishes, the actor pulls (every update)
            snapshot.publish(net, snapshot.version + 1)
            snapshot.pull(actor_net, -1)

        parts = {  # name -> (one call, agent steps it stands for)
            "env_step": (env_step, B),
            "act_forward_sample": (act, B),
            "learn_update": (lambda: learner.step(rollout), T * B),
            "learn_update_nchw": (lambda: learner_nchw.step(rollout), T * B),
            "rollout_copies": (copies, T * B),
            "param_publish_pull": (params, T * B),
        }
        times: dict[str, list[float]] = {k: [] for k in parts}
        deadline = time.perf_counter() + a["seconds"]
        while time.perf_counter() < deadline:
            for name, (fn, _) in parts.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    finally:
        env.close()
    out: dict[str, Any] = {}
    for name, (_, steps_per_call) in parts.items():
        xs = times[name][2:] or times[name]  # the first calls warm caches up
        out[f"{name}_ms_per_step"] = round(1000 * statistics.median(xs) / steps_per_call, 4)
    in_training = ["env_step", "act_forward_sample", "learn_update", "rollout_copies", "param_publish_pull"]
    total = sum(out[f"{k}_ms_per_step"] for k in in_training)
    out["sum_ms_per_step"] = round(total, 4)
    out["steps_per_s"] = round(1000 / total, 1)  # if the parts ran one after another, each alone on the machine
    return out


def _measure_sb3(a: dict[str, Any]) -> dict[str, Any]:
    import ale_py
    import gymnasium as gym
    import torch
    from stable_baselines3 import A2C, PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)
    ppo = a["what"] == "sb3_ppo"
    n_envs = 8 if ppo else 16  # rl-baselines3-zoo's Atari hyperparameters (atari: n_envs)
    env = VecFrameStack(make_atari_env(f"{a['game']}NoFrameskip-v4", n_envs=n_envs, seed=0), n_stack=4)

    class Clock(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.t0 = time.perf_counter()
            self.start: tuple[float, int] | None = None
            self.end: tuple[float, int] | None = None

        def _on_step(self) -> bool:
            now = time.perf_counter() - self.t0
            if self.start is None and now >= a["warmup"]:
                self.start = (now, self.num_timesteps)
            if self.start is not None:
                self.end = (now, self.num_timesteps)
            return now < a["warmup"] + a["seconds"]

    if ppo:  # rl-baselines3-zoo hyperparams/ppo.yml, atari
        model = PPO(
            "CnnPolicy", env, n_steps=128, n_epochs=4, batch_size=256, learning_rate=2.5e-4, clip_range=0.1,
            vf_coef=0.5, ent_coef=0.01, device="cpu", seed=0, verbose=0,
        )  # fmt: skip
    else:  # rl-baselines3-zoo hyperparams/a2c.yml, atari
        model = A2C(
            "CnnPolicy", env, ent_coef=0.01, vf_coef=0.25, device="cpu", seed=0, verbose=0,
            policy_kwargs={"optimizer_class": torch.optim.RMSprop, "optimizer_kwargs": {"eps": 1e-5, "alpha": 0.99}},
        )  # fmt: skip
    clock = Clock()
    model.learn(total_timesteps=10**9, callback=clock)
    env.close()
    if clock.start is None or clock.end is None or clock.end[1] <= clock.start[1]:
        raise RuntimeError(f"{a['what']}: no steps after the warm-up; raise --seconds")
    return {"steps_per_s": (clock.end[1] - clock.start[1]) / (clock.end[0] - clock.start[0]), "num_envs": n_envs}


def _throughput_worker(a: dict[str, Any]) -> dict[str, Any]:
    what = a["what"]
    if what == "env":
        out = _measure_env(a)
    elif what in TRAIN_VARIANTS:
        out = _measure_train(a)
    elif what in ("sb3_a2c", "sb3_ppo"):
        out = _measure_sb3(a)
    elif what == "breakdown":
        out = _measure_breakdown(a)
    elif what in FOREIGN_PEERS:
        from decoupled.runners.bench import foreign

        out = foreign.measure(a)  # its peak memory is the peer's process tree's, not this process's
    else:
        raise ValueError(f"unknown measurement {what!r}; choose from {', '.join(THROUGHPUT_MEASUREMENTS)}")
    out.setdefault("peak_rss_mb", round(_peak_rss_mb(), 1))
    return out


NEIGHBOUR_CODE = "# decoupled bench neighbour\nwhile True: pass"


def _die_with_parent() -> None:
    """In a child before it runs: SIGKILL it when its parent dies (Linux), so no neighbour outlives a killed bench."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class _Neighbours:
    """`n` other processes busy for as long as the block runs: a machine shared with other work, the same for every
    measurement of the round robin. `kind` "spin": each keeps one CPU core busy with a Python loop; "train": each is a
    second training of THROUGHPUT_CONFIG (our async mode: an actor thread, envpool's threads and torch's), the kind of
    neighbour a researcher's own other run is."""

    def __init__(self, n: int, kind: str = "spin"):
        self.n, self.kind, self.procs = n, kind, []
        self.tmp: str | None = None

    def __enter__(self) -> _Neighbours:
        import subprocess
        import tempfile

        cmds = [[sys.executable, "-c", NEIGHBOUR_CODE]] * self.n
        if self.kind == "train" and self.n:
            self.tmp = tempfile.mkdtemp(prefix="decoupled-bench-neighbour-")
            train = [sys.executable, "-m", "decoupled", "train", _config_path(THROUGHPUT_CONFIG), "wandb.mode=disabled"]
            train += ["runner.total_env_frames=1000000000000", "runner.checkpoint_every_env_frames=1000000000000"]
            train += ["runner.checkpoint_every_seconds=null", "logger.tensorboard=false"]
            cmds = [[*train, "--run-dir", f"{self.tmp}/run{i}"] for i in range(self.n)]
        quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        self.procs = [subprocess.Popen(c, preexec_fn=_die_with_parent, **quiet) for c in cmds]
        return self

    def __exit__(self, *exc: object) -> None:
        import shutil

        for proc in self.procs:
            proc.kill()
            proc.wait(timeout=10)
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _run_worker(a: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """One measurement in a fresh interpreter; its last stdout line is the JSON result."""
    import subprocess

    cmd = [sys.executable, "-m", "decoupled.runners.bench.commands", "--throughput-worker", json.dumps(a)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise RuntimeError(f"bench throughput: {a['what']} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_throughput(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Agent steps/s of env stepping, our training and SB3's on one Atari game; medians over repeats; ratios."""
    import platform

    from decoupled.runners.bench.peer import check_game
    from decoupled.runners.training.config import load_config

    whats = [w.strip() for w in args.only.split(",") if w.strip()] if args.only else list(THROUGHPUT_MEASUREMENTS)
    unknown = [w for w in whats if w not in THROUGHPUT_MEASUREMENTS]
    if unknown or not whats:
        raise BenchUsageError(
            f"unknown measurement(s) {', '.join(unknown) or repr(args.only)}; --only takes a comma-separated subset of "
            f"{', '.join(THROUGHPUT_MEASUREMENTS)}"
        )
    from decoupled.runners.bench.foreign import PeerUnavailable, peer_python

    for what in [w for w in whats if w in FOREIGN_PEERS]:  # other projects' peers need their own venvs
        try:
            peer_python(what)
        except PeerUnavailable as e:
            if args.only:  # asked for by name: a usage error that says how to build it
                raise BenchUsageError(str(e)) from None
            whats.remove(what)
            print(f"bench throughput: skipping {e}", file=sys.stderr)
    check_game(args.game)  # before any measurement starts (each runs in a process of its own)
    load_config(_config_path(args.config), [f"env.id={args.game}", f"env.num_envs={args.num_envs}"])  # ConfigError
    runs: dict[str, list[dict[str, Any]]] = {w: [] for w in whats}
    base = {"game": args.game, "num_envs": args.num_envs, "seconds": args.seconds, "warmup": args.warmup}
    base["config"] = args.config
    with _Neighbours(args.neighbours, args.neighbour_kind):
        for r in range(args.repeats):
            for what in whats:
                result = _run_worker({**base, "what": what}, timeout_s=args.warmup + args.seconds + 300)
                runs[what].append(result)
                print(json.dumps({"bench": "throughput", "what": what, "repeat": r, **result}), file=sys.stderr)
    out = []
    medians: dict[str, float] = {}
    for what in whats:
        sps = [x["steps_per_s"] for x in runs[what]]
        medians[what] = statistics.median(sps)
        record = {"bench": "throughput", "what": what, "game": args.game, "median_steps_per_s": round(medians[what], 1)}
        record["runs"] = [round(x, 1) for x in sps]
        record["peak_rss_mb_max"] = max(x["peak_rss_mb"] for x in runs[what])
        extras = {}
        for k, v in runs[what][-1].items():
            if k in ("steps_per_s", "peak_rss_mb"):
                continue
            values = [x.get(k) for x in runs[what]]
            nums = [x for x in values if isinstance(x, int | float) and not isinstance(x, bool)]
            numeric = bool(nums) and len(nums) + values.count(None) == len(values)  # None: a repeat could not tell
            extras[k] = round(statistics.median(nums), 4) if numeric else v
        record.update(extras)
        if what in OWN_ENV:
            record["game"], record["num_envs"] = "nav_maze_static_01", 4
        elif what in TRAIN_VARIANTS or what == "env":
            record["num_envs"] = args.num_envs
        out.append(emit(record))
    pairs = [
        ("impala_ff", "sb3_a2c"),
        ("impala_ff", "sb3_ppo"),
        ("impala_lstm", "impala_ff"),
        ("impala_dni", "impala_lstm"),
        ("unreal", "impala_lstm"),
        ("feudal", "impala_lstm"),
        ("nav", "impala_lstm_maze"),  # on the labyrinth
        ("distill", "impala_ff"),
        ("distill_sobolev", "distill"),  # the Sobolev term's cost per training step
        ("impala_ff_t10", "impala_ff"),
        ("impala_ff", "env"),
        ("impala_ff", "breakdown"),
        *((name, "impala_ff") for name in RAY_ACTORS),  # Ray actors against the async actor thread
        *((name, "impala_ff") for name in OURS_FF[1:]),  # actor processes, single-threaded torch
        *((ours, name) for ours in OURS_FF for name in FOREIGN_PEERS),  # ours against other projects' trainers
    ]
    ratios = {f"{a}/{b}": round(medians[a] / medians[b], 3) for a, b in pairs if a in medians and b in medians}
    sf = [w for w in ("sf_appo", "sf_appo_1w") if w in medians]
    for ours in [w for w in OURS_FF if w in medians and sf]:  # against Sample Factory's faster setting in this run
        ratios[f"{ours}/sf_best"] = round(medians[ours] / max(medians[w] for w in sf), 3)
    game = "nav_maze_static_01" if all(w in OWN_ENV for w in whats) else args.game
    summary = {"bench": "throughput", "what": "ratios", "game": game, **ratios, "neighbours": args.neighbours}
    if args.neighbours:
        summary["neighbour_kind"] = args.neighbour_kind
    summary["machine"] = f"{platform.machine()}, {os.cpu_count()} cpus"
    summary["repeats"], summary["seconds"], summary["warmup"] = args.repeats, args.seconds, args.warmup
    out.append(emit(summary))
    return out


def _usage_errors(run: Any) -> Any:
    """A bench command function whose bad arguments (`BenchUsageError`, a `ConfigError`, a `SystemExit` with a
    message) are answered as usage errors: the message on stderr, exit 2, no traceback."""

    def checked(args: argparse.Namespace) -> int:
        from decoupled.runners.training.config import ConfigError

        try:
            return run(args)
        except (BenchUsageError, ConfigError) as e:
            message = str(e)
        except SystemExit as e:
            if not isinstance(e.code, str):
                raise
            message = e.code
        print(f"decoupled bench {args.bench}: {message.removeprefix(f'bench {args.bench}: ')}", file=sys.stderr)
        return 2

    return checked


def add_parser(sub: Any) -> None:
    from decoupled.runners.evaluation import non_negative_int, positive_float, positive_int

    b = sub.add_parser("bench", help="speed benchmarks (JSON lines; record them in BENCHMARKS.md)")
    bsub = b.add_subparsers(dest="bench", required=True)
    lab = bsub.add_parser("labyrinth", help="labyrinth env steps/s (workers vs one env) and maze generation time")
    lab.add_argument("--task", default="nav_maze_static_01")
    lab.add_argument("--num-envs", type=positive_int, default=4)
    lab.add_argument("--seconds", type=positive_float, default=10.0, help="per repeat")
    lab.add_argument("--repeats", type=positive_int, default=3)
    lab.set_defaults(func=lambda a: (bench_labyrinth(a), 0)[1])
    tp = bsub.add_parser(
        "throughput",
        help="Atari agent steps/s: env alone, our agents (impala, unreal, feudal, distill), SB3, Sample Factory, "
        "CleanRL; ratios",
    )
    tp.add_argument("--game", default="Breakout")
    tp.add_argument(
        "--num-envs", type=positive_int, default=16, help="envs of our training and of the env-only measurement"
    )
    tp.add_argument("--seconds", type=positive_float, default=30.0, help="measured seconds per repeat, after warm-up")
    tp.add_argument("--warmup", type=float, default=15.0, help="seconds before measuring (start-up, first updates)")
    tp.add_argument("--repeats", type=positive_int, default=3)
    tp.add_argument("--config", default=THROUGHPUT_CONFIG, help="the training config of the impala_* measurements")
    tp.add_argument("--only", help=f"comma-separated subset of: {', '.join(THROUGHPUT_MEASUREMENTS)}")
    tp.add_argument(
        "--neighbours",
        type=non_negative_int,
        default=0,
        help="keep this many other processes busy during every measurement (a shared machine)",
    )
    tp.add_argument(
        "--neighbour-kind",
        choices=("spin", "train"),
        default="spin",
        help="spin: each neighbour keeps one core busy (a Python loop); train: each is a second training of the "
        "throughput config",
    )
    tp.set_defaults(func=lambda a: (bench_throughput(a), 0)[1])
    from decoupled.runners.bench import peer

    pp = bsub.add_parser("peer", help="train an SB3 peer (PPO/A2C, zoo Atari defaults) for a wall-clock budget; eval")
    peer.add_arguments(pp)
    pp.set_defaults(func=lambda a: (peer.train_peer(a), 0)[1])
    from decoupled.runners.bench import dni as bench_dni

    dn = bsub.add_parser(
        "dni", help="DNI vs truncated BPTT: the paper's recall/copy tasks (longest dependency), RL delayed cue (curves)"
    )
    bench_dni.add_arguments(dn)
    dn.set_defaults(func=lambda a: (bench_dni.bench_dni(a), 0)[1])
    from decoupled.runners.bench import learning as bench_learning

    mn = bsub.add_parser("minatar", help="impala on the five MinAtar games, seeds, curves, vs the paper's DQN")
    bench_learning.add_arguments(mn, "minatar")
    mn.set_defaults(func=lambda a: (bench_learning.bench_minatar(a), 0)[1])
    un = bsub.add_parser("unreal", help="UNREAL vs its base agent (auxiliary weights 0) at equal frames, seeds, curves")
    bench_learning.add_arguments(un, "unreal")
    un.set_defaults(func=lambda a: (bench_learning.bench_unreal(a), 0)[1])
    fu = bsub.add_parser("feudal", help="FeUdal Networks vs the paper's LSTM baseline at equal frames, goal ablation")
    bench_learning.add_arguments(fu, "feudal")
    fu.set_defaults(func=lambda a: (bench_learning.bench_feudal(a), 0)[1])
    na = bsub.add_parser("nav", help="the Nav agent: LSTM vs +D2 vs +D1D2L at equal frames, seeds; goals, aux, probe")
    bench_learning.add_arguments(na, "nav")
    na.set_defaults(func=lambda a: (bench_learning.bench_nav(a), 0)[1])
    di = bsub.add_parser("distill", help="policy distillation methods from one teacher at equal frames, seeds")
    bench_learning.add_arguments(di, "distill")
    di.set_defaults(func=lambda a: (bench_learning.bench_distill(a), 0)[1])
    dm = bsub.add_parser("distill-multi", help="one student for several MinAtar games, each with its own teacher")
    bench_learning.add_arguments(dm, "distill-multi")
    dm.set_defaults(func=lambda a: (bench_learning.bench_distill_multi(a), 0)[1])
    dp = bsub.add_parser("dpd", help="Distilling Policy Distillation's tabular check through the distill agent's loss")
    from decoupled.runners.bench import dpd as bench_dpd

    bench_dpd.add_arguments(dp)
    dp.set_defaults(func=lambda a: (bench_dpd.bench_dpd(a), 0)[1])
    sb = bsub.add_parser(
        "sobolev", help="Sobolev Training's regression on 7 test functions: regular vs (stochastic) Sobolev"
    )
    from decoupled.runners.bench import sobolev as bench_sobolev

    bench_sobolev.add_arguments(sb)
    sb.set_defaults(func=lambda a: (bench_sobolev.bench_sobolev(a), 0)[1])
    tr = bsub.add_parser("transfer", help="Progressive Nets' transfer matrix: source column, baselines 1-4, seeds")
    bench_learning.add_arguments(tr, "transfer")
    tr.set_defaults(func=lambda a: (bench_learning.bench_transfer(a), 0)[1])
    fo = bsub.add_parser("feudal-oracle", help="FuN's Worker alone: does it learn to follow an oracle Manager's goals?")
    fo.add_argument("--seeds", type=int, default=3)
    fo.add_argument("--frames", type=int, default=400_000, help="env frames (agent steps) per seed")
    fo.add_argument("--manager-frames", type=int, default=0, help="then train FuN's Manager above it (0: no)")
    fo.add_argument("--eval-episodes", type=int, default=200, help="evaluation of the Manager, own vs random goals")
    fo.add_argument("--jobs", type=int, default=2, help="seeds trained in parallel (one process each)")
    fo.add_argument("--out", default="runs/bench_feudal_oracle")

    def feudal_check(name: str):
        def run(a: argparse.Namespace) -> int:
            from decoupled.runners.bench import feudal_checks  # imports torch and gymnasium: only when asked for

            getattr(feudal_checks, name)(a)
            return 0

        return run

    fo.set_defaults(func=feudal_check("bench_feudal_oracle"))
    fs = bsub.add_parser("feudal-subgoals", help="where a trained FuN policy's sub-goals fall on MiniGrid (Fig. 2b)")
    fs.add_argument("run", help="a FuN run dir (or checkpoint) on a MiniGrid task")
    fs.add_argument("--episodes", type=int, default=20)
    fs.add_argument("--seed", type=int, default=0)
    fs.add_argument("--tolerance", type=int, default=1, help="steps either side of an event that count as at it")
    fs.add_argument("--out", help="the figure (default: RUN/subgoals.png)")
    fs.set_defaults(func=feudal_check("bench_feudal_subgoals"))
    nd = bsub.add_parser("nav-depth", help="the Nav agent's D1 depth head alone, supervised on random-walk frames")
    nd.add_argument("--config", default="nav/nav_maze_small_static", help="a nav config (path or packaged name)")
    nd.add_argument("--task", help="a labyrinth task replacing the config's env.id (its other env settings stay)")
    nd.add_argument("--seeds", type=int, default=3)
    nd.add_argument("--train-frames", type=int, default=20_000, help="random-walk observations to train on, per seed")
    nd.add_argument("--test-frames", type=int, default=4_000, help="held-out observations (other episodes), per seed")
    nd.add_argument("--steps", type=int, default=4_000, help="optimiser steps per seed")
    nd.add_argument("--batch-size", type=int, default=64, help="frames per optimiser step")
    nd.add_argument("--lr", type=float, default=5e-4, help="Adam's learning rate")
    nd.add_argument("--eval-every", type=int, help="steps between test evaluations (default: steps / 20)")
    nd.add_argument("--num-envs", type=int, default=2, help="env worker processes collecting the frames")
    nd.add_argument("--torch-threads", type=int, default=1)
    nd.add_argument("--out", default="runs/bench_nav_depth", help="folder of the figure nav_depth.png")

    def nav_check(a: argparse.Namespace) -> int:
        from decoupled.runners.bench import nav_checks  # imports torch and the labyrinth: only when asked for

        nav_checks.bench_nav_depth(a)
        return 0

    nd.set_defaults(func=nav_check)
    from decoupled.runners.bench import backends as bench_backends

    be = bsub.add_parser(
        "backends", help="do envpool and gymnasium + ale-py give the same random-policy scores? (per game, protocol)"
    )
    bench_backends.add_arguments(be)
    be.set_defaults(func=lambda a: (bench_backends.bench_backends(a), 0)[1])
    for command in bsub.choices.values():  # every bench command: a bad argument is exit 2 with its message
        command.set_defaults(func=_usage_errors(command.get_default("func")))


if __name__ == "__main__":  # one throughput measurement in its own process (see _run_worker)
    if len(sys.argv) == 3 and sys.argv[1] == "--throughput-worker":
        print(json.dumps(_throughput_worker(json.loads(sys.argv[2]))), flush=True)
    else:
        raise SystemExit(
            "usage: python -m decoupled.runners.bench.commands --throughput-worker JSON "
            "(for `decoupled bench throughput`)"
        )
