"""`decoupled eval`: play whole evaluation episodes with a trained policy (or a random one) and write the scores.

What is evaluated:

* a run dir (its newest valid checkpoint) or one checkpoint dir: the game it was trained on;
* a suite dir made by `decoupled suite` (`DIR/runs/<Game>/`): every game's run, each on its own game;
* `--policy random` on `--games Breakout,Pong` or `--suite atari5` (no config needed: an Atari evaluation env is
  built from `--protocol`), or on the env of `--config CONFIG` / of a run dir (the old single-game form).

Every env is built in evaluation form (`mode="eval"`): the score is the unclipped game score over all lives and an
episode ends at game over or at the frame cap (108,000 frames, the protocols' cap, unless `--max-episode-frames`
says otherwise), whatever the training used (life-loss terminals, reward clipping). For Atari the settings are
read back from the built env (`env.settings()`) and checked against the protocol before any episode is played
(`check_eval_settings`); scores.json records the read-back values, not the config's. Episodes are spread over
`num_envs` parallel envs with a fixed quota each (short episodes are not over-represented), for every seed of
`--seeds`. Evaluation seed `s` plays on env seeds `s * num_envs + i` (env i of `num_envs`; `eval_env_seeds`), so
two distinct seeds never share an env seed (with `seed + i`, seeds 0,1,2 on 8 envs would replay 6 of the 8 env
seeds, and a greedy policy under `dqn_noop30` the same episodes); seeds must be >= 0.

Output (`--out DIR`):

* `scores.json`: {"games": {"<Game>": {"episode_scores": [...], "episode_frames": [...], "episode_truncated":
  [...], "episode_seeds": [...], "mean_score", "hns", "settings": {read back}, "checkpoint", "video"}},
  "protocol": {the read-back settings shared by every game}, "checkpoint": path | {game: path} | null,
  "table_id": the score table of `hns` (null when a game is not in it), "label", "policy", "seeds", ...}.
  Game names are the score table's (`envs.atari_data.canonical_game`: `ALE/Breakout-v5` and `breakout` are
  `Breakout`), or the env id for other backends. "env_seeds" lists each seed's env seeds.
* `scores.csv`: one row per episode (game, seed, episode, score, frames, truncated, hns, table_id).
* `videos/<Game>.gif`: one evaluation episode with the same policy; Atari played on the gymnasium/ale-py backend
  because envpool renders no RGB, at most `--video-steps` agent steps (default 2,000 = 8,000 frames, about 2 minutes
  of play), every `VIDEO_EVERY`-th agent step kept, so the GIF stays a few MB at most; gymnasium and MiniGrid envs
  through their own `rgb_array` frames; MinAtar and Catch from their observations (`obs_frame`: MinAtar in its
  cubehelix colours, small grids enlarged to at least `VIDEO_MIN_SIDE` pixels); the 3D labyrinths as RGB next to
  the depth map with its colour bar.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from decoupled.agents import get_agent
from decoupled.envs import make_vec_env, probe_spec
from decoupled.envs.base import EnvSpec, VecEnv
from decoupled.runners.evaluation import check_out_dir
from decoupled.runners.training.actor_learner import net_inputs, sample_actions
from decoupled.runners.training.config import ConfigBase, load_config
from decoupled.runners.training.train import check_net_state, load_run_checkpoint, make_policy_net

ATARI_BACKENDS = ("atari", "atari_gym")  # the one definition (decoupled.runners.evaluation.suite imports it)
DEFAULT_PROTOCOL = "dqn_noop30"
DEFAULT_MAX_EPISODE_FRAMES = 108_000  # 30 minutes at 60 Hz: both protocols' cap
VIDEO_EVERY = 2  # keep every 2nd agent step (8 frames) in the GIF
VIDEO_FRAME_MS = 40  # shown at 25 GIF frames/s: about 3.75x real time
VIDEO_GRID_FRAME_MS = 100  # envs without a frame rate of their own (MinAtar, Catch, MiniGrid): 10 agent steps/s
VIDEO_MIN_SIDE = 200  # small frames are enlarged (nearest neighbour) to at least this many pixels a side
MAX_ENV_SEED = 2**31 - 1  # envpool and ALE take 32-bit signed seeds


# ----------------------------------------------------------------------------------------------- policies
@torch.no_grad()
def act_with_net(
    net: torch.nn.Module,
    obs: np.ndarray,
    first: np.ndarray,
    prev_action: np.ndarray,
    prev_reward: np.ndarray,
    state: Any,
    greedy: bool,
    generator: torch.Generator | None,
    extras: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, Any]:
    """One step of a trained net for a batch of envs: obs [B, ...], the episode-start flags, the previous actions
    and rewards [B], the core state -> (actions [B], next core state). Sampled from the policy, or its argmax."""
    device = next(net.parameters()).device
    inputs = net_inputs(
        obs[None], np.asarray(first)[None], np.asarray(prev_action)[None], np.asarray(prev_reward)[None], device
    )
    for key in getattr(net, "extra_inputs", {}):  # inputs from the env's extras (the nav agent's velocity)
        if extras is None or key not in extras:
            raise KeyError(f"the net takes the env's {key!r} extra as input, and this env gives none")
        inputs[key] = torch.as_tensor(np.asarray(extras[key], np.float32))[None].to(device)
    out, state = net(inputs, state)
    logits = out["policy_logits"][0].cpu()
    return (logits.argmax(-1) if greedy else sample_actions(logits, generator)).numpy(), state


class Policy:
    """Acts for a batch of envs: a trained net (sampling its policy, or argmax with `greedy`) or, with no net,
    uniform random actions. Keeps the recurrent state and the previous action / reward the net takes as inputs."""

    def __init__(self, num_actions: int, seed: int, net: torch.nn.Module | None = None, greedy: bool = False):
        self.num_actions, self.net, self.greedy = num_actions, net, greedy
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.device = next(net.parameters()).device if net is not None else torch.device("cpu")

    def start(self, num_envs: int) -> None:
        self.first = np.ones(num_envs, bool)
        self.prev_action = np.zeros(num_envs, np.int64)
        self.prev_reward = np.zeros(num_envs, np.float32)
        self.state = self.net.initial_state(num_envs) if self.net is not None else None
        self.extras: dict[str, np.ndarray] | None = None  # the env's extras of the current obs (velocity inputs)

    def act(self, obs: np.ndarray) -> np.ndarray:
        if self.net is None:
            return self.rng.integers(0, self.num_actions, len(obs))
        action, self.state = act_with_net(
            self.net, obs, self.first, self.prev_action, self.prev_reward, self.state, self.greedy, self.gen,
            self.extras,
        )  # fmt: skip
        return action

    def observe(
        self,
        action: np.ndarray,
        reward: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        extras: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.extras = extras
        self.first = np.asarray(terminated | truncated, bool)
        self.prev_action = np.asarray(action, np.int64)
        self.prev_reward = np.asarray(reward, np.float32)


def _episode_quota(episodes: int, num_envs: int) -> np.ndarray:
    quota = np.full(num_envs, episodes // num_envs)
    quota[: episodes % num_envs] += 1
    return quota


def eval_num_envs(episodes: int, num_envs: int | None) -> int:
    """The parallel envs an evaluation of `episodes` episodes per seed uses: `num_envs` (default 8), at most one per
    episode."""
    return max(1, min(num_envs or 8, episodes))


def eval_env_seeds(seed: int, num_envs: int) -> range:
    """The env seeds evaluation seed `seed` plays on: env i of `num_envs` gets `seed * num_envs + i` (the VecEnv
    rule `base + i` with base `seed * num_envs`). Distinct seeds >= 0 give disjoint ranges."""
    return range(seed * num_envs, (seed + 1) * num_envs)


def check_eval_request(episodes: int, seeds: list[int], num_envs: int | None = None) -> None:
    """Refuse an evaluation that cannot give meaningful, distinct episodes: before any env is built."""
    if episodes < 1:
        raise ValueError(f"the episodes per seed must be at least 1, got {episodes}")
    if num_envs is not None and num_envs < 1:
        raise ValueError(f"the number of evaluation envs must be at least 1, got {num_envs}")
    if not seeds:
        raise ValueError("give at least one evaluation seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"the evaluation seeds must be distinct, got {seeds}")
    if min(seeds) < 0:
        raise ValueError(f"the evaluation seeds must be >= 0, got {seeds}")
    n = eval_num_envs(episodes, num_envs)
    if eval_env_seeds(max(seeds), n)[-1] > MAX_ENV_SEED:
        raise ValueError(f"evaluation seed {max(seeds)} x {n} envs gives env seeds above {MAX_ENV_SEED}")


def play_episodes(env: VecEnv, policy: Policy, episodes: int, seed: int) -> dict[str, list]:
    """Play `episodes` whole episodes on `env` (reset with `seed`: env i gets `seed + i`), env i playing its own
    quota."""
    n = env.num_envs
    quota = _episode_quota(episodes, n)
    done_count = np.zeros(n, int)
    scores: list[list[float]] = [[] for _ in range(n)]
    frames: list[list[int]] = [[] for _ in range(n)]
    cut: list[list[bool]] = [[] for _ in range(n)]
    obs = env.reset(seed=seed)
    policy.start(n)
    policy.extras = env.last_extras() if hasattr(env, "last_extras") else None
    while (done_count < quota).any():
        action = policy.act(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        policy.observe(action, reward, terminated, truncated, info.get("extras"))
        for i in np.flatnonzero(info["episode_done"]):
            if done_count[i] < quota[i]:
                scores[i].append(float(info["episode_return"][i]))
                frames[i].append(int(info["episode_frames"][i]))
                cut[i].append(bool(truncated[i]))
                done_count[i] += 1
    return {
        "episode_scores": [s for per_env in scores for s in per_env],
        "episode_frames": [f for per_env in frames for f in per_env],
        "episode_truncated": [c for per_env in cut for c in per_env],
    }


def run_episodes(
    cfg: ConfigBase,
    episodes: int,
    seed: int,
    net: torch.nn.Module | None = None,
    num_envs: int | None = None,
    greedy: bool = False,
) -> dict[str, Any]:
    """Play `episodes` whole episodes of `cfg`'s env in evaluation form with `net` (None: uniform random actions).
    Returns the episode scores and frames and the env's settings."""
    num_envs = max(1, min(num_envs or 8, episodes))
    env = make_vec_env(cfg.env.backend, cfg.env.id, num_envs, seed, mode="eval", options=cfg.env.options())
    try:
        result = play_episodes(env, Policy(env.spec.num_actions, seed, net, greedy), episodes, seed)
        result["settings"] = env.settings()
    finally:
        env.close()
    return result


