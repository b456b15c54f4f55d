"""`decoupled bench peer`: train a Stable-Baselines3 peer on an Atari game for a wall-clock budget, the way our
runs are trained, and evaluate it under `dqn_noop30`; the yardstick for our own learning curves, and a teacher for
policy distillation (`agent.teachers: [OUT/model.zip]`, agents/distill.py).

    decoupled bench peer --algo ppo --game Pong --seconds 3600 --out runs/sb3_ppo_pong [--eval-episodes 20]
    decoupled bench peer --algo ppo --game CartPole-v1 --max-env-frames 100000 --out runs/sb3_ppo_cartpole

A classic-control id the zoo tunes without observation normalisation (`CLASSIC_HYPERPARAMETERS`: CartPole-v1; the
zoo's Acrobot and MountainCar settings add VecNormalize, whose statistics a distillation teacher would lose) trains
SB3's MlpPolicy with the zoo's hyperparameters for it on gymnasium's env (`make_vec_env`, a Monitor per env), no
frame skip (one step is one frame, as our `gym` backend counts), and evaluates it on whole episodes of the same env
(gymnasium's time limit).

The peer uses rl-baselines3-zoo's Atari hyperparameters (hyperparams/ppo.yml and a2c.yml, `atari`) on the game's
NoFrameskip-v4 env with SB3's own Atari wrappers (`make_atari_env`: 30 no-ops, frame skip 4 with max-pooling, life
loss as episode end, 84x84 grey, reward clipping; frame stack 4). What it writes in OUT matches our run dirs, so
`decoupled plot` and `decoupled report` read it as they read ours:

* `metrics.jsonl`: one record per `--log-every-env-frames` with `env_frames` (agent steps x 4), `perf/wall_time_s`
  and `train/episode_return`, the mean unclipped whole-game return of the episodes that ended since the last record
  (SB3's Monitor sits under the Atari wrappers, so it sees the game's own episodes and rewards);
* `peer.json`: algorithm, hyperparameters, frames, wall-clock; `model.zip`: the trained model;
* `eval/scores.json` (our schema): `--eval-episodes` episodes of the trained policy (sampled actions, as ours are
  evaluated by default) under `dqn_noop30` in SB3's wrappers: 1-30 no-ops, no sticky actions, frame skip 4, no
  life-loss ends, unclipped score, 108,000-frame cap.

SB3 sees the same gray-scale frames up to the conversion (cv2's RGB->grey there, ALE's palette grey in envpool), so
the SB3 model is evaluated in its own wrappers rather than ours.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

FRAME_SKIP = 4
EVAL_MAX_FRAMES = 108_000

# rl-baselines3-zoo hyperparams (atari). PPO: lr and clip range annealed linearly to 0 over the planned steps.
PEER_HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    "ppo": {
        "n_envs": 8, "n_steps": 128, "n_epochs": 4, "batch_size": 256, "learning_rate": "lin_2.5e-4",
        "clip_range": "lin_0.1", "vf_coef": 0.5, "ent_coef": 0.01,
    },
    "a2c": {"n_envs": 16, "ent_coef": 0.01, "vf_coef": 0.25, "optimizer": "RMSprop(eps=1e-5, alpha=0.99)"},
}  # fmt: skip


# rl-baselines3-zoo hyperparams (hyperparams/ppo.yml, a2c.yml) of the classic-control games: `lin_x` schedules
# anneal linearly to 0 over the planned steps (the zoo's n_timesteps: CartPole 1e5 for PPO, 5e5 for A2C).
CLASSIC_HYPERPARAMETERS: dict[str, dict[str, dict[str, Any]]] = {
    "CartPole-v1": {
        "ppo": {"n_envs": 8, "n_steps": 32, "batch_size": 256, "gae_lambda": 0.8, "gamma": 0.98, "n_epochs": 20,
                "ent_coef": 0.0, "learning_rate": "lin_0.001", "clip_range": "lin_0.2"},
        "a2c": {"n_envs": 8, "ent_coef": 0.0},
    },
}  # fmt: skip


def _linear(start: float):
    return lambda progress_remaining: progress_remaining * start


def frame_skip(game: str) -> int:
    """Frames per agent step: 4 on Atari, 1 on classic control."""
    return 1 if game in CLASSIC_HYPERPARAMETERS else FRAME_SKIP


def make_classic_peer(algo: str, game: str, env: Any, seed: int) -> Any:
    """SB3's MlpPolicy with the zoo's hyperparameters for `game` (CLASSIC_HYPERPARAMETERS)."""
    from stable_baselines3 import A2C, PPO

    hp = {k: v for k, v in CLASSIC_HYPERPARAMETERS[game][algo].items() if k != "n_envs"}
    for key, value in hp.items():
        if isinstance(value, str) and value.startswith("lin_"):
            hp[key] = _linear(float(value[4:]))
    cls = {"ppo": PPO, "a2c": A2C}[algo]
    return cls("MlpPolicy", env, device="cpu", seed=seed, verbose=0, **hp)


def make_peer(algo: str, env: Any, seed: int) -> Any:
    import torch
    from stable_baselines3 import A2C, PPO

    if algo == "ppo":
        return PPO(
            "CnnPolicy", env, n_steps=128, n_epochs=4, batch_size=256, learning_rate=_linear(2.5e-4),
            clip_range=_linear(0.1), vf_coef=0.5, ent_coef=0.01, device="cpu", seed=seed, verbose=0,
        )  # fmt: skip
    if algo == "a2c":
        return A2C(
            "CnnPolicy", env, ent_coef=0.01, vf_coef=0.25, device="cpu", seed=seed, verbose=0,
            policy_kwargs={"optimizer_class": torch.optim.RMSprop, "optimizer_kwargs": {"eps": 1e-5, "alpha": 0.99}},
        )  # fmt: skip
    raise ValueError(f"unknown peer algorithm {algo!r}; choose ppo or a2c")


def check_game(game: str) -> None:
    """A `BenchUsageError` unless `game` is an ALE game name with SB3's Atari env, `<game>NoFrameskip-v4`, or a
    classic-control id of CLASSIC_HYPERPARAMETERS."""
    import difflib

    from decoupled.runners.bench import BenchUsageError

    if game in CLASSIC_HYPERPARAMETERS:
        return
    if "-v" in game:
        raise BenchUsageError(
            f"unknown game {game!r}: --game takes an ALE game name (e.g. Pong) or one of the classic-control ids "
            f"with the zoo's hyperparameters: {', '.join(CLASSIC_HYPERPARAMETERS)}"
        )

    try:
        import ale_py
        import gymnasium as gym
    except ImportError as e:
        raise BenchUsageError(f"the Atari benchmarks need ale-py ({e}): pip install 'decoupled[atari]'") from None
    gym.register_envs(ale_py)
    if f"{game}NoFrameskip-v4" in gym.registry:
        return
    names = sorted(k.removesuffix("NoFrameskip-v4") for k in gym.registry if k.endswith("NoFrameskip-v4"))
    names = [n for n in names if "-" not in n]  # not the -ram variants
    close = [n for n in names if n.lower() == game.lower()] or difflib.get_close_matches(game, names, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise BenchUsageError(f"unknown Atari game {game!r}{hint} (--game takes an ALE game name, e.g. Pong or Breakout)")


def _atari_env(game: str, n_envs: int, seed: int, evaluation: bool) -> Any:
    import ale_py
    import gymnasium as gym
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)
    env_id = f"{game}NoFrameskip-v4"
    if evaluation:  # dqn_noop30: whole games, unclipped, capped at 108,000 frames
        wrapper_kwargs = {"terminal_on_life_loss": False, "clip_reward": False, "noop_max": 30}
        env_kwargs = {"max_episode_steps": EVAL_MAX_FRAMES}  # NoFrameskip: one env step is one frame
        env = make_atari_env(env_id, n_envs=n_envs, seed=seed, wrapper_kwargs=wrapper_kwargs, env_kwargs=env_kwargs)
    else:
        env = make_atari_env(env_id, n_envs=n_envs, seed=seed)
    return VecFrameStack(env, n_stack=4)


def _env(game: str, n_envs: int, seed: int, evaluation: bool) -> Any:
    if game not in CLASSIC_HYPERPARAMETERS:
        return _atari_env(game, n_envs, seed, evaluation)
    from stable_baselines3.common.env_util import make_vec_env

    return make_vec_env(game, n_envs=n_envs, seed=seed)


def evaluate_peer(model: Any, game: str, episodes: int, seed: int) -> dict[str, Any]:
    """Whole evaluation episodes of `model` (sampled actions): under dqn_noop30 in SB3's wrappers on Atari, of the
    gymnasium env (its own time limit) on classic control."""
    n = min(episodes, 8)
    env = _env(game, n, seed, evaluation=True)
    quota = np.full(n, episodes // n)
    quota[: episodes % n] += 1
    done = np.zeros(n, int)
    scores: list[float] = []
    frames: list[int] = []
    truncated: list[bool] = []
    obs = env.reset()
    try:
        while (done < quota).any():
            action, _ = model.predict(obs, deterministic=False)
            obs, _, dones, infos = env.step(action)
            for i, info in enumerate(infos):
                if dones[i] and "episode" in info and done[i] < quota[i]:
                    scores.append(float(info["episode"]["r"]))
                    frames.append(int(info["episode"]["l"]))  # Monitor's steps: NoFrameskip / classic = frames
                    truncated.append(bool(info.get("TimeLimit.truncated", False)))
                    done[i] += 1
    finally:
        env.close()
    return {"episode_scores": scores, "episode_frames": frames, "episode_truncated": truncated}


def train_peer(args: argparse.Namespace) -> dict[str, Any]:
    from stable_baselines3.common.callbacks import BaseCallback

    import decoupled.runners  # noqa: F401 - passive OpenMP waiting, as in our runs
    from decoupled.runners.bench import BenchUsageError
    from decoupled.runners.evaluation import check_out_dir

    check_game(args.game)  # before anything is written
    try:
        out = check_out_dir(args.out)
    except ValueError as e:
        raise BenchUsageError(str(e)) from None
    out.mkdir(parents=True, exist_ok=True)
    classic = args.game in CLASSIC_HYPERPARAMETERS
    hp = CLASSIC_HYPERPARAMETERS[args.game][args.algo] if classic else PEER_HYPERPARAMETERS[args.algo]
    skip = frame_skip(args.game)
    env = _env(args.game, hp["n_envs"], args.seed, evaluation=False)
    model = make_classic_peer(args.algo, args.game, env, args.seed) if classic else make_peer(args.algo, env, args.seed)
    metrics = (out / "metrics.jsonl").open("w")
    log_every = args.log_every_env_frames

    class Log(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.t0 = time.time()
            self.returns: list[float] = []
            self.episodes = 0
            self.next_log = log_every

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:
                    self.returns.append(float(info["episode"]["r"]))
                    self.episodes += 1
            frames = self.num_timesteps * skip
            wall = time.time() - self.t0
            stop = wall >= args.seconds or frames >= args.max_env_frames
            if frames >= self.next_log or stop:
                record: dict[str, Any] = {"env_frames": frames, "time": time.time(), "perf/wall_time_s": wall}
                if self.returns:
                    record["train/episode_return"] = float(np.mean(self.returns))
                record["train/episodes"] = self.episodes
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                ret = f"{np.mean(self.returns):.2f}" if self.returns else "n/a"
                print(f"{args.algo} frames {frames:,} | {frames / max(wall, 1e-9):,.0f} frames/s | return {ret} "
                      f"| {wall / 60:.1f} min", flush=True)  # fmt: skip
                self.returns = []
                self.next_log = (frames // log_every + 1) * log_every
            return not stop

    log = Log()
    # total_timesteps sets the linear schedules' horizon: the frames the budget is expected to reach
    planned = args.planned_env_frames or (min(args.max_env_frames, 10**5) if classic else 40_000_000)
    model.learn(total_timesteps=planned // skip, callback=log)
    wall = time.time() - log.t0
    metrics.close()
    env.close()
    model.save(out / "model.zip")
    info = {
        "algo": f"sb3_{args.algo}", "game": args.game, "seed": args.seed, "hyperparameters": hp,
        "env_frames": model.num_timesteps * skip, "wall_time_s": round(wall, 1), "seconds_budget": args.seconds,
        "planned_env_frames": planned,
        "env": f"{args.game}, SB3 make_vec_env" if classic else f"{args.game}NoFrameskip-v4, SB3 make_atari_env",
    }  # fmt: skip
    (out / "peer.json").write_text(json.dumps(info, indent=2) + "\n")
    if args.eval_episodes > 0:
        t0 = time.time()
        result = evaluate_peer(model, args.game, args.eval_episodes, seed=10_000 + args.seed)
        result["seconds"] = round(time.time() - t0, 1)
        scores = np.asarray(result["episode_scores"])
        protocol = {"protocol": "gym", "name": args.game, "frame_skip": 1, "backend": "sb3_make_vec_env"}
        if not classic:
            protocol = {"protocol": "dqn_noop30", "name": f"{args.game}NoFrameskip-v4", "noop_max": 30,
                        "frame_skip": FRAME_SKIP, "repeat_action_probability": 0.0, "life_loss_terminal": False,
                        "reward_clip": False, "max_episode_frames": EVAL_MAX_FRAMES, "full_action_space": False,
                        "backend": "sb3_atari_wrappers"}  # fmt: skip
        doc = {
            "games": {args.game: result},
            # the keys of `decoupled eval`'s scores.json, so `decoupled report` compares the two correctly
            "protocol": protocol,
            "checkpoint": str(out / "model.zip"), "table_id": None, "label": f"sb3_{args.algo}", "policy": "sampled",
            "greedy": False,
        }  # fmt: skip
        (out / "eval").mkdir(exist_ok=True)
        (out / "eval" / "scores.json").write_text(json.dumps(doc, indent=2) + "\n")
        info["eval_mean"], info["eval_std"] = float(scores.mean()), float(scores.std())
        print(f"{args.game}: {scores.mean():.2f} +- {scores.std():.2f} over {len(scores)} {protocol['protocol']} "
              "episodes")  # fmt: skip
    print(json.dumps({"bench": "peer", **info}), flush=True)
    return info


def add_arguments(p: argparse.ArgumentParser) -> None:
    from decoupled.runners.evaluation import positive_float, positive_int

    p.add_argument("--algo", choices=sorted(PEER_HYPERPARAMETERS), default="ppo")
    p.add_argument("--game", default="Pong")
    p.add_argument("--seconds", type=positive_float, default=3600.0, help="wall-clock budget of the training")
    p.add_argument("--max-env-frames", type=positive_int, default=10**12, help="stop earlier at this many frames")
    p.add_argument(
        "--planned-env-frames", type=int, default=None,
        help="horizon of the linear lr / clip schedules; by default the zoo's budget: 10M agent steps on Atari, "
        "on classic control 1e5 steps or --max-env-frames if fewer (set it to the frames the budget reaches to anneal "
        "them to 0 within it, as our configs do)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--log-every-env-frames", type=positive_int, default=100_000)
    p.add_argument("--out", required=True)
