"""`decoupled bench throughput`, run for real but briefly: every kind of measurement once, JSON lines and ratios."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_throughput_prints_one_line_per_measurement_and_the_ratios(tmp_path):
    pytest.importorskip("envpool")
    pytest.importorskip("stable_baselines3")
    cmd = [sys.executable, "-m", "runners.cli", "bench", "throughput", "--seconds", "3", "--warmup", "3"]
    cmd += ["--repeats", "1", "--only", "env,impala_ff,sb3_a2c,breakdown"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=400)  # configs found from any cwd
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    by_what = {line["what"]: line for line in lines}
    assert set(by_what) == {"env", "impala_ff", "sb3_a2c", "breakdown", "ratios"}
    for what in ("env", "impala_ff", "sb3_a2c"):
        assert by_what[what]["median_steps_per_s"] > 0 and by_what[what]["peak_rss_mb_max"] > 0
    assert by_what["impala_ff"]["mode"] == "async"
    parts = by_what["breakdown"]
    assert parts["sum_ms_per_step"] == pytest.approx(
        sum(parts[f"{k}_ms_per_step"] for k in ("env_step", "act_forward_sample", "learn_update", "rollout_copies"))
        + parts["param_publish_pull_ms_per_step"],
        abs=1e-3,
    )
    ratios = by_what["ratios"]
    assert ratios["impala_ff/sb3_a2c"] == pytest.approx(
        by_what["impala_ff"]["median_steps_per_s"] / by_what["sb3_a2c"]["median_steps_per_s"], rel=1e-2
    )


def test_bench_throughput_rejects_an_unknown_measurement():
    proc = subprocess.run(
        [sys.executable, "-m", "runners.cli", "bench", "throughput", "--only", "env,warp_drive"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "warp_drive" in proc.stderr
