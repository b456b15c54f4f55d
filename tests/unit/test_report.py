"""Unit tests for the report: HNS per game, aggregates and CIs against rliable, the files and plots, errors.

Why: the report is what papers are compared on. The aggregates must be rliable's (same estimator, same stratified
bootstrap), every normalised number must carry the score table's id, fewer than 5 seeds must be flagged, and bad
inputs (missing files, games without human scores, runs missing games) must fail with a message that says why.
"""

from __future__ import annotations

import csv
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

pytest.importorskip("rliable")

from rliable import library as rly  # noqa: E402
from rliable import metrics  # noqa: E402

from decoupled.envs.atari_data import ATARI_SCORES, TABLE_ID, UnknownGameError  # noqa: E402
from decoupled.runners.evaluation.report import (  # noqa: E402
    aggregate_fn,
    build_report,
    check_comparable,
    group_runs,
    hns_matrices,
    load_score_file,
    log_to_wandb,
    parse_inputs,
)

GAMES = ["Alien", "Breakout", "Pong", "Qbert"]


def _write(
    path: Path,
    scores: dict[str, list[float]],
    label: str | None = None,
    protocol: str = "dqn_noop30",
    backend: str = "envpool",
    greedy: bool = False,
) -> str:
    path.mkdir(parents=True, exist_ok=True)
    doc = {
        "games": {g: {"episode_scores": s, "episode_frames": [4000] * len(s)} for g, s in scores.items()},
        "protocol": {"protocol": protocol, "max_episode_frames": 108_000, "backend": backend},
        "table_id": TABLE_ID,
        "label": label,
        "greedy": greedy,
    }
    (path / "scores.json").write_text(json.dumps(doc))
    return str(path / "scores.json")


def _hns_to_score(game: str, hns: float) -> float:
    random, human = ATARI_SCORES[game]
    return random + hns * (human - random)


@pytest.fixture
def two_agents(tmp_path: Path) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """Agent `good` with 5 runs and `base` with 3 runs on 4 games; the HNS of every run is known."""
    rng = np.random.default_rng(0)
    good = rng.uniform(0.2, 3.0, (5, len(GAMES)))
    base = rng.uniform(-0.1, 0.8, (3, len(GAMES)))
    files_good, files_base = [], []
    for k, row in enumerate(good):
        # two episodes per game whose mean is the run's score
        s = {g: [_hns_to_score(g, h) - 1.0, _hns_to_score(g, h) + 1.0] for g, h in zip(GAMES, row)}
        files_good.append(_write(tmp_path / f"good{k}", s, "good"))
    for k, row in enumerate(base):
        files_base.append(_write(tmp_path / f"base{k}", {g: [_hns_to_score(g, h)] for g, h in zip(GAMES, row)}, "x"))
    return files_good, files_base, good, base


def test_hns_matrix_on_known_values(tmp_path: Path) -> None:
    f = _write(tmp_path / "a", {"Breakout": [1.7, 30.5, 59.3], "Pong": [14.6], "Alien": [227.8]})
    agents, games = group_runs([load_score_file(f)])
    m = hns_matrices(agents, games)
    assert games == ["Breakout", "Pong", "Alien"]
    np.testing.assert_allclose(m[next(iter(m))], [[1.0, 1.0, 0.0]])  # Breakout: mean of 0, 1, 2


def test_aggregates_and_cis_agree_with_rliable(two_agents, tmp_path: Path) -> None:
    files_good, files_base, good, base = two_agents
    runs = parse_inputs([",".join(files_good), "base=" + ",".join(files_base)])
    reps, seed = 300, 7
    with pytest.warns(UserWarning, match="base: 3 run"):
        summary = build_report(runs, tmp_path / "report", reps=reps, seed=seed)
    assert summary["table_id"] == TABLE_ID and summary["games"] == GAMES
    assert [w for w in summary["warnings"] if "good" in w] == []  # 5 runs: no warning
    # point estimates: rliable's estimators on the same matrices, and the definitions written out
    for label, m in (("good", good), ("base", base)):
        agg = summary["agents"][label]["aggregates"]
        np.testing.assert_allclose(
            [agg[k]["value"] for k in ("Median", "IQM", "Mean", "Optimality Gap")], aggregate_fn(m), rtol=1e-9
        )
        assert agg["IQM"]["value"] == pytest.approx(metrics.aggregate_iqm(m))
        assert agg["IQM"]["value"] == pytest.approx(scipy.stats.trim_mean(m.ravel(), 0.25))
        assert agg["Mean"]["value"] == pytest.approx(m.mean())
        assert agg["Median"]["value"] == pytest.approx(np.median(m.mean(0)))
        assert agg["Optimality Gap"]["value"] == pytest.approx(1.0 - np.minimum(m, 1.0).mean())
    # CIs: rliable's stratified bootstrap with the same draws (it samples from numpy's global RNG)
    np.random.seed(seed)  # noqa: NPY002
    point, ci = rly.get_interval_estimates({"good": good, "base": base}, aggregate_fn, reps=reps)
    for label in ("good", "base"):
        got = np.array([summary["agents"][label]["aggregates"][k]["ci"] for k in ("Median", "IQM", "Mean")]).T
        np.testing.assert_allclose(got, ci[label][:, :3], rtol=1e-9)
        lo, hi = summary["agents"][label]["aggregates"]["IQM"]["ci"]
        assert lo <= point[label][1] <= hi


