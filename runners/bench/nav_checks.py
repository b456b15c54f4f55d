"""`decoupled bench nav-depth`: does the navigation agent's depth head learn depth from single frames? (its D1 head
alone, supervised, no RL)

    decoupled bench nav-depth [--config nav/nav_maze_small_static] [--task T] [--seeds 3] [--train-frames 20000]
        [--test-frames 4000] [--steps 4000] [--batch-size 64] [--num-envs 2] [--out runs/bench_nav_depth]

Mirowski et al. 2017, "Learning to Navigate in Complex Environments" (arXiv:1611.03673, the v3 paper's
classification form), give their agent an auxiliary task D1: from the conv torso's features f_t, predict a coarse
4x16 depth map of the central field of view, each pixel one of 8 depth classes, trained with the summed per-pixel
cross-entropy. In the agent that loss is mixed with the RL loss, so a D1 head that cannot learn would go unnoticed;
this benchmark trains the head on its own to show that it can:

- frames: uniformly random actions in the labyrinth of the config (`env`: by default the small static maze sized for
  a CPU, 42x42 RGB) through the env layer the trainer uses (`make_vec_env`, one worker process per env), every
  observation kept, resets included; a "frame" here is one agent step's observation (4 engine frames at skip 4);
- targets: the depth classes exactly as the actor records them (agents/auxtasks.py `EnvTargets`, which applies
  envs/labyrinth.py `nav_depth_targets` to the env's depth extra);
- net: the agent of the config built as training builds it (`make_net` after `torch.manual_seed(seed)`), of which
  only the torso and the `depth_conv` head (`DepthTask`) are used and trained: the real torso and head, with their
  real initialisation;
- loss: `depth_loss` (the per-frame sum over the 64 pixels of the cross-entropy), its mean over a minibatch drawn
  uniformly with replacement from the training frames, Adam (our choice for a supervised check; the paper's agent
  uses RMSProp on the RL loss).

Held-out frames: per seed s, the training frames come from envs seeded 100000 s + i and the test frames from envs
seeded 100000 s + 50000 + i (i < num_envs <= 64), with action streams of their own: different episodes, hence
different start cells, headings and walks. On a static task (the default) all episodes share the task's one fixed
maze, as the agent's training does; on a random-maze task (`--task random_maze_01`, or `random_maze` with the
config's `maze_size`) every episode draws its maze from the env's seed, and `test_mazes_in_train` counts the test
mazes that training also saw. Frames are collected once per seed (the seed drives the envs, the actions, the net's
init and the minibatches).

Per seed it prints the per-pixel accuracy on the test frames against three baselines: chance (1/8), the
per-pixel majority class (each of the 64 positions predicted as its most frequent class in the training frames)
and the global majority class, with the accuracy curve over training; then the medians over seeds. The figure
(`--out/nav_depth.png`) shows the curves with the baselines, and one test frame with its true and predicted maps.

The second half holds the evaluation `decoupled bench nav` (runners/bench/learning.py `bench_nav`) runs on each
trained policy: `play_nav_episodes` plays fixed episodes (env seed 20000 + j for episode j, for every method) and
records the goal times, the auxiliary heads' outputs against the actor's own targets and the LSTMs' states with the
agent's maze cell; `goal_timing_summary` (time to the first goal vs between later goals, the paper's evidence of
memory), `binary_scores` (the loop-closure head's precision, recall and F1) and `position_probe` (a linear
read-out of the cell from the LSTM state, against the majority cell) turn them into numbers.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from decoupled.runners.bench import BenchUsageError, emit

TEST_SEED_OFFSET = 50_000  # env seeds of the test frames: this far from the training envs' (num_envs <= 64)
SEED_STRIDE = 100_000  # env seeds of bench seed s start at s * SEED_STRIDE
EVAL_BATCH = 1024  # frames per forward pass when evaluating
TRAIN_EVAL_FRAMES = 4000  # training frames scored for the train accuracy (the first ones; a generalisation gap)


def _check_args(args: argparse.Namespace) -> Any:
    """The run's config (agent and env) after checking every argument; `BenchUsageError` on a bad one."""
    for name in ("seeds", "train_frames", "test_frames", "steps", "batch_size", "torch_threads"):
        if getattr(args, name) < 1:
            raise BenchUsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 1 <= args.num_envs <= 64:
        raise BenchUsageError(f"--num-envs must be between 1 and 64, got {args.num_envs}")
    if not args.lr > 0:
        raise BenchUsageError(f"--lr must be positive, got {args.lr}")
    if args.eval_every is not None and args.eval_every < 1:
        raise BenchUsageError(f"--eval-every must be at least 1, got {args.eval_every}")
    from decoupled.envs.labyrinth import TASKS
    from decoupled.runners.training.config import load_config

    if args.task is not None and args.task not in TASKS:
        raise BenchUsageError(f"unknown labyrinth task {args.task!r}; --task takes one of {', '.join(TASKS)}")
    overrides = ["wandb.mode=disabled"] + ([f"env.id={args.task}"] if args.task else [])
    cfg = load_config(args.config, overrides)  # a ConfigError is a usage error too
    if cfg.env.backend != "labyrinth":
        raise BenchUsageError(f"{args.config} is on env.backend={cfg.env.backend}; depth needs the labyrinth")
    aux = getattr(cfg.agent, "aux", None)
    if getattr(aux, "depth_conv", None) is None:
        raise BenchUsageError(f"{args.config}'s agent has no depth_conv task (agent.aux.depth_conv): no D1 head")
    return cfg


