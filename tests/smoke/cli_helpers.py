"""Helpers of the smoke tests that drive the `decoupled` CLI in a subprocess, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m decoupled ARGS` from the repo root (no W&B service inherited from the test process)."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return subprocess.run([sys.executable, "-m", "decoupled", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)  # fmt: skip


def last_frames(run: Path) -> int:
    """The largest env_frames a run's metrics.jsonl records."""
    return max(json.loads(line)["env_frames"] for line in (run / "metrics.jsonl").read_text().splitlines())
