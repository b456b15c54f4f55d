"""`decoupled bench backends`: do the two Atari backends give the same random-policy scores?

    decoupled bench backends [--games Pong,Breakout,SpaceInvaders,Seaquest,MsPacman]
                             [--protocols dqn_noop30,machado2018] [--episodes 200] [--jobs 2] [--out DIR]

Scores are compared with papers' tables computed on the ALE, and this platform builds Atari two ways: envpool's C++
pool (backend `atari`, the default) and gymnasium + ale-py (`atari_gym`), which differ in code, in their emulator
build and in a few documented corners (envs/atari.py's module docstring). This benchmark plays the same uniform
random policy, through the evaluation code (`decoupled eval --policy random`: the same per-env episode quota, the
same env seeds, the same stream of random actions), for `--episodes` whole episodes on each backend, per game and
protocol, and compares the two samples of episode scores (and of episode lengths in frames):

- Welch's t-test on the means, with the 95% confidence interval of the difference (gymnasium minus envpool);
- the k-sample Anderson-Darling test on the whole distributions (its tie-corrected form, because Atari scores are
  discrete; scipy caps its p-value to [0.001, 0.25]);
- the minimum detectable shift of the mean at 80% power and a 5% two-sided level, `(z_0.975 + z_0.8) * SE_diff`,
  so a "same" verdict says how small a difference it could have seen (the question that started this: 0.3 points on
  Pong);
- a verdict per cell at family-wise level 5% (Holm's step-down correction over every cell's two tests).

Each cell (game, protocol, backend) is written to `--out/cells/` as it finishes, and a rerun with the same settings
reuses it, so an interrupted benchmark continues. Writes `--out/backends.md` (the table) and `--out/backends.png`
(the score distributions, both backends overlaid, per game and protocol), and prints one JSON line per comparison.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import platform
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from decoupled.runners.bench import emit

BACKENDS = ("atari", "atari_gym")  # (reference, other): differences are atari_gym minus atari
DEFAULT_GAMES = ("Pong", "Breakout", "SpaceInvaders", "Seaquest", "MsPacman")
DEFAULT_PROTOCOLS = ("dqn_noop30", "machado2018")
LEVEL = 0.05
POWER = 0.8


def play_cell(a: dict[str, Any]) -> dict[str, Any]:
    """Play `a["episodes"]` random-policy episodes of one game under one protocol on one backend (in a worker)."""
    import torch

    from decoupled.runners.evaluation.evaluate import EvalTask, atari_options, evaluate_task

    torch.set_num_threads(1)
    options = atari_options(a["protocol"], a["max_episode_frames"])
    task = EvalTask(a["game"], a["backend"], a["game"], options)
    r = evaluate_task(task, a["episodes"], [a["seed"]], a["num_envs"])
    return {
        **a,
        "scores": r["episode_scores"],
        "frames": r["episode_frames"],
        "truncated": r["episode_truncated"],
        "seconds": r["seconds"],
        "settings": r["settings"],
    }


def compare(x: list[float], y: list[float]) -> dict[str, float]:
    """Two samples of episode scores: `y` (the other backend) against `x` (the reference). Welch's t-test on the
    means with the 95% CI of mean(y) - mean(x), the tie-corrected k-sample Anderson-Darling test on the
    distributions, and the shift of the mean the comparison detects with 80% power at a 5% two-sided level."""
    from scipy import stats

    x_a, y_a = np.asarray(x, float), np.asarray(y, float)
    if len(x_a) < 2 or len(y_a) < 2:
        raise ValueError(f"need at least 2 episodes per backend to compare, got {len(x_a)} and {len(y_a)}")
    vx, vy = x_a.var(ddof=1) / len(x_a), y_a.var(ddof=1) / len(y_a)
    se = math.sqrt(vx + vy)
    diff = float(y_a.mean() - x_a.mean())
    if se == 0.0:  # both samples constant: the means are equal or they are not, with no noise to weigh
        p_mean, lo, hi = (1.0 if diff == 0.0 else 0.0), diff, diff
    else:
        df = (vx + vy) ** 2 / (vx**2 / (len(x_a) - 1) + vy**2 / (len(y_a) - 1))  # Welch-Satterthwaite
        t = diff / se
        p_mean = float(2 * stats.t.sf(abs(t), df))
        half = float(stats.t.ppf(0.975, df)) * se
        lo, hi = diff - half, diff + half
    if np.unique(np.concatenate([x_a, y_a])).size < 2:
        p_dist = 1.0  # every episode the same score: the distributions are identical
    else:
        with warnings.catch_warnings():  # it warns whenever its p-value is capped to [0.001, 0.25]
            warnings.simplefilter("ignore", UserWarning)
            p_dist = float(stats.anderson_ksamp([x_a, y_a], midrank=True).pvalue)
    mde = (stats.norm.ppf(1 - LEVEL / 2) + stats.norm.ppf(POWER)) * se
    return {
        "n_ref": len(x_a), "n_other": len(y_a),
        "mean_ref": float(x_a.mean()), "mean_other": float(y_a.mean()),
        "se_ref": math.sqrt(vx), "se_other": math.sqrt(vy),
        "std_ref": float(x_a.std(ddof=1)), "std_other": float(y_a.std(ddof=1)),
        "diff": diff, "ci95_low": float(lo), "ci95_high": float(hi),
        "p_mean": p_mean, "p_dist": p_dist, "mde80": float(mde),
    }  # fmt: skip


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control, any dependence between the tests)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def _cell_path(out: Path, a: dict[str, Any]) -> Path:
    return out / "cells" / f"{a['game']}_{a['protocol']}_{a['backend']}.json"


def _same_request(saved: dict[str, Any], a: dict[str, Any]) -> bool:
    return all(saved.get(k) == v for k, v in a.items())


def run_cells(requests: list[dict[str, Any]], out: Path, jobs: int) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Every cell, from `out/cells/` where an earlier run with the same settings left it, else played (`jobs` at a
    time, each in its own process) and saved as soon as it finishes."""
    done: dict[tuple[str, str, str], dict[str, Any]] = {}
    todo = []
    for a in requests:
        path = _cell_path(out, a)
        if path.is_file():
            saved = json.loads(path.read_text())
            if _same_request(saved, a):
                done[(a["game"], a["protocol"], a["backend"])] = saved
                continue
        todo.append(a)
    if todo:
        print(f"bench backends: {len(todo)} cell(s) to play, {len(done)} reused from {out / 'cells'}", flush=True)
    (out / "cells").mkdir(parents=True, exist_ok=True)

    def keep(r: dict[str, Any]) -> None:
        path = _cell_path(out, r)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(r))
        tmp.replace(path)
        done[(r["game"], r["protocol"], r["backend"])] = r
        print(
            f"  {r['game']} {r['protocol']} {r['backend']}: {len(r['scores'])} episodes, "
            f"mean {np.mean(r['scores']):.2f}, {r['seconds']:.0f} s",
            flush=True,
        )

    if jobs <= 1:
        for a in todo:
            keep(play_cell(a))
    else:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            for future in as_completed([pool.submit(play_cell, a) for a in todo]):
                keep(future.result())
    return done


