"""`decoupled report`: results the way papers report them (Atari human-normalised; any other env in raw scores).

Input: the `scores.json` files that `decoupled eval` writes, one per run (training seed) of an agent, grouped by
agent: `decoupled report impala=s0/scores.json,s1/scores.json random=rnd/scores.json --out DIR`. A bare path
takes its label from the file (`label`: the agent's name, or `random`); a directory stands for the `scores.json`
in it (or in its `eval/`). A run's score on a game is the mean of its evaluation episodes.

Scores are human-normalised (HNS) when every game is in the Atari table, and reported raw otherwise (MinAtar,
Catch, MiniGrid, the labyrinths, ...: no reference table; or `--raw`): then median, IQM and mean of the raw scores
with the same CIs, no optimality gap, `scores_per_game.png` instead of `hns_per_game.png`, and no table id.

Output (`--out DIR`), every normalised number next to the id of the score table it was normalised with
(`envs.atari_data.TABLE_ID`):

* `per_game.csv`: per agent and game, the mean raw score and human-normalised score (HNS) over runs;
* `score_matrix.csv`: the per-run HNS matrix (one row per run, one column per game): what rliable consumes, so
  others can recompute every aggregate; `per_run_scores.csv` has the same runs in long form with raw scores;
* `aggregates.csv`, `summary.json`, `report.md`: median, IQM, mean and optimality gap (gamma = 1) of HNS with
  95% stratified bootstrap confidence intervals (percentile method), and the Atari-5 / Atari-10 estimate of the
  57-game median when the games cover those subsets;
* `hns_per_game.png`, `aggregate_intervals.png`, `performance_profile.png`.

Statistics follow Agarwal et al. 2021, "Deep Reinforcement Learning at the Edge of the Statistical Precipice"
(NeurIPS; arXiv:2108.13264), computed with their library rliable: the IQM is the 25% trimmed mean over all runs x
games pooled, CIs resample runs within each game (stratified bootstrap). Fewer than 5 runs per agent gives CIs that
say little; the report warns. With `--wandb-run ID` the same tables and images go to that W&B run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIN_RUNS = 5  # rliable's "a handful of runs"; the platform's minimum for reported numbers
METRICS = ("Median", "IQM", "Mean", "Optimality Gap")
RAW_METRICS = ("Median", "IQM", "Mean")  # raw scores have no "1 = human" for an optimality gap
DEFAULT_REPS = 2_000  # seconds for a small report; the rliable README's examples use 50,000 (--reps 50000)
PROFILE_REPS = 2_000  # rliable's default for performance profiles


@dataclass
class Run:
    """One score file: one run (training seed) of one agent."""

    label: str
    path: Path
    scores: dict[str, float]  # game -> mean score over its evaluation episodes
    episodes: dict[str, int]
    protocol: str | None
    max_episode_frames: int | None
    backend: str | None = None  # the evaluation env's backend (envpool, gymnasium), from the read-back settings
    greedy: bool | None = None  # argmax actions (True) or sampled from the policy (False); None: not recorded


# ----------------------------------------------------------------------------------------------- inputs
def _scores_file(path: Path) -> Path:
    for p in (path, path / "scores.json", path / "eval" / "scores.json"):
        if p.is_file():
            return p
    raise FileNotFoundError(f"no scores file at {path} (give a scores.json written by `decoupled eval`, or its dir)")


def load_score_file(path: str | Path, label: str | None = None) -> Run:
    """Read and check one `scores.json`."""
    path = _scores_file(Path(path))
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}): give a scores.json written by `decoupled eval`") from None
    games = doc.get("games") if isinstance(doc, dict) else None
    if not isinstance(games, dict) or not games:
        raise ValueError(f"{path} has no games: expected {{'games': {{'<Game>': {{'episode_scores': [...]}}}}}}")
    scores, episodes = {}, {}
    for game, entry in games.items():
        eps = entry.get("episode_scores") if isinstance(entry, dict) else None
        if not isinstance(eps, list) or not eps:
            raise ValueError(f"{path}: game {game!r} has no episode_scores")
        if not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in eps):
            raise ValueError(f"{path}: game {game!r} has episode_scores that are not numbers; the file is corrupt")
        scores[game] = sum(float(s) for s in eps) / len(eps)
        episodes[game] = len(eps)
    protocol = doc.get("protocol") or {}
    name = label or doc.get("label") or doc.get("policy") or path.parent.name
    greedy = doc.get("greedy")
    return Run(
        name,
        path,
        scores,
        episodes,
        protocol.get("protocol"),
        protocol.get("max_episode_frames"),
        protocol.get("backend"),
        None if greedy is None else bool(greedy),
    )


def parse_inputs(specs: list[str]) -> list[Run]:
    """`[LABEL=]PATH[,PATH...]` items -> runs (one per path)."""
    if not specs:
        raise ValueError("give at least one score file: [LABEL=]PATH[,PATH...]")
    runs = []
    for spec in specs:
        label, sep, paths = spec.partition("=")
        if not sep:
            label, paths = None, spec
        elif not label.strip():
            raise ValueError(f"{spec!r}: the label before '=' is empty; give LABEL=PATH[,PATH...]")
        if not any(p.strip() for p in paths.split(",")):
            raise ValueError(f"{spec!r}: no score file after the label; give [LABEL=]PATH[,PATH...]")
        for p in paths.split(","):
            if p.strip():
                runs.append(load_score_file(p.strip(), label))
    seen: dict[tuple[str, Path], int] = {}
    for r in runs:
        key = (r.label, r.path.resolve())
        if key in seen:
            raise ValueError(f"{r.path} is given twice for {r.label}")
        seen[key] = 1
    return runs


def group_runs(
    runs: list[Run], games: list[str] | None = None, normalise: bool = True
) -> tuple[dict[str, list[Run]], list[str]]:
    """Runs by label, and the games to report (every game of every run unless `games` restricts them). With
    `normalise`, every game must be in the score table; every run must have scores on every game."""
    from decoupled.envs.atari_data import check_in_table

    agents: dict[str, list[Run]] = {}
    for r in runs:
        agents.setdefault(r.label, []).append(r)
    if games is None:
        games = []
        for r in runs:
            games += [g for g in r.scores if g not in games]
    for r in runs:
        if normalise:
            check_in_table([g for g in r.scores if g in games], str(r.path))
    for r in runs:
        missing = [g for g in games if g not in r.scores]
        if missing:
            raise ValueError(
                f"{r.path} ({r.label}) has no scores on {', '.join(missing)}: every run needs every game "
                "(pass --games to report on the games all runs share)"
            )
    return agents, games


def check_comparable(runs: list[Run]) -> list[str]:
    """Warnings for score files that were not evaluated alike (their numbers cannot be compared)."""
    notes = []
    protocols = {r.protocol for r in runs}
    if len(protocols) > 1:
        notes.append(f"score files were evaluated under different protocols: {sorted(map(str, protocols))}")
    caps = {r.max_episode_frames for r in runs}
    if len(caps) > 1:
        notes.append(f"score files used different episode caps (frames): {sorted(map(str, caps))}")
    elif caps and next(iter(caps)) not in (None, 108_000):
        notes.append(f"episode cap {next(iter(caps))} frames is not the standard 108,000: not comparable to papers")
    backends = {r.backend for r in runs}
    if len(backends) > 1:
        notes.append(
            f"score files were evaluated on different backends: {sorted(map(str, backends))} (envpool and gymnasium "
            "count the frame cap and no-op starts differently: envs/atari.py)"
        )
    actions = {r.greedy for r in runs}
    if len(actions) > 1:
        names = {True: "greedy (argmax)", False: "sampled", None: "not recorded"}
        notes.append(f"score files mix greedy and sampled actions: {sorted(names[a] for a in actions)}")
    return notes


# ----------------------------------------------------------------------------------------------- statistics
@contextmanager
def _seeded_numpy(seed: int) -> Iterator[None]:
    """rliable's StratifiedBootstrap draws its indices from numpy's global RNG (np.random.choice), whatever
    random_state says: seed it for reproducible CIs and put the caller's state back after."""
    import numpy as np

    state = np.random.get_state()  # noqa: NPY002
    np.random.seed(seed)  # noqa: NPY002
    try:
        yield
    finally:
        np.random.set_state(state)  # noqa: NPY002