# ------------------------------------------------------------------------------------------------ frames
def collect_frames(cfg: Any, frames: int, num_envs: int, env_seed: int, action_seed: int) -> dict[str, Any]:
    """`frames` observations of uniformly random walks in `num_envs` envs of the config's labyrinth (env i seeded
    `env_seed + i`), every observation kept (the reset ones too), in time-major order, with the depth classes the
    actor records for them: {"obs": uint8 [N, C, H, W], "depth_classes": int8 [N, 4, 16], "mazes": the generation
    seeds of the mazes played, "spec": the env's spec}."""
    from decoupled.agents.auxtasks import DEPTH_KEY, EnvTargets
    from decoupled.envs import make_vec_env

    env = make_vec_env("labyrinth", cfg.env.id, num_envs, env_seed, options=cfg.env.options())
    try:
        spec = env.spec
        targets = EnvTargets(num_envs, depth=True)  # the actor's own recording of the depth targets
        cols = slice(0, num_envs)
        obs = np.empty((frames, *spec.obs_shape), np.uint8)
        classes = np.empty((frames, 4, 16), np.int8)
        rng = np.random.default_rng(action_seed)
        o = env.reset(seed=env_seed)
        extras, env_info, first = env.last_extras(), {}, np.ones(num_envs, bool)
        mazes: set[int] = set()
        n = 0
        while True:
            take = min(num_envs, frames - n)
            obs[n : n + take] = o[:take]
            classes[n : n + take] = targets.record(cols, extras, env_info, first)[DEPTH_KEY][:take]
            n += take
            if n == frames:
                break
            o, _, terminated, truncated, info = env.step(rng.integers(0, spec.num_actions, num_envs))
            extras, env_info, first = info["extras"], info["env_info"], terminated | truncated
            mazes.update(int(s) for s in env_info.get("maze_seed", ()))
    finally:
        env.close()
    return {"obs": obs, "depth_classes": classes, "mazes": mazes, "spec": spec}


def majority_baselines(train: np.ndarray, test: np.ndarray) -> dict[str, Any]:
    """Accuracy on the test classes [N, 4, 16] of predicting, at each of the 64 positions, that position's most
    frequent class in the training classes (`majority_pixel_accuracy`), and of predicting everywhere the most
    frequent class overall (`majority_global_accuracy`)."""
    t = train.reshape(len(train), -1).astype(np.int64)
    counts = np.stack([np.bincount(t[:, p], minlength=8) for p in range(t.shape[1])])  # [64, 8]
    per_pixel = counts.argmax(1)
    overall = int(counts.sum(0).argmax())
    flat = test.reshape(len(test), -1)
    return {
        "majority_pixel_accuracy": float((flat == per_pixel).mean()),
        "majority_global_accuracy": float((flat == overall).mean()),
        "majority_global_class": overall,
    }


