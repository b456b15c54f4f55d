"""`decoupled render`: look at a labyrinth episode.

Plays one labyrinth episode (a random policy, or a trained run's policy) and writes two PNGs:

* `<task>_map.png`: the maze from above (walls, goal, apples), with the agent's trajectory; a respawn after the
  goal breaks the line and is marked, so a person can check the maze, the goal and where the agent went;
* `<task>_strip.png`: RGB frames above their depth maps at evenly spaced steps of the episode;
* `<task>_pixel_control.png`, for a run whose net has UNREAL's pixel-control head: the same frames above
  max_a Q^aux on the pixel-control grid (drawn over the cropped region of the frame), the map the UNREAL paper's
  check is about: it should be high where the agent's actions change the pixels.

With `--run`, the env is built with the run's env settings (maze size, observation size, apples, episode length),
which the policy was trained on; TASK must then be the run's task.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def play_episode(
    task: str, steps: int, seed: int, run_dir: str | None = None, net: Any = None, **env_kwargs: Any
) -> dict[str, Any]:
    """Play `steps` agent steps of `task` (a run's policy, `net`, or random actions) and record what the plots need."""
    import torch

    from decoupled.envs.labyrinth import LabyrinthEnv
    from decoupled.runners.training.actor_learner import net_inputs, sample_actions

    state, pc = (net.initial_state(1) if net is not None else None), None
    if run_dir is not None:
        from decoupled.envs import probe_spec
        from decoupled.runners.training.train import load_run_checkpoint, make_policy_net

        cfg, saved, _ = load_run_checkpoint(Path(run_dir))
        net = make_policy_net(cfg, saved, probe_spec(cfg.env.backend, cfg.env.id, cfg.env.options()))
        if cfg.env.backend != "labyrinth" or cfg.env.id != task:
            raise ValueError(f"run {run_dir} trained on {cfg.env.backend}:{cfg.env.id}, not the labyrinth task {task}")
        options = {k: v for k, v in cfg.env.options().items() if k != "max_restarts"}  # a worker setting
        env_kwargs = {**options, **env_kwargs}
        state = net.initial_state(1)
        if getattr(net, "pixel_control", None) is not None:
            pc = {"maps": [], "crop": net.cfg.pixel_control_crop, "cell": net.cfg.pixel_control_cell}
            # max_a Q^aux of the acting step, from the core's output (the head's input in training too).
            net.core.register_forward_hook(
                lambda _m, _i, output: pc["maps"].append(
                    net.pixel_control(output[0].reshape(-1, output[0].shape[-1])).amax(dim=1)[0].numpy()
                )
            )
    env = LabyrinthEnv(task, **env_kwargs)
    rng = np.random.default_rng(seed)
    try:
        obs, info = env.reset(seed=seed)
        top = env.top_down_map()
        positions, respawns, frames, depths, rewards = [obs["position"].copy()], [False], [], [], []
        prev_action, prev_reward, first = 0, 0.0, True
        for _ in range(steps):
            if net is None:
                action = int(rng.integers(env.action_space.n))
            else:
                with torch.no_grad():
                    rgb = obs["rgb"].transpose(2, 0, 1)[None, None].copy()  # [1,1,C,H,W]
                    inputs = net_inputs(rgb, [[first]], [[prev_action]], [[prev_reward]], "cpu")
                    for key in getattr(net, "extra_inputs", {}):  # the nav agent's velocity, from the observation
                        inputs[key] = torch.as_tensor(np.asarray(obs[key], np.float32))[None, None]
                    out, state = net(inputs, state)
                    action = int(sample_actions(out["policy_logits"][0])[0])
            frames.append(obs["rgb"])
            depths.append(obs["depth"])
            obs, reward, terminated, truncated, info = env.step(action)
            prev_action, prev_reward, first = action, float(reward), False
            rewards.append(float(reward))
            positions.append(obs["position"].copy())
            respawns.append(bool(info["respawned"]))
            if terminated or truncated:
                break
        return {
            "task": task,
            "top": top,
            "positions": np.asarray(positions),
            "respawned": np.asarray(respawns),
            "rgb": frames,
            "depth": depths,
            "rewards": np.asarray(rewards),
            "goals": int(info.get("episode_goals", 0)),
            "apples": int(info.get("episode_apples", 0)),
            "max_depth": float(env.max_depth),
            "pixel_control": pc,
        }
    finally:
        env.close()


def depth_colorbar(height: int, max_depth: float, width: int = 70) -> np.ndarray:
    """An RGB colour bar [height, width, 3] for depth maps in `viridis` from 0 to `max_depth` (distance units)."""
    dpi = 100
    fig = plt.figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    ax = fig.add_axes([0.08, 0.05, 0.25, 0.9])
    fig.colorbar(plt.cm.ScalarMappable(norm=plt.Normalize(0, max_depth), cmap="viridis"), cax=ax)
    ax.tick_params(labelsize=6)
    ax.set_ylabel("depth", fontsize=6)
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def labyrinth_video(
    task: str, net: Any, seed: int, path: Path, max_steps: int, frame_ms: int = 100, **env_kwargs: Any
) -> dict[str, Any]:
    """One labyrinth episode as a GIF: the RGB frame next to its depth map (viridis) and the depth colour bar."""
    from PIL import Image

    ep = play_episode(task, max_steps, seed, net=net, **env_kwargs)
    max_depth = ep["max_depth"] or float(max(float(np.max(d)) for d in ep["depth"]))
    cmap = plt.get_cmap("viridis")
    frames = []
    bar = None
    for rgb, depth in zip(ep["rgb"], ep["depth"], strict=True):
        rgb = np.asarray(rgb, np.uint8)
        d = np.asarray(depth, np.float64).reshape(rgb.shape[:2])
        dmap = (cmap(np.clip(d / max_depth, 0, 1))[..., :3] * 255).astype(np.uint8)
        if bar is None:
            bar = depth_colorbar(rgb.shape[0], max_depth)
        frame = np.concatenate([rgb, dmap, bar[: rgb.shape[0]]], axis=1)
        k = max(1, -(-200 // frame.shape[0]))  # at least 200 pixels high
        frames.append(Image.fromarray(np.repeat(np.repeat(frame, k, 0), k, 1)))
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)
    ended = len(frames) < max_steps
    return {"path": str(path), "agent_steps": len(frames), "gif_frames": len(frames),
            "score": float(np.sum(ep["rewards"])), "episode_ended": ended, "backend": "labyrinth"}  # fmt: skip


def draw_map(ep: dict[str, Any], path: Path) -> Path:
    top = ep["top"]
    cell = top.cell_size
    fig, ax = plt.subplots(figsize=(7, 7 * top.walls.shape[0] / max(top.walls.shape[1], 1) + 0.6))
    ax.imshow(top.walls, cmap="Greys", origin="upper", extent=(0, top.walls.shape[1], top.walls.shape[0], 0))
    if len(top.apple_cells):
        ax.scatter(top.apple_cells[:, 1] + 0.5, top.apple_cells[:, 0] + 0.5, s=30, c="tab:green", label="apples")
    gr, gc = top.goal_cell
    ax.scatter([gc + 0.5], [gr + 0.5], s=220, marker="*", c="gold", edgecolors="k", zorder=5, label="goal")
    cols = ep["positions"][:, 0] / cell
    rows = -ep["positions"][:, 1] / cell
    breaks = np.flatnonzero(ep["respawned"])
    segments = np.split(np.arange(len(cols)), breaks)
    for k, seg in enumerate(segments):
        if len(seg):
            ax.plot(cols[seg], rows[seg], lw=1.2, c="tab:red", alpha=0.9, label="trajectory" if k == 0 else None)
    ax.scatter([cols[0]], [rows[0]], s=60, c="tab:blue", zorder=6, label="start")
    if len(breaks):
        ax.scatter(cols[breaks], rows[breaks], s=40, marker="x", c="tab:blue", zorder=6, label="respawn")
    ax.scatter([cols[-1]], [rows[-1]], s=60, marker="s", c="tab:purple", zorder=6, label="end")
    ax.set_xticks([])
    ax.set_yticks([])
    ret = ep["rewards"].sum()
    ax.set_title(
        f"{ep['task']}: {len(ep['rewards'])} steps, return {ret:.0f} ({ep['goals']} goals, {ep['apples']} apples)",
        fontsize=9,
    )
    ax.legend(loc="upper right", fontsize=7, framealpha=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _frames_over(ep: dict[str, Any], count: int, height: float, label: str) -> tuple[Any, Any, np.ndarray]:
    """A figure of RGB frames at `count` evenly spaced steps above an empty row (ylabel `label`) for the caller to
    draw in; returns (fig, axes [2, k], the steps)."""
    n = len(ep["rgb"])
    idx = np.unique(np.linspace(0, n - 1, min(count, n)).astype(int))
    fig, axes = plt.subplots(2, len(idx), figsize=(1.6 * len(idx), height), squeeze=False)
    for j, t in enumerate(idx):
        axes[0, j].imshow(ep["rgb"][t])
        axes[0, j].set_title(f"step {t}", fontsize=8)
        for a in axes[:, j]:
            a.set_xticks([])
            a.set_yticks([])
    axes[0, 0].set_ylabel("RGB", fontsize=8)
    axes[1, 0].set_ylabel(label, fontsize=8)
    return fig, axes, idx


def draw_strip(ep: dict[str, Any], path: Path, count: int = 8) -> Path:
    fig, axes, idx = _frames_over(ep, count, 3.6, "depth")
    for j, t in enumerate(idx):
        axes[1, j].imshow(ep["depth"][t], cmap="viridis", vmin=0.0, vmax=ep["max_depth"])
    fig.suptitle(f"{ep['task']}: RGB and depth (map units, 0-{ep['max_depth']:.0f})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_pixel_control(ep: dict[str, Any], path: Path, count: int = 8) -> Path:
    """RGB frames above max_a Q^aux of UNREAL's pixel-control head (one colour scale for the whole figure)."""
    pc = ep["pixel_control"]
    maps = np.asarray(pc["maps"])
    fig, axes, idx = _frames_over(ep, count, 3.8, "max_a Q_aux")
    h, w = ep["rgb"][0].shape[:2]
    c = pc["crop"]
    extent = (c - 0.5, w - c - 0.5, h - c - 0.5, c - 0.5)
    vmin, vmax = float(maps[idx].min()), float(maps[idx].max())
    for j, t in enumerate(idx):
        axes[1, j].imshow(ep["rgb"][t], alpha=0.35)
        im = axes[1, j].imshow(maps[t], cmap="magma", vmin=vmin, vmax=vmax, extent=extent, alpha=0.8)
    fig.colorbar(im, ax=axes[1, :].tolist(), fraction=0.02, pad=0.01)
    grid = "x".join(str(v) for v in maps.shape[-2:])
    fig.suptitle(f"{ep['task']}: pixel-control max_a Q on its {grid} grid ({pc['cell']}px cells)", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_command(args: argparse.Namespace) -> int:
    from decoupled.envs.labyrinth import TASKS

    if args.task not in TASKS:  # before anything is written
        raise ValueError(f"unknown labyrinth task {args.task!r}; choose one of {', '.join(TASKS)}")
    if args.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {args.steps}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: give a dir (the PNGs are written into it)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create --out {out} ({e.strerror or e}): give a dir you can write") from None
    ep = play_episode(args.task, args.steps, args.seed, args.run)
    m = draw_map(ep, out / f"{args.task}_map.png")
    s = draw_strip(ep, out / f"{args.task}_strip.png")
    wrote = f"{m} and {s}"
    if ep["pixel_control"] is not None:
        wrote = f"{m}, {s} and {draw_pixel_control(ep, out / f'{args.task}_pixel_control.png')}"
    print(f"{args.task}: {len(ep['rewards'])} steps, return {ep['rewards'].sum():.0f}; wrote {wrote}")
    return 0
