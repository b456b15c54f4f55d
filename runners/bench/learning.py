"""Learning benchmarks: several seeds of real training runs, curves, and one JSON line per run and per method.

    decoupled bench minatar [--games breakout,asterix,freeway,seaquest,space_invaders] [--seeds 3] [--frames 5000000]
    decoupled bench unreal --configs configs/unreal/minatar_breakout.yaml[,...] [--seeds 3] [--frames N] [--methods M]
    decoupled bench feudal --tasks minigrid_doorkey[,...] [--seeds 3] [--frames N] [--eval-episodes 100]
    decoupled bench nav --configs nav/nav_maze_small_static[,...] [--methods lstm,d2,d1d2l] [--eval-episodes 20]
    decoupled bench distill-multi [--games breakout,asterix,...] [--teacher-frames N] [--frames N] [--seeds 3]

`bench minatar` trains `configs/impala/minatar_<game>.yaml` on each game and seed, evaluates the final policy for
`--eval-episodes` (sampled actions, MinAtar's sticky actions) and prints, per game, the final training return (the
mean over the last 10% of the frames, the way Young & Tian 2019 plot their curves) and the evaluation return next to
the MinAtar paper's DQN baseline as read off its 5M-frame learning curves (see `MINATAR_DQN_READ_OFF`: no table of
numbers was published, so these are approximate and cited as such).

`bench unreal` trains each UNREAL config twice per seed: as shipped, and with every auxiliary weight at 0, which is
exactly the base agent (the same net, optimiser, seed and data stream; tested). It prints, per config and method,
the final return, the area under the learning curve (mean return over the run), with `--threshold R` the env
frames each run took to first log a return of R (and their median over seeds), and for UNREAL the auxiliary
metrics at the start (the first three log records that have them) and over the last 10% of training
(reward-prediction accuracy per class, pixel-control loss). `--methods unreal` skips the base runs (for an ablation
through `--override`, e.g. `agent.reward_prediction_sampling=uniform`, whose base runs would be the same).

`bench feudal` trains, per task and seed, `configs/feudal/<task>.yaml` (FeUdal Networks) and
`configs/impala/<task>_lstm.yaml` (the paper's LSTM baseline) for the same frames, evaluates each final policy
(`--eval-episodes`, sampled actions), and FuN's also with the Manager's goals zeroed and replaced by random unit
vectors (if its score does not fall, the Worker is not using the Manager). It prints the final return, the area
under the curve, the frames to first reach `--threshold` (default: any solved MiniGrid episode, return > 0) and the
share of evaluation episodes with a positive return (MiniGrid's success rate).

`bench nav` is the comparison of Mirowski et al. 2017, "Learning to Navigate in Complex Environments"
(arXiv:1611.03673), on the labyrinth: per nav config and seed, the navigation agent (agents/nav.py) with no
auxiliary task (`lstm`: `agent.aux={}`, no heads built, so its speed is its own), with depth prediction from the
second LSTM only (`d2`: the config's `depth_lstm`, its other tasks removed) and as the config ships it (`d1d2l`:
depth from the conv features and from the LSTM, and loop closure: Nav A3C+D1D2L), for the same frames. Besides the
return curves it evaluates each final policy on `--eval-episodes` fixed episodes (the same env seeds for every
method; runners/bench/nav_checks.py `play_nav_episodes`): the agent steps to the first goal of an episode against
the mean steps between the later ones (the paper's evidence that the agent remembers where the goal is), the depth
heads' per-pixel accuracy, the loop-closure head's precision, recall and F1 against the actor's own label, and a
linear probe decoding the agent's maze cell from the LSTMs' state (fit on the first half of the episodes, scored on
the second, against the majority cell). `--out/<config>_aux.png` draws the auxiliary tasks' training curves.

`bench distill` trains students of a distill config from one teacher with several methods (on-policy, on-policy +
Sobolev, teacher-driven, expected entropy regularised) for the same frames, seeds, and reports the return curves, the
evaluation return and the final agreement with the teacher and KL from the logs.

`bench distill-multi` is multi-task policy distillation (Rusu et al. 2015, arXiv:1511.06295) on MinAtar: an IMPALA
teacher per game in the union input layout (`--teacher-frames`, reused when trained), then `--seeds` students of one
net for every game (configs/distill/minatar_multi.yaml), each scored per game on the same env seeds as its teacher,
as a fraction of the teacher's score and of its margin over a random policy.

`bench transfer` is Progressive Nets' transfer experiment (Rusu et al. 2016, Sec. 5): it trains a source column
(`--source`, an IMPALA config, for its own frames) per seed, then on each target (`--targets`: env transforms such as
hflip, noisy, white, envs/transforms.py; or `id:<game>`, another game, e.g. `id:space_invaders` with `--override
env.channels=union` on MinAtar) baseline 1 (the source's config from scratch on the target), baseline 2 (the
source column, its heads finetuned), baseline 3 (the whole source column finetuned), baseline 4 (a 2-column net whose
first column is random and frozen) and the 2-column progressive net, seed s of each on source seed s. It prints the
area under each learning curve (the mean training return over the run, as the paper's score) and the transfer
matrix: AUC(method) / AUC(baseline 1) (returns minus `--score-offset`, for games whose returns go negative), the
ratio of the means over seeds and its per-seed ratios; `--out/<source>.png` draws the matrix and
`--out/<source>_<target>.png` the curves.

Runs go `--jobs` at a time in worker processes (one torch thread each), into `--out/<name>/<method>_s<seed>/`; a
run dir that already holds a finished run is reused and an interrupted one resumes from its newest checkpoint, so an
interrupted benchmark continues where it stopped.
Curves: `--out/<name>.png` (env frames and wall-clock axes, every seed); for UNREAL also `--out/<name>_aux.png`
(reward-prediction accuracy per class, pixel-control and value-replay losses of every seed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import threading
import time
from pathlib import Path
from typing import Any

MINATAR_GAMES = ("breakout", "asterix", "freeway", "seaquest", "space_invaders")
# The MinAtar paper's DQN (with replay and target network) at 5M frames, as read off its learning-curve figure by a
# third party (nickgreenquist/deep-rl-from-scratch README, "Paper ~" column): the paper gives curves, no table
# (kenjyoung/MinAtar README: "Each curve is the average of 30 independent runs"). Approximate by construction.
MINATAR_DQN_READ_OFF = {"breakout": 10.0, "asterix": 16.5, "freeway": 50.5, "seaquest": 20.0, "space_invaders": 45.0}
NO_AUX = ["agent.pixel_control_cost=0", "agent.reward_prediction_cost=0", "agent.value_replay_cost=0",
          "agent.feature_control_cost=0"]  # fmt: skip
#: the Nav agent's auxiliary metrics (agents/auxtasks.py `aux_losses`), collected by `bench nav`
NAV_AUX_KEYS = (
    "aux/depth_conv/accuracy", "aux/depth_lstm/accuracy", "aux/loop_closure/accuracy", "aux/loop_closure/recall",
    "aux/loop_closure/label_mean", "aux/depth_conv/loss", "aux/depth_lstm/loss", "aux/loop_closure/loss",
)  # fmt: skip
AUX_KEYS = (
    "aux/reward_prediction/accuracy", "aux/reward_prediction/accuracy_zero", "aux/reward_prediction/accuracy_nonzero",
    "aux/pixel_control/loss", "aux/value_replay/loss", "aux/reward_prediction/loss",
)  # fmt: skip


def _repo_path(name: str) -> Path:
    from decoupled.configs import resolve

    return resolve(name)  # a path, or a packaged config (configs/unreal/catch.yaml from any directory)


def finished_run(run_dir: Path, frames: int) -> bool:
    """A run that needs no more training: checkpointed, and either its last record reached `frames` or it ended on
    its own wall-clock limit (`runner.max_wall_seconds`, summary status "time_limit"), which a resume would only
    reach again at once."""
    from decoupled.runners.evaluation.plot import read_metrics

    if not (run_dir / "checkpoints").is_dir():
        return False
    try:
        status = json.loads((run_dir / "summary.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):  # none yet, or cut short by a crash: go by the frames
        status = None
    if status == "time_limit":
        return True
    try:
        recs = read_metrics(run_dir)
    except FileNotFoundError:
        return False
    return bool(recs) and recs[-1]["env_frames"] >= frames


def run_job(
    config: str,
    overrides: list[str],
    run_dir: str,
    frames: int,
    eval_episodes: int,
    ablations: tuple[str, ...] = (),
    nav_eval: bool = False,
    torch_threads: int = 1,
) -> dict[str, Any]:
    """One training run (in a worker process), then an evaluation of its final policy (and, for each of
    `ablations`, of the same policy with the Manager's goals replaced: FeUdal Networks; with `nav_eval`, the
    navigation evaluation of `bench nav` instead, nav_checks.py `nav_evaluation`); returns its curve.
    `torch_threads` 0 keeps torch's default (a run alone on the machine), unless the config sets its own."""
    import shutil

    import torch

    from decoupled.runners.evaluation.evaluate import load_policy, make_periodic_evaluator, run_episodes
    from decoupled.runners.evaluation.plot import read_metrics
    from decoupled.runners.training.config import load_config
    from decoupled.runners.training.train import has_checkpoints, train

    if torch_threads:
        torch.set_num_threads(torch_threads)
    path = Path(run_dir)
    t0 = time.time()
    if not finished_run(path, frames):
        if (path / "config.yaml").is_file() and has_checkpoints(path):
            cfg = load_config(path / "config.yaml", overrides)
            result = train(cfg, path, resume=True, evaluator=make_periodic_evaluator)  # continue where it was
        else:
            shutil.rmtree(path, ignore_errors=True)
            result = train(load_config(config, overrides), path, evaluator=make_periodic_evaluator)
        if result["status"] == "stopped":  # Ctrl-C / SIGTERM: the checkpoint is written; take no further job
            os._exit(0)
    recs = read_metrics(path)
    out: dict[str, Any] = {
        "curve": [
            (int(r["env_frames"]), float(r["train/episode_return"]), float(r.get("perf/wall_time_s", 0.0)))
            for r in recs
            if "train/episode_return" in r
        ],  # fmt: skip
        "aux": {
            k: [(int(r["env_frames"]), float(r[k])) for r in recs if k in r]
            for k in AUX_KEYS + (NAV_AUX_KEYS if nav_eval else ())
        },
        "train_seconds": next((r["perf/wall_time_s"] for r in reversed(recs) if "perf/wall_time_s" in r), None),
    }
    if eval_episodes > 0 and nav_eval:
        from decoupled.runners.bench.nav_checks import nav_evaluation

        result = nav_evaluation(path, eval_episodes)
        out["eval_scores"] = result["eval_scores"]
        out["nav_eval"] = result["nav_eval"]
        out["run_line"] = {"nav_eval": result["nav_eval"]}  # added to the run's JSON line by run_all
    elif eval_episodes > 0:
        cfg, net, _ = load_policy(path)
        result = run_episodes(cfg, eval_episodes, seed=10_000, net=net)
        out["eval_scores"] = [float(x) for x in result["episode_scores"]]
        for ablation in ablations:
            net.goal_ablation = ablation
            result = run_episodes(cfg, eval_episodes, seed=10_000, net=net)
            out[f"eval_scores_ablate_{ablation}"] = [float(x) for x in result["episode_scores"]]
    out["seconds"] = round(time.time() - t0, 1)
    return out