# ----------------------------------------------------------------------------------------------- checkpoints
def load_checkpoint(target: Path) -> tuple[ConfigBase, dict[str, Any], str]:
    """A run dir (its newest checkpoint that verifies and whose parameters fit the run's net: an older one, with a
    CheckpointWarning, when the newest does not) or one checkpoint dir -> (config, saved state, checkpoint path)."""

    def fits_the_net(cfg: ConfigBase):  # the run's net, built once (outside the check: an env error is no misfit)
        spec = probe_spec(cfg.env.backend, cfg.env.id, cfg.env.options())
        try:
            with torch.device("meta"):  # names and shapes only: no memory, no draws from the global RNG
                net = get_agent(cfg.agent_name).make_net(spec, cfg.agent)
        except Exception:  # noqa: BLE001 - a net that cannot be built on the meta device: on the CPU
            with torch.random.fork_rng(devices=[]):
                net = get_agent(cfg.agent_name).make_net(spec, cfg.agent)
        return lambda state: check_net_state(net, state)

    try:
        return load_run_checkpoint(Path(target), accept=fits_the_net)
    except FileNotFoundError as e:
        raise FileNotFoundError(str(e).replace("has no checkpoint", "has no checkpoint to evaluate")) from None


def load_policy(target: Path, spec: EnvSpec | None = None) -> tuple[ConfigBase, torch.nn.Module, str]:
    """(config, net in eval mode, checkpoint path) of a run dir or checkpoint dir. Without `spec` a one-env copy of
    the run's env is built to learn it; callers that build the env anyway should pass its spec (or use
    `load_checkpoint` + `make_policy_net`, as evaluation does)."""
    cfg, state, ckpt = load_checkpoint(target)
    if spec is None:
        spec = probe_spec(cfg.env.backend, cfg.env.id, cfg.env.options())
    return cfg, make_policy_net(cfg, state, spec), ckpt


