"""One logging interface: `write(data, env_frames)`.

`metrics.jsonl` in the run dir is the source of truth and is written (and flushed) first. Weights & Biases is a
second, optional sink that must never block or crash training (wandb #8003, #9865, #4217, #5601):

* `wandb.init` runs in a worker thread with a hard timeout; if the requested mode fails or times out we try
  `offline`, and if that fails too W&B is disabled for the run, with a warning. Training goes on in every case.
* every call into wandb after init goes through one background thread and a bounded queue; when the queue is
  full records are dropped (and counted) rather than stalling the learner.
* `finish` has a watchdog.
* steps are env frames, logged as a metric (`define_metric(step_metric="env_frames")`), so a resumed run can
  continue the same W&B run id without wandb's own step having to be monotonic.
"""

from __future__ import annotations

import json
import math
import os
import queue
import threading
import time
import warnings
from pathlib import Path
from typing import Any

STEP_KEY = "env_frames"


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else (1e308 if v > 0 else -1e308)
    return v


class JsonlSink:
    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, "a", buffering=1)  # noqa: SIM115 - kept open for the run

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def truncate_metrics(path: Path, env_frames: int) -> int:
    """Keep only the records up to `env_frames` (used on resume, so steps stay monotonic). Records past it,
    written after the checkpoint the run resumes from, are moved to `metrics.discarded.jsonl`, not lost."""
    if not path.exists():
        return 0
    keep, drop = [], []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            drop.append(line)
            continue
        (keep if rec.get(STEP_KEY, 0) <= env_frames else drop).append(line)
    if drop:
        with open(path.with_name("metrics.discarded.jsonl"), "a") as f:
            f.write("\n".join(drop) + "\n")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)
    return len(drop)


class WandbSink:
    """W&B behind a timeout and a background thread. `mode` is the mode actually in use after init."""

    def __init__(
        self,
        run_dir: Path,
        config: dict[str, Any],
        mode: str,
        project: str,
        entity: str | None,
        group: str | None,
        tags: tuple[str, ...],
        name: str,
        run_id: str | None,
        timeout_s: float,
        queue_size: int = 1000,
    ):
        self.run = None
        self.mode = "disabled"
        self.dropped = 0
        self.run_id = run_id
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        mode = os.environ.get("WANDB_MODE", mode)
        if mode == "dryrun":
            mode = "offline"
        if mode == "disabled":
            return
        tried = [mode] + (["offline"] if mode != "offline" else [])
        for m in tried:
            run, err = self._init(run_dir, config, m, project, entity, group, tags, name, run_id, timeout_s)
            if run is not None:
                self.run, self.mode, self.run_id = run, m, run.id
                break
            warnings.warn(
                f"W&B init in {m} mode failed ({err}); "
                + (
                    "trying offline" if m != tried[-1] else "W&B is disabled for this run, metrics.jsonl has everything"
                ),
                stacklevel=2,
            )
        if self.run is not None:
            self._thread = threading.Thread(target=self._drain, name="wandb-sink", daemon=True)
            self._thread.start()

    @staticmethod
    def _init(run_dir, config, mode, project, entity, group, tags, name, run_id, timeout_s):
        result: dict[str, Any] = {}

        def target() -> None:
            try:
                import wandb

                settings = wandb.Settings(init_timeout=timeout_s, silent=True, console="off")
                run = wandb.init(
                    dir=str(run_dir),
                    config=config,
                    mode=mode,
                    project=project,
                    entity=entity,
                    group=group,
                    tags=list(tags),
                    name=name,
                    id=run_id,
                    resume="allow" if run_id else None,
                    settings=settings,
                    reinit="create_new",
                )
                run.define_metric(STEP_KEY)
                run.define_metric("*", step_metric=STEP_KEY)
                result["run"] = run
            except BaseException as e:  # noqa: BLE001 - any failure means: fall back
                result["error"] = f"{type(e).__name__}: {e}"

        t = threading.Thread(target=target, name="wandb-init", daemon=True)
        t.start()
        t.join(timeout_s + 5.0)
        if t.is_alive():
            return None, f"no answer within {timeout_s + 5.0:.0f}s"
        return result.get("run"), result.get("error")

    def _drain(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if item is None:
                return
            kind, payload = item
            try:
                if kind == "log":
                    self.run.log(payload)
                elif kind == "summary":
                    self.run.summary.update(payload)
            except Exception as e:  # noqa: BLE001 - W&B must never take training down
                warnings.warn(f"W&B log failed ({e}); continuing without it", stacklevel=1)

    def _put(self, item: tuple[str, dict]) -> None:
        if self.run is None:
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    def write(self, record: dict[str, Any]) -> None:
        self._put(("log", record))

    def summary(self, data: dict[str, Any]) -> None:
        if self.run is None:
            return
        try:  # the final summary matters more than a log record: wait a little for room
            self._queue.put(("summary", data), timeout=5.0)
        except queue.Full:
            self.dropped += 1

    def close(self, timeout_s: float = 60.0) -> None:
        """Drain what is queued (up to `timeout_s`), then finish the run (up to `timeout_s`). Never blocks longer:
        a wedged W&B is left behind with a warning, and its run is not finished while a log call is still in it."""
        if self.run is None:
            return
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._stop.set()
            warnings.warn(f"W&B did not take the last records within {timeout_s:.0f}s; left it behind", stacklevel=2)
            self.run = None
            return
        done = threading.Event()

        def finish() -> None:
            try:
                self.run.finish()
            except Exception as e:  # noqa: BLE001
                warnings.warn(f"W&B finish failed: {e}", stacklevel=1)
            done.set()

        threading.Thread(target=finish, name="wandb-finish", daemon=True).start()
        if not done.wait(timeout_s):
            warnings.warn(f"W&B finish did not return within {timeout_s:.0f}s; left it behind", stacklevel=1)
        self.run = None


class Logger:
    """`write(data, env_frames)`: namespaced metrics (train/, loss/, eval/, perf/, aux/<task>/) on one step axis."""

    def __init__(self, run_dir: Path, wandb: WandbSink | None = None):
        self.run_dir = Path(run_dir)
        self.jsonl = JsonlSink(self.run_dir / "metrics.jsonl")
        self.wandb = wandb
        self._t0 = time.time()

    def write(self, data: dict[str, Any], env_frames: int) -> None:
        record = {STEP_KEY: int(env_frames), "time": round(time.time(), 3)}
        record.update({k: _jsonable(v) for k, v in data.items()})
        self.jsonl.write(record)
        if self.wandb is not None:
            self.wandb.write({k: v for k, v in record.items() if k != "time" and v is not None})

    def summary(self, data: dict[str, Any]) -> None:
        if self.wandb is not None:
            self.wandb.summary({k: _jsonable(v) for k, v in data.items()})

    def close(self) -> None:
        self.jsonl.close()
        if self.wandb is not None:
            self.wandb.close()