def bench_backends(args: argparse.Namespace) -> list[dict[str, Any]]:
    from decoupled.envs.atari import PRESETS

    games = [g.strip() for g in args.games.split(",") if g.strip()]
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    unknown = [p for p in protocols if p not in PRESETS]
    if unknown:
        raise ValueError(f"unknown Atari protocol(s) {', '.join(unknown)}; choose from {', '.join(PRESETS)}")
    if not games or not protocols:
        raise ValueError("give at least one game (--games) and one protocol (--protocols)")
    if args.episodes < 2:
        raise ValueError(f"--episodes must be at least 2 to compare distributions, got {args.episodes}")
    out = Path(args.out)
    requests = [
        {"game": g, "protocol": p, "backend": b, "episodes": args.episodes, "seed": args.seed,
         "num_envs": args.num_envs, "max_episode_frames": args.max_episode_frames}
        for g in games for p in protocols for b in BACKENDS
    ]  # fmt: skip
    t0 = time.time()
    cells = run_cells(requests, out, args.jobs)
    rows = []
    for g in games:
        for p in protocols:
            ref, other = cells[(g, p, BACKENDS[0])], cells[(g, p, BACKENDS[1])]
            row = {"bench": "backends", "game": g, "protocol": p, "what": "episode score"}
            row.update(compare(ref["scores"], other["scores"]))
            frames = compare(ref["frames"], other["frames"])
            row.update(frames_ref=frames["mean_ref"], frames_other=frames["mean_other"], p_frames=frames["p_mean"])
            row["truncated_ref"] = int(sum(ref["truncated"]))
            row["truncated_other"] = int(sum(other["truncated"]))
            rows.append(row)
    adjusted = holm([r[k] for r in rows for k in ("p_mean", "p_dist")])
    for i, r in enumerate(rows):
        r["p_mean_holm"], r["p_dist_holm"] = adjusted[2 * i], adjusted[2 * i + 1]
        r["verdict"] = "differ" if min(r["p_mean_holm"], r["p_dist_holm"]) < LEVEL else "same"
        emit(r)
    summary = {
        "bench": "backends", "what": "summary", "cells": len(rows),
        "differ": [f"{r['game']}/{r['protocol']}" for r in rows if r["verdict"] == "differ"],
        "episodes": args.episodes, "seed": args.seed, "num_envs": args.num_envs, "seconds": round(time.time() - t0),
        "machine": f"{platform.machine()}, {_cpu_name()}", "versions": _versions(),
    }  # fmt: skip
    emit(summary)
    (out / "backends.md").write_text(markdown_table(rows, summary))
    try:
        plot_distributions(cells, games, protocols, out / "backends.png")
    except Exception as exc:  # noqa: BLE001 - the figure is for people; the table and JSON lines stand without it
        print(f"bench backends: no figure ({type(exc).__name__}: {exc})", flush=True)
    return [*rows, summary]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("envpool", "ale-py", "gymnasium"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


def markdown_table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    lines = [
        f"Random policy, {summary['episodes']} episodes per cell, seed {summary['seed']}, "
        f"{summary['num_envs']} envs; {summary['machine']}; {summary['versions']}",
        "",
        "| game | protocol | envpool mean ± SE | gymnasium mean ± SE | diff [95% CI] | detectable (80%) "
        "| p mean (Holm) | p dist (Holm) | frames envpool / gym | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['game']} | {r['protocol']} | {r['mean_ref']:.2f} ± {r['se_ref']:.2f} | "
            f"{r['mean_other']:.2f} ± {r['se_other']:.2f} | {r['diff']:+.2f} [{r['ci95_low']:+.2f}, "
            f"{r['ci95_high']:+.2f}] | {r['mde80']:.2f} | {r['p_mean']:.3f} ({r['p_mean_holm']:.2f}) | "
            f"{r['p_dist']:.3f} ({r['p_dist_holm']:.2f}) | {r['frames_ref']:.0f} / {r['frames_other']:.0f} | "
            f"{r['verdict']} |"
        )
    return "\n".join(lines) + "\n"


def plot_distributions(cells: dict, games: list[str], protocols: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(len(protocols), len(games), figsize=(3.2 * len(games), 2.6 * len(protocols)),
                             squeeze=False)  # fmt: skip
    for i, p in enumerate(protocols):
        for j, g in enumerate(games):
            ax = axes[i][j]
            for b, label in zip(BACKENDS, ("envpool", "gymnasium + ale-py"), strict=True):
                s = np.sort(np.asarray(cells[(g, p, b)]["scores"], float))
                ax.step(s, np.arange(1, len(s) + 1) / len(s), where="post", label=f"{label} ({s.mean():.2f})")
            ax.set_title(f"{g}, {p}", fontsize=9)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=6, loc="lower right")
            if j == 0:
                ax.set_ylabel("share of episodes <= score", fontsize=7)
            if i == len(protocols) - 1:
                ax.set_xlabel("episode score (random policy)", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--games", default=",".join(DEFAULT_GAMES), help="comma-separated Atari games")
    p.add_argument("--protocols", default=",".join(DEFAULT_PROTOCOLS), help="comma-separated evaluation protocols")
    p.add_argument("--episodes", type=int, default=200, help="random-policy episodes per game, protocol and backend")
    p.add_argument("--seed", type=int, default=0, help="evaluation seed (env seeds and the random actions)")
    p.add_argument("--num-envs", type=int, default=8, help="parallel envs per cell, each with its own quota")
    p.add_argument("--max-episode-frames", type=int, help="episode cap in frames (default: the protocols' 108,000)")
    p.add_argument("--jobs", type=int, default=2, help="cells played in parallel (one process each)")
    p.add_argument("--out", default="runs/bench_backends")