# ----------------------------------------------------------------------------------------------- settings
def check_eval_settings(settings: dict[str, Any], protocol: str, max_episode_frames: int) -> None:
    """Refuse an Atari env whose read-back settings are not the evaluation form of `protocol`."""
    from decoupled.envs.atari import PRESETS, ProtocolMismatchError

    preset = PRESETS[protocol]
    # envpool crashes with noop_max=0 and is built with 1 (one no-op frame per reset; envs/atari.py docstring)
    noop = max(1, preset["noop_max"]) if settings.get("backend") == "envpool" else preset["noop_max"]
    want = {
        "protocol": protocol,
        "mode": "eval",
        "reward_clip": False,
        "life_loss_terminal": False,
        "max_episode_frames": max_episode_frames,
        "repeat_action_probability": preset["repeat_action_probability"],
        "noop_max": noop,
        "frame_skip": preset["frame_skip"],
        "full_action_space": preset["full_action_space"],
    }
    bad = [f"{k}: want {v!r}, built {settings.get(k)!r}" for k, v in want.items() if settings.get(k) != v]
    if bad:
        raise ProtocolMismatchError(f"{settings.get('name')}: not the evaluation form of {protocol}: " + "; ".join(bad))


# ----------------------------------------------------------------------------------------------- tasks
@dataclass
class EvalTask:
    """One game to evaluate: the env to build and the policy (a saved net, or None for random actions)."""

    game: str
    backend: str
    env_id: str
    options: dict[str, Any]
    cfg: ConfigBase | None = None
    state: dict[str, Any] | None = None
    checkpoint: str | None = None
    run_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    goal_ablation: str = "none"  # a FuN policy: play with the Manager's goals zeroed or random (net.goal_ablation)

    @property
    def atari(self) -> bool:
        return self.backend in ATARI_BACKENDS


def atari_options(protocol: str | None, max_episode_frames: int | None, base: dict[str, Any] | None = None) -> dict:
    """Evaluation options of an Atari env: `base` (a run's env options) with the protocol and cap applied; the cap is
    the protocols' 108,000 frames unless given, whatever the training used."""
    out = {"protocol": DEFAULT_PROTOCOL, "frame_stack": 4, **(base or {})}
    if protocol is not None:
        out["protocol"] = protocol
    out["max_episode_frames"] = int(max_episode_frames or DEFAULT_MAX_EPISODE_FRAMES)
    return out


def evaluate_task(
    task: EvalTask,
    episodes: int,
    seeds: list[int],
    num_envs: int | None = None,
    greedy: bool = False,
    video: Path | None = None,
    video_steps: int = 2000,
) -> dict[str, Any]:
    """Play `episodes` episodes per seed of one task on one env build (seed `s` on env seeds `eval_env_seeds(s, n)`);
    optionally write a video of one more."""
    check_eval_request(episodes, seeds, num_envs)
    n = eval_num_envs(episodes, num_envs)
    env_seeds = {seed: eval_env_seeds(seed, n) for seed in seeds}
    # One intra-op thread: a forward pass on a batch of <= 8 gains nothing from more (Nature-CNN at batch 2 here:
    # 0.47 ms with 1 thread, 0.58 ms with 2), and on a busy machine spinning OpenMP threads made it 14 ms.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    env = make_vec_env(task.backend, task.env_id, n, env_seeds[seeds[0]][0], mode="eval", options=task.options)
    try:
        settings = env.settings()
        if task.atari:
            check_eval_settings(settings, task.options["protocol"], task.options["max_episode_frames"])
        net = make_policy_net(task.cfg, task.state, env.spec) if task.state is not None else None
        if task.goal_ablation != "none":
            if net is None or not hasattr(net, "goal_ablation"):
                raise ValueError(f"--ablate-goals needs a policy with a Manager (agent feudal); {task.game}'s has none")
            net.goal_ablation = task.goal_ablation
        result: dict[str, list] = {}
        t0 = time.time()
        for seed in seeds:
            part = play_episodes(env, Policy(env.spec.num_actions, seed, net, greedy), episodes, env_seeds[seed][0])
            for k, v in part.items():
                result.setdefault(k, []).extend(v)
            result.setdefault("episode_seeds", []).extend([seed] * len(part["episode_scores"]))
        seconds = time.time() - t0
    finally:
        env.close()
        torch.set_num_threads(threads)
    out: dict[str, Any] = {**result, "env_seeds": {str(s): list(r) for s, r in env_seeds.items()}, "settings": settings}
    out.update(checkpoint=task.checkpoint, seconds=round(seconds, 2))
    if task.run_dir is not None:
        out["run_dir"] = task.run_dir
    if video is not None:
        torch.set_num_threads(1)
        try:
            out["video"] = record_video(task, net, env_seeds[seeds[0]][0], video, video_steps, greedy)
        except Exception as exc:  # noqa: BLE001 - the video is for people; the scores stand without it
            out["video"] = None
            out["video_error"] = f"{type(exc).__name__}: {exc}"
            print(f"{task.game}: no video ({out['video_error']})", flush=True)
        finally:
            torch.set_num_threads(threads)
    return out


