"""`decoupled eval`: run a trained policy (or a random one) for whole episodes and write the scores.

The env is built in evaluation form (`mode="eval"`): the score is the unclipped game score over all lives and an
episode ends at game over or at the frame cap, whatever the training form used. Episodes are assigned to the
parallel envs up front (env i plays its own quota), so short episodes are not over-represented.

Output (`--out DIR`): `scores.json` = {"games": {"<id>": {"episode_scores": [...], "episode_frames": [...]}},
"protocol": {settings read back from the built env}, "checkpoint": path or null, "policy": ..., "table_id": null}
and `scores.csv` (game, episode, score, frames).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents import get_agent
from envs import make_vec_env
from runners.actor_learner import net_inputs, sample_actions
from runners.checkpoint import CheckpointManager
from runners.config import ConfigBase, load_config


def _episode_quota(episodes: int, num_envs: int) -> np.ndarray:
    quota = np.full(num_envs, episodes // num_envs)
    quota[: episodes % num_envs] += 1
    return quota


@torch.no_grad()
def run_episodes(
    cfg: ConfigBase,
    episodes: int,
    seed: int,
    net: torch.nn.Module | None = None,
    num_envs: int | None = None,
    greedy: bool = False,
) -> dict[str, Any]:
    """Play `episodes` whole episodes with `net` (None: uniform random actions). Returns scores and settings."""
    num_envs = max(1, min(num_envs or 8, episodes))
    env = make_vec_env(cfg.env.backend, cfg.env.id, num_envs, seed, mode="eval", options=cfg.env.options())
    try:
        quota = _episode_quota(episodes, num_envs)
        done_count = np.zeros(num_envs, int)
        scores: list[list[float]] = [[] for _ in range(num_envs)]
        frames: list[list[int]] = [[] for _ in range(num_envs)]
        rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(seed)
        obs = env.reset(seed=seed)
        first = np.ones(num_envs, bool)
        prev_action = np.zeros(num_envs, np.int64)
        prev_reward = np.zeros(num_envs, np.float32)
        state = net.initial_state(num_envs) if net is not None else None
        device = next(net.parameters()).device if net is not None else torch.device("cpu")
        while (done_count < quota).any():
            if net is None:
                action = rng.integers(0, env.spec.num_actions, num_envs)
            else:
                inputs = net_inputs(obs[None], first[None], prev_action[None], prev_reward[None], device)
                out, state = net(inputs, state)
                logits = out["policy_logits"][0].cpu()
                action = (logits.argmax(-1) if greedy else sample_actions(logits, gen)).numpy()
            obs, reward, terminated, truncated, info = env.step(action)
            first = terminated | truncated
            prev_action, prev_reward = np.asarray(action, np.int64), np.asarray(reward, np.float32)
            for i in np.flatnonzero(info["episode_done"]):
                if done_count[i] < quota[i]:
                    scores[i].append(float(info["episode_return"][i]))
                    frames[i].append(int(info["episode_frames"][i]))
                    done_count[i] += 1
        settings = env.settings()
    finally:
        env.close()
    return {
        "episode_scores": [s for per_env in scores for s in per_env],
        "episode_frames": [f for per_env in frames for f in per_env],
        "settings": settings,
    }


def load_policy(target: Path) -> tuple[ConfigBase, torch.nn.Module, str]:
    """A run dir (newest valid checkpoint) or one checkpoint dir -> (config, net in eval mode, checkpoint path)."""
    target = Path(target)
    if (target / "manifest.json").is_file():
        ckpt_dir, run_dir = target, target.parent.parent
    elif (target / "config.yaml").is_file():
        ckpt_dir, run_dir = None, target
    else:
        raise FileNotFoundError(f"{target} is neither a run dir (config.yaml) nor a checkpoint dir (manifest.json)")
    cfg = load_config(run_dir / "config.yaml")
    manager = CheckpointManager(run_dir / "checkpoints")
    if ckpt_dir is not None:
        state, manifest = manager.load(ckpt_dir)
    else:
        restored = manager.load_latest()
        if restored is None:
            raise FileNotFoundError(f"{run_dir} has no checkpoint to evaluate")
        state, manifest = restored
    probe = make_vec_env(cfg.env.backend, cfg.env.id, 1, 0, mode="eval", options=cfg.env.options())
    spec = probe.spec
    probe.close()
    net = get_agent(cfg.agent_name).make_net(spec, cfg.agent)
    net.load_state_dict(state["net"])
    net.eval()
    return cfg, net, str(ckpt_dir or manager.path_for(manifest["env_frames"]))


def write_scores(out: Path, game: str, result: dict[str, Any], extra: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "games": {game: {"episode_scores": result["episode_scores"], "episode_frames": result["episode_frames"]}},
        "protocol": result["settings"],
        "table_id": None,
        **extra,
    }
    (out / "scores.json").write_text(json.dumps(doc, indent=2, default=str))
    with open(out / "scores.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["game", "episode", "score", "frames"])
        for i, (s, fr) in enumerate(zip(result["episode_scores"], result["episode_frames"])):
            w.writerow([game, i, s, fr])
    return out / "scores.json"


def evaluate_command(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        raise ValueError("--episodes must be at least 1")
    if args.policy == "random":
        if args.config:
            cfg = load_config(args.config)
        elif args.target:
            cfg = load_config(Path(args.target) / "config.yaml")
        else:
            raise ValueError("--policy random needs --config CONFIG or a run dir to take the env from")
        net, ckpt = None, None
        default_out = Path("runs") / f"eval_random_{cfg.env.id}"
    else:
        if not args.target:
            raise ValueError("give a run dir or a checkpoint dir to evaluate (or --policy random)")
        cfg, net, ckpt = load_policy(Path(args.target))
        default_out = Path(args.target) / "eval"
    result = run_episodes(cfg, args.episodes, args.seed, net, args.num_envs, greedy=args.greedy)
    out = Path(args.out) if args.out else default_out
    path = write_scores(out, cfg.env.id, result, {"checkpoint": ckpt, "policy": args.policy, "greedy": args.greedy})
    s = np.asarray(result["episode_scores"])
    print(
        f"{cfg.env.id}: mean score {s.mean():.2f} +- {s.std():.2f} over {len(s)} episodes "
        f"(min {s.min():.1f}, max {s.max():.1f}) -> {path}"
    )
    return 0
