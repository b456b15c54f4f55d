"""`decoupled bench ...`: speed measurements, printed as one JSON line per measurement.

Benchmarks, not tests: they measure on whatever machine runs them and assert nothing. Record their output in
BENCHMARKS.md with the command, the machine and the date. Each measurement repeats `--repeats` times and reports
the median, because the machines we run on are shared and noisy; peers are measured in the same run so that
ratios, not absolute numbers, carry the comparison.

    decoupled bench labyrinth [--task T] [--num-envs 4] [--seconds 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np


def emit(record: dict[str, Any]) -> dict[str, Any]:
    print(json.dumps(record), flush=True)
    return record


def _steps_per_second(step_fn, batch: int, seconds: float, warmup: int = 20) -> float:
    for _ in range(warmup):
        step_fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step_fn()
        n += 1
    return n * batch / (time.perf_counter() - t0)


def bench_labyrinth(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Agent steps/s of the labyrinth (RGB + depth + pose, frame skip 4) in worker processes, against one env in
    this process (the peer: what a single env costs), and the maze generator's time per maze."""
    import tempfile

    from envs import make_vec_env
    from envs.labyrinth import LabyrinthEnv, generate_maze, write_wad

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in ("01", "02", "03"):
            gen, total = [], []
            for r in range(args.repeats):
                t0 = time.perf_counter()
                layouts = [generate_maze(size, 1000 * r + k) for k in range(20)]
                t1 = time.perf_counter()
                for k, layout in enumerate(layouts):
                    write_wad([layout], f"{tmp}/m{k}.wad")
                t2 = time.perf_counter()
                gen.append((t1 - t0) / 20 * 1000)
                total.append((t2 - t0) / 20 * 1000)
            record = {"bench": "labyrinth", "what": "maze_ms", "size": size}
            record["generate_median"] = round(statistics.median(gen), 3)
            record["generate_and_write_wad_median"] = round(statistics.median(total), 3)
            out.append(emit(record))

    rng = np.random.default_rng(0)
    single = []
    env = LabyrinthEnv(args.task)
    try:
        env.reset(seed=0)

        def one() -> None:
            _, _, te, tr, _ = env.step(int(rng.integers(8)))
            if te or tr:
                env.reset()

        for _ in range(args.repeats):
            single.append(_steps_per_second(one, 1, args.seconds))
    finally:
        env.close()
    out.append(
        emit(
            {
                "bench": "labyrinth",
                "what": "steps_per_s_single_env_in_process",
                "task": args.task,
                "median": round(statistics.median(single), 1),
                "runs": [round(x, 1) for x in single],
            }
        )
    )

    vec = []
    venv = make_vec_env("labyrinth", args.task, args.num_envs, 0)
    try:
        venv.reset()
        n = venv.num_envs

        def many() -> None:
            venv.step(rng.integers(0, 8, n))

        for _ in range(args.repeats):
            vec.append(_steps_per_second(many, n, args.seconds))
    finally:
        venv.close()
    med = statistics.median(vec)
    out.append(
        emit(
            {
                "bench": "labyrinth",
                "what": "steps_per_s_vec_env_workers",
                "task": args.task,
                "num_envs": args.num_envs,
                "median": round(med, 1),
                "runs": [round(x, 1) for x in vec],
                "ratio_to_single_env": round(med / statistics.median(single), 2),
            }
        )
    )
    return out


def add_parser(sub: Any) -> None:
    b = sub.add_parser("bench", help="speed benchmarks (JSON lines; record them in BENCHMARKS.md)")
    bsub = b.add_subparsers(dest="bench", required=True)
    lab = bsub.add_parser("labyrinth", help="labyrinth env steps/s (workers vs one env) and maze generation time")
    lab.add_argument("--task", default="nav_maze_static_01")
    lab.add_argument("--num-envs", type=int, default=4)
    lab.add_argument("--seconds", type=float, default=10.0, help="per repeat")
    lab.add_argument("--repeats", type=int, default=3)
    lab.set_defaults(func=lambda a: (bench_labyrinth(a), 0)[1])