# ----------------------------------------------------------------------------------------------- video
def obs_frame(obs: np.ndarray, spec: EnvSpec) -> np.ndarray:
    """An RGB picture [H, W, 3] uint8 of one observation [C, H, W], for envs that render nothing themselves: RGB
    pixels as they are (the 3D labyrinths), stacked grey frames by their newest, binary grids (MinAtar, Catch) with one
    colour per channel (MinAtar's own display: the highest active channel's colour of a cubehelix palette)."""
    obs = np.asarray(obs)
    scale = float(spec.extra.get("obs_scale", 1.0))
    if obs.ndim != 3:
        raise ValueError(f"no picture of {spec.name}'s observations of shape {obs.shape}")
    if scale != 1.0:  # pixels
        if obs.shape[0] == 3:
            return np.ascontiguousarray(obs.transpose(1, 2, 0)).astype(np.uint8)
        grey = obs[-1].astype(np.uint8)
        return np.repeat(grey[..., None], 3, -1)
    from matplotlib import colormaps

    C = obs.shape[0]
    active = (obs > 0.5) * np.arange(1, C + 1)[:, None, None]  # channel k lit -> k + 1
    top = active.max(0)  # [H, W]: 0 background, else the highest lit channel + 1
    palette = (np.asarray(colormaps["cubehelix"](np.linspace(0.3, 0.95, C)))[:, :3] * 255).astype(np.uint8)
    out = np.zeros((*top.shape, 3), np.uint8)
    lit = top > 0
    out[lit] = palette[top[lit] - 1]
    return out


def _upscale(frame: np.ndarray, min_side: int = VIDEO_MIN_SIDE) -> np.ndarray:
    """Nearest-neighbour enlargement so that a small frame (MinAtar's 10x10) is big enough to see."""
    k = max(1, -(-min_side // min(frame.shape[:2])))
    return np.repeat(np.repeat(frame, k, 0), k, 1) if k > 1 else frame


def record_video(
    task: EvalTask, net: torch.nn.Module | None, seed: int, path: Path, max_steps: int, greedy: bool = False
) -> dict[str, Any] | None:
    """Play one evaluation episode (at most `max_steps` agent steps) with the same policy and write it as a GIF:
    Atari on the gymnasium/ale-py backend, which renders RGB (envpool does not); gymnasium and MiniGrid envs through
    their `rgb_array` rendering; every other env from its observations (`obs_frame`). Returns what was written, or
    None (with a note) when the env cannot be shown."""
    from PIL import Image

    backend, options = task.backend, dict(task.options)
    if backend == "labyrinth":  # RGB next to depth with its colour bar (runners/evaluation/render.py)
        from decoupled.runners.evaluation.render import labyrinth_video

        opts = {k: v for k, v in options.items() if k != "max_restarts" and not k.startswith("transform")}
        return labyrinth_video(task.env_id, net, seed, path, max_steps, VIDEO_GRID_FRAME_MS, **opts)
    if task.atari:
        backend = "atari_gym"
    elif backend in ("gym", "classic", "minigrid"):
        options["render_mode"] = "rgb_array"
    try:
        env = make_vec_env(backend, task.env_id, 1, seed, mode="eval", options=options)
    except ImportError as exc:
        print(f"{task.game}: no video ({exc})", flush=True)
        return None
    try:
        if task.atari:
            check_eval_settings(env.settings(), task.options["protocol"], task.options["max_episode_frames"])
        if not hasattr(env, "render_rgb") and len(env.spec.obs_shape) != 3:
            print(f"{task.game}: no video (vector observations and no renderer)", flush=True)
            return None
        policy = Policy(env.spec.num_actions, seed, net, greedy)
        obs = env.reset(seed=seed)
        policy.start(1)
        policy.extras = env.last_extras() if hasattr(env, "last_extras") else None

        def frame() -> np.ndarray:
            return env.render_rgb(0) if hasattr(env, "render_rgb") else obs_frame(obs[0], env.spec)

        frames, score, steps, ended = [frame()], 0.0, 0, False
        every = VIDEO_EVERY if task.atari else 1  # small envs: every step
        while steps < max_steps:
            action = policy.act(obs)
            obs, reward, terminated, truncated, info = env.step(action)
            policy.observe(action, reward, terminated, truncated, info.get("extras"))
            steps += 1
            score += float(reward[0])  # eval form: the unclipped reward
            if info["episode_done"][0]:  # the env has already reset: its screen is the next game's
                ended = True
                break
            if steps % every == 0:
                frames.append(frame())
    finally:
        env.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(_upscale(np.asarray(f, np.uint8))) for f in frames]
    duration = VIDEO_FRAME_MS if task.atari else VIDEO_GRID_FRAME_MS
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration, loop=0)
    return {
        "path": str(path),
        "agent_steps": steps,
        "gif_frames": len(images),
        "score": score,
        "episode_ended": ended,
        "backend": backend,
    }


# ----------------------------------------------------------------------------------------------- output
def _common(settings: list[dict[str, Any]]) -> dict[str, Any]:
    first = settings[0]
    return {k: v for k, v in first.items() if all(s.get(k) == v for s in settings[1:])}