def _summarise(curve: list[tuple], frames: int, threshold: float | None = None) -> dict[str, Any]:
    """Final return (mean over the last 10% of the frames), the mean return over the whole run (AUC / frames) and,
    with a `threshold`, the env frames at which the logged return (a mean over recent episodes) first reached it
    (None: never)."""
    out: dict[str, Any] = {"final": float("nan"), "auc": float("nan")}
    if curve:
        tail = [r for f, r, _ in curve if f >= 0.9 * frames] or [curve[-1][1]]
        out = {"final": round(statistics.fmean(tail), 3), "auc": round(statistics.fmean(r for _, r, _ in curve), 3)}
    if threshold is not None:
        out["frames_to_threshold"] = next((f for f, r, _ in curve if r >= threshold), None)
    return out


def _median_frames(values: list[int | None]) -> int | float | None:
    """Median of frames-to-threshold over seeds, a run that never got there counting as later than any: None when
    the median run never got there."""
    ranked = sorted(values, key=lambda v: math.inf if v is None else v)
    n = len(ranked)
    mid = ranked[(n - 1) // 2 : n // 2 + 1]
    return None if None in mid else statistics.fmean(mid)


def _exit_with_parent(parent_pid: int) -> None:
    """Worker initializer: when the benchmark process dies (killed), stop this worker too, as Ctrl-C would.

    SIGTERM makes a training run write its checkpoint and return (then `run_job` exits the worker); between runs it
    ends the worker at once. Without this, orphaned workers would go on training the queued runs unseen."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(2.0)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(300.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def run_all(jobs: dict[tuple[str, str, int], tuple], args: argparse.Namespace, torch_threads: int = 1) -> dict:
    """Run every job, (config, overrides, run_dir[, ablations]) by (name, method, seed), `--jobs` at a time, each
    with `torch_threads` torch threads (0: torch's default)."""
    import concurrent.futures as cf
    import multiprocessing as mp

    from decoupled.runners.training.config import load_config

    # every run's config loads (a missing file, a bad override), or a ConfigError now: not a worker failing later
    for config, overrides in {(config, tuple(overrides)) for config, overrides, *_ in jobs.values()}:
        load_config(config, list(overrides))
    pool = cf.ProcessPoolExecutor(
        max_workers=args.jobs, mp_context=mp.get_context("spawn"), initializer=_exit_with_parent,
        initargs=(os.getpid(),),
    )  # fmt: skip
    try:
        futures = {
            key: pool.submit(
                run_job,
                config,
                overrides,
                run_dir,
                args.frames,
                args.eval_episodes,
                *extra,
                torch_threads=torch_threads,
            )
            for key, (config, overrides, run_dir, *extra) in jobs.items()
        }
        results = {}
        for key, fut in futures.items():
            results[key] = fut.result()
            name, method, seed = key
            r = results[key]
            line = {"bench": args.bench, "name": name, "method": method, "seed": seed}
            line.update(_summarise(r["curve"], args.frames, getattr(args, "threshold", None)))
            if "eval_scores" in r:
                line["eval_mean"] = round(statistics.fmean(r["eval_scores"]), 3)
            line.update(r.get("run_line", {}))
            line["train_seconds"] = r["train_seconds"]
            print(json.dumps(line), flush=True)
    except BaseException:  # Ctrl-C or a failed run: queued runs must not start (the with-block would wait for them)
        # A SIGINT sent to this process alone (`kill -INT`, not a terminal's Ctrl-C to the whole group) leaves the
        # workers training, and the interpreter's exit would wait for their runs: SIGTERM makes each running run
        # write its checkpoint and its worker exit (an idle worker just exits).
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return results


def _subplots(ncols: int, figsize: tuple[float, float], **kw: Any) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=figsize, **kw)


def _save(fig: Any, title: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(results: dict, name: str, methods: list[str], path: Path, title: str) -> None:
    """Every seed's training curve over env frames and wall-clock, and per method the median over seeds."""
    import numpy as np

    fig, axes = _subplots(2, (10, 3.8), sharey=True)
    for i, m in enumerate(methods):
        seeds = sorted(s for (n, mm, s) in results if n == name and mm == m)
        for s in seeds:
            c = results[(name, m, s)]["curve"]
            if not c:
                continue
            f, r, w = zip(*c, strict=True)
            label = f"{m} ({len(seeds)} seeds)" if s == seeds[0] else None
            style = (
                {"color": f"C{i}", "lw": 0.8, "alpha": 0.4}
                if len(seeds) > 1
                else {"color": f"C{i}", "lw": 1, "alpha": 0.85}
            )
            axes[0].plot(f, r, label=label, **style)
            axes[1].plot([x / 60 for x in w], r, **style)
        curves = [results[(name, m, s)]["curve"] for s in seeds if results[(name, m, s)]["curve"]]
        if len(curves) > 1:  # the median over seeds on a common frame grid (each seed interpolated)
            grid = np.linspace(max(c[0][0] for c in curves), min(c[-1][0] for c in curves), 50)
            per_seed = [np.interp(grid, [p[0] for p in c], [p[1] for p in c]) for c in curves]
            axes[0].plot(grid, np.median(per_seed, axis=0), color=f"C{i}", lw=2.2, label=f"{m}: median over seeds")
    axes[0].set_xlabel("env frames")
    axes[0].set_ylabel("train return (episodes ended in each log interval)")
    axes[1].set_xlabel("wall-clock (minutes)")
    axes[0].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    _save(fig, title, path)


def plot_aux(results: dict, name: str, path: Path, title: str) -> None:
    """Every UNREAL seed's auxiliary curves: reward-prediction accuracy per class, pixel-control and VR losses."""
    panels = [
        ("reward prediction: accuracy per class (replayed windows)", [
            ("aux/reward_prediction/accuracy_zero", "zero reward", "-"),
            ("aux/reward_prediction/accuracy_nonzero", "non-zero reward", "--"),
        ]),
        ("pixel control: TD loss", [("aux/pixel_control/loss", "loss", "-")]),
        ("value replay: loss", [("aux/value_replay/loss", "loss", "-")]),
    ]  # fmt: skip
    fig, axes = _subplots(len(panels), (13, 3.6))
    seeds = sorted(s for (n, m, s) in results if n == name and m == "unreal")
    for ax, (label, series) in zip(axes, panels, strict=True):
        for key, what, style in series:
            for j, s in enumerate(seeds):
                pts = results[(name, "unreal", s)]["aux"].get(key) or []
                if pts:
                    f, v = zip(*pts, strict=True)
                    ax.plot(
                        f, v, style, color=f"C{j}", lw=1, label=f"seed {s}, {what}" if len(series) > 1 else f"seed {s}"
                    )
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("env frames")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].axhline(1 / 3, color="grey", lw=0.8, ls=":")  # chance for three classes
    axes[0].set_ylim(0, 1.02)
    _save(fig, title, path)


def _method_records(
    results: dict, name: str, methods: list[str], args: argparse.Namespace, extra: dict | None = None
) -> list[dict]:
    records = []
    for m in methods:
        seeds = sorted(s for (n, mm, s) in results if n == name and mm == m)
        threshold = getattr(args, "threshold", None)
        summ = [_summarise(results[(name, m, s)]["curve"], args.frames, threshold) for s in seeds]
        rec: dict[str, Any] = {
            "bench": args.bench, "what": "method", "name": name, "method": m, "seeds": seeds,
            "final_per_seed": [x["final"] for x in summ], "median_final": statistics.median(x["final"] for x in summ),
            "auc_per_seed": [x["auc"] for x in summ], "median_auc": statistics.median(x["auc"] for x in summ),
            "frames": args.frames,
        }  # fmt: skip
        if threshold is not None:
            rec["threshold"] = threshold
            rec["frames_to_threshold_per_seed"] = [x["frames_to_threshold"] for x in summ]
            rec["median_frames_to_threshold"] = _median_frames(rec["frames_to_threshold_per_seed"])
        for suffix in ("", "_ablate_zero", "_ablate_random"):
            evals = [results[(name, m, s)].get(f"eval_scores{suffix}") for s in seeds]
            if evals and all(e is not None for e in evals):
                rec[f"eval_mean{suffix}_per_seed"] = [round(statistics.fmean(e), 3) for e in evals]
                rec[f"median_eval_mean{suffix}"] = statistics.median(rec[f"eval_mean{suffix}_per_seed"])
                if args.bench == "feudal":  # MiniGrid: a positive return is a solved episode
                    rec[f"success{suffix}_per_seed"] = [round(sum(x > 0 for x in e) / len(e), 3) for e in evals]
        aux = {}
        for k in AUX_KEYS:
            series = [results[(name, m, s)]["aux"][k] for s in seeds if results[(name, m, s)]["aux"][k]]
            if series:  # the first three log records that have it, and the last 10% of the run; mean over seeds
                first = [statistics.fmean(v for _, v in ser[:3]) for ser in series]
                last = [statistics.fmean(v for f, v in ser if f >= 0.9 * args.frames) for ser in series
                        if any(f >= 0.9 * args.frames for f, _ in ser)]  # fmt: skip
                aux[k] = {"first": round(statistics.fmean(first), 4),
                          "last_10pct": round(statistics.fmean(last), 4) if last else None}  # fmt: skip
        if aux:
            rec["aux"] = aux
        rec.update(extra or {})
        records.append(rec)
        print(json.dumps(rec), flush=True)
    return records


def bench_minatar(args: argparse.Namespace) -> list[dict[str, Any]]:
    games = [g.strip() for g in args.games.split(",")]
    bad = [g for g in games if g not in MINATAR_GAMES]
    if bad:
        raise SystemExit(f"bench minatar: unknown game(s) {bad}; choose from {', '.join(MINATAR_GAMES)}")
    out = Path(args.out)
    jobs = {}
    for g in games:
        config = str(_repo_path(f"configs/impala/minatar_{g}.yaml"))
        for s in range(args.seeds):
            overrides = [f"runner.seed={s}", f"runner.total_env_frames={args.frames}", "wandb.mode=disabled",
                         "runner.progress_every_seconds=60"]  # fmt: skip
            jobs[(g, "impala", s)] = (config, overrides, str(out / g / f"impala_s{s}"))
    t0 = time.time()
    results = run_all(jobs, args)
    records = []
    for g in games:
        (rec,) = _method_records(results, g, ["impala"], args, {"minatar_paper_dqn_read_off": MINATAR_DQN_READ_OFF[g]})
        records.append(rec)
        plot_curves(results, g, ["impala"], out / f"{g}.png", f"MinAtar {g}: impala, {args.frames:,} frames")
    games = {
        r["name"]: {"median_final": r["median_final"], "median_eval_mean": r.get("median_eval_mean"),
                    "dqn_paper_read_off": r["minatar_paper_dqn_read_off"]}
        for r in records
    }  # fmt: skip
    summary = {"bench": "minatar", "what": "summary", "seconds": round(time.time() - t0, 1), "out": str(out)}
    summary["games"] = games
    print(json.dumps(summary), flush=True)
    return [*records, summary]


def bench_unreal(args: argparse.Namespace) -> list[dict[str, Any]]:
    configs = [c.strip() for c in args.configs.split(",")]
    out = Path(args.out)
    methods = [m.strip() for m in args.methods.split(",")]
    if not methods or any(m not in ("base", "unreal") for m in methods):
        raise SystemExit(f"bench unreal: --methods takes base and/or unreal, got {args.methods!r}")
    jobs = {}
    names = []
    for c in configs:
        name = Path(c).stem
        names.append(name)
        for s in range(args.seeds):
            overrides = [f"runner.seed={s}", f"runner.total_env_frames={args.frames}", "wandb.mode=disabled",
                         "runner.progress_every_seconds=60", *args.override]  # fmt: skip
            for m in methods:
                extra = NO_AUX if m == "base" else []
                jobs[(name, m, s)] = (str(_repo_path(c)), overrides + extra, str(out / name / f"{m}_s{s}"))
    t0 = time.time()
    results = run_all(jobs, args)
    records = []
    for name in names:
        records += _method_records(results, name, methods, args)
        plot_curves(results, name, methods, out / f"{name}.png",
                    f"{name}: UNREAL vs the base agent (every auxiliary weight 0), {args.frames:,} frames")  # fmt: skip
        if "unreal" in methods:
            plot_aux(
                results, name, out / f"{name}_aux.png", f"{name}: UNREAL's auxiliary tasks, {args.frames:,} frames"
            )
    summary = {"bench": "unreal", "what": "summary", "seconds": round(time.time() - t0, 1), "out": str(out)}
    print(json.dumps(summary), flush=True)
    return [*records, summary]


def bench_feudal(args: argparse.Namespace) -> list[dict[str, Any]]:
    tasks = [x.strip() for x in args.tasks.split(",")]
    out = Path(args.out)
    methods = {"feudal": "configs/feudal/{}.yaml", "lstm": "configs/impala/{}_lstm.yaml"}
    missing = [p.format(x) for x in tasks for p in methods.values() if not _repo_path(p.format(x)).is_file()]
    if missing:
        raise SystemExit(f"bench feudal: no config {', '.join(missing)} (a task needs both)")
    jobs = {}
    for task in tasks:
        for s in range(args.seeds):
            overrides = [f"runner.seed={s}", f"runner.total_env_frames={args.frames}", "wandb.mode=disabled",
                         "runner.progress_every_seconds=60", *args.override]  # fmt: skip
            for m, pattern in methods.items():
                ablations = ("zero", "random") if m == "feudal" else ()
                jobs[(task, m, s)] = (str(_repo_path(pattern.format(task))), overrides, str(out / task / f"{m}_s{s}"),
                                      ablations)  # fmt: skip
    t0 = time.time()
    results = run_all(jobs, args)
    records = []
    for task in tasks:
        records += _method_records(results, task, list(methods), args)
        plot_curves(results, task, list(methods), out / f"{task}.png",
                    f"{task}: FeUdal Networks vs the LSTM baseline, {args.frames:,} frames")  # fmt: skip
    summary = {"bench": "feudal", "what": "summary", "seconds": round(time.time() - t0, 1), "out": str(out)}
    print(json.dumps(summary), flush=True)
    return [*records, summary]


#: `bench nav`'s methods as overrides of one nav config (applied after `--override`): the auxiliary heads each
#: builds. lstm: the plain agent (Nav A3C); d2: depth from the second LSTM only, at the config's cost; d1d2l: the
#: config as shipped (Nav A3C+D1D2L).
NAV_METHODS: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "lstm": (["agent.aux={}"], ()),
    "d2": (["agent.aux.depth_conv=null", "agent.aux.loop_closure=null"], ("depth_lstm",)),
    "d1d2l": ([], ("depth_conv", "depth_lstm", "loop_closure")),
}


