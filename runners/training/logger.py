"""One logging interface: `write(data, env_frames)`.

`metrics.jsonl` in the run dir is the source of truth and is written (and flushed) first. Weights & Biases is a
second, optional sink that must never block or crash training (wandb #8003, #9865, #4217, #5601):

* `wandb.init` runs in a worker thread with a hard timeout; if the requested mode fails or times out we try
  `offline`, and if that fails too W&B is disabled for the run, with a warning. Training goes on in every case.
* every call into wandb after init goes through one background thread and a bounded queue; when the queue is
  full records are dropped (and counted) rather than stalling the learner.
* `finish` has a watchdog, and is not the end: W&B's service process may still be writing the run's local
  `.wandb` file when `finish` returns (it was seen to end 7 records short right after `decoupled train` exited,
  and complete a minute later). `close` reads the file back (`runners/training/wandb_reader.py`) until it holds
  every record and the exit record, for up to `finish_timeout_s`; if it does not, the run says so in the last
  console line and in a last `metrics.jsonl` record (`wandb/incomplete`), so a `wandb sync` of a truncated run is
  not a surprise.
* steps are env frames, logged as a metric (`define_metric(step_metric="env_frames")`), so a resumed run can
  continue the same W&B run id without wandb's own step having to be monotonic.
* offline means nothing leaves the machine. W&B reads its process-wide settings from the environment once, and
  `wandb.init(mode="offline")` does not reach them: with no `WANDB_MODE` set, wandb 0.31's OpenTelemetry analytics
  (exported from the training process, `wandb/analytics/opentelemetry`) probed `api.forge.coreweave.com` at their
  first export (60 s in, or at exit), a DNS query and then HTTPS. So an offline run sets `WANDB_MODE=offline` and
  `WANDB_ERROR_REPORTING=false` in the environment before wandb is imported, each only where the user's shell has
  not set it (`tests/reliability/test_network.py` traces `decoupled train` for any packet off the machine).
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

# What an offline run puts in the environment before wandb is imported, where the user has not set it: W&B's global
# settings, read from the environment once per process, then agree that this process is offline, and its telemetry
# (error reporting and analytics) is off.
_OFFLINE_ENV = {"WANDB_MODE": "offline", "WANDB_ERROR_REPORTING": "false"}
_env_set_here: dict[str, str] = {}  # the part of it this process set, so a later run does not take it for the user's


def _wandb_mode(configured: str) -> str:
    """The mode W&B is asked for: the user's WANDB_MODE when set (not one set here by an earlier offline run), else the
    config's."""
    mode = os.environ.get("WANDB_MODE")
    if mode is None or _env_set_here.get("WANDB_MODE") == mode:
        mode = configured
    return "offline" if mode == "dryrun" else mode