def write_scores(out: Path, games: dict[str, dict[str, Any]], extra: dict[str, Any]) -> Path:
    """Write `scores.json` and `scores.csv` for `games` ({game: evaluate_task result}) plus metadata `extra`."""
    from decoupled.envs.atari_data import ATARI_SCORES, TABLE_ID, human_normalized_score

    out.mkdir(parents=True, exist_ok=True)
    in_table = all(g in ATARI_SCORES for g in games) and all(
        r["settings"].get("backend") in ("envpool", "gymnasium") for r in games.values()
    )
    table_id = TABLE_ID if in_table else None
    doc_games = {}
    for game, r in games.items():
        entry = dict(r)
        entry["mean_score"] = float(np.mean(r["episode_scores"]))
        entry["hns"] = float(human_normalized_score(game, entry["mean_score"])) if table_id else None
        doc_games[game] = entry
    checkpoints = {g: r.get("checkpoint") for g, r in games.items()}
    if len(set(checkpoints.values())) <= 1:
        checkpoint: Any = next(iter(checkpoints.values()), None)
    else:
        checkpoint = checkpoints
    doc = {
        "games": doc_games,
        "protocol": _common([r["settings"] for r in games.values()]),
        "checkpoint": checkpoint,
        "table_id": table_id,
        **extra,
    }
    (out / "scores.json").write_text(json.dumps(doc, indent=2, default=str))
    with open(out / "scores.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["game", "seed", "episode", "score", "frames", "truncated", "hns", "table_id"])
        for game, r in games.items():
            rows = zip(r["episode_seeds"], r["episode_scores"], r["episode_frames"], r["episode_truncated"])
            for i, (seed, s, fr, tr) in enumerate(rows):
                hns = f"{human_normalized_score(game, s):.6g}" if table_id else ""
                w.writerow([game, seed, i, s, fr, int(tr), hns, table_id or ""])
    return out / "scores.json"


def summary_line(task: EvalTask, r: dict[str, Any]) -> str:
    from decoupled.envs.atari_data import ATARI_SCORES, TABLE_ID, human_normalized_score

    s = np.asarray(r["episode_scores"])
    line = f"{task.game}: mean score {s.mean():.2f} +- {s.std():.2f} over {len(s)} episodes"
    line += f" (min {s.min():.1f}, max {s.max():.1f}; {r['seconds']:.0f} s)"
    if task.atari and task.game in ATARI_SCORES:
        rnd, hum = ATARI_SCORES[task.game]
        hns = human_normalized_score(task.game, s.mean())
        line += f", HNS {hns:.3f} (table {TABLE_ID}: random {rnd:g}, human {hum:g})"
    if sum(r["episode_truncated"]):
        line += f", {sum(r['episode_truncated'])} cut by the frame cap"
    return line


def _cache_key(task: EvalTask, episodes: int, seeds: list[int], num_envs: int | None, greedy: bool, video_steps: int):
    """What an evaluation's result depends on (JSON-normalised): a cached result is reused only when all match."""
    n = eval_num_envs(episodes, num_envs)
    key = {
        "checkpoint": task.checkpoint,
        "backend": task.backend,
        "env_id": task.env_id,
        "options": task.options,
        "episodes": episodes,
        "seeds": list(seeds),
        "num_envs": n,
        "env_seeds": [eval_env_seeds(s, n)[0] for s in seeds],
        "greedy": greedy,
        "video_steps": video_steps,
        "goal_ablation": task.goal_ablation,
    }
    return json.loads(json.dumps(key, default=str))


def _result_problem(r: Any, episodes: int, seeds: list[int]) -> str | None:
    """Why `r` is not `episodes` whole episodes for every seed of `seeds` (None: it is)."""
    if not isinstance(r, dict):
        return f"not a result: {type(r).__name__}"
    want = episodes * len(seeds)
    keys = ("episode_scores", "episode_frames", "episode_truncated", "episode_seeds")
    got = {k: len(r.get(k) or []) for k in keys}
    if any(v != want for v in got.values()):
        return f"expected {want} episodes ({episodes} x {len(seeds)} seeds), got {got}"
    if [s for s in seeds for _ in range(episodes)] != list(r["episode_seeds"]):
        return f"the episodes' seeds are not {seeds} x {episodes}"
    return None


def evaluate_tasks(
    tasks: list[EvalTask],
    out: Path,
    episodes: int,
    seeds: list[int],
    extra: dict[str, Any],
    num_envs: int | None = None,
    greedy: bool = False,
    video_steps: int = 2000,
    keep_going: bool = False,
    cache_dir: Path | None = None,
    errors: dict[str, str] | None = None,
) -> tuple[Path | None, dict[str, str]]:
    """Evaluate every task and write the score files to `out`; returns (scores.json, {game: error}).

    The request is checked first (`check_eval_request`: episodes >= 1, seeds given, distinct and >= 0). With
    `keep_going`, a game that fails is reported in the returned errors and in scores.json's "errors" instead of
    stopping the others (`errors`: games that failed before, e.g. loading their checkpoint, reported alike); when no
    game could be evaluated nothing is written and the path is None. With `cache_dir`, each game's result is kept in
    `cache_dir/<game>.json` with what it depends on (`_cache_key`: checkpoint, env, options, episodes, seeds,
    number of envs, greedy, video) and reused while that is unchanged; only a checked, complete result is cached."""
    check_eval_request(episodes, seeds, num_envs)
    if not tasks and not errors:
        raise ValueError("no game to evaluate")
    results: dict[str, dict[str, Any]] = {}
    errors = dict(errors or {})
    for task in tasks:
        video = out / "videos" / f"{task.game}.gif" if video_steps > 0 else None
        cache = cache_dir / f"{task.game}.json" if cache_dir is not None else None
        try:
            key = _cache_key(task, episodes, seeds, num_envs, greedy, video_steps)
            cached = json.loads(cache.read_text()) if cache is not None and cache.is_file() else None
            if (
                cached is not None
                and cached.get("key") == key
                and not _result_problem(cached.get("result"), episodes, seeds)
            ):
                results[task.game] = cached["result"]
                print(f"{task.game}: evaluated before ({task.checkpoint}), reused", flush=True)
                continue
            r = evaluate_task(task, episodes, seeds, num_envs, greedy, video, video_steps)
            problem = _result_problem(r, episodes, seeds)
            if problem:  # neither written nor cached
                raise RuntimeError(f"{task.game}: {problem}")
            r = json.loads(json.dumps(r, default=str))
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_suffix(".tmp")
                tmp.write_text(json.dumps({"key": key, "result": r}, indent=2))
                tmp.replace(cache)
            results[task.game] = r
        except Exception as exc:
            if not keep_going:
                raise
            errors[task.game] = f"{type(exc).__name__}: {exc}"
            print(f"{task.game}: evaluation failed: {errors[task.game]}", file=sys.stderr, flush=True)
            continue
        print(summary_line(task, results[task.game]), flush=True)
    if not results:
        if keep_going:
            return None, errors
        raise RuntimeError("no game could be evaluated: " + "; ".join(f"{g}: {e}" for g, e in errors.items()))
    runs = [r["run_dir"] for r in results.values() if r.get("run_dir")]
    meta = {"runs": runs, **extra, "seeds": list(seeds), "episodes_per_seed": episodes, "greedy": greedy}
    meta["num_envs"] = eval_num_envs(episodes, num_envs)
    if errors:
        meta["errors"] = errors
    return write_scores(out, results, meta), errors


# ----------------------------------------------------------------------------------------------- the command
def parse_seeds(text: str, flag: str = "--seeds") -> list[int]:
    """`"1,2,3"` -> [1, 2, 3]: comma-separated, distinct integers >= 0 (`flag` names the option in errors)."""
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"{flag} needs distinct integers >= 0, got {text!r}")
    return seeds


