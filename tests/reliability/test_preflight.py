"""The checks before start refuse what cannot run, and nothing that can: every shipped config passes them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from decoupled.runners.training.config import load_config
from decoupled.runners.training.preflight import memory_estimate, preflight

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_passes_the_checks_before_start(name: str) -> None:
    preflight(load_config(ROOT / "configs" / name))


def test_the_memory_estimate_counts_parameters_optimiser_and_rollouts() -> None:
    cfg = load_config(ROOT / "configs" / "impala" / "breakout.yaml")

    class Spec:
        obs_shape = (4, 84, 84)

    parts = memory_estimate(cfg, Spec(), num_params=1_000_000)
    assert parts["parameters, gradients and optimiser state"] == 16_000_000
    steps = (cfg.runner.unroll_length + 1) * cfg.env.num_envs * (cfg.runner.queue_size + 2)
    assert parts["rollouts in flight"] == 4 * 4 * 84 * 84 * steps


def test_a_setting_that_does_nothing_is_warned_about_and_accepted() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "decoupled", "config", "impala/cartpole", "agent.lstm_size=64"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "warning: agent.lstm_size=64 does nothing with agent.core=none" in out.stderr