def hns_matrices(agents: dict[str, list[Run]], games: list[str]) -> dict[str, Any]:
    """{label: HNS array [runs, games]} against the pinned table."""
    import numpy as np

    from decoupled.envs.atari_data import human_normalized_score

    return {
        label: np.array([[human_normalized_score(g, r.scores[g]) for g in games] for r in runs], np.float64)
        for label, runs in agents.items()
    }


def raw_aggregate_fn(scores: Any) -> Any:
    """[runs, games] -> [median, IQM, mean] of raw scores, rliable's estimators."""
    import numpy as np
    from rliable import metrics

    return np.array([metrics.aggregate_median(scores), metrics.aggregate_iqm(scores), metrics.aggregate_mean(scores)])


def aggregate_fn(scores: Any) -> Any:
    """[runs, games] -> [median, IQM, mean, optimality gap], rliable's estimators."""
    import numpy as np
    from rliable import metrics

    return np.array(
        [
            metrics.aggregate_median(scores),
            metrics.aggregate_iqm(scores),
            metrics.aggregate_mean(scores),
            metrics.aggregate_optimality_gap(scores),
        ]
    )


def interval_estimates(
    matrices: dict[str, Any], reps: int, seed: int, fn: Any = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Point estimates [4] and 95% stratified-bootstrap CIs [2, 4] per agent (rliable); `fn`: the aggregates (default
    `aggregate_fn`)."""
    from rliable import library as rly

    with _seeded_numpy(seed):
        return rly.get_interval_estimates(matrices, fn or aggregate_fn, reps=reps)


def performance_profiles(matrices: dict[str, Any], taus: Any, reps: int, seed: int) -> tuple[dict, dict]:
    """Score distributions (fraction of runs x games with HNS > tau) with 95% CIs (rliable)."""
    from rliable import library as rly

    with _seeded_numpy(seed):
        return rly.create_performance_profile(matrices, taus, reps=reps)


# ----------------------------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(labels: list[str]) -> dict[str, Any]:
    import seaborn as sns

    return dict(zip(labels, sns.color_palette("colorblind", n_colors=len(labels))))


def _what(table_id: str | None) -> str:
    return f"human-normalised score (table {table_id})" if table_id else "raw score (no reference table)"


def plot_per_game(matrices: dict[str, Any], games: list[str], table_id: str | None, path: Path) -> Path:
    """Grouped bars: mean HNS (or raw score) over runs per game and agent, each run a dot; 0 = random, 1 = human."""
    import numpy as np

    plt = _plt()
    labels = list(matrices)
    colors = _colors(labels)
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(min(28.0, max(6.0, 2.5 + 0.45 * len(games) * max(1, len(labels) * 0.6))), 4.2))
    x = np.arange(len(games))
    for k, label in enumerate(labels):
        m = matrices[label]
        pos = x - 0.4 + width * (k + 0.5)
        runs = f"{len(m)} run" + ("s" if len(m) > 1 else "")
        ax.bar(pos, m.mean(0), width * 0.9, color=colors[label], label=f"{label} ({runs})")
        for row in m:
            ax.scatter(pos, row, s=8, color="k", alpha=0.6, zorder=3, linewidths=0)
    ax.axhline(0.0, color="grey", lw=0.8)
    if table_id:
        ax.axhline(1.0, color="tab:red", lw=0.8, ls="--", label="human")
    allv = np.concatenate([m.ravel() for m in matrices.values()])
    if allv.max() - min(allv.min(), 0.0) > 10.0:
        ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xticks(x)
    ax.set_xticklabels(games, rotation=45 if len(games) > 6 else 0, ha="right" if len(games) > 6 else "center")
    ax.set_ylabel(_what(table_id))
    ax.set_title(f"{_what(table_id)} per game, mean over runs (dots: runs)", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_intervals(point: dict, ci: dict, table_id: str | None, reps: int, path: Path) -> Path:
    """Median, IQM, mean and optimality gap per agent: the point estimate and its 95% CI (the layout of rliable's
    `plot_interval_estimates`, drawn here so that narrow intervals and long titles stay readable)."""
    import numpy as np

    plt = _plt()
    labels = list(point)
    colors = _colors(labels)
    names = METRICS if table_id else RAW_METRICS
    fig, axes = plt.subplots(1, len(names), figsize=(3.1 * len(names), 0.9 + 0.45 * len(labels)), sharey=True)
    for k, (ax, name) in enumerate(zip(axes, names)):
        lows = np.array([ci[lb][0, k] for lb in labels])
        highs = np.array([ci[lb][1, k] for lb in labels])
        for i, lb in enumerate(labels):
            ax.barh(i, max(highs[i] - lows[i], 0.0), left=lows[i], height=0.6, color=colors[lb], alpha=0.75)
            ax.vlines(point[lb][k], i - 0.3, i + 0.3, color="k", lw=1.5)
        lo, hi = float(lows.min()), float(highs.max())
        pad = max(0.05 * (hi - lo), 0.02)
        ax.set_xlim(lo - pad, hi + pad)
        ax.xaxis.set_major_locator(plt.MaxNLocator(4))
        ax.set_title(name, fontsize=11)
        ax.grid(axis="x", alpha=0.3)
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
    axes[0].set_yticks(range(len(labels)))
    axes[0].set_yticklabels(labels)
    axes[0].invert_yaxis()
    fig.supxlabel(f"{_what(table_id)}; 95% stratified bootstrap CIs, {reps:,} reps", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_profiles(profiles: dict, profile_cis: dict, taus: Any, table_id: str | None, path: Path) -> Path:
    """rliable's performance profile: fraction of runs with HNS > tau."""
    from rliable import plot_utils

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    plot_utils.plot_performance_profiles(
        profiles,
        taus,
        performance_profile_cis=profile_cis,
        colors=_colors(list(profiles)),
        xlabel=rf"Human-normalised score $\tau$ ({table_id})" if table_id else r"Raw score $\tau$",
        ax=ax,
        labelsize="medium",
        ticklabelsize="medium",
    )
    ax.legend(fontsize=9, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------- the report
def build_report(
    runs: list[Run],
    out: str | Path,
    games: list[str] | None = None,
    reps: int = DEFAULT_REPS,
    seed: int = 0,
    raw: bool | None = None,
) -> dict[str, Any]:
    """Write every table and plot of the report to `out`; returns the summary (also in summary.json). Scores are
    human-normalised when every game is in the Atari table, else reported raw (`raw`: force either way)."""
    import numpy as np

    from decoupled.envs.atari_data import (
        ATARI5,
        ATARI10,
        ATARI_SCORES,
        TABLE_ID,
        TABLE_SOURCE,
        atari5_median_estimate,
    )

    if reps < 1:
        raise ValueError("--reps must be at least 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    named = games or list(dict.fromkeys(g for r in runs for g in r.scores))
    in_table = all(g in ATARI_SCORES for g in named)
    if raw is False and not in_table:
        raise ValueError(f"no human-normalised scores for {[g for g in named if g not in ATARI_SCORES]}: the score "
                         "table covers the 57 Atari games; report these raw")  # fmt: skip
    if raw is None and not in_table and any(g in ATARI_SCORES for g in named):  # a mix: a misspelt Atari game?
        group_runs(runs, games, normalise=True)  # raises, naming the game and the nearest table name
    normalise = in_table if raw is None else not raw
    agents, games = group_runs(runs, games, normalise)
    notes = check_comparable(runs)
    if not normalise and len(games) > 1:
        notes.append("raw scores of different games are on different scales: aggregates over games mix them")
    for label, rs in agents.items():
        if len(rs) < MIN_RUNS:
            notes.append(
                f"{label}: {len(rs)} run(s) (seeds); at least {MIN_RUNS} are needed for confidence intervals worth "
                "reporting (Agarwal et al. 2021)"
            )
    for note in notes:
        warnings.warn(note, stacklevel=2)
    table_id = TABLE_ID if normalise else None
    metrics_used = METRICS if normalise else RAW_METRICS
    if normalise:
        matrices = hns_matrices(agents, games)
    else:
        matrices = {lb: np.array([[r.scores[g] for g in games] for r in rs], np.float64) for lb, rs in agents.items()}
    point, ci = interval_estimates(matrices, reps, seed, aggregate_fn if normalise else raw_aggregate_fn)
    lo_all = float(min(m.min() for m in matrices.values()))
    hi = (
        max(1.0, float(max(m.max() for m in matrices.values())))
        if normalise
        else float(max(m.max() for m in matrices.values()))
    )
    taus = np.linspace(0.0 if normalise else lo_all, hi if hi > lo_all else lo_all + 1.0, 81)
    profiles, profile_cis = performance_profiles(matrices, taus, min(reps, PROFILE_REPS), seed)

    summary: dict[str, Any] = {
        "score": "hns" if normalise else "raw",
        "table_id": table_id,
        "table_source": TABLE_SOURCE if normalise else None,
        "games": games,
        "metrics": list(metrics_used),
        "ci": "95% stratified bootstrap, percentile method (rliable)",
        "reps": reps,
        "seed": seed,
        "protocols": sorted({str(r.protocol) for r in runs}),
        "warnings": notes,
        "agents": {},
    }
    for label, rs in agents.items():
        m = matrices[label]
        per_game = {}
        for j, g in enumerate(games):
            raw_scores = [r.scores[g] for r in rs]
            per_game[g] = {"mean_score": float(np.mean(raw_scores)), "score_runs": [float(v) for v in raw_scores]}
            if normalise:
                per_game[g].update(
                    hns=float(m[:, j].mean()), hns_runs=[float(v) for v in m[:, j]], random=ATARI_SCORES[g][0],
                    human=ATARI_SCORES[g][1], table_id=TABLE_ID,
                )  # fmt: skip
        aggregates = {
            name: {"value": float(point[label][k]), "ci": [float(ci[label][0, k]), float(ci[label][1, k])]}
            for k, name in enumerate(metrics_used)
        }
        entry: dict[str, Any] = {
            "runs": len(rs),
            "files": [str(r.path) for r in rs],
            "aggregates": aggregates,
            "per_game": per_game,
            "table_id": table_id,
        }
        if normalise:
            mean_hns = {g: per_game[g]["hns"] for g in games}
            for name, subset in (("atari5", ATARI5), ("atari10", ATARI10)):
                if all(g in mean_hns for g in subset):
                    entry[f"{name}_median_estimate"] = atari5_median_estimate(mean_hns, name)
        summary["agents"][label] = entry

    _write_tables(out, summary, agents, matrices, games)
    images = {
        "hns_per_game" if normalise else "scores_per_game": plot_per_game(
            matrices, games, table_id, out / ("hns_per_game.png" if normalise else "scores_per_game.png")
        ),
        "aggregate_intervals": plot_intervals(point, ci, table_id, reps, out / "aggregate_intervals.png"),
        "performance_profile": plot_profiles(profiles, profile_cis, taus, table_id, out / "performance_profile.png"),
    }
    summary["images"] = {k: str(v) for k, v in images.items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "report.md").write_text(render_markdown(summary))
    return summary


def _write_tables(
    out: Path, summary: dict[str, Any], agents: dict[str, list[Run]], matrices: dict[str, Any], games: list[str]
) -> None:
    table_id = summary["table_id"] or ""
    with open(out / "per_game.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["agent", "game", "runs", "mean_score", "hns", "hns_min", "hns_max", "random", "human", "table_id"])
        for label, entry in summary["agents"].items():
            for g, pg in entry["per_game"].items():
                runs = len(pg["score_runs"])
                if "hns" not in pg:  # raw scores: no normalisation
                    w.writerow([label, g, runs, f"{pg['mean_score']:.6g}", "", "", "", "", "", ""])
                    continue
                hr = pg["hns_runs"]
                row = [label, g, runs, f"{pg['mean_score']:.6g}", f"{pg['hns']:.6g}", f"{min(hr):.6g}"]
                w.writerow(row + [f"{max(hr):.6g}", pg["random"], pg["human"], table_id])
    with open(out / "score_matrix.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["agent", "run", *games, "table_id"])
        for label, rs in agents.items():
            for r, row in zip(rs, matrices[label]):
                w.writerow([label, str(r.path), *(f"{v:.6g}" for v in row), table_id])
    with open(out / "per_run_scores.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["agent", "run", "game", "episodes", "mean_score", "hns", "table_id"])
        for label, rs in agents.items():
            for r, row in zip(rs, matrices[label]):
                for g, v in zip(games, row):
                    hns = f"{v:.6g}" if table_id else ""
                    w.writerow([label, str(r.path), g, r.episodes[g], f"{r.scores[g]:.6g}", hns, table_id])
    with open(out / "aggregates.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["agent", "metric", "value", "ci_low", "ci_high", "runs", "games", "reps", "table_id"])
        for label, entry in summary["agents"].items():
            for name, a in entry["aggregates"].items():
                lo, hi = a["ci"]
                row = [label, name, f"{a['value']:.6g}", f"{lo:.6g}", f"{hi:.6g}", entry["runs"], len(games)]
                w.writerow(row + [summary["reps"], table_id])


def render_markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown tables (report.md, and what the command prints)."""
    what = (
        f"Human-normalised scores against table `{summary['table_id']}`"
        if summary["table_id"]
        else "Raw scores (no reference table for these games)"
    )
    names = summary["metrics"]
    lines = [
        f"{what}; {len(summary['games'])} games; "
        f"{summary['ci']}, {summary['reps']:,} reps; protocol(s): {', '.join(summary['protocols'])}.",
        "",
        "| agent | runs | " + " | ".join(names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for label, e in summary["agents"].items():
        cells = [f"{a['value']:.3f} [{a['ci'][0]:.3f}, {a['ci'][1]:.3f}]" for a in e["aggregates"].values()]
        lines.append(f"| {label} | {e['runs']} | " + " | ".join(cells) + " |")
    est = [
        (label, name, e[f"{name}_median_estimate"])
        for label, e in summary["agents"].items()
        for name in ("atari5", "atari10")
        if f"{name}_median_estimate" in e
    ]
    if est:
        lines += ["", "Estimated 57-game median HNS (Aitchison et al. 2022, arXiv:2210.02019):", ""]
        lines += [f"- {label}: {v:.3f} ({name} regression)" for label, name, v in est]
    labels = list(summary["agents"])
    if summary["table_id"]:
        lines += ["", "| game | " + " | ".join(f"{lb} score | {lb} HNS" for lb in labels) + " |"]
        lines.append("|---|" + "---:|---:|" * len(labels))
    else:
        lines += ["", "| game | " + " | ".join(f"{lb} score" for lb in labels) + " |"]
        lines.append("|---|" + "---:|" * len(labels))
    for g in summary["games"]:
        cells = []
        for lb in labels:
            pg = summary["agents"][lb]["per_game"][g]
            cells += [f"{pg['mean_score']:.2f}"] + ([f"{pg['hns']:.3f}"] if summary["table_id"] else [])
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    if summary["warnings"]:
        lines += ["", "Warnings:", ""] + [f"- {w}" for w in summary["warnings"]]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- W&B
def log_to_wandb(
    summary: dict[str, Any],
    out: Path,
    run_id: str,
    project: str = "decoupled",
    group: str | None = None,
    entity: str | None = None,
    mode: str = "offline",
    name: str | None = None,
) -> str:
    """Log the summary table, the per-game table and the three images to W&B run `run_id` (created if it does not
    exist), behind the platform's W&B sink (timeout, offline fallback). Returns the mode in use."""
    import wandb

    from decoupled.runners.training.logger import WandbSink

    sink = WandbSink(
        out,
        {"report": {k: summary[k] for k in ("table_id", "games", "reps", "seed", "protocols")}},
        mode=mode,
        project=project,
        entity=entity,
        group=group,
        tags=("report",),
        name=name or run_id,
        run_id=run_id,
        timeout_s=30.0,
    )
    if sink.run is None:
        return sink.mode
    table_id = summary["table_id"]
    agg = wandb.Table(columns=["agent", "metric", "value", "ci_low", "ci_high", "runs", "table_id"])
    per_game = wandb.Table(columns=["agent", "game", "mean_score", "hns", "table_id"])
    flat = {}
    for label, e in summary["agents"].items():
        for metric, a in e["aggregates"].items():
            agg.add_data(label, metric, a["value"], a["ci"][0], a["ci"][1], e["runs"], table_id)
            key = metric.lower().replace(" ", "_")
            flat[f"report/{label}/{key}"] = a["value"]
        for g, pg in e["per_game"].items():
            per_game.add_data(label, g, pg["mean_score"], pg["hns"], table_id)
    record: dict[str, Any] = {"report/aggregates": agg, "report/per_game": per_game}
    for key, path in summary["images"].items():
        record[f"report/{key}"] = wandb.Image(path)
    sink.write(record)
    sink.summary({**flat, "report/table_id": table_id})
    sink.close()
    return sink.mode


# ----------------------------------------------------------------------------------------------- the command
def report_command(args: argparse.Namespace) -> int:
    from decoupled.envs.atari_data import resolve_games
    from decoupled.runners.evaluation import check_out_dir

    try:
        import rliable  # noqa: F401
    except ImportError as exc:
        raise ImportError("decoupled report needs rliable: pip install 'decoupled[report]'") from exc
    games = resolve_games(args.games, args.suite) if (args.games or args.suite) else None
    check_out_dir(args.out)
    runs = parse_inputs(args.scores)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = build_report(runs, args.out, games, args.reps, args.seed, raw=True if args.raw else None)
    for w in caught:
        if str(w.message) in summary["warnings"]:
            print(f"warning: {w.message}", file=sys.stderr)
    print(render_markdown(summary), end="")
    print(f"wrote {args.out}: per_game.csv, score_matrix.csv, aggregates.csv, summary.json, report.md and 3 PNGs"
          + ("" if summary["table_id"] else " (raw scores: no reference table for these games)"))  # fmt: skip
    if args.wandb_run:
        mode = args.wandb_mode or os.environ.get("WANDB_MODE", "offline")
        used = log_to_wandb(
            summary, Path(args.out), args.wandb_run, args.wandb_project, args.wandb_group, args.wandb_entity, mode
        )
        print(f"W&B run {args.wandb_run}: {used}")
    return 0


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "scores",
        nargs="+",
        help="[LABEL=]PATH[,PATH...]: score files of one agent's runs (scores.json or its dir), e.g. "
        "impala=s0/eval,s1/eval random=runs/eval_random",
    )
    p.add_argument("--out", required=True, help="output dir")
    p.add_argument("--games", help="report only these games (comma-separated)")
    p.add_argument("--suite", help="report only the games of this suite (atari57, atari26, atari10, atari5)")
    p.add_argument(
        "--reps", type=int, default=DEFAULT_REPS,
        help=f"bootstrap replications (default {DEFAULT_REPS:,}: seconds; 50,000 as the rliable README's examples)",
    )  # fmt: skip
    p.add_argument(
        "--raw", action="store_true", help="raw scores even for Atari games (default: HNS where a table has them)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--wandb-run", help="log the report to this W&B run id (created if new)")
    p.add_argument("--wandb-project", default="decoupled")
    p.add_argument("--wandb-group")
    p.add_argument("--wandb-entity")
    p.add_argument("--wandb-mode", choices=["offline", "online"], help="default: $WANDB_MODE, else offline")