def _parse_seeds(args: argparse.Namespace) -> list[int]:
    return parse_seeds(args.seeds) if args.seeds else parse_seeds(str(args.seed), "--seed")


def suite_runs(target: Path) -> dict[str, Path]:
    """The game runs of a suite dir (`DIR/runs/<Game>/config.yaml`), by game."""
    runs = Path(target) / "runs"
    if not runs.is_dir():
        return {}
    return {p.name: p for p in sorted(runs.iterdir()) if (p / "config.yaml").is_file()}


def atari_game(env_id: str) -> str:
    """The game of an Atari env id as the score table names it: `ALE/Breakout-v5`, `Breakout-v5`, `breakout` ->
    `Breakout` (`envs.atari_data.canonical_game`); an id of a game not in the table -> its ALE id name."""
    from decoupled.envs.atari import _game_id
    from decoupled.envs.atari_data import UnknownGameError, canonical_game

    try:
        return canonical_game(env_id)
    except UnknownGameError:
        return _game_id(env_id)


# Envpool cannot reset without playing a no-op frame (noop_max=0 crashes it; envs/atari.py), so under
# `machado2018`, which has no no-op starts, every envpool game starts one frame later than on the ALE. Measured with
# `decoupled bench backends` (BENCHMARKS.md, 2026-12-03): no difference detectable on Pong, Space Invaders, Seaquest
# or Ms. Pac-Man, but a random policy's Breakout score 1.29 on ale-py and 1.88 on envpool (800 episodes each,
# p < 0.001), the same (1.87 vs 1.89) once both play that frame. Evaluations under these protocols therefore run on
# gymnasium + ale-py, which follows them exactly, unless `--backend atari` asks for envpool.
INEXACT_ON_ENVPOOL = ("machado2018",)
_said: set[str] = set()


def eval_backend(backend: str, protocol: str, explicit: bool) -> str:
    """The backend an Atari evaluation under `protocol` runs on: `backend`, except that envpool hands over to
    `atari_gym` where it cannot play the protocol exactly (`INEXACT_ON_ENVPOOL`), unless it was asked for
    (`explicit`), which is said once."""
    if backend != "atari" or protocol not in INEXACT_ON_ENVPOOL:
        return backend
    if explicit:
        msg = (
            f"warning: envpool plays one no-op frame at every reset, which {protocol} does not have; scores can "
            "differ from the ALE's (Breakout's random policy: 1.88 vs 1.29). Leave out --backend for ale-py."
        )
    else:
        msg = (
            f"{protocol} evaluation runs on atari_gym (gymnasium + ale-py), which plays the protocol exactly "
            "(envpool adds a no-op frame at every reset); --backend atari for envpool anyway"
        )
    if msg not in _said:
        _said.add(msg)
        print(msg, flush=True)
    return backend if explicit else "atari_gym"


def atari_task(
    game: str | None, backend: str, env_id: str, options: dict[str, Any], explicit: bool = False, **kw: Any
) -> EvalTask:
    """An Atari task named by the table's game name (`atari_game`); a game of the table is built by that name, so a
    run trained as `ALE/Breakout-v5` or `breakout` plays, and is scored, as `Breakout` on either backend. The
    backend is `eval_backend`'s (`explicit`: the user chose it)."""
    from decoupled.envs.atari_data import ATARI_SCORES

    name = atari_game(env_id)
    backend = eval_backend(backend, options["protocol"], explicit)
    return EvalTask(game or name, backend, name if name in ATARI_SCORES else env_id, options, **kw)