def test_report_files_and_plots(two_agents, tmp_path: Path) -> None:
    files_good, files_base, good, _ = two_agents
    out = tmp_path / "report"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_report(parse_inputs([",".join(files_good), "base=" + ",".join(files_base)]), out, reps=100)
    for name in ("hns_per_game.png", "aggregate_intervals.png", "performance_profile.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000, name
    rows = list(csv.DictReader(open(out / "score_matrix.csv")))
    assert len(rows) == 8 and {r["table_id"] for r in rows} == {TABLE_ID}
    np.testing.assert_allclose([[float(r[g]) for g in GAMES] for r in rows[:5]], good, rtol=1e-5)
    per_game = list(csv.DictReader(open(out / "per_game.csv")))
    assert len(per_game) == 8 and {r["table_id"] for r in per_game} == {TABLE_ID}
    pong = next(r for r in per_game if r["agent"] == "good" and r["game"] == "Pong")
    assert float(pong["hns"]) == pytest.approx(good[:, 2].mean(), rel=1e-5)
    agg = list(csv.DictReader(open(out / "aggregates.csv")))
    assert {(r["agent"], r["metric"]) for r in agg} >= {("good", "IQM"), ("base", "Optimality Gap")}
    assert all(r["table_id"] == TABLE_ID for r in agg)
    md = (out / "report.md").read_text()
    assert TABLE_ID in md and "| good | 5 |" in md and "base: 3 run(s)" in md
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["images"]) == {"hns_per_game", "aggregate_intervals", "performance_profile"}


def test_atari5_estimate_in_summary(tmp_path: Path) -> None:
    games = ["BattleZone", "DoubleDunk", "NameThisGame", "Phoenix", "Qbert"]
    f = _write(tmp_path / "a", {g: [_hns_to_score(g, 1.0)] for g in games})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = build_report([load_score_file(f)], tmp_path / "r", reps=50)
    est = next(iter(summary["agents"].values()))["atari5_median_estimate"]
    assert est == pytest.approx(0.8505, abs=1e-3)


def test_bad_inputs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no scores file"):
        parse_inputs([str(tmp_path / "nope")])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "scores.json").write_text(json.dumps({"games": {}}))
    with pytest.raises(ValueError, match="has no games"):
        parse_inputs([str(tmp_path / "bad")])
    minatar = _write(tmp_path / "m", {"breakout": [3.0]})
    with pytest.raises(UnknownGameError, match="'breakout'.*Breakout"):
        group_runs(parse_inputs([minatar]))
    a = _write(tmp_path / "a", {"Pong": [0.0], "Breakout": [2.0]}, "a")
    b = _write(tmp_path / "b", {"Pong": [0.0]}, "b")
    with pytest.raises(ValueError, match="no scores on Breakout.*--games"):
        group_runs(parse_inputs([a, b]))
    agents, games = group_runs(parse_inputs([a, b]), ["Pong"])
    assert games == ["Pong"] and set(agents) == {"a", "b"}
    with pytest.raises(ValueError, match="given twice"):
        parse_inputs([f"x={a},{a}"])


@pytest.mark.filterwarnings("ignore:.*run\\(s\\):UserWarning")
def test_different_protocols_are_flagged(tmp_path: Path) -> None:
    a = _write(tmp_path / "a", {"Pong": [0.0]}, "a", protocol="dqn_noop30")
    b = _write(tmp_path / "b", {"Pong": [0.0]}, "b", protocol="machado2018")
    with pytest.warns(UserWarning, match="different protocols"):
        build_report(parse_inputs([a, b]), tmp_path / "r", reps=20)