# ------------------------------------------------------------------------------------------------ the head
def depth_model(cfg: Any, spec: Any, seed: int) -> nn.Module:
    """The torso and the D1 head of the config's agent, built as training builds the agent (seeded the same way):
    `model(obs [N, C, H, W]) -> logits [N, 4, 16, 8]`."""
    from decoupled.agents import get_agent

    torch.manual_seed(seed)
    net = get_agent(cfg.agent_name).make_net(spec, cfg.agent)
    heads = getattr(getattr(net, "aux", None), "heads", {})
    if not hasattr(net, "torso") or "depth_conv" not in heads:
        raise BenchUsageError(f"agent {cfg.agent_name} built no torso and depth_conv head")
    return _TorsoDepth(net.torso, heads["depth_conv"])


class _TorsoDepth(nn.Module):
    """x -> torso -> f -> D1 head: the agent's path from the observation to the depth logits (no core)."""

    def __init__(self, torso: nn.Module, head: nn.Module):
        super().__init__()
        self.torso, self.head = torso, head

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.torso(obs))


@torch.no_grad()
def evaluate(model: nn.Module, obs: torch.Tensor, classes: torch.Tensor) -> dict[str, Any]:
    """Per-pixel accuracy, its value per row of the 4x16 map, and the mean per-frame loss on (obs, classes)."""
    from decoupled.agents.auxtasks import depth_loss

    model.eval()
    hits = torch.zeros(4, 16, dtype=torch.float64)
    loss = 0.0
    preds = []
    for i in range(0, len(obs), EVAL_BATCH):
        logits = model(obs[i : i + EVAL_BATCH])
        y = classes[i : i + EVAL_BATCH].long()
        pred = logits.argmax(-1)
        preds.append(pred.to(torch.int8))
        hits += (pred == y).double().sum(0)
        loss += float(depth_loss(logits, y).sum())
    model.train()
    n = len(obs)
    return {
        "accuracy": float(hits.sum() / (n * 64)),
        "accuracy_by_row": [round(float(v), 4) for v in hits.sum(1) / (n * 16)],
        "loss": loss / n,
        "pred": torch.cat(preds).numpy(),
    }