def _wandb_environment(mode: str) -> None:
    """Offline: W&B told so in the environment too (see the module docstring). Any other mode asks for the network: an
    earlier offline run's variables are taken back, so the environment is the user's again."""
    if mode == "offline":
        for k, v in _OFFLINE_ENV.items():
            if k not in os.environ:
                os.environ[k] = _env_set_here[k] = v
        return
    for k, v in list(_env_set_here.items()):
        if os.environ.get(k) == v:
            del os.environ[k]
        del _env_set_here[k]


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
    """W&B behind a timeout and a background thread. `mode` is the mode actually in use after init.

    In offline mode no packet leaves the machine: W&B is told offline in the environment as well as in `wandb.init`
    (`WANDB_MODE=offline`, `WANDB_ERROR_REPORTING=false`, where the user has not set them), or its process-wide
    analytics would still reach for its server."""

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
        finish_timeout_s: float = 60.0,
    ):
        self.run = None
        self.mode = "disabled"
        self.dropped = 0
        self.logged = 0  # records W&B took (run.log returned)
        self.log_errors = 0
        self.sync_file: Path | None = None  # the run's local transaction log, run-<id>.wandb
        self.finish_timeout_s = finish_timeout_s
        self.run_id = run_id
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        mode = _wandb_mode(mode)
        if mode == "disabled":
            return
        _wandb_environment(mode)  # before wandb is imported
        tried = [mode] + (["offline"] if mode != "offline" else [])
        for m in tried:
            run, err = self._init(run_dir, config, m, project, entity, group, tags, name, run_id, timeout_s)
            if run is not None:
                self.run, self.mode, self.run_id = run, m, run.id
                try:
                    self.sync_file = Path(run.settings.sync_file)
                except Exception:  # noqa: BLE001 - a W&B without it: the file is not checked
                    self.sync_file = None
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

                # console "wrap": the run keeps what the training printed (files/output.log), as W&B users expect
                settings = wandb.Settings(init_timeout=timeout_s, silent=True, console="wrap")
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
                    self.logged += 1
                elif kind == "summary":
                    self.run.summary.update(payload)
            except Exception as e:  # noqa: BLE001 - W&B must never take training down
                self.log_errors += kind == "log"
                warnings.warn(f"W&B log failed ({e}); continuing without it", stacklevel=1)

    def _put(self, item: tuple[str, dict]) -> None:
        if self.run is None:
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    def write(self, record: dict[str, Any]) -> None:
        if self.run is not None and any(k.endswith("/video") for k in record):
            record = dict(record)
            for k in [k for k in record if k.endswith("/video")]:  # a GIF's path -> a W&B video of it
                try:
                    import wandb

                    record[k] = wandb.Video(str(record[k]), format="gif")
                except Exception:  # noqa: BLE001 - the metrics matter more than the picture
                    record.pop(k)
        self._put(("log", record))

    def summary(self, data: dict[str, Any]) -> None:
        if self.run is None:
            return
        try:  # the final summary matters more than a log record: wait a little for room
            self._queue.put(("summary", data), timeout=5.0)
        except queue.Full:
            self.dropped += 1

    def close(self, timeout_s: float | None = None) -> str | None:
        """Drain what is queued (up to `timeout_s`), finish the run (up to `timeout_s`), then wait (up to
        `timeout_s`) until the run's local .wandb file holds every record W&B took and the exit record. Never blocks
        longer: a wedged W&B is left behind with a warning, and its run is not finished while a log call is still in
        it. Returns None when the W&B run holds everything that was written to it, else why it does not."""
        if self.run is None:
            return None
        timeout_s = self.finish_timeout_s if timeout_s is None else timeout_s
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._stop.set()
            warnings.warn(f"W&B did not take the last records within {timeout_s:.0f}s; left it behind", stacklevel=2)
            self.run = None
            return f"W&B did not take the last records within {timeout_s:.0f}s"
        done = threading.Event()
        failed: list[str] = []

        def finish() -> None:
            try:
                self.run.finish()
            except Exception as e:  # noqa: BLE001
                failed.append(f"{type(e).__name__}: {e}")
                warnings.warn(f"W&B finish failed: {e}", stacklevel=1)
            done.set()

        threading.Thread(target=finish, name="wandb-finish", daemon=True).start()
        if not done.wait(timeout_s):
            warnings.warn(f"W&B finish did not return within {timeout_s:.0f}s; left it behind", stacklevel=1)
            self.run = None
            return f"W&B finish did not return within {timeout_s:.0f}s"
        self.run = None
        problems = [f"finish failed ({failed[0]})"] if failed else []
        if self.dropped:
            problems.append(f"{self.dropped} records were dropped (W&B's queue was full)")
        if self.log_errors:
            problems.append(f"{self.log_errors} records failed to log")
        short = self._wait_for_sync_file(self.logged, timeout_s)
        if short:
            problems.append(short)
        return "; ".join(problems) or None

    def _wait_for_sync_file(self, rows: int, timeout_s: float) -> str | None:
        """Read the run's .wandb file back until it holds `rows` history records and the exit record (W&B's service
        process writes it after `finish` has returned). None when it does, else what it holds."""
        if self.sync_file is None:
            return None
        from decoupled.runners.training.wandb_reader import read_run

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                run = read_run(self.sync_file)
                n, exited = len(run["history"]), run["exit_code"] is not None
            except (OSError, ValueError):  # not there yet, or a record still being written
                n, exited = 0, False
            if n >= rows and exited:
                return None
            if time.monotonic() >= deadline:
                return (
                    f"its file {self.sync_file} holds {n} of {rows} records"
                    + ("" if exited else " and no exit record")
                    + f" {timeout_s:.0f}s after finish"
                )
            time.sleep(0.2)


