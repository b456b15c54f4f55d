"""`decoupled bench feudal-oracle`: does FeUdal Networks' Worker learn to follow goals? (the Worker half of FuN,
checked on its own, end to end through the training runner)

    decoupled bench feudal-oracle [--seeds 3] [--frames 400000] [--manager-frames 0] [--jobs 2] [--out DIR]

Vezhnevets et al. 2017 (arXiv:1703.01161) train the Worker on r + alpha r^I, where the intrinsic reward r^I_t is the
mean over i = 1..c of d_cos(s_t - s_{t-i}, g_{t-i}) (eq. 8): the Worker is paid for moving the Manager's state s in
the goals' directions. This benchmark takes the Manager's learning out of the question, to see whether the Worker's
side alone (the action embedding U, the goal embedding phi, the pooling of the last c goals and r^I, in
agents/feudal.py) makes a Worker follow goals:

- the env is an open 15 x 15 grid with four moves, a random start and no reward (`OpenGrid-v0`, 60 steps);
- the Manager's state space is replaced by the agent's position, s = (x, y) / 15, and the Manager by an oracle that
  every c = 10 steps of an episode draws a unit goal direction and holds it (a hash of the position and the step,
  so the learner recomputes exactly the goals the actor acted on);
- the Worker is the agent's own (`agent: feudal` with alpha = 1, gamma_W = 0.95, the Manager's losses weighted 0),
  trained by `decoupled train` on r^I alone.

It prints, per seed, `feudal/goal_cosine` (the mean d_cos(s_{t+c} - s_t, g_t) of the training batches, with
zero-length transitions counted as 0) at the first update (the untrained policy's batch) and over the last 10% of
the frames, and the same for the
intrinsic reward, and draws the curves (`--out/feudal_oracle.png`). For scale it also plays two policies that need
no training on the same grid and goals (`reference_cosines`): uniform random moves give about 0, and a hand-written
follower that takes the move closest to the current goal about 0.26 (walls stop it, and 9 of 10 windows
[t, t + c] straddle a goal switch, which a policy can only meet by weighing the goals it has seen, as the Worker's
pooled goal embedding lets it).

With `--manager-frames N` a second run per seed then trains FuN's own Manager (its dilated LSTM on the position,
the transition policy gradient with gamma_M = 0.99) above that seed's Worker, frozen, on a grid that pays 1 for
reaching the east wall, and evaluates it with its goals and with random goals (`oracle/goal_east`: how much the
goals point east). BENCHMARKS.md says what this showed: the Manager, whose 2-d dilated LSTM starts out pointing
its goals one way, gets almost no reward to learn from under the paper's small goal-exploration probability, and
turns only slowly.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing as mp
import statistics
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from pydantic import Field
from torch import nn

from decoupled.agents import get_agent, register_agent
from decoupled.agents.feudal import FeudalConfig, FeudalNet, feudal_loss
from decoupled.envs.base import EnvSpec
from decoupled.runners.bench import emit

GRID = 15
ENV_ID = "OpenGrid-v0"
EAST_ENV_ID = "OpenGridEast-v0"
WORKER_PARTS = ("torso", "worker", "action_embedding", "worker_value", "goal_embedding")
MOVES = np.array([(0, -1), (1, 0), (0, 1), (-1, 0)])  # north, east, south, west


class OpenGridEnv(gym.Env):
    """An open `size` x `size` grid: four moves (a move into a wall stays put), a uniformly random start, reward 0.
    The observation is the position scaled to [0, 1): (x, y) / size."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, size: int = GRID):
        self.size = size
        self.observation_space = gym.spaces.Box(0.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(4)
        self.pos = np.zeros(2, np.int64)

    def _obs(self) -> np.ndarray:
        return (self.pos / self.size).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.pos = self.np_random.integers(0, self.size, 2)
        return self._obs(), {}

    def step(self, action: int):
        self.pos = np.clip(self.pos + MOVES[int(action)], 0, self.size - 1)
        return self._obs(), 0.0, False, False, {}


class OpenGridEastEnv(OpenGridEnv):
    """The open grid with one reward: 1 for reaching the east wall (x = size - 1), which ends the episode. Starts
    anywhere west of it."""

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.pos = np.array([self.np_random.integers(0, self.size - 1), self.np_random.integers(0, self.size)])
        return self._obs(), {}

    def step(self, action: int):
        obs, _, _, _, info = super().step(action)
        east = bool(self.pos[0] == self.size - 1)
        return obs, float(east), east, False, info


for _id, _entry in ((ENV_ID, OpenGridEnv), (EAST_ENV_ID, OpenGridEastEnv)):
    if _id not in gym.registry:
        gym.register(_id, entry_point=_entry, max_episode_steps=60)


def oracle_goals(s: torch.Tensor, tick: torch.Tensor) -> torch.Tensor:
    """A unit 2-d goal direction for each row of s [B, 2] at episode step `tick` [B]: a deterministic hash, so the
    actor and the learner (recomputing the goals from the stored state) get the same ones, spread over all
    directions."""
    key = s[:, 0] * 12.9898 * GRID + s[:, 1] * 78.233 * GRID + tick.to(s.dtype) * 0.3719
    angle = 2 * math.pi * torch.frac(torch.sin(key).abs() * 43758.5453)
    return torch.stack([torch.cos(angle), torch.sin(angle)], -1)


class OracleManager(nn.Module):
    """Stands in for the Manager's dilated LSTM (same `initial_state` / `step`): every `horizon` steps of an episode
    a new goal direction (`oracle_goals`), held in between. No parameters: nothing of it learns."""

    def __init__(self, horizon: int, dilation: int):
        super().__init__()
        self.horizon, self.dilation = horizon, dilation

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu"):
        zeros = torch.zeros(batch_size, self.dilation, 2, device=device)
        return (zeros, zeros.clone(), torch.zeros(batch_size, dtype=torch.int64, device=device))

    def step(self, s: torch.Tensor, state):
        h, c, tick = state
        new = (tick % self.horizon == 0)[:, None]
        goal = torch.where(new, oracle_goals(s, tick), h[:, 0])
        h = torch.cat([goal[:, None], h[:, 1:]], 1)
        return goal, (h, c, tick + 1)


class PositionTorso(nn.Module):
    """The agent's torso with its first two features replaced by the observation itself, the position: the oracle
    Manager's state space reads them (`manager_space` = the first two features)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.out_size = inner, inner.out_size

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.cat([obs[..., :2], self.inner(obs)[..., 2:]], -1)


class FirstTwo(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z[..., :2]


class FeudalOracleConfig(FeudalConfig):
    """`agent: feudal` on the position as the Manager's state space (`manager_size` must be 2), with the oracle
    Manager or the agent's own (a dilated LSTM on the position) above a Worker loaded from a run and frozen."""

    name: Literal["feudal_oracle"] = "feudal_oracle"  # type: ignore[assignment]
    manager: Literal["oracle", "learned"] = Field("oracle", description="the oracle's held goals, or FuN's Manager")
    worker_from: str | None = Field(
        None, description="a run dir or checkpoint of this agent: its Worker is loaded and frozen (no training)"
    )


def make_oracle_net(spec: EnvSpec, cfg: FeudalOracleConfig) -> FeudalNet:
    if cfg.manager_size != 2 or spec.obs_shape != (2,):
        raise ValueError("the oracle check needs agent.manager_size=2 and the 2-d position observation")
    net = FeudalNet(spec, cfg)
    net.torso = PositionTorso(net.torso)
    net.manager_space = FirstTwo()
    if cfg.manager == "oracle":
        net.manager = OracleManager(cfg.horizon, cfg.dilation)
    if cfg.worker_from:
        from decoupled.runners.evaluation.evaluate import load_checkpoint

        _, state, _ = load_checkpoint(Path(cfg.worker_from))
        worker = {k: v for k, v in state["net"].items() if k.split(".")[0] in WORKER_PARTS}
        missing, _ = net.load_state_dict(worker, strict=False)
        if any(k.split(".")[0] in WORKER_PARTS for k in missing):
            raise ValueError(f"{cfg.worker_from} has no Worker of this shape (missing {missing})")
        for part in WORKER_PARTS:
            getattr(net, part).requires_grad_(False)
    return net


def oracle_loss(cfg: FeudalOracleConfig, batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]):
    """FuN's loss, plus how much the Manager's goals point east (`oracle/goal_east`: the mean cosine of the goals
    of the new transitions with +x)."""
    loss, metrics = feudal_loss(cfg, batch, outputs)
    metrics["oracle/goal_east"] = outputs["goal"][cfg.horizon : -1].detach()[..., 0].mean()
    return loss, metrics