def train_seed(cfg: Any, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Collect one seed's frames, train its torso + D1 head on them and score it on its held-out frames."""
    from decoupled.agents.auxtasks import depth_loss

    base = seed * SEED_STRIDE
    t0 = time.perf_counter()
    train = collect_frames(cfg, args.train_frames, args.num_envs, base, action_seed=2 * seed)
    test = collect_frames(cfg, args.test_frames, args.num_envs, base + TEST_SEED_OFFSET, action_seed=2 * seed + 1)
    collect_s = time.perf_counter() - t0

    model = depth_model(cfg, train["spec"], seed)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    x_train, y_train = torch.from_numpy(train["obs"]), torch.from_numpy(train["depth_classes"])
    x_test, y_test = torch.from_numpy(test["obs"]), torch.from_numpy(test["depth_classes"])
    every = args.eval_every or max(1, args.steps // 20)
    gen = torch.Generator().manual_seed(seed)
    first = evaluate(model, x_test, y_test)
    curve = [{"step": 0, "test_accuracy": first["accuracy"], "test_loss": first["loss"], "train_loss": None}]
    running: list[float] = []
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(x_train), (args.batch_size,), generator=gen)
        loss = depth_loss(model(x_train[idx]), y_train[idx]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running.append(loss.item())
        if step % every == 0 or step == args.steps:
            ev = evaluate(model, x_test, y_test)
            curve.append({"step": step, "test_accuracy": ev["accuracy"], "test_loss": ev["loss"],
                          "train_loss": statistics.fmean(running)})  # fmt: skip
            running = []
    train_s = time.perf_counter() - t0
    final = evaluate(model, x_test, y_test)
    on_train = evaluate(model, x_train[:TRAIN_EVAL_FRAMES], y_train[:TRAIN_EVAL_FRAMES])
    base_acc = majority_baselines(train["depth_classes"], test["depth_classes"])
    shares = np.bincount(test["depth_classes"].ravel().astype(np.int64), minlength=8) / test["depth_classes"].size
    record = {
        "bench": "nav_depth", "seed": seed, "task": cfg.env.id, "config": args.config,
        "obs_shape": list(train["spec"].obs_shape), "train_frames": args.train_frames, "test_frames": args.test_frames,
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
        "test_accuracy": round(final["accuracy"], 4), "test_accuracy_by_row": final["accuracy_by_row"],
        "test_loss": round(final["loss"], 4), "train_accuracy": round(on_train["accuracy"], 4),
        "chance_accuracy": 1 / 8,
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in base_acc.items()},
        "test_class_shares": [round(float(v), 4) for v in shares],
        "train_mazes": len(train["mazes"]), "test_mazes": len(test["mazes"]),
        "test_mazes_in_train": len(test["mazes"] & train["mazes"]),
        "accuracy_curve": [[c["step"], round(c["test_accuracy"], 4)] for c in curve],
        "loss_curve": [[c["step"], round(c["train_loss"], 3)] for c in curve if c["train_loss"] is not None],
        "collect_s": round(collect_s, 1), "train_s": round(train_s, 1),
    }  # fmt: skip
    example = _example(test["obs"], test["depth_classes"], final["pred"])
    return {"record": record, "curve": curve, "example": example}


def _example(obs: np.ndarray, classes: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """The test frame whose true map has the most distinct classes (the first such), for the figure."""
    distinct = [len(np.unique(c)) for c in classes]
    i = int(np.argmax(distinct))
    return {"obs": obs[i], "true": classes[i], "pred": pred[i], "index": np.array(i)}


def bench_nav_depth(args: argparse.Namespace) -> list[dict[str, Any]]:
    """`decoupled bench nav-depth`: per seed, the D1 head's test accuracy against chance and the majority classes;
    then the medians over seeds and the figure."""
    cfg = _check_args(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.torch_threads)
    try:
        results = [train_seed(cfg, args, s) for s in range(args.seeds)]
    finally:
        torch.set_num_threads(threads)
    records = [emit(r["record"]) for r in results]
    figure = out / "nav_depth.png"
    plot(results, figure)
    acc = [r["test_accuracy"] for r in records]
    margin = [r["test_accuracy"] - r["majority_pixel_accuracy"] for r in records]
    records.append(emit({
        "bench": "nav_depth", "what": "summary", "seeds": len(records), "task": cfg.env.id, "config": args.config,
        "train_frames": args.train_frames, "test_frames": args.test_frames, "steps": args.steps,
        "test_accuracy_median": statistics.median(acc), "test_accuracy_min": min(acc),
        "train_accuracy_median": statistics.median(r["train_accuracy"] for r in records),
        "chance_accuracy": 1 / 8,
        "majority_pixel_accuracy_median": statistics.median(r["majority_pixel_accuracy"] for r in records),
        "majority_global_accuracy_median": statistics.median(r["majority_global_accuracy"] for r in records),
        "margin_over_majority_pixel_min": round(min(margin), 4), "figure": str(figure),
    }))  # fmt: skip
    return records


# ------------------------------------------------------------------------------------------------ figure
def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Test accuracy and training loss over the steps per seed, with the baselines; one test frame of the last
    seed with the 64 sampled positions marked, its true and its predicted 4x16 depth classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from decoupled.envs.labyrinth import nav_depth_crop_indices

    fig = plt.figure(figsize=(12, 3.4))
    grid = fig.add_gridspec(2, 4, width_ratios=[1.3, 1.3, 0.8, 1.0])
    ax_acc, ax_loss = fig.add_subplot(grid[:, 0]), fig.add_subplot(grid[:, 1])
    for r in results:
        steps = [c["step"] for c in r["curve"]]
        ax_acc.plot(steps, [c["test_accuracy"] for c in r["curve"]], label=f"seed {r['record']['seed']}")
        trained = [c for c in r["curve"] if c["train_loss"] is not None]
        ax_loss.plot([c["step"] for c in trained], [c["train_loss"] for c in trained], label=f"train, seed "
                     f"{r['record']['seed']}")  # fmt: skip
        ax_loss.plot(steps, [c["test_loss"] for c in r["curve"]], ls=":", color=ax_loss.lines[-1].get_color())
    recs = [r["record"] for r in results]
    for key, style, name in (
        ("majority_pixel_accuracy", "--", "per-pixel majority"),
        ("majority_global_accuracy", "-.", "global majority"),
    ):
        value = statistics.median(r[key] for r in recs)
        ax_acc.axhline(value, color="black", ls=style, lw=0.8, label=f"{name} ({value:.2f})")
    ax_acc.axhline(1 / 8, color="grey", ls=":", lw=0.8, label="chance (0.125)")
    ax_acc.set_ylim(0, 1)
    ax_acc.set_title("per-pixel accuracy on held-out frames", fontsize=9)
    ax_loss.set_title("loss per frame (sum of 64 CEs; dotted: test)", fontsize=9)
    for ax in (ax_acc, ax_loss):
        ax.set_xlabel("optimiser steps", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    ex = results[-1]["example"]
    img = np.transpose(ex["obs"], (1, 2, 0)) if ex["obs"].shape[0] in (1, 3) else ex["obs"]
    ax_img = fig.add_subplot(grid[:, 2])
    ax_img.imshow(img.squeeze(), interpolation="nearest")
    rows, cols = nav_depth_crop_indices(img.shape[0], img.shape[1])
    yy, xx = np.meshgrid(rows, cols, indexing="ij")
    ax_img.scatter(xx.ravel(), yy.ravel(), s=2, c="white")
    ax_img.set_title(f"test frame {int(ex['index'])} (seed {recs[-1]['seed']})", fontsize=8)
    ax_img.axis("off")
    for k, (key, name) in enumerate((("true", "true classes"), ("pred", "predicted"))):
        ax = fig.add_subplot(grid[k, 3])
        ax.imshow(ex[key], vmin=0, vmax=7, cmap="viridis", interpolation="nearest")
        ax.set_title(f"{name} (0 near, 7 far)", fontsize=8)
        ax.axis("off")
    task = recs[-1]["task"]
    fig.suptitle(f"Nav agent's D1 depth head (torso + depth_conv) trained alone on random-walk frames of {task}",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ================================================================================================ bench nav
# The evaluation `decoupled bench nav` (runners/bench/learning.py `bench_nav`) runs on each trained policy: the
# evidence Mirowski et al. 2017 give beyond the learning curves, measured on the same fixed episodes for every method.
NAV_EVAL_SEED = 20_000  # evaluation episode j is played on env seed NAV_EVAL_SEED + j (every config, method, seed)
NAV_EVAL_ENVS = 4  # envs stepped together (one worker process each)
NAV_EVAL_CACHE = "nav_eval.json"  # in the run dir: a finished benchmark rerun reuses its evaluation
NAV_EVAL_VERSION = 1  # bumped when what the evaluation measures changes (older caches are then recomputed)
PROBE_L2 = 1e-3  # the probe's L2 penalty on its weights (features standardised, mean cross-entropy)


def goal_timing(goal_steps: list[int]) -> dict[str, Any]:
    """One episode's goal times. `goal_steps`: the agent steps, counted from the episode's start, at which the goal
    was reached -> `goals`, `first` (steps to the first goal; None: never reached) and `later_mean` (the mean steps
    between successive goals after the first; None without a second goal). The paper's evidence that the agent
    remembers where the goal is: after the first find, the respawned agent goes back faster (its latency 1:>1)."""
    steps = sorted(int(s) for s in goal_steps)
    later = [b - a for a, b in zip(steps, steps[1:])]
    return {
        "goals": len(steps),
        "first": steps[0] if steps else None,
        "later_mean": statistics.fmean(later) if later else None,
    }


def goal_timing_summary(episodes: list[list[int]]) -> dict[str, Any]:
    """Over episodes (each its list of goal steps): the mean goals per episode, the mean steps to the first goal over
    the episodes that reached it, the mean over episodes (with a second goal) of their mean steps between later goals,
    and the ratio first / later (the paper's "latency 1:>1"; above 1: later goals come faster)."""
    per = [goal_timing(s) for s in episodes]
    firsts = [p["first"] for p in per if p["first"] is not None]
    laters = [p["later_mean"] for p in per if p["later_mean"] is not None]
    first = round(statistics.fmean(firsts), 2) if firsts else None
    later = round(statistics.fmean(laters), 2) if laters else None
    return {
        "episodes": len(per),
        "goals_mean": round(statistics.fmean(p["goals"] for p in per), 3) if per else None,
        "episodes_with_goal": len(firsts),
        "episodes_with_later_goal": len(laters),
        "first_goal_steps": first,
        "later_goal_steps": later,
        "first_over_later": round(first / later, 3) if first is not None and later else None,
    }


def binary_scores(pred: np.ndarray, label: np.ndarray) -> dict[str, Any]:
    """Precision, recall and F1 of boolean predictions against boolean labels (None where undefined: no predicted
    positives for the precision, no positive labels for the recall, neither for F1), with the counts."""
    pred, label = np.asarray(pred, bool).ravel(), np.asarray(label, bool).ravel()
    tp, fp, fn = int((pred & label).sum()), int((pred & ~label).sum()), int((~pred & label).sum())
    return {
        "precision": round(tp / (tp + fp), 4) if tp + fp else None,
        "recall": round(tp / (tp + fn), 4) if tp + fn else None,
        "f1": round(2 * tp / (2 * tp + fp + fn), 4) if tp + fp + fn else None,
        "tp": tp, "fp": fp, "fn": fn, "n": int(pred.size),
        "label_rate": round(float(label.mean()), 4) if label.size else None,
        "pred_rate": round(float(pred.mean()), 4) if pred.size else None,
    }  # fmt: skip


def position_probe(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, l2: float = PROBE_L2
) -> dict[str, Any]:
    """A linear read-out of position: multinomial logistic regression (softmax regression, full-batch L-BFGS, L2
    penalty `l2` on the weights, features standardised on the training set) from features [N, D] to integer class
    labels [N], fit on the training pairs and scored on the test pairs. Test labels the training never saw count as
    errors. Returns the test and training accuracy and the majority baseline (the training set's most frequent
    class predicted everywhere) on the test set. The Nav paper decodes the agent's position from its LSTM's
    activations to show the agent localises itself."""
    x_tr = torch.as_tensor(np.asarray(x_train, np.float32))
    x_te = torch.as_tensor(np.asarray(x_test, np.float32))
    classes, y_idx = np.unique(np.asarray(y_train), return_inverse=True)
    y_tr = torch.as_tensor(y_idx, dtype=torch.int64)
    y_test = np.asarray(y_test)
    majority = classes[int(np.bincount(y_idx).argmax())]
    out = {
        "classes": len(classes), "train_n": len(x_tr), "test_n": len(x_te),
        "majority_accuracy": round(float((y_test == majority).mean()), 4) if len(y_test) else None,
        "test_unseen_share": round(float((~np.isin(y_test, classes)).mean()), 4) if len(y_test) else None,
    }  # fmt: skip
    if len(classes) < 2 or not len(y_test):  # one class: the probe is the majority rule
        return {**out, "accuracy": out["majority_accuracy"], "train_accuracy": 1.0}
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-6
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    w = torch.zeros(x_tr.shape[1], len(classes), requires_grad=True)
    b = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=300, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(x_tr @ w + b, y_tr) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred_test = classes[(x_te @ w + b).argmax(1).numpy()]
        pred_train = (x_tr @ w + b).argmax(1)
    out["accuracy"] = round(float((pred_test == y_test).mean()), 4)
    out["train_accuracy"] = round(float((pred_train == y_tr).float().mean()), 4)
    return out


@torch.no_grad()
def play_nav_episodes(
    cfg: Any, net: Any, episodes: int, seed: int = NAV_EVAL_SEED, num_envs: int = NAV_EVAL_ENVS
) -> dict[str, Any]:
    """Play `episodes` whole episodes of the config's labyrinth with the trained `net` (a module, or a callable
    building it from the env's spec), sampling its policy as evaluation does; episode j is played on env seed
    `seed + j` (each round of `num_envs` episodes starts with an explicit reset, so every method meets the same
    mazes, goals and starts). Recorded per episode:

    - `return`, `steps`, and `goal_steps`: the agent steps (from the episode's start) whose step reached the goal
      (the env's `goal_found` flag);
    - for each depth head the net has (`depth_conv` D1, `depth_lstm` D2): its per-pixel hits on the episode's
      observations against the depth classes the actor records (`EnvTargets`);
    - for the loop-closure head: its predictions (probability > 0.5) and the label of the actor's
      `LoopClosureTracker` (through `EnvTargets`, fed the env's `respawned` flag and the episode starts as the actor
      feeds them);
    - for the position probe: the second LSTM's output h (the core's output), the first LSTM's h1, and the agent's
      maze cell (row, col) of the env's position extra, per observation.
    """
    from decoupled.agents.auxtasks import DEPTH_KEY, LOOP_KEY
    from decoupled.envs import make_vec_env
    from decoupled.envs.labyrinth import world_to_cell
    from decoupled.runners.training.actor_learner import net_inputs, sample_actions

    n = max(1, min(num_envs, episodes))
    env = make_vec_env(cfg.env.backend, cfg.env.id, n, seed, mode="eval", options=cfg.env.options())
    hook = None
    try:
        if not isinstance(net, nn.Module):
            net = net(env.spec)
        heads = set(getattr(getattr(net, "aux", None), "heads", {}) or {})
        captured: dict[str, torch.Tensor] = {}
        hook = net.core.register_forward_hook(lambda _m, _i, out: captured.__setitem__("core", out[0]))
        gen = torch.Generator().manual_seed(seed)
        records: list[dict[str, Any]] = []
        for start in range(0, episodes, n):
            k = min(n, episodes - start)  # the round's episodes: envs 0..k-1 (the others step along unrecorded)
            obs = env.reset(seed=seed + start)
            targets = net.env_targets(n) if hasattr(net, "env_targets") else None
            first = np.ones(n, bool)
            rec = targets.record(slice(0, n), env.last_extras(), {}, first) if targets is not None else {}
            extras = env.last_extras()
            prev_action, prev_reward = np.zeros(n, np.int64), np.zeros(n, np.float32)
            state = net.initial_state(n)
            eps = [{"return": 0.0, "steps": 0, "goal_steps": [], "h2": [], "h1": [], "cell": [],
                    "depth": {h: [0, 0] for h in sorted(heads & {"depth_conv", "depth_lstm"})},
                    "loop_pred": [], "loop_label": []} for _ in range(k)]  # fmt: skip
            active = np.zeros(n, bool)
            active[:k] = True
            while active.any():
                inputs = net_inputs(obs[None], first[None], prev_action[None], prev_reward[None], "cpu")
                for key in getattr(net, "extra_inputs", {}):
                    inputs[key] = torch.as_tensor(np.asarray(rec[key], np.float32))[None]
                out, state = net(inputs, state)
                h2, h1 = captured["core"][0], state[-2]
                for i in np.flatnonzero(active):
                    ep = eps[i]
                    ep["h2"].append(h2[i].numpy().copy())
                    ep["h1"].append(h1[i].numpy().copy())
                    ep["cell"].append(world_to_cell(extras["position"][i]))
                    for h, hits in ep["depth"].items():
                        pred = out[f"aux/{h}/logits"][0, i].argmax(-1).numpy()
                        hits[0] += int((pred == rec[DEPTH_KEY][i]).sum())
                        hits[1] += pred.size
                    if "loop_closure" in heads:
                        ep["loop_pred"].append(bool(out["aux/loop_closure/logits"][0, i] > 0))
                        ep["loop_label"].append(bool(rec[LOOP_KEY][i] > 0.5))
                action = sample_actions(out["policy_logits"][0], gen).numpy()
                obs, reward, terminated, truncated, info = env.step(action)
                done = np.asarray(terminated | truncated, bool)
                env_info, extras = info.get("env_info", {}), info.get("extras", {})
                found = np.asarray(env_info.get("goal_found", np.zeros(n, bool)), bool)
                for i in np.flatnonzero(active):
                    eps[i]["steps"] += 1
                    eps[i]["return"] += float(reward[i])
                    if found[i]:
                        eps[i]["goal_steps"].append(eps[i]["steps"])
                if targets is not None:
                    rec = targets.record(slice(0, n), extras, env_info, done)
                first, prev_action, prev_reward = done, action.astype(np.int64), np.asarray(reward, np.float32)
                active &= ~done
            records += eps
    finally:
        if hook is not None:
            hook.remove()
        env.close()
    return {"episodes": records, "heads": sorted(heads), "seed": seed, "num_envs": n}


def nav_eval_summary(played: dict[str, Any]) -> dict[str, Any]:
    """The measurements of `play_nav_episodes`: returns, goal timing, the depth heads' accuracy, the loop-closure
    head's precision / recall / F1, and the position probes (fit on the first half of the episodes, scored on the
    second half: on the second LSTM's h, and on both LSTMs' h concatenated), with the goal steps per episode."""
    eps = played["episodes"]
    out: dict[str, Any] = {
        "episodes": len(eps), "eval_seed": played["seed"],
        "return_mean": round(statistics.fmean(e["return"] for e in eps), 3),
        **goal_timing_summary([e["goal_steps"] for e in eps]),
    }  # fmt: skip
    for head in ("depth_conv", "depth_lstm"):
        if head in played["heads"]:
            hits = sum(e["depth"][head][0] for e in eps)
            total = sum(e["depth"][head][1] for e in eps)
            out[f"{head}_accuracy"] = round(hits / total, 4) if total else None
    if "loop_closure" in played["heads"]:
        pred = np.concatenate([np.asarray(e["loop_pred"], bool) for e in eps])
        label = np.concatenate([np.asarray(e["loop_label"], bool) for e in eps])
        out["loop_closure"] = binary_scores(pred, label)
    half = len(eps) // 2
    if half >= 1:
        train, test = eps[:half], eps[half:]

        def cells(group: list[dict]) -> np.ndarray:
            return np.array([r * 1000 + c for e in group for r, c in e["cell"]], np.int64)

        def feats(group: list[dict], keys: tuple[str, ...]) -> np.ndarray:
            return np.concatenate([np.concatenate([np.stack(e[k]) for k in keys], 1) for e in group])

        out["probe"] = {
            name: position_probe(feats(train, keys), cells(train), feats(test, keys), cells(test))
            for name, keys in (("h2", ("h2",)), ("h1h2", ("h1", "h2")))
        }
        out["probe"]["train_episodes"], out["probe"]["test_episodes"] = len(train), len(test)
    out["goal_steps_per_episode"] = [e["goal_steps"] for e in eps]
    out["returns"] = [round(e["return"], 3) for e in eps]
    return out


def nav_evaluation(run_dir: str | Path, episodes: int, seed: int = NAV_EVAL_SEED) -> dict[str, Any]:
    """The nav evaluation of a finished run's newest checkpoint (`bench nav`, called from learning.py `run_job` in
    the run's worker): {"eval_scores": the episode returns, "nav_eval": `nav_eval_summary`}. Kept in the run dir
    (`nav_eval.json`) and reused while the checkpoint, episodes and seed are the same."""
    import json

    from decoupled.runners.evaluation.evaluate import load_checkpoint
    from decoupled.runners.training.train import make_policy_net

    path = Path(run_dir)
    cfg, state, ckpt = load_checkpoint(path)
    key = {"checkpoint": str(ckpt), "episodes": episodes, "seed": seed, "version": NAV_EVAL_VERSION}
    cache = path / NAV_EVAL_CACHE
    if cache.is_file():
        try:
            doc = json.loads(cache.read_text())
            if doc.get("key") == key:
                return doc["result"]
        except (ValueError, KeyError):
            pass
    t0 = time.perf_counter()
    summary = nav_eval_summary(play_nav_episodes(cfg, lambda spec: make_policy_net(cfg, state, spec), episodes, seed))
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    result = {"eval_scores": summary["returns"], "nav_eval": summary}
    cache.write_text(json.dumps({"key": key, "result": result}))
    return result