def _nav_method_config(config: str, overrides: list[str], method: str) -> Any:
    """The config of one `bench nav` method, refused (BenchUsageError) unless it is a nav agent on the labyrinth
    whose `agent.aux` holds exactly the method's tasks."""
    from decoupled.runners.bench import BenchUsageError
    from decoupled.runners.training.config import load_config

    extra, heads = NAV_METHODS[method]
    cfg = load_config(config, [*overrides, *extra])
    if cfg.agent_name != "nav" or cfg.env.backend != "labyrinth":
        raise BenchUsageError(f"bench nav: {config} is agent {cfg.agent_name} on {cfg.env.backend}; want nav on the "
                              "labyrinth")  # fmt: skip
    tasks = tuple(cfg.agent.aux.tasks())
    if tasks != heads:
        raise BenchUsageError(
            f"bench nav: method {method} of {config} has auxiliary tasks {list(tasks)}, want {list(heads)} (the "
            "config must ship depth_conv, depth_lstm and loop_closure, and no other task)"
        )
    return cfg


def _median_of(values: list[Any]) -> float | None:
    """The median of the values that are not None (None when none is)."""
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 4) if present else None


NAV_EVAL_FIELDS = {  # a per-run nav evaluation's numbers, by the name they take in the method lines
    "goals_mean": ("goals_mean",),
    "first_goal_steps": ("first_goal_steps",),
    "later_goal_steps": ("later_goal_steps",),
    "first_over_later": ("first_over_later",),
    "depth_conv_accuracy": ("depth_conv_accuracy",),
    "depth_lstm_accuracy": ("depth_lstm_accuracy",),
    "loop_precision": ("loop_closure", "precision"),
    "loop_recall": ("loop_closure", "recall"),
    "loop_f1": ("loop_closure", "f1"),
    "loop_label_rate": ("loop_closure", "label_rate"),
    "probe_h2_accuracy": ("probe", "h2", "accuracy"),
    "probe_h1h2_accuracy": ("probe", "h1h2", "accuracy"),
    "probe_majority_accuracy": ("probe", "h2", "majority_accuracy"),
}


