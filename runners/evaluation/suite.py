"""`decoupled suite`: train one run per game of a list or a suite, then evaluate and report them all.

    decoupled suite CONFIG [section.key=value ...] --games Breakout,Pong | --suite atari5 --out DIR [--parallel N]

Every game trains with the same config (plus `env.id=<Game>` and the overrides) in its own subprocess
(`python -m decoupled train`), so an exception, a segfault or the OOM killer ends that game only; the others go
on. Layout of DIR:

    runs/<Game>/         the game's run dir (config.yaml, metrics.jsonl, checkpoints/, W&B files)
    status/<Game>.json   status (running / finished / failed / stopped), attempts, return code, frames, log path
    logs/<Game>.log      stdout and stderr of every training attempt, appended
    eval/                scores.json and scores.csv of every finished game (one file: this agent's run on each
                         game), eval/videos/<Game>.gif, and eval/games/<Game>.json (per-game cache: reused while
                         the checkpoint and every evaluation setting, the number of envs included, are unchanged)
    report/              `decoupled report` of eval/scores.json (Atari games: HNS, IQM, CIs, plots)
    suite.json           the inputs of the last invocation

Every game's W&B run is in one group: the config's `wandb.group`, or DIR's name. Rerunning the same command skips
finished games (their status file says so and their newest checkpoint has the full frame budget), resumes
unfinished ones from their newest checkpoint (`train --resume`: the run dir's own config.yaml, so overrides given
to a rerun do not change a started run), and starts the others. Evaluation is cached per game and checkpoint, so a
rerun only evaluates what changed. Ctrl-C asks every running game to checkpoint and stop; a rerun continues them.

Several seeds: run the suite once per seed (`runner.seed=1 --out DIR_s1`, ...) and give every `DIR_s*/eval` to
`decoupled report`.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any


class Suite:
    """One suite dir: its games, their status files, and the training subprocesses."""

    def __init__(self, config: Path, games: list[str], out: Path, overrides: list[str], group: str, backend: str):
        self.config, self.games, self.out, self.overrides, self.group = config, games, out, overrides, group
        self.backend = backend
        self.stop = threading.Event()
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()
        for sub in ("runs", "status", "logs"):
            (out / sub).mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------------------------------------ status
    def run_dir(self, game: str) -> Path:
        return self.out / "runs" / game

    def status(self, game: str) -> dict[str, Any]:
        path = self.out / "status" / f"{game}.json"
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _write_status(self, game: str, status: dict[str, Any]) -> None:
        path = self.out / "status" / f"{game}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status, indent=2))
        os.replace(tmp, path)

    def progress(self, game: str) -> tuple[int, int | None]:
        """(env frames of the newest valid checkpoint, the run's budget), read from the run dir. A run that used
        up its `runner.max_wall_seconds` counts as done: its budget is the frames it reached."""
        import yaml

        from decoupled.runners.training.checkpoint import CheckpointError, CheckpointManager

        run = self.run_dir(game)
        total, max_wall = None, None
        if (run / "config.yaml").is_file():
            runner = yaml.safe_load((run / "config.yaml").read_text())["runner"]
            total, max_wall = int(runner["total_env_frames"]), runner.get("max_wall_seconds")
        if not (run / "checkpoints").is_dir():
            return 0, total
        manager = CheckpointManager(run / "checkpoints")
        for path in manager.list():
            try:
                manifest = manager.verify(path)
            except CheckpointError:
                continue
            frames = int(manifest["env_frames"])
            wall = manifest.get("meta", {}).get("wall_time")
            if max_wall is not None and wall is not None and wall >= max_wall:
                total = frames
            return frames, total
        return 0, total

    def finished(self, game: str) -> bool:
        if self.status(game).get("status") != "finished":
            return False
        frames, total = self.progress(game)
        return total is not None and frames >= total

    # ------------------------------------------------------------------------------------------------ training
    def command(self, game: str) -> list[str]:
        run = self.run_dir(game)
        base = [sys.executable, "-m", "decoupled", "train"]
        if (run / "config.yaml").is_file():  # started before: continue it from its newest checkpoint
            return [*base, "--resume", str(run)]
        game_overrides = [f"env.id={game}", f"wandb.group={self.group}"]
        return [*base, str(self.config), *self.overrides, *game_overrides, "--run-dir", str(run)]

    def child_env(self, parallel: int) -> dict[str, str]:
        # a parent that has used W&B exports WANDB_SERVICE; a child that inherits it attaches to the parent's service
        env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
        env.setdefault("WANDB_SILENT", "true")
        if parallel > 1 and "OMP_NUM_THREADS" not in env:  # N trainings share the cores
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
        return env

    def train(self, game: str, parallel: int) -> str:
        """Train (or resume) one game in a subprocess; returns its new status."""
        if self.stop.is_set():
            return "not started"
        previous = self.status(game)
        attempts = int(previous.get("attempts", 0)) + 1
        cmd = self.command(game)
        log = self.out / "logs" / f"{game}.log"
        mode = "resume" if "--resume" in cmd else "start"
        status = {"game": game, "status": "running", "attempts": attempts, "mode": mode, "log": str(log)}
        status.update(command=cmd, started=time.strftime("%Y-%m-%d %H:%M:%S"))
        with open(log, "a") as f:
            f.write(f"\n===== {status['started']} attempt {attempts} ({mode}): {' '.join(cmd)}\n")
            f.flush()
            # own session: a Ctrl-C on the terminal reaches only the suite, which asks each game to stop once
            proc = subprocess.Popen(
                cmd, stdout=f, stderr=subprocess.STDOUT, env=self.child_env(parallel), start_new_session=True
            )
            with self._lock:
                self._procs[game] = proc
            self._write_status(game, {**status, "pid": proc.pid})
            print(f"{game}: training ({mode}, attempt {attempts}, pid {proc.pid}) -> {self.run_dir(game)}", flush=True)
            rc = proc.wait()
            with self._lock:
                self._procs.pop(game, None)
        frames, total = self.progress(game)
        if rc == 0 and total is not None and frames >= total:
            state = "finished"
        elif rc == 0:
            state = "stopped"  # asked to stop: a rerun resumes it
        else:
            state = "failed"
        status.update(status=state, returncode=rc, env_frames=frames, total_env_frames=total)
        status["ended"] = time.strftime("%Y-%m-%d %H:%M:%S")
        self._write_status(game, status)
        tail = "" if state == "finished" else f" (exit code {rc}; see {log})"
        print(f"{game}: {state} at {frames:,} env frames{tail}", flush=True)
        return state

    def interrupt(self) -> None:
        """Ask every running game to checkpoint and stop (one SIGINT each), and start no more."""
        self.stop.set()
        with self._lock:
            procs = dict(self._procs)
        for game, proc in procs.items():
            if proc.poll() is None:
                print(f"{game}: asking it to stop (checkpoint, then exit)", flush=True)
                try:
                    proc.send_signal(signal.SIGINT)
                except ProcessLookupError:
                    pass

    def train_all(self, parallel: int) -> dict[str, str]:
        """Train every unfinished game, `parallel` at a time. Returns {game: status}."""
        result: dict[str, str] = {}
        todo = []
        for game in self.games:
            if self.finished(game):
                result[game] = "finished"
                print(f"{game}: finished before, skipped", flush=True)
            else:
                todo.append(game)
        if not todo:
            return result
        with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="suite") as pool:
            futures: dict[Future, str] = {pool.submit(self.train, g, parallel): g for g in todo}
            pending = set(futures)
            while pending:
                try:
                    done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                except KeyboardInterrupt:
                    self.interrupt()
                    continue
                for fut in done:
                    try:
                        result[futures[fut]] = fut.result()
                    except Exception as exc:  # noqa: BLE001 - one game's bookkeeping must not stop the others
                        result[futures[fut]] = "failed"
                        print(f"{futures[fut]}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return {g: result[g] for g in self.games if g in result}

    # ------------------------------------------------------------------------------------------------ evaluation
    def evaluate(self, games: list[str], args: argparse.Namespace) -> tuple[Path | None, dict[str, str]]:
        """Evaluate the finished games into eval/scores.json (`evaluate.evaluate_tasks`, cached per game in
        eval/games/). A game that fails is reported in the returned {game: error}; the others go on."""
        from decoupled.runners.evaluation.evaluate import checkpoint_task, evaluate_tasks, parse_seeds

        seeds = parse_seeds(args.eval_seeds, "--eval-seeds")
        tasks, errors = [], {}
        for game in games:
            try:
                tasks.append(checkpoint_task(self.run_dir(game), game, args.protocol, args.eval_max_episode_frames))
            except Exception as exc:  # noqa: BLE001 - one game's checkpoint must not stop the others
                errors[game] = f"{type(exc).__name__}: {exc}"
                print(f"{game}: evaluation failed: {errors[game]}", file=sys.stderr, flush=True)
        extra = {
            "label": args.label or "+".join(sorted({t.cfg.agent_name for t in tasks})),
            "policy": "checkpoint",
            "suite_dir": str(self.out),
            "wandb_group": self.group,
        }
        eval_dir = self.out / "eval"
        video_steps = args.video_steps
        return evaluate_tasks(
            tasks, eval_dir, args.eval_episodes, seeds, extra, args.eval_num_envs, args.greedy, video_steps,
            keep_going=True, cache_dir=eval_dir / "games", errors=errors,
        )  # fmt: skip


# ----------------------------------------------------------------------------------------------- the command
def _games(args: argparse.Namespace, backend: str) -> list[str]:
    from decoupled.envs.atari_data import resolve_games
    from decoupled.runners.evaluation.evaluate import ATARI_BACKENDS

    if backend in ATARI_BACKENDS:
        return resolve_games(args.games, args.suite)
    if args.suite:
        raise ValueError(f"--suite names Atari suites; the config's env backend is {backend}: use --games")
    if not args.games:
        raise ValueError("give --games A,B or --suite NAME")
    games = list(dict.fromkeys(g.strip() for g in args.games.split(",") if g.strip()))
    if not games:
        raise ValueError("the game list is empty")
    return games


def _check_game_configs(config: Path, overrides: list[str], games: list[str], out: Path, group: str) -> None:
    """Validate the config each game will start with (`Suite.command`: the overrides plus `env.id=<Game>`); a game
    whose run dir has a config.yaml resumes with that one. One ConfigError naming every bad game and key."""
    from decoupled.runners.training.config import ConfigError, load_config

    errors: list[tuple[str, str]] = []
    for game in games:
        if (out / "runs" / game / "config.yaml").is_file():
            continue
        try:
            load_config(config, [*overrides, f"env.id={game}", f"wandb.group={group}"])
        except ConfigError as e:
            errors += [(path, f"{msg} (game {game!r} of --games/--suite sets env.id={game})") for path, msg in e.errors]
    if errors:
        raise ConfigError(errors, str(config))


def _report(suite: Suite, scores: Path, args: argparse.Namespace, wandb_mode: str) -> None:
    from decoupled.envs.atari_data import ATARI_SCORES
    from decoupled.runners.evaluation.evaluate import ATARI_BACKENDS
    from decoupled.runners.evaluation.report import build_report, load_score_file, log_to_wandb, render_markdown

    run = load_score_file(scores)
    missing = [g for g in run.scores if g not in ATARI_SCORES]
    if suite.backend not in ATARI_BACKENDS or missing:
        print(f"no report: human-normalised scores exist for Atari games only ({suite.backend} games)", flush=True)
        return
    out = suite.out / "report"
    with warnings.catch_warnings():  # they are listed at the end of the report printed below
        warnings.simplefilter("ignore")
        summary = build_report([run], out, reps=args.report_reps)
    print(render_markdown(summary), end="", flush=True)
    if wandb_mode != "disabled":
        meta_path = suite.out / "suite.json"
        meta = json.loads(meta_path.read_text())
        run_id = meta.setdefault("report_wandb_id", f"report-{secrets.token_hex(4)}")
        meta_path.write_text(json.dumps(meta, indent=2))
        used = log_to_wandb(
            summary, out, run_id, args.wandb_project, suite.group, None, wandb_mode, name=f"{suite.group}__report"
        )
        print(f"report logged to W&B run {run_id} ({used}) in group {suite.group}", flush=True)
    print(f"report: {out}", flush=True)


def suite_command(args: argparse.Namespace) -> int:
    from decoupled.runners.evaluation import check_out_dir
    from decoupled.runners.evaluation.evaluate import check_eval_request, parse_seeds
    from decoupled.runners.training.config import load_config

    if args.parallel < 1:
        raise ValueError("--parallel must be at least 1")
    if not args.no_eval:  # a bad evaluation request fails now, not after the training
        if args.eval_episodes < 1:
            raise ValueError("--eval-episodes must be at least 1")
        if args.eval_num_envs is not None and args.eval_num_envs < 1:
            raise ValueError("--eval-num-envs must be at least 1")
        check_eval_request(args.eval_episodes, parse_seeds(args.eval_seeds, "--eval-seeds"), args.eval_num_envs)
    from decoupled.configs import resolve

    config = resolve(args.config).resolve()  # a path, or a packaged config's name (impala/catch)
    overrides = list(args.overrides)
    if any(o.split("=", 1)[0].strip() == "env.id" for o in overrides):
        raise ValueError("the games come from --games/--suite; do not override env.id")
    cfg = load_config(config, overrides)  # every error but the game's own, before anything starts
    games = _games(args, cfg.env.backend)
    out = check_out_dir(Path(args.out).resolve())
    group = cfg.wandb.group or out.name
    _check_game_configs(config, overrides, games, out, group)  # and each game's own, before anything is written
    meta_path = out / "suite.json"
    old = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if old and (old.get("config") != str(config) or old.get("overrides") != overrides):
        print(
            f"note: {out} was started with {old.get('config')} {old.get('overrides')}; runs already started keep "
            "their own config.yaml",
            flush=True,
        )
    out.mkdir(parents=True, exist_ok=True)
    meta = {**old, "config": str(config), "overrides": overrides, "games": games, "group": group}
    meta_path.write_text(json.dumps(meta, indent=2))
    suite = Suite(config, games, out, overrides, group, cfg.env.backend)
    print(f"suite: {len(games)} game(s) of {config.name} -> {out} (W&B group {group}, {args.parallel} at a time)")

    statuses = suite.train_all(args.parallel)
    if suite.stop.is_set():
        print("interrupted: rerun the same command to continue", file=sys.stderr)
        return 130
    finished = [g for g in games if statuses.get(g) == "finished"]
    eval_errors: dict[str, str] = {}
    if finished and not args.no_eval:
        scores, eval_errors = suite.evaluate(finished, args)
        if scores is not None and not args.no_report:
            _report(suite, scores, args, os.environ.get("WANDB_MODE", cfg.wandb.mode))
    print("\n| game | training | attempts | env frames | log |\n|---|---|---:|---:|---|")
    for g in games:
        st = suite.status(g)
        total = st.get("total_env_frames")
        frames = f"{st.get('env_frames', 0):,}/" + (f"{total:,}" if total else "?")
        state = statuses.get(g, st.get("status", "?")) + (" (eval failed)" if g in eval_errors else "")
        print(f"| {g} | {state} | {st.get('attempts', 0)} | {frames} | {st.get('log', '')} |")
    bad = [g for g in games if statuses.get(g) != "finished" or g in eval_errors]
    if bad:
        print(f"{len(bad)} game(s) not done: {', '.join(bad)}; fix the cause and rerun to continue", file=sys.stderr)
        return 1
    return 0


def add_suite_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config every game trains with (env.id is set per game)")
    p.add_argument("overrides", nargs="*", help="dotted overrides for every game, e.g. runner.total_env_frames=1e7")
    p.add_argument("--games", help="comma-separated games, e.g. Breakout,Pong")
    p.add_argument("--suite", help="a named Atari suite: atari57, atari26 (Atari-100k), atari10, atari5")
    p.add_argument("--out", required=True, help="suite dir (runs/, status/, logs/, eval/, report/)")
    p.add_argument("--parallel", type=int, default=1, help="games trained at the same time (default 1)")
    p.add_argument("--eval-episodes", type=int, default=10, help="evaluation episodes per game and seed")
    p.add_argument("--eval-seeds", default="12345", help="comma-separated evaluation env seeds")
    p.add_argument("--eval-num-envs", type=int, default=None, help="parallel evaluation envs")
    p.add_argument("--eval-max-episode-frames", type=int, default=None, help="evaluation cap (default 108,000)")
    p.add_argument("--protocol", choices=["dqn_noop30", "machado2018"], help="evaluation protocol (default: the run's)")
    p.add_argument("--greedy", action="store_true", help="evaluate with argmax actions")
    p.add_argument("--video-steps", type=int, default=2000, help="agent steps of each game's video (0: no video)")
    p.add_argument("--label", help="the agent's name in the report (default: the agent)")
    p.add_argument("--report-reps", type=int, default=50_000, help="bootstrap replications of the report")
    p.add_argument("--wandb-project", default="decoupled", help="W&B project of the report run")
    p.add_argument("--no-eval", action="store_true", help="train only")
    p.add_argument("--no-report", action="store_true", help="train and evaluate only")
