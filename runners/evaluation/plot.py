"""Learning curves from `metrics.jsonl`: any metric against env frames and against wall-clock time.

`decoupled plot RUN [RUN ...] [--key train/episode_return] [--labels a,a,b] [--smooth N] [--out PNG]`: one curve per
run; runs that share a label are one group, drawn as thin per-run lines with the group's mean over runs and a 95%
confidence band (percentile bootstrap over runs, on a common grid of the range every run of the group covers).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.backend_bases import FigureCanvasBase  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402


class NothingToPlot(ValueError):
    """A run dir without the metric asked for (no metrics.jsonl, or no values of the key yet)."""


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records (JSON objects) of a run dir's metrics.jsonl; lines that are not one (a line cut by a kill, or a
    corrupt file) are skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}")
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if isinstance(record, dict):
            records.append(record)
    return records


def human(x: float, _pos: object = None) -> str:
    """Tick labels a person reads at a glance: 0, 500k, 1M, 2.5M, 1B."""
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= size:
            return f"{x / size:.4g}{suffix}"
    return f"{x:.4g}"


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over `window` points (the first points average what they have)."""
    if window <= 1:
        return values
    c = np.cumsum(np.insert(values.astype(float), 0, 0.0))
    n = np.arange(1, len(values) + 1)
    lo = np.maximum(n - window, 0)
    return (c[n] - c[lo]) / (n - lo)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def curve(run: Path, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(env frames, wall-clock minutes, values) of `key` in a run's metrics.jsonl."""
    if not run.exists():
        raise NothingToPlot(f"{run} does not exist: give a run dir (the dir `decoupled train` wrote metrics.jsonl in)")
    if not run.is_dir():
        hint = f"; give its dir, {run.parent}" if run.name == "metrics.jsonl" else ""
        raise NothingToPlot(f"{run} is a file, not a run dir{hint}")
    try:
        records = read_metrics(run)
    except FileNotFoundError as e:
        raise NothingToPlot(f"{e}: is {run} a run dir (not an eval or report dir)?") from None
    except OSError as e:
        raise NothingToPlot(f"cannot read {run}/metrics.jsonl ({e.strerror or e}): check its permissions") from None
    if not records:
        empty = not (run / "metrics.jsonl").read_text(errors="replace").strip()
        raise NothingToPlot(
            f"{run}/metrics.jsonl is empty: the run has not logged a record yet (plot it later)"
            if empty
            else f"{run}/metrics.jsonl holds no JSON records: it is corrupt or was not written by `decoupled train`"
        )
    with_key = [r for r in records if _number(r.get(key))]
    recs = [r for r in with_key if _number(r.get("env_frames"))]
    if with_key and not recs:
        raise NothingToPlot(
            f"{run}/metrics.jsonl has {key} values but no env_frames with them: it was not written by "
            "`decoupled train` or `decoupled bench peer`"
        )
    if not recs:
        keys = sorted({k for r in records for k in r if _number(r[k])} - {"env_frames"})
        hint = (
            f"; it has {', '.join(keys[:12])}{' ...' if len(keys) > 12 else ''} (choose one with --key)" if keys else ""
        )
        raise NothingToPlot(f"{run}/metrics.jsonl has no {key} values yet{hint}")
    frames = np.array([r["env_frames"] for r in recs], float)
    minutes = np.array([r.get("perf/wall_time_s", 0.0) / 60.0 for r in recs], float)
    return frames, minutes, np.array([r[key] for r in recs], float)


def mean_band(
    xs: list[np.ndarray], ys: list[np.ndarray], points: int = 200, resamples: int = 1000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean over runs and its 95% percentile-bootstrap band, on a grid over the x range every run covers."""
    lo, hi = max(x[0] for x in xs), min(x[-1] for x in xs)
    grid = np.linspace(lo, hi, points) if hi > lo else np.array([lo])
    table = np.stack([np.interp(grid, x, y) for x, y in zip(xs, ys, strict=True)])  # [runs, points]
    rng = np.random.default_rng(seed)
    means = table[rng.integers(0, len(table), (resamples, len(table)))].mean(1)  # [resamples, points]
    return grid, table.mean(0), np.percentile(means, 2.5, axis=0), np.percentile(means, 97.5, axis=0)


def plot_run(
    run_dir: str | Path | list[str | Path],
    out: str | Path | None = None,
    key: str = "train/episode_return",
    labels: list[str] | None = None,
    smoothing: int = 1,
) -> Path:
    """One run's curve, or several runs (e.g. ours and an SB3 peer from `decoupled bench peer`); runs with the same
    label are a group: its runs thin, its mean over runs thick with a 95% bootstrap band."""
    runs = [Path(r) for r in (run_dir if isinstance(run_dir, list | tuple) else [run_dir])]
    if labels is not None and len(labels) != len(runs):
        raise ValueError(
            f"--labels gives {len(labels)} labels for {len(runs)} runs: give one label per run dir, comma-separated "
            "(runs with the same label are one group)"
        )
    if labels is not None and not all(label.strip() for label in labels):
        raise ValueError(f"--labels {','.join(labels)!r} has an empty label: give every run dir a name")
    if type(smoothing) is not int or smoothing < 1:
        raise ValueError(f"--smooth must be a whole number of log records >= 1 (1: no smoothing), got {smoothing!r}")
    out = check_out(out) if out else None  # a bad --out fails before any work
    names = labels or [r.name for r in runs]
    groups: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    for run, name in zip(runs, names, strict=True):
        frames, minutes, values = curve(run, key)
        groups.setdefault(name, []).append((frames, minutes, smooth(values, smoothing)))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for i, (name, members) in enumerate(groups.items()):
        colour = f"C{i}"
        for j, axis in enumerate((0, 1)):
            xs = [m[axis] for m in members]
            ys = [m[2] for m in members]
            ax = axes[j]
            if len(members) == 1:
                ax.plot(xs[0], ys[0], lw=1.5, color=colour, label=name)
                continue
            for x, y in zip(xs, ys, strict=True):
                ax.plot(x, y, lw=0.7, alpha=0.35, color=colour)
            grid, mean, low, high = mean_band(xs, ys)
            ax.plot(grid, mean, lw=2.0, color=colour, label=f"{name} (mean of {len(members)})")
            ax.fill_between(grid, low, high, color=colour, alpha=0.2, lw=0)
    axes[0].set_xlabel("env frames")
    axes[0].xaxis.set_major_formatter(FuncFormatter(human))
    axes[0].set_ylabel(key + (f" (smoothed over {smoothing})" if smoothing > 1 else ""))
    axes[1].set_xlabel("wall-clock (minutes)")
    for ax in axes:
        ax.grid(alpha=0.3)
    if len(groups) > 1 or any(len(m) > 1 for m in groups.values()):
        axes[1].legend(fontsize=8)
    else:
        fig.suptitle(runs[0].name, fontsize=9)
    fig.tight_layout()
    out = out or runs[0] / "learning_curve.png"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110)
    except OSError as e:
        raise ValueError(f"cannot write {out} ({e.strerror or e}): give --out a path in a dir you can write") from None
    finally:
        plt.close(fig)
    return out


def check_out(out: str | Path) -> Path:
    """`--out` as a picture file path: not a dir, a format matplotlib writes, no file where a dir of it belongs.
    Missing dirs on its way are created when the picture is written."""
    text, out = str(out), Path(out)
    if out.is_dir() or text.endswith(("/", os.sep)):
        raise ValueError(f"--out {text} is a dir: give a file path in it, e.g. {out / 'learning_curve.png'}")
    if out.suffix.lstrip(".").lower() not in FigureCanvasBase.get_supported_filetypes():
        raise ValueError(f"--out {text}: give a file name ending in .png (or .pdf, .svg, .jpg: a picture format)")
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ValueError(f"--out {text}: {blocking} is a file, not a dir; give a path in a dir")
    return out
