"""`decoupled bench nav` (Mirowski et al. 2017, arXiv:1611.03673: the navigation agent without auxiliary tasks, with
D2, and with D1, D2 and L): the three methods' configs and nets, the goal-timing, F1 and position-probe measurements
of its evaluation on hand-made inputs, and the benchmark run for real at a tiny size through the command line."""

import json
import subprocess
import sys

import numpy as np
import pytest

from decoupled.runners.bench import BenchUsageError
from decoupled.runners.bench.nav_checks import binary_scores, goal_timing, goal_timing_summary, position_probe

CONFIG = "nav/nav_maze_small_static"


def _labyrinth():
    for module in ("vizdoom", "labmaze", "omg"):
        pytest.importorskip(module)


def test_each_method_builds_exactly_its_auxiliary_heads():
    _labyrinth()
    from decoupled.agents import get_agent
    from decoupled.envs import probe_spec
    from decoupled.runners.bench.learning import NAV_METHODS, _nav_method_config, _repo_path
    from decoupled.runners.training.config import load_config

    config = str(_repo_path(CONFIG))
    shipped = load_config(config)
    spec = probe_spec(shipped.env.backend, shipped.env.id, shipped.env.options())
    want = {"lstm": set(), "d2": {"depth_lstm"}, "d1d2l": {"depth_conv", "depth_lstm", "loop_closure"}}
    assert set(NAV_METHODS) == set(want)
    nets = {}
    for method, heads in want.items():
        cfg = _nav_method_config(config, [], method)
        net = nets[method] = get_agent(cfg.agent_name).make_net(spec, cfg.agent)
        built = set(net.aux.heads) if net.aux is not None else set()
        assert built == heads, method
        assert net.unreal is None, method  # no UNREAL replay task either
    assert nets["lstm"].aux is None  # no heads at all: its speed is the plain agent's
    assert _nav_method_config(config, [], "d2").agent.aux.depth_lstm.cost == shipped.agent.aux.depth_lstm.cost
    # the lstm net is the d1d2l net without its heads: the same parameters otherwise
    size = {m: sum(p.numel() for p in n.parameters()) for m, n in nets.items()}
    assert size["lstm"] == size["d1d2l"] - sum(p.numel() for p in nets["d1d2l"].aux.parameters())
    # a user override is applied before the method's, so it cannot give the plain agent a head
    lstm = _nav_method_config(config, ["agent.aux.depth_lstm.cost=3.0"], "lstm")
    assert lstm.agent.aux.tasks() == {}
    assert _nav_method_config(config, ["agent.aux.depth_lstm.cost=3.0"], "d2").agent.aux.depth_lstm.cost == 3.0
    with pytest.raises(BenchUsageError, match="auxiliary tasks"):  # a config without L is no D1D2L agent
        _nav_method_config(config, ["agent.aux.loop_closure=null"], "d1d2l")


def test_goal_timing_separates_the_first_goal_from_the_later_ones():
    assert goal_timing([100, 150, 180]) == {"goals": 3, "first": 100, "later_mean": 40.0}
    assert goal_timing([180, 100, 150]) == {"goals": 3, "first": 100, "later_mean": 40.0}
    assert goal_timing([]) == {"goals": 0, "first": None, "later_mean": None}
    assert goal_timing([70]) == {"goals": 1, "first": 70, "later_mean": None}
    summary = goal_timing_summary([[100, 150, 180], [], [60, 80]])
    assert summary["episodes"] == 3 and summary["goals_mean"] == pytest.approx(5 / 3, abs=1e-3)
    assert summary["episodes_with_goal"] == 2 and summary["episodes_with_later_goal"] == 2
    assert summary["first_goal_steps"] == 80.0  # (100 + 60) / 2
    assert summary["later_goal_steps"] == 30.0  # per-episode means 40 and 20, averaged
    assert summary["first_over_later"] == pytest.approx(80 / 30, abs=1e-3)


