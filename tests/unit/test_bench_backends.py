"""`decoupled bench backends`: the statistics it decides with (against scipy's own tests and a simulation), and the
command run for real on two short capped cells per backend, resumed from its saved cells."""

import json
import subprocess
import sys

import numpy as np
import pytest

stats = pytest.importorskip("scipy.stats")

from decoupled.runners.bench.backends import compare, holm  # noqa: E402


def test_compare_matches_welchs_t_test_and_its_interval():
    rng = np.random.default_rng(0)
    x, y = rng.normal(0.0, 1.0, 80), rng.normal(0.5, 2.0, 50)
    r = compare(list(x), list(y))
    ref = stats.ttest_ind(y, x, equal_var=False)
    assert r["p_mean"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert r["diff"] == pytest.approx(y.mean() - x.mean())
    ci = ref.confidence_interval(0.95)
    assert (r["ci95_low"], r["ci95_high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert r["n_ref"] == 80 and r["n_other"] == 50


def test_compare_tells_a_shift_from_none_and_the_distribution_test_sees_a_change_of_shape():
    rng = np.random.default_rng(1)
    base = rng.integers(-21, -18, 400).astype(float)
    same = compare(list(base[:200]), list(base[200:]))
    assert same["p_mean"] > 0.01 and same["p_dist"] > 0.01
    shifted = compare(list(base[:200]), list(base[200:] + 1.0))
    assert shifted["p_mean"] < 1e-6 and shifted["p_dist"] <= 0.001
    # Same mean, different spread: the t-test cannot see it, Anderson-Darling does.
    wide = np.concatenate([np.full(100, -22.0), np.full(100, -18.0)])
    spread = compare(list(np.full(200, -20.0) + rng.normal(0, 0.05, 200).round(1)), list(wide))
    assert spread["p_mean"] > 0.05 and spread["p_dist"] <= 0.001
    assert compare([3.0, 3.0], [3.0, 3.0])["p_mean"] == 1.0
    assert compare([3.0, 3.0], [4.0, 4.0])["p_mean"] == 0.0
    with pytest.raises(ValueError, match="at least 2 episodes"):
        compare([1.0], [1.0, 2.0])


def test_the_detectable_shift_is_detected_four_times_in_five():
    """`mde80` is the mean shift Welch's test at 5% rejects with 80% power: simulate it."""
    rng = np.random.default_rng(2)
    n, sd = 200, 0.7
    mde = compare(list(rng.normal(0, sd, n)), list(rng.normal(0, sd, n)))["mde80"]
    x = rng.normal(0.0, sd, (4000, n))
    y = rng.normal(mde, sd, (4000, n))
    power = float((stats.ttest_ind(y, x, axis=1, equal_var=False).pvalue < 0.05).mean())
    assert 0.75 < power < 0.85
    assert mde == pytest.approx(2.8 * sd * np.sqrt(2 / n), rel=0.1)


def test_holm_adjusts_step_down_and_keeps_the_order():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


@pytest.mark.slow
def test_bench_backends_plays_both_backends_compares_and_reuses_its_cells(tmp_path):
    pytest.importorskip("envpool")
    pytest.importorskip("ale_py")
    pytest.importorskip("cv2")
    cmd = [sys.executable, "-m", "decoupled", "bench", "backends", "--games", "Pong", "--protocols",
           "dqn_noop30,machado2018", "--episodes", "2", "--num-envs", "2", "--max-episode-frames", "400",
           "--jobs", "1", "--out", str(tmp_path / "b")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    rows = [r for r in lines if r["what"] == "episode score"]
    assert {r["protocol"] for r in rows} == {"dqn_noop30", "machado2018"}
    for r in rows:
        assert r["n_ref"] == r["n_other"] == 2 and r["verdict"] in ("same", "differ")
        assert r["frames_ref"] <= 400 and r["frames_other"] <= 400
    cells = sorted(p.name for p in (tmp_path / "b" / "cells").iterdir())
    assert cells == [f"Pong_{p}_{b}.json" for p in ("dqn_noop30", "machado2018") for b in ("atari", "atari_gym")]
    saved = json.loads((tmp_path / "b" / "cells" / "Pong_dqn_noop30_atari_gym.json").read_text())
    assert saved["settings"]["backend"] == "gymnasium" and len(saved["scores"]) == 2
    assert "| Pong | machado2018 |" in (tmp_path / "b" / "backends.md").read_text()
    assert (tmp_path / "b" / "backends.png").stat().st_size > 0
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "to play" not in again.stdout
    assert [json.loads(line) for line in again.stdout.splitlines() if line.startswith("{")][:2] == rows


def test_bench_backends_rejects_an_unknown_protocol():
    proc = subprocess.run(
        [sys.executable, "-m", "decoupled", "bench", "backends", "--protocols", "dqn_noop30,nature2099"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0 and "nature2099" in proc.stderr