_ABSENT = object()


def _dig(doc: Any, keys: tuple[str, ...]) -> Any:
    """doc[k1][k2]...; `_ABSENT` where the path does not exist (a value of None exists: measured, undefined)."""
    for k in keys:
        if not isinstance(doc, dict) or k not in doc:
            return _ABSENT
        doc = doc[k]
    return doc


def _nav_method_extra(results: dict, name: str, method: str, frames: int) -> dict[str, Any]:
    """Per method: the nav evaluation's numbers per seed and their medians, and the auxiliary training metrics at
    the start (the first three log records that have them) and over the last 10% of the run (mean over seeds)."""
    seeds = sorted(s for (n, m, s) in results if n == name and m == method)
    evals = [results[(name, method, s)].get("nav_eval") for s in seeds]
    extra: dict[str, Any] = {}
    if any(e is not None for e in evals):
        for field, keys in NAV_EVAL_FIELDS.items():
            found = [_dig(e, keys) for e in evals]
            if any(v is not _ABSENT for v in found):  # the measurement exists (the method has the head, ...)
                per_seed = [None if v is _ABSENT else v for v in found]
                extra[f"{field}_per_seed"] = per_seed
                extra[f"median_{field}"] = _median_of(per_seed)
    aux = {}
    for k in NAV_AUX_KEYS:
        series = [results[(name, method, s)]["aux"].get(k) for s in seeds]
        series = [ser for ser in series if ser]
        if series:
            first = [statistics.fmean(v for _, v in ser[:3]) for ser in series]
            last = [statistics.fmean(v for f, v in ser if f >= 0.9 * frames) for ser in series
                    if any(f >= 0.9 * frames for f, _ in ser)]  # fmt: skip
            aux[k] = {"first": round(statistics.fmean(first), 4),
                      "last_10pct": round(statistics.fmean(last), 4) if last else None}  # fmt: skip
    if aux:
        extra["aux_nav"] = aux
    return extra


