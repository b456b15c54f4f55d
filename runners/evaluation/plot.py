"""Learning curves from `metrics.jsonl`: episode return against env frames and against wall-clock time."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}")
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    return records


def plot_run(
    run_dir: str | Path | list[str | Path],
    out: str | Path | None = None,
    key: str = "train/episode_return",
    labels: list[str] | None = None,
) -> Path:
    """One run's curve, or several runs overlaid (e.g. ours and an SB3 peer from `decoupled bench peer`)."""
    runs = [Path(r) for r in (run_dir if isinstance(run_dir, list | tuple) else [run_dir])]
    if labels is not None and len(labels) != len(runs):
        raise ValueError(f"{len(labels)} labels for {len(runs)} runs")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for i, run in enumerate(runs):
        recs = [r for r in read_metrics(run) if r.get(key) is not None]
        if not recs:
            raise ValueError(f"{run}/metrics.jsonl has no {key} values yet")
        frames = [r["env_frames"] for r in recs]
        minutes = [r.get("perf/wall_time_s", 0.0) / 60.0 for r in recs]
        values = [r[key] for r in recs]
        label = labels[i] if labels else run.name
        axes[0].plot(frames, values, lw=1.5, label=label, color=f"C{i}")
        axes[1].plot(minutes, values, lw=1.5, label=label, color=f"C{i}")
    axes[0].set_xlabel("env frames")
    axes[0].set_ylabel(key.split("/")[-1].replace("_", " "))
    axes[1].set_xlabel("wall-clock (minutes)")
    for ax in axes:
        ax.grid(alpha=0.3)
    if len(runs) > 1:
        axes[1].legend(fontsize=8)
    else:
        fig.suptitle(runs[0].name, fontsize=9)
    fig.tight_layout()
    out = Path(out) if out else runs[0] / "learning_curve.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