class TensorBoardSink:
    """Scalars as TensorBoard event files in the run dir itself, so `tensorboard --logdir runs/` shows every run
    (written by tensorboardX, which needs no TensorFlow). Every numeric metric is a scalar at step `env_frames`. A
    resumed run starts a new event file with `purge_step` at its checkpoint's frames, so TensorBoard drops what the
    interrupted segment logged past the checkpoint (as metrics.jsonl is truncated there)."""

    def __init__(self, run_dir: Path, start_env_frames: int = 0):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(run_dir), purge_step=int(start_env_frames) if start_env_frames else None)

    def write(self, record: dict[str, Any]) -> None:
        step = int(record[STEP_KEY])
        for k, v in record.items():
            if k in (STEP_KEY, "time") or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            self.writer.add_scalar(k, float(v), global_step=step, walltime=record.get("time"))

    def close(self) -> None:
        self.writer.close()


class Logger:
    """`write(data, env_frames)`: namespaced metrics (train/, loss/, eval/, perf/, aux/<task>/) on one step axis, to
    metrics.jsonl, W&B and (optionally) TensorBoard."""

    def __init__(self, run_dir: Path, wandb: WandbSink | None = None, tensorboard: TensorBoardSink | None = None):
        self.run_dir = Path(run_dir)
        self.jsonl = JsonlSink(self.run_dir / "metrics.jsonl")
        self.wandb = wandb
        self.tensorboard = tensorboard
        self._t0 = time.time()
        self.last_env_frames = 0

    def write(self, data: dict[str, Any], env_frames: int) -> None:
        self.last_env_frames = int(env_frames)
        record = {STEP_KEY: int(env_frames), "time": round(time.time(), 3)}
        record.update({k: _jsonable(v) for k, v in data.items()})
        self.jsonl.write(record)
        if self.wandb is not None:
            self.wandb.write({k: v for k, v in record.items() if k != "time" and v is not None})
        if self.tensorboard is not None:
            self.tensorboard.write(record)

    def summary(self, data: dict[str, Any]) -> None:
        """The run's summary (status, frames, final and best evaluation) to W&B and to `summary.json` in the run dir
        (a resumed run's keys are merged into it)."""
        data = {k: _jsonable(v) for k, v in data.items()}
        path = self.run_dir / "summary.json"
        try:
            old = json.loads(path.read_text()) if path.is_file() else {}
        except ValueError:  # a summary cut short by a crash: rewritten whole
            old = {}
        path.write_text(json.dumps({**old, **data}, indent=2))
        if self.wandb is not None:
            self.wandb.summary(data)

    def close(self, timeout_s: float | None = None) -> str | None:
        """Close W&B, then metrics.jsonl. When the W&B run does not hold everything metrics.jsonl holds, a last
        metrics.jsonl record says so (`wandb/incomplete`: why), and the reason is returned for the console.
        `timeout_s` bounds each of W&B's closing steps (default `wandb.finish_timeout_s`)."""
        problem = self.wandb.close(timeout_s) if self.wandb is not None else None
        if self.tensorboard is not None:
            self.tensorboard.close()
        if problem:
            problem = f"W&B did not finish: {problem}"
            record = {STEP_KEY: self.last_env_frames, "time": round(time.time(), 3), "wandb/incomplete": problem}
            self.jsonl.write(record)
        self.jsonl.close()
        return problem