def checkpoint_task(
    target: Path,
    game: str | None = None,
    protocol: str | None = None,
    cap: int | None = None,
    backend: str | None = None,
) -> EvalTask:
    cfg, state, ckpt = load_checkpoint(target)
    run_dir = run_dir_of(Path(target))
    saved = {"cfg": cfg, "state": state, "checkpoint": ckpt, "run_dir": str(run_dir)}
    return config_task(cfg, game, protocol, cap, backend, **saved)


def config_task(
    config: ConfigBase,
    game: str | None = None,
    protocol: str | None = None,
    cap: int | None = None,
    backend: str | None = None,
    **saved: Any,
) -> EvalTask:
    """The evaluation task of a run's config: its env in evaluation form (Atari: the protocol's, 108,000-frame cap,
    the backend that plays it exactly), as `decoupled eval RUN` plays it. `saved`: the task's policy fields."""
    cfg = config
    if cfg.env.backend in ATARI_BACKENDS:
        options = atari_options(protocol or cfg.env.protocol, cap, cfg.env.options())
        return atari_task(game, backend or cfg.env.backend, cfg.env.id, options, backend is not None, **saved)
    if protocol or cap or backend:
        raise ValueError(f"--protocol, --max-episode-frames and --backend are for Atari runs, not {cfg.env.backend}")
    return EvalTask(game or cfg.env.id, cfg.env.backend, cfg.env.id, cfg.env.options(), **saved)


def run_dir_of(target: Path) -> Path:
    """The run dir of a run dir, a checkpoint dir, or a checkpoint under checkpoints/best/ (the nearest parent with a
    config.yaml)."""
    for path in (target, *target.parents[:3]):
        if (path / "config.yaml").is_file():
            return path
    return target.parent.parent


class PeriodicEvaluator:
    """Evaluation during training (`runner.eval_every_env_frames`): `runner.eval_episodes` whole episodes of the
    run's task in evaluation form (`config_task`, as `decoupled eval RUN`), on env copies of its own built once, reset
    with `runner.eval_seed` every time (the same episodes, so successive evaluations differ by the policy only), the
    policy's actions sampled from a generator of its own (the training's random streams are untouched). Returns the
    `eval/` metrics."""

    def __init__(self, cfg: ConfigBase):
        r = cfg.runner
        self.task = config_task(cfg)
        self.episodes, self.seed, self.video_steps = r.eval_episodes, r.eval_seed, r.eval_video_steps
        n = eval_num_envs(self.episodes, None)
        self.env = make_vec_env(
            self.task.backend, self.task.env_id, n, self.seed, mode="eval", options=self.task.options
        )
        try:
            self.settings = self.env.settings()
            if self.task.atari:
                check_eval_settings(
                    self.settings, self.task.options["protocol"], self.task.options["max_episode_frames"]
                )
        except BaseException:
            self.env.close()
            raise

    def __call__(self, net: torch.nn.Module, video: Path | None = None) -> dict[str, Any]:
        """The eval/ metrics of `net`'s policy; with `video`, one more episode filmed there (`eval/video`: its path)."""
        was_training = net.training
        net.eval()
        t0 = time.time()
        filmed = None
        try:
            with torch.no_grad():
                policy = Policy(self.env.spec.num_actions, self.seed, net)
                result = play_episodes(self.env, policy, self.episodes, self.seed)
                if video is not None:
                    try:
                        filmed = record_video(self.task, net, self.seed, video, self.video_steps)
                    except Exception as exc:  # noqa: BLE001 - the scores stand without the picture
                        print(f"eval video failed: {type(exc).__name__}: {exc}", flush=True)
        finally:
            net.train(was_training)
        scores = np.asarray(result["episode_scores"], float)
        out: dict[str, Any] = {
            "eval/episode_return": float(scores.mean()),
            "eval/episode_return_std": float(scores.std()),
            "eval/episode_frames": float(np.mean(result["episode_frames"])),
            "eval/episodes": float(len(scores)),
            "eval/seconds": round(time.time() - t0, 3),
        }
        if filmed:
            out["eval/video"] = filmed["path"]
        return out

    def close(self) -> None:
        self.env.close()


def make_periodic_evaluator(cfg: ConfigBase) -> PeriodicEvaluator:
    """The evaluator factory the training loop takes (`train(..., evaluator=make_periodic_evaluator)`)."""
    return PeriodicEvaluator(cfg)


