"""`decoupled bench feudal-oracle`: does FeUdal Networks' Worker learn to follow goals? (the Worker half of FuN,
checked on its own, end to end through the training runner)

    decoupled bench feudal-oracle [--seeds 3] [--frames 400000] [--jobs 2] [--out runs/bench_feudal_oracle]

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
zero-length transitions counted as 0) at the start and over the last 10% of the frames, and the same for the
intrinsic reward, and draws the curves (`--out/feudal_oracle.png`). For scale it also plays two policies that need
no training on the same grid and goals (`reference_cosines`): uniform random moves give about 0, and a hand-written
follower that takes the move closest to the current goal about 0.26 (walls stop it, and 9 of 10 windows
[t, t + c] straddle a goal switch, which a policy can only meet by weighing the goals it has seen, as the Worker's
pooled goal embedding lets it).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import statistics
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from decoupled.agents import get_agent, register_agent
from decoupled.agents.base import AgentDef
from decoupled.agents.feudal import FeudalConfig, FeudalNet, feudal_loss
from decoupled.envs.base import EnvSpec

GRID = 15
ENV_ID = "OpenGrid-v0"
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


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=OpenGridEnv, max_episode_steps=60)


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
    """`agent: feudal` with the Manager replaced by the oracle (`manager_size` must be 2: s is the position)."""

    name: Literal["feudal_oracle"] = "feudal_oracle"  # type: ignore[assignment]


def make_oracle_net(spec: EnvSpec, cfg: FeudalOracleConfig) -> FeudalNet:
    if cfg.manager_size != 2 or spec.obs_shape != (2,):
        raise ValueError("the oracle check needs agent.manager_size=2 and the 2-d position observation")
    net = FeudalNet(spec, cfg)
    net.torso = PositionTorso(net.torso)
    net.manager_space = FirstTwo()
    net.manager = OracleManager(cfg.horizon, cfg.dilation)
    return net


ORACLE_AGENT = AgentDef(
    name="feudal_oracle",
    config_class=FeudalOracleConfig,
    make_net=make_oracle_net,
    loss_fn=feudal_loss,
    overlap=lambda cfg: cfg.horizon,
    loss_sum_factor=get_agent("feudal").loss_sum_factor,
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
            "log_every_env_frames": max(min(frames // 100, 2560), 1),
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


def _train_seed(a: dict[str, Any]) -> dict[str, Any]:
    from decoupled.api import train

    run_dir = Path(a["run_dir"])
    if (run_dir / "config.yaml").is_file():
        if (run_dir / "done").is_file():
            return {"seed": a["seed"], "run_dir": str(run_dir)}
        train(run_dir=run_dir, resume=True)
    else:
        train(oracle_config(a["seed"], a["frames"]), run_dir=run_dir)
    (run_dir / "done").write_text("finished\n")
    return {"seed": a["seed"], "run_dir": str(run_dir)}


def read_curve(run_dir: Path) -> list[dict[str, float]]:
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "feudal/goal_cosine" in r:
            rows.append(r)
    return rows


def summarise(rows: list[dict[str, float]], key: str) -> tuple[float, float]:
    """(the mean of the first 3 log records, the mean over the last 10% of the frames) of `key`."""
    first = statistics.fmean(r[key] for r in rows[:3])
    end = rows[-1]["env_frames"]
    last = [r[key] for r in rows if r["env_frames"] >= 0.9 * end] or [rows[-1][key]]
    return first, statistics.fmean(last)


def bench_feudal_oracle(args: argparse.Namespace) -> list[dict[str, Any]]:
    from decoupled.runners.bench.commands import emit

    if args.seeds < 1 or args.frames < 1:
        raise ValueError("--seeds and --frames must be at least 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [{"seed": s, "frames": args.frames, "run_dir": str(out / f"s{s}")} for s in range(args.seeds)]
    if args.jobs <= 1:
        for a in todo:
            _train_seed(a)
    else:
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=mp.get_context("spawn")) as pool:
            for future in as_completed([pool.submit(_train_seed, a) for a in todo]):
                future.result()
    records, curves = [], {}
    for a in todo:
        rows = read_curve(Path(a["run_dir"]))
        curves[a["seed"]] = rows
        cos0, cos1 = summarise(rows, "feudal/goal_cosine")
        ri0, ri1 = summarise(rows, "feudal/intrinsic_reward")
        records.append(emit({
            "bench": "feudal_oracle", "seed": a["seed"], "env_frames": rows[-1]["env_frames"],
            "goal_cosine_start": cos0, "goal_cosine_final": cos1,
            "intrinsic_reward_start": ri0, "intrinsic_reward_final": ri1, "run_dir": a["run_dir"],
        }))  # fmt: skip
    finals = [r["goal_cosine_final"] for r in records]
    refs = reference_cosines()
    records.append(emit({
        "bench": "feudal_oracle", "what": "summary", "seeds": len(records), "frames": args.frames,
        "goal_cosine_final_median": statistics.median(finals), "goal_cosine_final_min": min(finals),
        "goal_cosine_start_median": statistics.median(r["goal_cosine_start"] for r in records),
        "goal_cosine_random_policy": refs["random"], "goal_cosine_hand_written_follower": refs["follower"],
    }))  # fmt: skip
    plot_curves(curves, refs, out / "feudal_oracle.png")
    return records


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
        ax.set_xlabel("env frames", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    fig.suptitle("FuN Worker with an oracle Manager: open 15x15 grid, goals held 10 steps", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