def plot_nav_aux(results: dict, name: str, methods: list[str], path: Path, title: str) -> None:
    """Every seed's auxiliary training curves of the nav methods: the depth heads' per-pixel accuracy (D2 solid,
    D1 dashed; chance 1/8), the loop-closure head's recall with the label rate, and its loss."""
    panels = [
        ("depth: per-pixel accuracy (D2 solid, D1 dashed)",
         [("aux/depth_lstm/accuracy", "D2", "-"), ("aux/depth_conv/accuracy", "D1", "--")]),
        ("loop closure: recall (solid), label rate (dotted)",
         [("aux/loop_closure/recall", "recall", "-"), ("aux/loop_closure/label_mean", "label rate", ":")]),
        ("loop closure: BCE loss", [("aux/loop_closure/loss", "loss", "-")]),
    ]  # fmt: skip
    fig, axes = _subplots(len(panels), (13, 3.6))
    for ax, (label, series) in zip(axes, panels, strict=True):
        for i, m in enumerate(methods):
            seeds = sorted(s for (n, mm, s) in results if n == name and mm == m)
            for key, what, style in series:
                for j, s in enumerate(seeds):
                    pts = results[(name, m, s)]["aux"].get(key) or []
                    if pts:
                        f, v = zip(*pts, strict=True)
                        ax.plot(f, v, style, color=f"C{i}", lw=1, alpha=0.8, label=f"{m} {what}" if j == 0 else None)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("env frames")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    axes[0].axhline(1 / 8, color="grey", lw=0.8, ls=":")  # chance for eight depth classes
    axes[0].set_ylim(0, 1.02)
    _save(fig, title, path)


def bench_nav(args: argparse.Namespace) -> list[dict[str, Any]]:
    """`decoupled bench nav`: per nav config, method and seed a training run and the nav evaluation of its final
    policy; a line per run, per method (medians over seeds) and a summary; curves and auxiliary figures."""
    from decoupled.runners.bench import BenchUsageError

    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in NAV_METHODS]
    if bad or not methods:
        raise BenchUsageError(f"bench nav: unknown method(s) {bad}; --methods takes {', '.join(NAV_METHODS)}")
    if args.eval_episodes < 0:
        raise BenchUsageError(f"--eval-episodes must be at least 0, got {args.eval_episodes}")
    out = Path(args.out)
    jobs = {}
    names = []
    for c in configs:
        config = str(_repo_path(c))
        name = Path(config).stem
        names.append(name)
        for m in methods:  # every method's config loads with exactly its heads: a usage error now, not in a worker
            _nav_method_config(config, list(args.override), m)
        for s in range(args.seeds):
            overrides = [f"runner.seed={s}", f"runner.total_env_frames={args.frames}", "wandb.mode=disabled",
                         "runner.progress_every_seconds=60", *args.override]  # fmt: skip
            for m in methods:
                jobs[(name, m, s)] = (config, overrides + NAV_METHODS[m][0], str(out / name / f"{m}_s{s}"), (), True)
    if len(set(names)) != len(names):
        raise BenchUsageError(f"bench nav: two configs share a name in {names}")
    t0 = time.time()
    results = run_all(jobs, args)
    records = []
    table: dict[str, dict[str, Any]] = {}
    for name in names:
        table[name] = {}
        for m in methods:
            extra = _nav_method_extra(results, name, m, args.frames)
            (rec,) = _method_records(results, name, [m], args, extra)
            records.append(rec)
            table[name][m] = {k: v for k, v in rec.items() if k.startswith("median_")}
        plot_curves(results, name, methods, out / f"{name}.png",
                    f"{name}: Nav agent, {' vs '.join(methods)}, {args.frames:,} frames")  # fmt: skip
        plot_nav_aux(results, name, methods, out / f"{name}_aux.png",
                     f"{name}: the Nav agent's auxiliary tasks, {args.frames:,} frames")  # fmt: skip
    summary = {"bench": "nav", "what": "summary", "frames": args.frames, "seeds": args.seeds,
               "eval_episodes": args.eval_episodes, "medians": table, "seconds": round(time.time() - t0, 1),
               "out": str(out)}  # fmt: skip
    print(json.dumps(summary), flush=True)
    return [*records, summary]