def _tasks_from_args(args: argparse.Namespace) -> tuple[list[EvalTask], str, Path]:
    """-> (tasks, label, default output dir)."""
    from decoupled.envs.atari_data import resolve_games

    games = resolve_games(args.games, args.suite) if (args.games or args.suite) else None
    cap = args.max_episode_frames
    if args.policy == "random":
        if games is not None:
            base, backend = None, args.backend or "atari"
            if args.config:
                cfg = load_config(args.config)
                if cfg.env.backend not in ATARI_BACKENDS:
                    raise ValueError(f"--games/--suite are Atari games; {args.config} is a {cfg.env.backend} config")
                base, backend = cfg.env.options(), args.backend or cfg.env.backend
            options = atari_options(args.protocol, cap, base)
            backend = eval_backend(backend, options["protocol"], args.backend is not None)
            tasks = [EvalTask(g, backend, g, dict(options)) for g in games]
            name = args.suite or ("_".join(games) if len(games) <= 3 else f"{len(games)}_games")
            return tasks, "random", Path("runs") / f"eval_random_{name}"
        if args.config:
            cfg = load_config(args.config)
        elif args.target:
            cfg = load_config(Path(args.target) / "config.yaml")
        else:
            raise ValueError("--policy random needs --games/--suite, --config CONFIG or a run dir to take the env from")
        if cfg.env.backend in ATARI_BACKENDS:
            options = atari_options(args.protocol, cap, cfg.env.options())
            task = atari_task(None, args.backend or cfg.env.backend, cfg.env.id, options, args.backend is not None)
        else:
            if args.protocol or cap or args.backend:
                raise ValueError(f"--protocol, --max-episode-frames and --backend are for Atari, not {cfg.env.backend}")
            task = EvalTask(cfg.env.id, cfg.env.backend, cfg.env.id, cfg.env.options())
        return [task], "random", Path("runs") / f"eval_random_{task.game.replace('/', '_')}"

    if not args.target:
        raise ValueError("give a run dir, a checkpoint dir or a suite dir to evaluate (or --policy random)")
    target = Path(args.target)
    if not target.exists():
        raise FileNotFoundError(f"{target} does not exist")
    runs = suite_runs(target)
    if runs and not (target / "config.yaml").is_file():
        if games is not None:
            missing = [g for g in games if g not in runs]
            if missing:
                raise FileNotFoundError(f"{target} has no run for {', '.join(missing)} (it has {', '.join(runs)})")
            runs = {g: runs[g] for g in games}
        tasks = []
        for g, run in runs.items():
            try:
                tasks.append(checkpoint_task(run, g, args.protocol, cap, args.backend))
            except FileNotFoundError as exc:
                if games is not None:
                    raise
                print(f"{g}: skipped ({exc})", flush=True)
        if not tasks:
            raise FileNotFoundError(f"no run in {target / 'runs'} has a checkpoint to evaluate")
        return tasks, tasks[0].cfg.agent_name, target / "eval"
    task = checkpoint_task(target, None, args.protocol, cap, args.backend)
    default_out = target / "eval" if (target / "config.yaml").is_file() else target.parent.parent / "eval"
    if task.options.get("games"):  # a multi-game run (MinAtar env.games): each game evaluated on its own
        per_game = [replace(task, game=g, options={**task.options, "eval_game": g}) for g in task.options["games"]]
        return per_game, task.cfg.agent_name, default_out
    if games is not None and games != [task.game]:
        raise ValueError(
            f"{target} was trained on {task.game} and plays only that game; --games/--suite select games of a suite "
            "dir or of --policy random"
        )
    return [task], task.cfg.agent_name, default_out


def evaluate_command(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        raise ValueError("--episodes must be at least 1")
    if args.num_envs is not None and args.num_envs < 1:
        raise ValueError("--num-envs must be at least 1")
    seeds = _parse_seeds(args)
    check_eval_request(args.episodes, seeds, args.num_envs)
    if args.out:
        check_out_dir(args.out)  # before the evaluation, not after it
    tasks, label, default_out = _tasks_from_args(args)
    ablation = getattr(args, "ablate_goals", None) or "none"
    for task in tasks:
        task.goal_ablation = ablation
    if ablation != "none":
        default_out = default_out.with_name(f"{default_out.name}_ablate_goals_{ablation}")
    out = check_out_dir(args.out or default_out)
    extra = {"label": args.label or label, "policy": args.policy}
    if ablation != "none":
        extra["goal_ablation"] = ablation
    video_steps = 0 if args.no_video else args.video_steps
    path, _ = evaluate_tasks(tasks, out, args.episodes, seeds, extra, args.num_envs, args.greedy, video_steps)
    assert path is not None  # without keep_going a failure raises
    doc = json.loads(path.read_text())
    videos = [r["video"]["path"] for r in doc["games"].values() if r.get("video")]
    print(f"wrote {path}" + (f" and {len(videos)} video(s) in {out / 'videos'}" if videos else ""))
    if len({t.run_dir for t in tasks}) == 1 and tasks[0].run_dir is not None and tasks[0].state is not None:
        note = log_eval_to_run(Path(tasks[0].run_dir), tasks[0].cfg, tasks[0].state, doc, out.name)
        if note:
            print(note)
    return 0


def log_eval_to_run(run_dir: Path, cfg: ConfigBase, state: dict[str, Any], doc: dict[str, Any], name: str) -> str:
    """Add an evaluation's results (per game: mean, std and count of the episode scores, HNS where there is one) and
    its videos to the run's own W&B record (the run id its checkpoint holds), on the run's last env_frames; in its
    W&B mode (offline by default), behind the logger's timeouts. Returns what happened, for the console."""
    from decoupled.runners.training.logger import WandbSink

    run_id = state.get("wandb_run_id")
    if cfg.wandb.mode == "disabled" or not run_id:
        return ""
    frames = int(state.get("counters", {}).get("env_frames", 0))
    sink = WandbSink(run_dir, None, mode=cfg.wandb.mode, project=cfg.wandb.project, entity=cfg.wandb.entity,
                     group=cfg.wandb.group, tags=cfg.wandb.tags, name=run_dir.name, run_id=run_id,
                     timeout_s=cfg.wandb.init_timeout_s, finish_timeout_s=cfg.wandb.finish_timeout_s)  # fmt: skip
    if sink.run is None:
        return f"W&B: the evaluation is in {name}/scores.json only ({sink.mode})"
    record: dict[str, Any] = {"env_frames": frames}
    summary: dict[str, Any] = {}
    for game, r in doc["games"].items():
        scores = np.asarray(r["episode_scores"], float)
        key = f"{name}/{game}"
        record |= {f"{key}/mean_score": float(scores.mean()), f"{key}/std_score": float(scores.std()),
                   f"{key}/episodes": len(scores)}  # fmt: skip
        if r.get("hns") is not None:
            record[f"{key}/hns"] = float(r["hns"])
        if r.get("video"):
            record[f"{key}/video"] = r["video"]["path"]
        summary[f"{key}/mean_score"] = float(scores.mean())
    sink.write(record)
    sink.summary(summary)
    problem = sink.close()
    return f"W&B: logged to run {run_id}" + (f" ({problem})" if problem else "")