# FuN's agent definition (overlap, loss scale) with the oracle's config, net and loss
ORACLE_AGENT = dataclasses.replace(
    get_agent("feudal"),
    name="feudal_oracle",
    config_class=FeudalOracleConfig,
    make_net=make_oracle_net,
    loss_fn=oracle_loss,
)
register_agent(ORACLE_AGENT)  # the same object again is a no-op


def oracle_config(seed: int, frames: int) -> dict[str, Any]:
    """The check's run: the paper's c = 10, alpha = 1, gamma_W = 0.95; Worker sizes for a 2-d input."""
    return {
        "agent": {
            "name": "feudal_oracle", "torso": "mlp", "hidden_sizes": [64], "manager_size": 2, "dilation": 10,
            "horizon": 10, "goal_embedding": 16, "worker_size": 64, "intrinsic_weight": 1.0, "worker_discount": 0.95,
            "manager_cost": 0.0, "manager_value_cost": 0.0, "random_goal_prob": 0.0, "entropy_cost": 0.003,
            "loss_reduction": "mean", "init": "orthogonal",  # U starts near 0: a near-uniform first policy
        },
        "env": {"backend": "gym", "id": f"{__name__}:{ENV_ID}", "num_envs": 16},
        "optim": {"name": "adam", "lr": 1e-3, "eps": 1e-8, "lr_schedule": "constant", "max_grad_norm": None},
        "runner": {
            "mode": "serial", "seed": seed, "total_env_frames": frames, "unroll_length": 40,
            "log_every_env_frames": 640,  # every update: the first record is the untrained policy's batch
            "checkpoint_every_env_frames": max(frames // 4, 1), "torch_threads": 1,
        },
        "wandb": {"mode": "disabled"},
    }  # fmt: skip


def reference_cosines(episodes: int = 4000, seed: int = 0) -> dict[str, float]:
    """The check's metric, mean d_cos(s_{t+c} - s_t, g_t) over every t of 60-step episodes, for two policies that
    need no training, played on the same grid with the same goals: uniform random moves (about 0), and a hand-written
    follower that takes the move closest in direction to the current goal (what "following" gives without looking
    ahead at the goals' switches or sliding along walls)."""
    rng = np.random.default_rng(seed)
    c, steps = 10, 60
    out = {}
    for policy in ("random", "follower"):
        pos = rng.integers(0, GRID, (episodes, 2))
        states, goals, goal = [], [], np.zeros((episodes, 2))
        for t in range(steps + 1):
            s = pos / GRID
            if t % c == 0:
                goal = oracle_goals(torch.tensor(s, dtype=torch.float32), torch.full((episodes,), t)).double().numpy()
            states.append(s)
            goals.append(goal)
            a = rng.integers(0, 4, episodes) if policy == "random" else np.argmax(goal @ MOVES.T, 1)
            pos = np.clip(pos + MOVES[a], 0, GRID - 1)
        st, gl = np.array(states), np.array(goals)
        delta, g = st[c:] - st[:-c], gl[:-c]
        cos = (delta * g).sum(-1) / (np.linalg.norm(delta, axis=-1) * np.linalg.norm(g, axis=-1) + 1e-8)
        out[policy] = float(cos.mean())
    return out


def manager_config(seed: int, frames: int, worker_from: str) -> dict[str, Any]:
    """The Manager's run: FuN's own Manager (a dilated LSTM on the position, TPG with gamma_M = 0.99, c = 10) above
    the frozen Worker of `worker_from`, on the grid that pays 1 at the east wall."""
    cfg = oracle_config(seed, frames)
    cfg["agent"].update(
        manager="learned", worker_from=worker_from, manager_cost=1.0, manager_value_cost=0.5, random_goal_prob=0.01
    )
    cfg["env"]["id"] = f"{__name__}:{EAST_ENV_ID}"
    return cfg


def _train(a: dict[str, Any]) -> str:
    """Train the run `a["run_dir"]` of config `a["config"]`: reused when it has finished, resumed from its newest
    checkpoint when it was interrupted (as `decoupled bench feudal` does)."""
    import shutil

    from decoupled.api import train
    from decoupled.runners.bench.learning import finished_run
    from decoupled.runners.training.train import has_checkpoints

    run_dir = Path(a["run_dir"])
    if finished_run(run_dir, a["config"]["runner"]["total_env_frames"]):
        return str(run_dir)
    if (run_dir / "config.yaml").is_file() and has_checkpoints(run_dir):
        result = train(run_dir=run_dir, resume=True)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
        result = train(a["config"], run_dir=run_dir)
    if result["status"] == "stopped":
        raise RuntimeError(f"{run_dir} was stopped before its budget (checkpoint written): rerun to resume it")
    return str(run_dir)


def _train_all(todo: list[dict[str, Any]], jobs: int) -> None:
    if jobs <= 1:
        for a in todo:
            _train(a)
        return
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        for future in as_completed([pool.submit(_train, a) for a in todo]):
            future.result()


def read_curve(run_dir: Path, key: str = "feudal/goal_cosine") -> list[dict[str, float]]:
    """The metrics.jsonl records of a run that have `key`."""
    from decoupled.runners.evaluation.plot import read_metrics

    return [r for r in read_metrics(run_dir) if key in r]


def summarise(rows: list[dict[str, float]], key: str) -> tuple[float, float]:
    """(the first log record's, the mean over the last 10% of the frames) of `key`. The first record holds the
    first update's metrics, on the batch the untrained policy collected."""
    first = rows[0][key]
    end = rows[-1]["env_frames"]
    last = [r[key] for r in rows if r["env_frames"] >= 0.9 * end] or [rows[-1][key]]
    return first, statistics.fmean(last)


def evaluate_goals(run_dir: Path, episodes: int, ablation: str) -> dict[str, float]:
    """Success rate (reward 1 at the east wall) and mean episode length of the run's final policy, with its goals
    (`ablation="none"`) or with random unit goals in their place."""
    from decoupled.runners.evaluation.evaluate import checkpoint_task, evaluate_task

    task = dataclasses.replace(checkpoint_task(run_dir), goal_ablation=ablation)
    r = evaluate_task(task, episodes, [0])
    return {"success": float(np.mean(r["episode_scores"])), "steps": float(np.mean(r["episode_frames"]))}


def bench_feudal_oracle(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.seeds < 1 or args.frames < 1 or args.manager_frames < 0:
        raise ValueError("--seeds and --frames must be at least 1, --manager-frames at least 0")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = range(args.seeds)
    workers = {s: str(out / f"s{s}") for s in seeds}
    _train_all([{"run_dir": workers[s], "config": oracle_config(s, args.frames)} for s in seeds], args.jobs)
    records, curves = [], {}
    for s in seeds:
        rows = read_curve(Path(workers[s]))
        curves[s] = rows
        cos0, cos1 = summarise(rows, "feudal/goal_cosine")
        ri0, ri1 = summarise(rows, "feudal/intrinsic_reward")
        records.append(emit({
            "bench": "feudal_oracle", "seed": s, "env_frames": rows[-1]["env_frames"],
            "goal_cosine_start": cos0, "goal_cosine_final": cos1,
            "intrinsic_reward_start": ri0, "intrinsic_reward_final": ri1, "run_dir": workers[s],
        }))  # fmt: skip
    finals = [r["goal_cosine_final"] for r in records]
    refs = reference_cosines()
    summary = {
        "bench": "feudal_oracle", "what": "summary", "seeds": len(records), "frames": args.frames,
        "goal_cosine_final_median": statistics.median(finals), "goal_cosine_final_min": min(finals),
        "goal_cosine_start_median": statistics.median(r["goal_cosine_start"] for r in records),
        "goal_cosine_random_policy": refs["random"], "goal_cosine_hand_written_follower": refs["follower"],
    }  # fmt: skip
    plot_curves(curves, refs, out / "feudal_oracle.png")
    if args.manager_frames:
        managers = {s: str(out / f"manager_s{s}") for s in seeds}
        todo = [{"run_dir": managers[s], "config": manager_config(s, args.manager_frames, workers[s])} for s in seeds]
        _train_all(todo, args.jobs)
        manager_rows = {}
        for s in seeds:
            rows = read_curve(Path(managers[s]), "oracle/goal_east")
            manager_rows[s] = rows
            east0, east1 = summarise(rows, "oracle/goal_east")
            own, rnd = (evaluate_goals(Path(managers[s]), args.eval_episodes, a) for a in ("none", "random"))
            records.append(emit({
                "bench": "feudal_oracle", "what": "manager", "seed": s, "env_frames": rows[-1]["env_frames"],
                "goal_east_start": east0, "goal_east_final": east1,
                "success": own["success"], "steps": own["steps"],
                "success_random_goals": rnd["success"], "steps_random_goals": rnd["steps"], "run_dir": managers[s],
            }))  # fmt: skip
        mine = [r for r in records if r.get("what") == "manager"]
        summary.update(
            manager_frames=args.manager_frames,
            goal_east_final_median=statistics.median(r["goal_east_final"] for r in mine),
            success_median=statistics.median(r["success"] for r in mine),
            success_random_goals_median=statistics.median(r["success_random_goals"] for r in mine),
            steps_median=statistics.median(r["steps"] for r in mine),
            steps_random_goals_median=statistics.median(r["steps_random_goals"] for r in mine),
        )
        plot_manager(manager_rows, out / "feudal_oracle_manager.png")
    records.append(emit(summary))
    return records


def plot_manager(curves: dict[int, list[dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for seed, rows in curves.items():
        x = [r["env_frames"] for r in rows]
        axes[0].plot(x, [r["oracle/goal_east"] for r in rows], label=f"seed {seed}")
        ret = [(r["env_frames"], r["train/episode_return"]) for r in rows if "train/episode_return" in r]
        axes[1].plot([f for f, _ in ret], [v for _, v in ret], label=f"seed {seed}")
    axes[0].set_title("cos(goal, east) of the Manager's goals", fontsize=9)
    axes[1].set_title("training return (1: reached the east wall)", fontsize=9)
    _finish(fig, axes, "FuN's Manager (TPG) above a frozen goal-following Worker, reward at the east wall", path)


def _finish(fig: Any, axes: Any, title: str, path: Path) -> None:
    """Label the env-frames axes of a row of curve panels, title the figure and save it."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.set_xlabel("env frames", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(curves: dict[int, list[dict[str, float]]], refs: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for seed, rows in curves.items():
        x = [r["env_frames"] for r in rows]
        axes[0].plot(x, [r["feudal/goal_cosine"] for r in rows], label=f"seed {seed}")
        axes[1].plot(x, [r["feudal/intrinsic_reward"] for r in rows], label=f"seed {seed}")
    for (name, value), style in zip(refs.items(), (":", "--"), strict=True):
        axes[0].axhline(value, color="black", ls=style, lw=0.8, label=f"{name} policy ({value:.2f})")
    axes[0].set_title("cos(s[t+c] - s[t], g[t]) in training batches", fontsize=9)
    axes[1].set_title("intrinsic reward r^I", fontsize=9)
    for ax in axes:
        ax.axhline(0.0, color="grey", lw=0.5)
    _finish(fig, axes, "FuN Worker with an oracle Manager: open 15x15 grid, goals held 10 steps", path)


# ------------------------------------------------------------------------------------------------ sub-goals
def play_recorded(run_dir: Path, episodes: int, seed: int = 0) -> list[dict[str, Any]]:
    """Play a trained FuN policy on its MiniGrid task (sampled actions) and record, per step, the Manager's state s_t
    and goal g_t and the events: the step at which the key is picked up, the door opened, the goal reached."""
    import gymnasium as gym

    from decoupled.envs.minigrid import MiniGridVecEnv
    from decoupled.runners.evaluation.evaluate import load_checkpoint, make_policy_net

    cfg, state, _ = load_checkpoint(run_dir)
    if cfg.env.backend != "minigrid" or cfg.agent_name != "feudal":
        raise ValueError(f"{run_dir} is a {cfg.agent_name} run on {cfg.env.backend}: sub-goals need FuN on MiniGrid")
    probe = MiniGridVecEnv(cfg.env.id, 1, 0, cfg.env.max_episode_steps)
    spec = probe.spec
    probe.close()
    net = make_policy_net(cfg, state, spec)
    env = gym.make(
        cfg.env.id, **({} if cfg.env.max_episode_steps is None else {"max_steps": cfg.env.max_episode_steps})
    )
    gen = torch.Generator().manual_seed(seed)
    out = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed * 10_000 + ep)
        u = env.unwrapped
        net_state = net.initial_state(1)
        first, prev_a, prev_r = True, 0, 0.0
        s_list, g_list, events = [], [], {}
        for t in range(10_000):
            inputs = {
                "obs": torch.as_tensor(MiniGridVecEnv._view(obs))[None, None],
                "first": torch.tensor([[first]]),
                "prev_action": torch.tensor([[prev_a]]),
                "prev_reward": torch.tensor([[prev_r]], dtype=torch.float32),
            }
            with torch.no_grad():
                o, net_state = net(inputs, net_state)
            s_list.append(o["manager_state"][0, 0].numpy())
            g_list.append(o["goal"][0, 0].numpy())
            a = int(torch.multinomial(torch.softmax(o["policy_logits"][0, 0], -1), 1, generator=gen))
            had_key = u.carrying is not None
            doors_open = sum(1 for x in u.grid.grid if x is not None and x.type == "door" and x.is_open)
            obs, r, te, tr, _ = env.step(a)
            if not had_key and u.carrying is not None and "key" not in events:
                events["key"] = t + 1  # the state after the pickup is s_{t+1}
            now_open = sum(1 for x in u.grid.grid if x is not None and x.type == "door" and x.is_open)
            if now_open > doors_open and "door" not in events:
                events["door"] = t + 1
            first, prev_a, prev_r = False, a, float(r)
            if te or tr:
                if r > 0:
                    events["goal"] = t + 1
                # the final state: one more forward pass for s_T (its goal is not used)
                inputs = {"obs": torch.as_tensor(MiniGridVecEnv._view(obs))[None, None],
                          "first": torch.tensor([[False]]), "prev_action": torch.tensor([[a]]),
                          "prev_reward": torch.tensor([[float(r)]], dtype=torch.float32)}  # fmt: skip
                with torch.no_grad():
                    o, _ = net(inputs, net_state)
                s_list.append(o["manager_state"][0, 0].numpy())
                g_list.append(o["goal"][0, 0].numpy())
                break
        out.append({"s": np.array(s_list), "g": np.array(g_list), "events": events, "return": float(r)})
    env.close()
    return out


def subgoal_steps(s: np.ndarray, g: np.ndarray) -> np.ndarray:
    """For each step t < T of an episode with states s [T+1, d] and goals g: the step t' in t+1..T maximising
    cos(s_{t'} - s_t, g_t), the sub-goal of the paper's Fig. 2b (Vezhnevets et al. 2017)."""
    T = len(s) - 1
    out = np.zeros(T, np.int64)
    for t in range(T):
        delta = s[t + 1 :] - s[t]
        cos = delta @ g[t] / (np.linalg.norm(delta, axis=1) * np.linalg.norm(g[t]) + 1e-8)
        out[t] = t + 1 + int(np.argmax(cos))
    return out


def subgoal_shares(episodes: list[dict[str, Any]], tolerance: int = 1) -> dict[str, dict[str, float]]:
    """Per event (key, door, goal): the share of steps whose sub-goal lies within `tolerance` steps of the event,
    and the share expected if sub-goals were drawn uniformly from the steps after t (chance)."""
    shares: dict[str, dict[str, float]] = {}
    for event in ("key", "door", "goal"):
        hit = chance = n = 0.0
        for e in episodes:
            if event not in e["events"]:
                continue
            k = e["events"][event]
            sub = subgoal_steps(e["s"], e["g"])
            for t, tp in enumerate(sub):
                if t >= k:  # only the steps before the event can have it ahead
                    break
                lo, hi = max(t + 1, k - tolerance), min(len(e["s"]) - 1, k + tolerance)
                n += 1
                hit += float(lo <= tp <= hi)
                chance += (hi - lo + 1) / (len(e["s"]) - 1 - t)
        shares[event] = {"share": hit / n if n else float("nan"), "chance": chance / n if n else float("nan"),
                         "steps": int(n)}  # fmt: skip
    return shares


def bench_feudal_subgoals(args: argparse.Namespace) -> dict[str, Any]:
    """`decoupled bench feudal-subgoals RUN`: where a trained FuN policy's sub-goals fall (key, door, goal)."""
    eps = play_recorded(Path(args.run), args.episodes, args.seed)
    shares = subgoal_shares(eps, args.tolerance)
    record = emit({
        "bench": "feudal_subgoals", "run": args.run, "episodes": args.episodes,
        "solved": float(np.mean([e["return"] > 0 for e in eps])), "tolerance": args.tolerance,
        **{f"{k}_{m}": v[m] for k, v in shares.items() for m in ("share", "chance", "steps")},
    })  # fmt: skip
    out = Path(args.out or Path(args.run) / "subgoals.png")
    plot_subgoals(eps, shares, out)
    print(f"wrote {out}", flush=True)
    return record


def plot_subgoals(episodes: list[dict[str, Any]], shares: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [e for e in episodes if "key" in e["events"]][:3] or episodes[:3]
    fig, axes = plt.subplots(1, len(shown) + 1, figsize=(3.4 * (len(shown) + 1), 2.8), squeeze=False)
    colours = {"key": "tab:orange", "door": "tab:green", "goal": "tab:red"}
    for ax, e in zip(axes[0], shown, strict=False):
        sub = subgoal_steps(e["s"], e["g"])
        counts = np.bincount(sub, minlength=len(e["s"]))
        ax.bar(np.arange(len(counts)), counts, color="tab:blue", width=1.0)
        for name, step in e["events"].items():
            ax.axvline(step, color=colours[name], ls="--", lw=1, label=name)
        ax.set_xlabel("step of the episode", fontsize=8)
        ax.set_ylabel("times chosen as sub-goal", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    ax = axes[0][-1]
    names = list(shares)
    x = np.arange(len(names))
    ax.bar(x - 0.2, [shares[n]["share"] for n in names], 0.4, label="FuN's sub-goals")
    ax.bar(x + 0.2, [shares[n]["chance"] for n in names], 0.4, label="chance")
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylabel("share of earlier steps", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    fig.suptitle("Sub-goals (argmax_t' cos(s_t' - s_t, g_t)) of a trained FuN policy, as in the paper's Fig. 2b",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