TRANSFER_METHODS = {
    "b1": [],  # the source's config on the target, from scratch
    "b2": ["agent.name=progressive", "agent.transfer=finetune_output"],
    "b3": ["agent.name=progressive", "agent.transfer=finetune_all"],
    "b4": ["agent.name=progressive", "agent.columns=[random]"],
    "progressive": ["agent.name=progressive"],
}


def bench_transfer(args: argparse.Namespace) -> list[dict[str, Any]]:
    from decoupled.envs.transforms import TRANSFORMS

    targets = [t.strip() for t in args.targets.split(",")]
    methods = [m.strip() for m in args.methods.split(",")]
    bad = [t for t in targets if t not in TRANSFORMS and not (t.startswith("id:") and len(t) > 3)]
    bad += [m for m in methods if m not in TRANSFER_METHODS]
    if bad or "b1" not in methods:
        raise SystemExit(
            f"bench transfer: unknown {bad}; --targets from {', '.join(TRANSFORMS)} or id:<env id> (another game of "
            f"the source's backend), --methods from {', '.join(TRANSFER_METHODS)} (b1, the denominator, included)"
        )
    config = str(_repo_path(args.source))
    src = Path(config).stem
    out = Path(args.out) / src
    common = ["wandb.mode=disabled", "runner.progress_every_seconds=60", *args.override]
    # phase 1: the source columns, for the source config's own frames unless --source-frames
    n_sources = args.source_seeds or args.seeds
    if n_sources > args.seeds:
        raise SystemExit(f"bench transfer: --source-seeds {n_sources} is more than --seeds {args.seeds}")
    source_jobs = {}
    for s in range(n_sources):
        frames = [f"runner.total_env_frames={args.source_frames}"] if args.source_frames else []
        source_jobs[(src, "source", s)] = (config, [f"runner.seed={s}", *frames, *common], str(out / f"source_s{s}"))
    t0 = time.time()
    from decoupled.runners.training.config import load_config

    src_frames = args.source_frames or load_config(config).runner.total_env_frames
    target_frames, args.frames = args.frames, src_frames
    parallel_targets, args.jobs = args.jobs, args.source_jobs or args.jobs
    # alone on the machine (--source-jobs 1), a source trains with torch's default threads, as `decoupled train` does
    sources = run_all(source_jobs, args, torch_threads=0 if args.jobs == 1 else 1)
    args.frames, args.jobs = target_frames, parallel_targets
    # phase 2: every method on every target, target seed s on source seed s % --source-seeds
    jobs = {}
    for t in targets:
        for s in range(args.seeds):
            for m in methods:
                overrides = [
                    f"runner.seed={s}",
                    f"runner.total_env_frames={args.frames}",
                    f"env.id={t[3:]}" if t.startswith("id:") else f"env.transform={t}",
                    *common,
                ]
                if m != "b1":
                    overrides.append(f"agent.columns=[{out / f'source_s{s % n_sources}'}]")
                jobs[(t, m, s)] = (
                    config,
                    overrides + TRANSFER_METHODS[m],
                    str(out / t.replace(":", "_") / f"{m}_s{s}"),
                )
    results = run_all(jobs, args)
    records = [
        {"bench": "transfer", "what": "source", "name": src, "seed": s, **_summarise(r["curve"], src_frames),
         "eval_mean": round(statistics.fmean(r["eval_scores"]), 3) if "eval_scores" in r else None}
        for (_, _, s), r in sorted(sources.items())
    ]  # fmt: skip
    for rec in records:
        print(json.dumps(rec), flush=True)
    matrix: dict[str, dict[str, Any]] = {}
    for t in targets:
        for rec in _method_records(results, t, methods, args, {"source": src}):
            records.append(rec)
        auc = {m: [_summarise(results[(t, m, s)]["curve"], args.frames)["auc"] - args.score_offset
                   for s in range(args.seeds)] for m in methods}  # fmt: skip
        matrix[t] = {}
        for m in methods:
            base, mine = statistics.fmean(auc["b1"]), statistics.fmean(auc[m])
            matrix[t][m] = {
                "transfer": round(mine / base, 3) if base else None,
                "per_seed": [round(a / b, 3) if b else None for a, b in zip(auc[m], auc["b1"], strict=True)],
            }
        plot_curves(results, t, methods, out / f"{src}_{t.replace(':', '_')}.png",
                    f"{src} -> {t}: progressive net vs baselines 1-4, {args.frames:,} frames")  # fmt: skip
    plot_transfer_matrix(matrix, targets, methods, Path(args.out) / f"{src}.png", f"{src}: transfer (AUC / AUC b1)")
    summary = {"bench": "transfer", "what": "summary", "source": src, "frames": args.frames, "seeds": args.seeds,
               "source_seeds": n_sources, "score_offset": args.score_offset,
               "matrix": matrix, "seconds": round(time.time() - t0, 1), "out": str(out)}  # fmt: skip
    print(json.dumps(summary), flush=True)
    return [*records, summary]


DISTILL_METHODS = {
    "on_policy": ["agent.variant=on_policy_distill"],
    "on_policy_sobolev": ["agent.variant=on_policy_distill", "agent.sobolev_cost=1.0"],
    "teacher_driven": ["agent.variant=teacher_distill"],
    "eer": ["agent.variant=expected_entropy_regularised"],
}