def test_binary_scores_on_a_hand_made_pair():
    pred = np.array([1, 1, 0, 0, 1, 0, 1], bool)
    label = np.array([1, 0, 1, 0, 1, 0, 0], bool)  # tp 2, fp 2, fn 1, tn 2
    out = binary_scores(pred, label)
    assert (out["tp"], out["fp"], out["fn"], out["n"]) == (2, 2, 1, 7)
    assert out["precision"] == pytest.approx(0.5)
    assert out["recall"] == pytest.approx(2 / 3, abs=1e-4)
    assert out["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3), abs=1e-4)  # 4/7
    assert out["label_rate"] == pytest.approx(3 / 7, abs=1e-4) and out["pred_rate"] == pytest.approx(4 / 7, abs=1e-4)
    none = binary_scores(np.zeros(5, bool), np.zeros(5, bool))
    assert none["precision"] is None and none["recall"] is None and none["f1"] is None
    missed = binary_scores(np.zeros(4, bool), np.array([1, 0, 0, 1], bool))
    assert missed["precision"] is None and missed["recall"] == 0.0 and missed["f1"] == 0.0


def _blobs(rng: np.random.Generator, means: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    y = rng.choice(len(means), size=n, p=[0.4, 0.2, 0.2, 0.2])  # an imbalanced majority: 0.4, not chance 0.25
    return means[y] + rng.normal(size=(n, means.shape[1])), y


def test_position_probe_decodes_separable_classes_and_only_the_majority_from_shuffled_ones():
    rng = np.random.default_rng(0)
    means = np.random.default_rng(1).normal(size=(4, 20)) * 3.0
    (x_tr, y_tr), (x_te, y_te) = _blobs(rng, means, 1500), _blobs(rng, means, 1500)
    cells = np.array([3, 1005, 2007, 4001])  # cell ids, not 0..K-1
    good = position_probe(x_tr, cells[y_tr], x_te, cells[y_te])
    assert good["accuracy"] > 0.95 and good["classes"] == 4
    assert 0.35 < good["majority_accuracy"] < 0.45 and good["test_unseen_share"] == 0.0
    shuffled = position_probe(x_tr, rng.permutation(y_tr), x_te, rng.permutation(y_te))
    assert abs(shuffled["accuracy"] - shuffled["majority_accuracy"]) < 0.05, shuffled
    # a test cell the training never visited counts as an error
    unseen = position_probe(x_tr, y_tr, x_te, np.where(y_te == 3, 9, y_te))
    assert unseen["test_unseen_share"] == pytest.approx(float((y_te == 3).mean()), abs=1e-4)
    assert unseen["accuracy"] <= 1.0 - unseen["test_unseen_share"] + 1e-9


def test_bench_nav_runs_end_to_end_and_resumes_without_training_again(tmp_path):
    _labyrinth()
    out = tmp_path / "bn"
    cmd = [sys.executable, "-m", "decoupled", "bench", "nav", "--configs", CONFIG, "--methods", "lstm,d1d2l",
           "--seeds", "1", "--frames", "2400", "--eval-episodes", "2", "--jobs", "2", "--out", str(out),
           "--override", "runner.log_every_env_frames=800", "--override", "env.episode_frames=400",
           "--override", "env.num_envs=2"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    runs = {x["method"]: x for x in lines if "what" not in x}
    methods = {x["method"]: x for x in lines if x.get("what") == "method"}
    (summary,) = [x for x in lines if x.get("what") == "summary"]
    assert set(runs) == set(methods) == {"lstm", "d1d2l"}
    for m, run in runs.items():
        ev = run["nav_eval"]
        assert run["bench"] == "nav" and run["name"] == "nav_maze_small_static" and run["seed"] == 0
        assert ev["episodes"] == 2 and len(ev["goal_steps_per_episode"]) == 2 and ev["eval_seed"] == 20_000
        assert run["eval_mean"] == pytest.approx(np.mean(ev["returns"]), abs=1e-3)
        # 400-frame episodes at frame skip 4: 100 agent steps, every goal within them
        assert all(0 < s <= 100 for steps in ev["goal_steps_per_episode"] for s in steps), m
        assert ev["probe"]["train_episodes"] == 1 and ev["probe"]["test_episodes"] == 1
        for probe in ("h2", "h1h2"):
            assert ev["probe"][probe]["train_n"] == ev["probe"][probe]["test_n"] == 100
            assert 0.0 <= ev["probe"][probe]["accuracy"] <= 1.0
    assert "depth_lstm_accuracy" not in runs["lstm"]["nav_eval"] and "loop_closure" not in runs["lstm"]["nav_eval"]
    d1d2l = runs["d1d2l"]["nav_eval"]
    assert 0.0 <= d1d2l["depth_lstm_accuracy"] <= 1.0 and 0.0 <= d1d2l["depth_conv_accuracy"] <= 1.0
    assert d1d2l["loop_closure"]["n"] == 200
    assert "median_depth_lstm_accuracy" in methods["d1d2l"] and "median_loop_f1" in methods["d1d2l"]
    assert "aux/depth_lstm/accuracy" in methods["d1d2l"]["aux_nav"] and "aux_nav" not in methods["lstm"]
    medians = summary["medians"]["nav_maze_small_static"]
    assert medians["d1d2l"]["median_probe_h2_accuracy"] == methods["d1d2l"]["median_probe_h2_accuracy"]
    assert "median_eval_mean" in medians["lstm"] and "median_depth_lstm_accuracy" not in medians["lstm"]
    for figure in ("nav_maze_small_static.png", "nav_maze_small_static_aux.png"):
        assert (out / figure).stat().st_size > 10_000, figure
    # a second run reuses the finished runs and their evaluations: nothing trained, the same numbers
    ckpts = {p: p.stat().st_mtime_ns for p in out.rglob("ckpt-*")}
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=150)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "training nav" in proc.stdout + proc.stderr and "training nav" not in again.stdout + again.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("ckpt-*")} == ckpts
    rerun = {x["method"]: x for x in map(json.loads, filter(None, again.stdout.splitlines())) if "what" not in x}
    assert {m: r["nav_eval"] for m, r in rerun.items()} == {m: r["nav_eval"] for m, r in runs.items()}


def test_bench_nav_refuses_unknown_methods_and_non_nav_configs(tmp_path):
    base = [sys.executable, "-m", "decoupled", "bench", "nav", "--out", str(tmp_path / "x"), "--seeds", "1"]
    proc = subprocess.run([*base, "--methods", "lstm,d3"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown method" in proc.stderr and "d3" in proc.stderr
    proc = subprocess.run([*base, "--configs", "impala/catch"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "nav" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "x").exists()