@pytest.mark.filterwarnings("ignore:.*run\\(s\\):UserWarning")
def test_different_backends_and_greedy_vs_sampled_are_flagged(tmp_path: Path) -> None:
    # envpool and gymnasium count the cap and the no-op starts differently, and argmax play scores differently
    # from sampled play: a report mixing them warns (it does not fail, like the protocol and cap checks).
    a = _write(tmp_path / "a", {"Pong": [0.0]}, "a", backend="envpool", greedy=False)
    b = _write(tmp_path / "b", {"Pong": [0.0]}, "b", backend="gymnasium", greedy=True)
    c = _write(tmp_path / "c", {"Pong": [0.0]}, "c", backend="envpool", greedy=False)
    runs = parse_inputs([a, b, c])
    assert (runs[0].backend, runs[0].greedy, runs[1].backend, runs[1].greedy) == ("envpool", False, "gymnasium", True)
    assert check_comparable([runs[0], runs[2]]) == []
    notes = check_comparable(runs)
    assert len(notes) == 2
    assert "different backends: ['envpool', 'gymnasium']" in notes[0]
    assert "greedy and sampled" in notes[1] and "greedy (argmax)" in notes[1] and "sampled" in notes[1]
    with pytest.warns(UserWarning) as caught:
        summary = build_report(runs, tmp_path / "r", reps=20)
    messages = [str(w.message) for w in caught]
    assert any("different backends" in m for m in messages) and any("greedy and sampled" in m for m in messages)
    assert set(notes) <= set(summary["warnings"])
    # a file that does not record greedy (older evals) is flagged too, as "not recorded"
    doc = json.loads(Path(c).read_text())
    del doc["greedy"]
    Path(c).write_text(json.dumps(doc))
    assert any("not recorded" in n for n in check_comparable(parse_inputs([a, c])))


def test_report_goes_to_wandb_offline(two_agents, tmp_path: Path) -> None:
    from decoupled.runners.training.wandb_reader import read_run

    files_good, _, _, _ = two_agents
    out = tmp_path / "report"
    summary = build_report(parse_inputs([",".join(files_good)]), out, reps=50)  # 5 runs: no warning
    mode = log_to_wandb(summary, out, "reporttest1", group="g", mode="offline")
    assert mode == "offline"
    [run_file] = out.glob("wandb/offline-run-*/run-*.wandb")
    # wandb-core may still be writing its transaction log when finish() returns (seen here: a 7-byte file read
    # right after finish, the whole run 0.2 s later): wait for the exit record
    t0 = time.time()
    run = read_run(run_file)
    while run["exit_code"] is None and time.time() - t0 < 20:
        time.sleep(0.2)
        run = read_run(run_file)
    assert run["run_id"] == "reporttest1"
    logged = {k.split(".")[0] for row in run["history"] for k in row}  # media entries are nested (key.path, ...)
    assert {"report/aggregates", "report/per_game", "report/hns_per_game", "report/performance_profile"} <= logged
    assert run["summary"]["report/table_id"] == TABLE_ID
    assert run["summary"]["report/good/iqm"] == pytest.approx(summary["agents"]["good"]["aggregates"]["IQM"]["value"])


def test_envs_without_a_reference_table_get_raw_score_aggregates_in_seconds(tmp_path):
    """MinAtar or Catch score files: median, IQM and mean of raw scores with rliable's CIs, no table id, no
    optimality gap; an Atari game among them must be spelt as in the table (a mix is refused with the hint)."""
    files = [_write(tmp_path / f"s{i}", {"breakout": [10.0 + i, 12.0 + i]}, label="impala") for i in range(5)]
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = build_report(parse_inputs([",".join(files)]), tmp_path / "r")  # the default reps
    assert time.time() - t0 < 30
    assert summary["score"] == "raw" and summary["table_id"] is None and summary["metrics"] == ["Median", "IQM", "Mean"]
    agg = summary["agents"]["impala"]["aggregates"]
    assert agg["Mean"]["value"] == pytest.approx(np.mean([11.0 + i for i in range(5)]))
    assert agg["Mean"]["ci"][0] <= agg["Mean"]["value"] <= agg["Mean"]["ci"][1]
    assert (tmp_path / "r" / "scores_per_game.png").is_file() and "Raw scores" in (
        tmp_path / "r" / "report.md"
    ).read_text()
    mixed = _write(tmp_path / "mix", {"Pong": [1.0], "Breakuot": [2.0]}, label="x")
    with pytest.raises(UnknownGameError, match="Breakout"):
        build_report(parse_inputs([mixed]), tmp_path / "m", reps=20)
