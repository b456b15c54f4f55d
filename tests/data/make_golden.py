"""Write tests/data/golden_runs.npz: the final parameters of three short serial runs (Catch with IMPALA, the
delayed-cue task with a dni_lstm core, Catch with UNREAL), so that a refactor of the runner can be checked to
leave training bit-identical (tests/smoke/test_golden.py). Rerun it only on purpose, when a change is meant to
alter the updates, and say so in the commit."""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
# name -> (config, overrides): a few updates each, serial mode, one torch thread
RUNS = {
    "impala_catch": ("configs/impala/catch.yaml", ["runner.total_env_frames=3200"]),
    "impala_dni_delayed_cue": (
        "configs/impala/delayed_cue.yaml",
        ["agent.core=dni_lstm", "runner.total_env_frames=2560", "runner.torch_threads=1", "env.num_envs=8"],
    ),
    "unreal_catch": ("configs/unreal/catch.yaml", ["runner.total_env_frames=3200", "runner.torch_threads=1"]),
}
COMMON = ["runner.mode=serial", "wandb.mode=disabled", "runner.log_every_env_frames=100000000"]


def final_parameters(name: str) -> dict[str, np.ndarray]:
    from decoupled.runners.training.checkpoint import CheckpointManager
    from decoupled.runners.training.config import load_config
    from decoupled.runners.training.train import train

    config, overrides = RUNS[name]
    cfg = load_config(ROOT / config, overrides + COMMON)
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, Path(tmp))
        state, _ = CheckpointManager(Path(tmp) / "checkpoints").load_latest()
    return {k: v.numpy().copy() for k, v in state["net"].items()}


def digest(params: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(params):
        h.update(k.encode())
        h.update(np.ascontiguousarray(params[k]).tobytes())
    return h.hexdigest()


def main() -> None:
    out: dict[str, np.ndarray] = {"cpu_capability": np.array(torch.backends.cpu.get_cpu_capability())}
    for name in RUNS:
        params = final_parameters(name)
        out[f"{name}/digest"] = np.array(digest(params))
        for k, v in params.items():
            out[f"{name}/{k}"] = v
        print(name, digest(params), file=sys.stderr)
    np.savez_compressed(Path(__file__).with_name("golden_runs.npz"), **out)


if __name__ == "__main__":
    main()