def bench_distill(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Students of `--config` (a distill config) learning from `--teacher` with each method of `--methods`, seeds,
    equal frames: the return curve and, per run, the final agreement with the teacher and KL (from the logs)."""
    methods = [m.strip() for m in args.methods.split(",")]
    bad = [m for m in methods if m not in DISTILL_METHODS]
    if bad:
        raise SystemExit(f"bench distill: unknown method(s) {bad}; choose from {', '.join(DISTILL_METHODS)}")
    config = str(_repo_path(args.config))
    name = Path(config).stem
    out = Path(args.out)
    jobs = {}
    for s in range(args.seeds):
        common = [f"runner.seed={s}", f"runner.total_env_frames={args.frames}", "wandb.mode=disabled",
                  "runner.progress_every_seconds=60", f"agent.teachers=[{args.teacher}]", *args.override]  # fmt: skip
        for m in methods:
            jobs[(name, m, s)] = (config, common + DISTILL_METHODS[m], str(out / name / f"{m}_s{s}"))
    t0 = time.time()
    results = run_all(jobs, args)
    from decoupled.runners.evaluation.plot import read_metrics

    extra = {}
    for m in methods:
        finals = []
        for s in range(args.seeds):
            recs = [r for r in read_metrics(out / name / f"{m}_s{s}") if "distill/agreement" in r]
            tail = recs[-max(1, len(recs) // 10) :]
            finals.append(
                {k: round(statistics.fmean(r[k] for r in tail), 4) for k in ("distill/agreement", "distill/kl")}
            )
        extra[m] = finals
    records = []
    for m in methods:
        records += _method_records(results, name, [m], args, {"teacher": args.teacher, "final_logs": extra[m]})
    plot_curves(results, name, methods, out / f"{name}.png", f"{name}: distillation methods, {args.frames:,} frames")
    summary = {"bench": "distill", "what": "summary", "seconds": round(time.time() - t0, 1), "out": str(out)}
    print(json.dumps(summary), flush=True)
    return [*records, summary]


def bench_distill_multi(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Multi-task policy distillation (Rusu et al. 2015, arXiv:1511.06295) on MinAtar: one IMPALA teacher per game
    trained in the union input layout (`--teacher-frames`, seed 0; reused when already trained), then `--seeds`
    students of `--config` (one net, every game, each env copy taught by its game's teacher) for `--frames`; each
    student and each teacher evaluated per game on the same env seeds, and the student's score as a fraction of its
    teacher's, raw (the paper's measure) and above a random policy: (student - random) / (teacher - random)."""
    from dataclasses import replace

    from decoupled.runners.evaluation.evaluate import checkpoint_task, evaluate_task
    from decoupled.runners.evaluation.plot import read_metrics
    from decoupled.runners.training.config import load_config

    games = [g.strip() for g in args.games.split(",")]
    bad = [g for g in games if g not in MINATAR_GAMES]
    if bad or len(games) < 2 or len(set(games)) != len(games):
        raise SystemExit(f"bench distill-multi: --games takes two or more of {', '.join(MINATAR_GAMES)}, once each")
    out = Path(args.out)
    t0 = time.time()
    layout = [
        "env.channels=union",
        "env.full_action_set=true",
        "wandb.mode=disabled",
        "runner.progress_every_seconds=60",
    ]
    teacher_jobs = {
        (g, "teacher", 0): (str(_repo_path(f"configs/impala/minatar_{g}.yaml")),
                            [*layout, f"runner.total_env_frames={args.teacher_frames}"], str(out / "teachers" / g))
        for g in games
    }  # fmt: skip
    config = str(_repo_path(args.config))
    teacher_list = "[" + ",".join(str(out / "teachers" / g) for g in games) + "]"
    jobs = {}
    for s in range(args.seeds):
        overrides = [f"runner.seed={s}", f"runner.total_env_frames={args.frames}", "wandb.mode=disabled",
                     "runner.progress_every_seconds=60", f"agent.teachers={teacher_list}",
                     f"env.games=[{','.join(games)}]", *args.override]  # fmt: skip
        jobs[("students", "student", s)] = (config, overrides, str(out / "students" / f"student_s{s}"))
    load_config(config, jobs[("students", "student", 0)][1])  # a bad --override: now, not after the teachers
    teacher_args = argparse.Namespace(**{**vars(args), "frames": args.teacher_frames, "eval_episodes": 0})
    teachers = run_all(teacher_jobs, teacher_args)
    students = run_all(jobs, argparse.Namespace(**{**vars(args), "eval_episodes": 0}))

    def score(task: Any) -> float:  # the mean of --eval-episodes on the same env seeds for every policy
        return round(statistics.fmean(evaluate_task(task, args.eval_episodes, [0])["episode_scores"]), 3)

    teacher_scores, random_scores = {}, {}
    for g in games:
        task = checkpoint_task(out / "teachers" / g)
        teacher_scores[g] = score(task)
        random_scores[g] = score(replace(task, state=None))  # uniform random actions, same env build and seeds
    records = []
    for g in games:
        rec = {"bench": "distill-multi", "what": "teacher", "game": g, "frames": args.teacher_frames,
               "eval_mean": teacher_scores[g], "random_eval_mean": random_scores[g],
               **_summarise(teachers[(g, "teacher", 0)]["curve"], args.teacher_frames),
               "train_seconds": teachers[(g, "teacher", 0)]["train_seconds"]}  # fmt: skip
        records.append(rec)
        print(json.dumps(rec), flush=True)
    fractions: dict[str, list[float]] = {g: [] for g in games}
    above_random: dict[str, list[float]] = {g: [] for g in games}
    for s in range(args.seeds):
        run_dir = out / "students" / f"student_s{s}"
        task = checkpoint_task(run_dir)
        scores = {g: score(replace(task, options={**task.options, "eval_game": g})) for g in games}
        recs = [r for r in read_metrics(run_dir) if "distill/agreement" in r]
        tail = recs[-max(1, len(recs) // 10) :]
        rec = {"bench": "distill-multi", "what": "student", "seed": s, "frames": args.frames, "eval_mean": scores,
               "fraction_of_teacher": {}, "fraction_above_random": {},
               "final_logs": {k: round(statistics.fmean(r[k] for r in tail), 4) for k in ("distill/agreement",
                                                                                         "distill/kl")} if tail else {},
               "train_seconds": students[("students", "student", s)]["train_seconds"]}  # fmt: skip
        for g in games:
            t, r0 = teacher_scores[g], random_scores[g]
            frac = scores[g] / t if t else None
            above = (scores[g] - r0) / (t - r0) if t != r0 else None
            rec["fraction_of_teacher"][g] = None if frac is None else round(frac, 3)
            rec["fraction_above_random"][g] = None if above is None else round(above, 3)
            fractions[g] += [] if frac is None else [frac]
            above_random[g] += [] if above is None else [above]
        records.append(rec)
        print(json.dumps(rec), flush=True)
    plot_curves(students, "students", ["student"], out / "students.png",
                f"one student for {len(games)} MinAtar games, {args.frames:,} frames")  # fmt: skip
    plot_game_fractions(fractions, above_random, out / "fractions.png",
                        f"multi-game student / teacher per game, {args.seeds} seeds")  # fmt: skip
    summary = {
        "bench": "distill-multi", "what": "summary", "games": games,
        "median_fraction_of_teacher": {g: round(statistics.median(v), 3) if v else None for g, v in fractions.items()},
        "median_fraction_above_random": {g: round(statistics.median(v), 3) if v else None
                                         for g, v in above_random.items()},
        "seconds": round(time.time() - t0, 1), "out": str(out),
    }  # fmt: skip
    print(json.dumps(summary), flush=True)
    return [*records, summary]


def plot_game_fractions(fractions: dict[str, list[float]], above_random: dict[str, list[float]], path: Path,
                        title: str) -> None:  # fmt: skip
    """Per game, each seed's student score as a fraction of the teacher's (raw and above random), 1 = the teacher."""
    fig, axes = _subplots(2, (10, 3.6), sharey=True)
    for ax, values, label in ((axes[0], fractions, "student / teacher"),
                              (axes[1], above_random, "(student - random) / (teacher - random)")):  # fmt: skip
        for i, v in enumerate(values.values()):
            ax.scatter([i] * len(v), v, color="C0", s=18, zorder=3)
            if v:
                ax.hlines(statistics.median(v), i - 0.3, i + 0.3, color="C1", lw=2, zorder=2)
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_xticks(range(len(values)), list(values), rotation=20)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    _save(fig, title, path)


def plot_transfer_matrix(matrix: dict, targets: list[str], methods: list[str], path: Path, title: str) -> None:
    """Targets x methods, each cell the transfer score (ratio of mean AUCs over seeds) with its per-seed range."""
    import numpy as np

    values = np.array([[matrix[t][m]["transfer"] or np.nan for m in methods] for t in targets], float)
    fig, ax = _subplots(1, (1.6 + 1.3 * len(methods), 1.2 + 0.6 * len(targets)))
    im = ax.imshow(values, cmap="RdBu", vmin=0.0, vmax=2.0)
    for i, t in enumerate(targets):
        for j, m in enumerate(methods):
            seeds = [x for x in matrix[t][m]["per_seed"] if x is not None]
            text = f"{values[i, j]:.2f}" + (f"\n[{min(seeds):.2f}, {max(seeds):.2f}]" if len(seeds) > 1 else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(methods)), methods)
    ax.set_yticks(range(len(targets)), targets)
    fig.colorbar(im, ax=ax, fraction=0.046)
    _save(fig, title, path)


def add_arguments(p: argparse.ArgumentParser, which: str) -> None:
    from decoupled.runners.evaluation import positive_int

    if which == "distill":
        p.add_argument("--config", default="configs/distill/minatar_breakout.yaml", help="the students' config")
        p.add_argument("--teacher", required=True, help="the teacher: a run dir, checkpoint dir or SB3 .zip")
        p.add_argument("--methods", default=",".join(DISTILL_METHODS), help=", ".join(DISTILL_METHODS))
        p.add_argument("--frames", type=int, default=1_000_000, help="env frames per student (equal samples)")
        p.add_argument("--eval-episodes", type=int, default=30)
        p.add_argument("--override", action="append", default=[], help="a dotted override for every run (repeatable)")
        p.add_argument("--out", default="runs/bench_distill")
    elif which == "distill-multi":
        p.add_argument("--config", default="configs/distill/minatar_multi.yaml", help="the student's config")
        p.add_argument("--games", default=",".join(MINATAR_GAMES), help="MinAtar games, one teacher each")
        p.add_argument("--teacher-frames", type=int, default=5_000_000, help="env frames per teacher (seed 0)")
        p.add_argument("--frames", type=int, default=5_000_000, help="env frames per student, all games together")
        p.add_argument("--eval-episodes", type=int, default=30, help="per game, for students and teachers alike")
        p.add_argument("--override", action="append", default=[], help="a dotted override for every student")
        p.add_argument("--out", default="runs/bench_distill_multi")
    elif which == "transfer":
        p.add_argument("--source", default="configs/impala/minatar_breakout.yaml", help="the source column's config")
        p.add_argument("--source-frames", type=int, default=None, help="source frames (default: its config's)")
        p.add_argument(
            "--source-jobs", type=positive_int, default=None,
            help="source runs in parallel (default: --jobs); 1 trains each alone with torch's default threads, as "
            "`decoupled train` does: what a time-limited source recipe (the 60-minute Pong) was measured with",
        )  # fmt: skip
        p.add_argument(
            "--source-seeds", type=positive_int, default=None,
            help="source columns trained (default: --seeds); target seed s builds on source seed s modulo this, so 1 "
            "gives every target seed the same source column (one hour of Pong instead of three)",
        )  # fmt: skip
        p.add_argument(
            "--targets", default="hflip,vflip,noisy,white",
            help="env transforms (envs/transforms.py) and/or id:<env id>, another game (MinAtar: with --override "
            "env.channels=union, one input layout for every game)",
        )  # fmt: skip
        p.add_argument("--methods", default=",".join(TRANSFER_METHODS), help="b1 (scratch), b2-b4, progressive")
        p.add_argument("--frames", type=int, default=1_000_000, help="env frames per target run")
        p.add_argument(
            "--score-offset", type=float, default=0.0,
            help="subtracted from every return before the AUC ratio (the game's lowest score, e.g. -21 for Pong, so "
            "that the ratio of two areas stays meaningful where returns go negative)",
        )  # fmt: skip
        p.add_argument("--eval-episodes", type=int, default=0)
        p.add_argument("--override", action="append", default=[], help="a dotted override for every run (repeatable)")
        p.add_argument("--out", default="runs/bench_transfer")
    elif which == "feudal":
        p.add_argument("--tasks", default="minigrid_doorkey", help="configs/feudal/<task>.yaml + impala/<task>_lstm")
        p.add_argument("--frames", type=int, default=2_000_000, help="env frames per run")
        p.add_argument("--eval-episodes", type=int, default=100)
        p.add_argument("--override", action="append", default=[], help="a dotted override for every run (repeatable)")
        p.add_argument("--threshold", type=float, default=1e-6, help="frames to first log a mean return this high")
        p.add_argument("--out", default="runs/bench_feudal")
    elif which == "nav":
        p.add_argument(
            "--configs", default="nav/nav_maze_small_static,nav/nav_maze_small_random_goal",
            help="comma-separated nav configs (paths or packaged names), each with D1, D2 and L",
        )  # fmt: skip
        p.add_argument("--methods", default=",".join(NAV_METHODS), help="lstm (no aux), d2 and/or d1d2l (as shipped)")
        p.add_argument("--frames", type=int, default=500_000, help="env frames per run")
        p.add_argument("--eval-episodes", type=int, default=20, help="nav evaluation episodes per run (0: none)")
        p.add_argument("--override", action="append", default=[], help="a dotted override for every run (repeatable)")
        p.add_argument("--threshold", type=float, help="also report the env frames each run took to reach this return")
        p.add_argument("--out", default="runs/bench_nav")
    elif which == "minatar":
        p.add_argument("--games", default=",".join(MINATAR_GAMES))
        p.add_argument("--frames", type=int, default=5_000_000, help="env frames per run (MinAtar: 5M)")
        p.add_argument("--eval-episodes", type=int, default=30)
        p.add_argument("--out", default="runs/bench_minatar")
    else:
        p.add_argument("--configs", default="configs/unreal/minatar_breakout.yaml", help="comma-separated configs")
        p.add_argument("--frames", type=int, default=5_000_000, help="env frames per run")
        p.add_argument("--eval-episodes", type=int, default=0)
        p.add_argument("--override", action="append", default=[], help="a dotted override for every run (repeatable)")
        p.add_argument("--methods", default="base,unreal", help="base (every auxiliary weight 0) and/or unreal")
        p.add_argument("--threshold", type=float, help="also report the env frames each run took to reach this return")
        p.add_argument("--out", default="runs/bench_unreal")
    p.add_argument("--seeds", type=positive_int, default=3)
    p.add_argument("--jobs", type=positive_int, default=2, help="runs in parallel (one torch thread each)")
    p.set_defaults(bench=which)
