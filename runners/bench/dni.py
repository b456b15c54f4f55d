"""`decoupled bench dni`: the supervised tasks of the DNI paper (Jaderberg et al. 2016, Sec. 3.2), truncated BPTT
against synthetic gradients at the same truncation, with the agents' own `dni_lstm` core and learner code.

    decoupled bench dni --task recall --truncation 3 --seeds 3 [--methods bptt,dni,dni_aux,dni_critic]
    decoupled bench dni --task delayed_cue --truncation 4 --delay 8 --seeds 3 [--frames 3000000]

An LSTM reads an endless stream in windows of `--truncation` steps, carrying its state from window to window
(and resetting it where a task episode starts, as agents do); truncated BPTT stops the gradient at each window's
start, DNI injects M's synthetic gradient at its end (agents/nets/dni.py). A length curriculum raises the
difficulty level when the current one is solved within `--updates-per-level` updates and stops at the first
level that is not; the result per method is the last level solved, per seed and their median. For `recall` each
level starts from a fresh model by default (`--curriculum auto`): a model grown through the short delays keeps
some bits longer than any gradient taught it to (truncated BPTT at T=3 then "solves" D=3 with 97%), which
measures that incidental memory rather than the dependency length the method can learn.

Tasks (one JSON line per method, then a summary line):

* `recall` (a memory check in the spirit of the DNI paper's copy tasks): random bits; the target at step t is the
  bit from step t-D. Level: the delay D. Solved: >= 95% of the bits right over the last 100 windows. With
  truncation T, BPTT has a gradient path from an input to its target only when D < T.
* `copy` (Graves et al. 2014): N random 8-bit vectors, a delimiter, then the N vectors to be written back.
  Level: N. Solved: fewer than 0.15 wrong bits per sequence over the last 100 sequences (the paper's threshold,
  recalled, not checked against its text).
* `repeat_copy`: the same with a repeat count R (1-3) given with the delimiter; the N vectors are to be written R
  times, then an end marker. Level: N.

* `delayed_cue` (RL, `impala` on envs/memory.py's task): the LSTM at unroll `--truncation` (truncated BPTT),
  `dni_lstm` at the same unroll, and the LSTM at an unroll holding a whole episode (`bptt_long`), each over
  `--seeds`, `--jobs` runs at a time; one JSON line per method (final return per seed, frames until the return
  first reached 0.9) and `delayed_cue.png` with every run's curve in `--out`.

Every update of the supervised tasks uses the learner's window layout: T+1 steps whose last one starts the next
window, the loss on the first T, Adam for the LSTM and its readout, M with its own Adam (`--sg-lr`), gradient-norm
clip 1 for both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from decoupled.agents.nets.cores import core_inputs
from decoupled.agents.nets.dni import DNIConfig, DNILSTMCore, SyntheticGradients

METHODS = ("bptt", "dni", "dni_aux", "dni_critic", "dni_critic_grad")
TASKS = ("recall", "copy", "repeat_copy", "delayed_cue")
RL_METHODS = ("bptt", "dni", "dni_aux", "dni_critic", "bptt_long")
BITS = 8
MAX_REPEATS = 3


# ----------------------------------------------------------------------------------------------- task streams
@dataclass
class Chunk:
    x: np.ndarray  # [L, B, in]
    y: np.ndarray  # [L, B, out]
    mask: np.ndarray  # [L, B]: the steps with a target
    first: np.ndarray  # [L, B]: an episode starts here (the core resets before it)
    ends: np.ndarray  # [L, B]: the last target step of an episode


class Stream:
    """Endless per-column streams of task episodes at a difficulty level; `window(n)` returns the next n steps and
    keeps the last one for the next window (the learner's overlapping [T+1] layout)."""

    def __init__(self, task: str, batch: int, level: int, rng: np.random.Generator):
        self.task, self.B, self.level, self.rng = task, batch, level, rng
        self.in_size, self.out_size = {"recall": (1, 1), "copy": (BITS + 1, BITS), "repeat_copy": (BITS + 2, BITS + 1)}[
            task
        ]
        self.cols: list[list[np.ndarray]] = [[] for _ in range(batch)]  # per column: pending steps (rows)
        self.t = 0
        if task == "recall":  # one endless episode: the bits and a history for the delay
            self.history = rng.integers(0, 2, (level, batch)).astype(np.float32)

    def _episode(self) -> np.ndarray:
        """One episode of the copy tasks as rows [x | y | mask | first | end]."""
        N = self.level
        seq = self.rng.integers(0, 2, (N, BITS)).astype(np.float32)
        R = int(self.rng.integers(1, MAX_REPEATS + 1)) if self.task == "repeat_copy" else 1
        out_len = N * R + (1 if self.task == "repeat_copy" else 0)
        L = N + 1 + out_len
        x = np.zeros((L, self.in_size), np.float32)
        y = np.zeros((L, self.out_size), np.float32)
        x[:N, :BITS] = seq
        x[N, BITS] = 1.0  # the delimiter
        if self.task == "repeat_copy":
            x[N, BITS + 1] = R / MAX_REPEATS
            y[N + 1 + N * R, BITS] = 1.0  # the end marker
        y[N + 1 : N + 1 + N * R, :BITS] = np.tile(seq, (R, 1))
        mask = np.zeros((L, 1), np.float32)
        mask[N + 1 :] = 1.0
        first = np.zeros((L, 1), np.float32)
        first[0] = 1.0
        end = np.zeros((L, 1), np.float32)
        end[-1] = 1.0
        return np.concatenate([x, y, mask, first, end], 1)

    def _take(self, n: int) -> Chunk:
        if self.task == "recall":
            bits = self.rng.integers(0, 2, (n, self.B)).astype(np.float32)
            full = np.concatenate([self.history, bits], 0)
            y = full[:n][:, :, None]  # the bit D steps back
            self.history = full[-self.level :]
            mask = np.ones((n, self.B), np.float32)
            if self.t < self.level:  # the first D steps of the stream have no target yet
                mask[: self.level - self.t] = 0.0
            self.t += n
            first = np.zeros((n, self.B), bool)
            if self.t == n:
                first[0] = True
            return Chunk(bits[:, :, None], y, mask, first, np.zeros((n, self.B), bool))
        rows = []
        for col in self.cols:
            have = sum(len(p) for p in col)
            while have < n:
                col.append(self._episode())
                have += len(col[-1])
            block = np.concatenate(col, 0)
            rows.append(block[:n])
            col[:] = [block[n:]] if len(block) > n else []
        arr = np.stack(rows, 1)  # [n, B, in+out+3]
        i, o = self.in_size, self.out_size
        return Chunk(
            arr[..., :i], arr[..., i : i + o], arr[..., i + o], arr[..., i + o + 1] > 0, arr[..., i + o + 2] > 0
        )

    def window(self, n: int) -> Chunk:
        """n steps: the kept last step of the previous window, then n-1 new ones."""
        if not hasattr(self, "_last"):
            self._last = self._take(1)
        new = self._take(n - 1)
        out = Chunk(*(np.concatenate([getattr(self._last, f), getattr(new, f)], 0) for f in Chunk.__dataclass_fields__))
        self._last = Chunk(*(getattr(out, f)[-1:] for f in Chunk.__dataclass_fields__))
        return out


# ----------------------------------------------------------------------------------------------- one run
def _solved(task: str, score: float) -> bool:
    return score >= 0.95 if task == "recall" else score < 0.15


def run_method(args: argparse.Namespace, method: str, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    T, B, H = args.truncation, args.batch, args.hidden
    probe = Stream(args.task, 1, 1, rng)
    cfg = DNIConfig(
        enabled=method != "bptt",
        scale=args.scale,
        lr=args.sg_lr,
        aux_cost=args.aux_cost if method == "dni_aux" else 0,
        normalize=args.sg_normalize and not method.startswith("dni_critic"),
        module="critic" if method.startswith("dni_critic") else "gradient",
        critic_value_cost=0.0 if method == "dni_critic_grad" else args.critic_value_cost,
    )
    curriculum = args.curriculum == "yes" or (args.curriculum == "auto" and args.task != "recall")

    def build() -> tuple[DNILSTMCore, nn.Linear, list[nn.Parameter], torch.optim.Optimizer, SyntheticGradients | None]:
        core = DNILSTMCore(probe.in_size, 1, H, cfg)  # one dummy action: the core's a_{t-1}/r_{t-1} inputs stay 0
        readout = nn.Linear(H, probe.out_size)
        params = [p for n, p in core.named_parameters() if not n.startswith("sg.")] + list(readout.parameters())
        return (
            core,
            readout,
            params,
            torch.optim.Adam(params, lr=args.lr),
            SyntheticGradients(core) if cfg.enabled else None,
        )

    core, readout, params, opt, sg = build()
    level = max(1, args.start_level)
    best, updates, t0 = 0, 0, time.time()
    history: list[dict[str, Any]] = []
    while level <= args.max_level:
        if not curriculum and history:  # each level learned from scratch: the longest dependency learnable
            core, readout, params, opt, sg = build()
        stream = Stream(args.task, B, level, rng)
        state = core.initial_state(B)
        recent: list[tuple[float, float]] = []  # per window: (score numerator, denominator)
        solved = False
        for u in range(args.updates_per_level):
            w = stream.window(T + 1)
            x, y = torch.from_numpy(w.x), torch.from_numpy(w.y)
            mask, first = torch.from_numpy(np.asarray(w.mask, np.float32)), torch.from_numpy(w.first)
            zeros_a, zeros_r = torch.zeros(T + 1, B, dtype=torch.long), torch.zeros(T + 1, B)
            if sg is not None:
                state = sg.leaf(state)
            inp = core_inputs(x, zeros_a, zeros_r, first, core.num_actions)
            out, _, kept = core.run(inp, first, state, keep=(0, -2))
            logits = readout(out[:-1])
            bce = F.binary_cross_entropy_with_logits(logits, y[:-1], reduction="none").sum(-1)
            loss = (bce * mask[:-1]).sum() / B
            outputs = {"dni/first_step_state": kept[0], "dni/boundary_state": kept[-2]}
            outputs["dni/column_loss"] = (bce * mask[:-1]).sum(0).detach() / B  # per column: they sum to `loss`
            batch = {"first": first, "reward": zeros_r}
            if sg is not None:
                loss = loss + sg.inject(batch, outputs)[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sg_metrics = sg.update(state, batch, outputs) if sg is not None else {}
            state = tuple(s.detach() for s in kept[-2])
            updates += 1
            with torch.no_grad():
                wrong = ((logits > 0).float() != y[:-1]).float().sum(-1) * mask[:-1]
                if args.task == "recall":
                    recent.append((float(mask[:-1].sum() - wrong.sum()), float(mask[:-1].sum())))
                else:
                    recent.append((float(wrong.sum()), float(w.ends[:-1].sum())))
            recent = recent[-100:]
            if (u + 1) % 100 == 0:
                num, den = sum(r[0] for r in recent), sum(r[1] for r in recent)
                score = num / den if den else float("nan")
                if args.verbose:
                    info = {k.split("/")[1]: round(v, 4) for k, v in sg_metrics.items()}
                    print(
                        f"{method} seed {seed} level {level} update {u + 1}: score {score:.4f} {info}", file=sys.stderr
                    )
                if den and _solved(args.task, score):
                    solved = True
                    break
        num, den = sum(r[0] for r in recent), sum(r[1] for r in recent)
        score = num / den if den else float("nan")
        history.append({"level": level, "updates": u + 1, "score": round(score, 4), "solved": solved})
        if not solved:
            break
        best = level
        level += 1
    return {"max_solved": best, "updates": updates, "seconds": round(time.time() - t0, 1), "levels": history}


def bench_dni(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.task == "delayed_cue":
        return bench_delayed_cue(args)
    methods = [m.strip() for m in (args.methods or "bptt,dni,dni_aux").split(",")]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"bench dni: unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    torch.set_num_threads(1)  # small matrices: one thread is fastest and leaves the other core free
    out = []
    results: dict[str, list[int]] = {}
    for method in methods:
        runs = [run_method(args, method, seed) for seed in range(args.seeds)]
        results[method] = [r["max_solved"] for r in runs]
        record = {
            "bench": "dni", "task": args.task, "truncation": args.truncation, "method": method,
            "level": "delay D" if args.task == "recall" else "sequence length N",
            "max_solved_per_seed": results[method], "median_max_solved": statistics.median(results[method]),
            "updates_per_level": args.updates_per_level, "seconds": round(sum(r["seconds"] for r in runs), 1),
            "runs": runs,
        }  # fmt: skip
        print(json.dumps(record), flush=True)
        out.append(record)
    summary = {"bench": "dni", "what": "summary", "task": args.task, "truncation": args.truncation}
    summary.update({f"{m}_median_max_solved": statistics.median(v) for m, v in results.items()})
    if "bptt" in results:
        for m in results:
            if m != "bptt":
                summary[f"{m}_beats_bptt_on_every_seed"] = all(
                    d > b for d, b in zip(results[m], results["bptt"], strict=True)
                )
    keys = ("hidden", "batch", "lr", "sg_lr", "scale", "aux_cost", "sg_normalize", "critic_value_cost")
    summary["settings"] = {k: getattr(args, k) for k in keys}
    print(json.dumps(summary), flush=True)
    out.append(summary)
    return out


# ----------------------------------------------------------------------------------------------- RL: delayed cue
RL_CONFIG = "configs/impala/delayed_cue.yaml"


def _unroll(args: argparse.Namespace, method: str) -> int:
    """bptt_long's unroll holds a whole episode (delay + 1 steps) unless --long-unroll says otherwise."""
    return (args.long_unroll or args.delay + 1) if method == "bptt_long" else args.truncation


def _rl_overrides(args: argparse.Namespace, method: str, seed: int) -> list[str]:
    unroll = _unroll(args, method)
    o = [
        f"env.delay={args.delay}", f"runner.unroll_length={unroll}", f"runner.seed={seed}",
        f"runner.total_env_frames={args.frames}", f"optim.lr={args.agent_lr}", "wandb.mode=disabled",
        f"runner.log_every_env_frames={max(1000, args.frames // 100)}", "runner.torch_threads=1",
    ]  # fmt: skip
    if method in ("dni", "dni_aux", "dni_critic"):
        o += ["agent.core=dni_lstm", f"agent.dni.scale={args.scale}", f"agent.dni.lr={args.sg_lr}"]
    if method in ("dni", "dni_aux"):
        o.append(f"agent.dni.normalize={str(args.sg_normalize).lower()}")
        if method == "dni_aux":
            o.append(f"agent.dni.aux_cost={args.aux_cost}")
    if method == "dni_critic":
        o += ["agent.dni.module=critic", f"agent.dni.critic_value_cost={args.critic_value_cost}"]
    return o


def _rl_run(config: str, overrides: list[str], run_dir: str) -> list[tuple[int, float]]:
    """One training run (in a worker process); returns its (env frames, train return) curve."""
    import shutil
    from pathlib import Path

    from decoupled.runners.evaluation.plot import read_metrics
    from decoupled.runners.training.config import load_config
    from decoupled.runners.training.train import train

    shutil.rmtree(run_dir, ignore_errors=True)
    train(load_config(config, overrides), Path(run_dir))
    rows = read_metrics(run_dir)
    return [(int(r["env_frames"]), float(r["train/episode_return"])) for r in rows if "train/episode_return" in r]


def bench_delayed_cue(args: argparse.Namespace) -> list[dict[str, Any]]:
    """`impala` on the delayed-cue task (envs/memory.py): LSTM at unroll T (truncated BPTT), `dni_lstm` at T, and the
    LSTM at a long unroll that holds a whole episode. One JSON line per method: the return over the last 10% of
    training per seed and the env frames until the return first reached 0.9; curves in `--out`."""
    import concurrent.futures as cf
    import multiprocessing as mp
    from pathlib import Path

    methods = [m.strip() for m in (args.methods or "bptt,dni,bptt_long").split(",")]
    unknown = [m for m in methods if m not in RL_METHODS]
    if unknown:
        raise SystemExit(f"bench dni: unknown RL method(s) {unknown}; choose from {', '.join(RL_METHODS)}")
    out_dir = Path(args.out)
    from decoupled.configs import resolve

    config = resolve(args.config)  # a path, or a packaged config from any directory
    jobs = [(m, s) for m in methods for s in range(args.seeds)]
    t0 = time.time()
    with cf.ProcessPoolExecutor(max_workers=args.jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {
            job: pool.submit(_rl_run, str(config), _rl_overrides(args, *job), str(out_dir / f"{job[0]}_s{job[1]}"))
            for job in jobs
        }
        curves = {job: f.result() for job, f in futures.items()}
    records = []
    for m in methods:
        finals, reach = [], []
        for s in range(args.seeds):
            c = curves[(m, s)]
            tail = [r for f, r in c if f >= 0.9 * args.frames] or [c[-1][1]]
            finals.append(round(statistics.fmean(tail), 3))
            reach.append(next((f for f, r in c if r >= 0.9), None))
        record = {
            "bench": "dni", "task": "delayed_cue", "method": m, "delay": args.delay,
            "unroll": _unroll(args, m),
            "final_return_per_seed": finals, "median_final_return": statistics.median(finals),
            "frames_to_0.9_per_seed": reach, "frames": args.frames,
        }  # fmt: skip
        print(json.dumps(record), flush=True)
        records.append(record)
    summary = {
        "bench": "dni", "what": "summary", "task": "delayed_cue", "delay": args.delay, "truncation": args.truncation,
        "seconds": round(time.time() - t0, 1), "curves": str(out_dir / "delayed_cue.png"),
        "settings": {k: getattr(args, k) for k in ("agent_lr", "sg_lr", "scale", "aux_cost", "sg_normalize")},
    }  # fmt: skip
    _plot_rl(curves, methods, args, out_dir / "delayed_cue.png")
    print(json.dumps(summary), flush=True)
    return [*records, summary]


def _plot_rl(curves: dict, methods: list[str], args: argparse.Namespace, path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, m in enumerate(methods):
        color = f"C{i}"
        unroll = _unroll(args, m)
        for s in range(args.seeds):
            f, r = zip(*curves[(m, s)], strict=True)
            ax.plot(f, r, color=color, alpha=0.8, lw=1, label=f"{m} (unroll {unroll})" if s == 0 else None)
    ax.set_xlabel("env frames")
    ax.set_ylabel("train return (last 100 episodes)")
    ax.set_ylim(-0.3, 1.05)
    ax.set_title(f"delayed cue, delay {args.delay}: {args.seeds} seeds per method")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=TASKS, default="recall")
    p.add_argument("--truncation", type=int, default=3, help="BPTT window T (steps per update)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument(
        "--methods", default=None, help=f"comma-separated: {', '.join(METHODS)} (supervised tasks; default "
        "bptt,dni,dni_aux), "
        f"{', '.join(RL_METHODS)} (delayed_cue; default bptt,dni,bptt_long)",
    )  # fmt: skip
    p.add_argument("--updates-per-level", type=int, default=4000, help="budget to solve one level before stopping")
    p.add_argument("--max-level", type=int, default=30, help="stop the curriculum after this level")
    p.add_argument("--start-level", type=int, default=1, help="the first level tried")
    p.add_argument(
        "--curriculum", choices=("auto", "yes", "no"), default="auto",
        help="yes: one model through the levels (the paper's copy tasks); no: a fresh model per level, so a level "
        "counts only if it is learnable from scratch; auto: no for recall, yes for the copy tasks",
    )  # fmt: skip
    p.add_argument("--hidden", type=int, default=64, help="LSTM units")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam, LSTM and readout")
    p.add_argument("--sg-lr", type=float, default=1e-3, help="Adam, the synthetic-gradient module")
    p.add_argument("--scale", type=float, default=0.1, help="lambda: SG scale / bootstrap discount")
    p.add_argument("--aux-cost", type=float, default=0.1, help="dni_aux: weight of the future-SG prediction")
    p.add_argument("--sg-normalize", action="store_true", help="M predicts in units of its targets' running RMS")
    p.add_argument(
        "--critic-value-cost", type=float, default=0.1,
        help="dni_critic: weight of the critic's loss-value term (dni_critic_grad: 0, the gradient term alone)",
    )  # fmt: skip
    rl = p.add_argument_group("delayed_cue (RL: impala, configs/impala/delayed_cue.yaml)")
    rl.add_argument("--delay", type=int, default=8, help="steps between the cue and the answer")
    rl.add_argument("--frames", type=int, default=3_000_000, help="env frames per run")
    rl.add_argument("--long-unroll", type=int, default=0, help="bptt_long's unroll; 0: delay + 1 (a whole episode)")
    rl.add_argument("--agent-lr", type=float, default=3e-4, help="the agent's Adam learning rate")
    rl.add_argument("--config", default=RL_CONFIG)
    rl.add_argument("--out", default="runs/bench_dni_delayed_cue", help="run dirs and delayed_cue.png")
    rl.add_argument("--jobs", type=int, default=2, help="runs in parallel (one core each)")
    p.add_argument("--verbose", action="store_true", help="progress and M's statistics every 100 updates (stderr)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m decoupled.runners.bench.dni")
    add_arguments(parser)
    bench_dni(parser.parse_args(sys.argv[1:]))
