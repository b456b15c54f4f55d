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
    # 5 s, not 3: on a loaded machine async impala once logged fewer than the two metrics records a rate needs in 3 s
    cmd = [sys.executable, "-m", "decoupled", "bench", "throughput", "--seconds", "5", "--warmup", "3"]
    cmd += ["--repeats", "1", "--only", "env,impala_ff,sb3_a2c,breakdown"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=400)  # configs found from any cwd
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    by_what = {line["what"]: line for line in lines}
    assert set(by_what) == {"env", "impala_ff", "sb3_a2c", "breakdown", "ratios"}
    for what in ("env", "impala_ff", "sb3_a2c"):
        assert by_what[what]["median_steps_per_s"] > 0 and by_what[what]["peak_rss_mb_max"] > 0
    assert by_what["impala_ff"]["mode"] == "async"
    ours = by_what["impala_ff"]  # where its actor's time went, and the CPU its process got (medians of its records)
    assert ours["actor_act_ms"] > 0 and ours["actor_env_wait_ms"] >= 0 and ours["process_cpu_share"] > 0
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


def _measured_pair(tmp_path, a: str, b: str, seconds: str, warmup: str) -> dict:
    """`bench throughput --only a,b` once, briefly: its lines by measurement, after checking both rates and the
    ratio line a/b."""
    cmd = [sys.executable, "-m", "decoupled", "bench", "throughput", "--seconds", seconds, "--warmup", warmup]
    proc = subprocess.run([*cmd, "--repeats", "1", "--only", f"{a},{b}"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=400)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_what = {line["what"]: line for line in map(json.loads, proc.stdout.splitlines())}
    assert by_what[a]["median_steps_per_s"] > 0 and by_what[b]["median_steps_per_s"] > 0
    assert by_what["ratios"][f"{a}/{b}"] == pytest.approx(
        by_what[a]["median_steps_per_s"] / by_what[b]["median_steps_per_s"], rel=1e-2
    )
    return by_what


@pytest.mark.slow
def test_bench_throughput_measures_distillation_with_and_without_the_sobolev_term(tmp_path):
    pytest.importorskip("envpool")
    by_what = _measured_pair(tmp_path, "distill_sobolev", "distill", "5", "3")
    assert by_what["distill"]["game"] == "Breakout"


def test_bench_throughput_measures_actor_processes_on_a_shared_machine(tmp_path):
    """`impala_ff_proc` (actor processes, shared memory) next to `impala_ff` with one busy neighbour process: its
    mode and actor count, its peak memory over its process tree, the steadiness of both, the neighbour noted."""
    pytest.importorskip("envpool")
    # a warm-up long enough for the actor process to start (torch's import) on a loaded machine
    cmd = [sys.executable, "-m", "decoupled", "bench", "throughput", "--seconds", "6", "--warmup", "8"]
    cmd += ["--repeats", "1", "--only", "impala_ff_proc,impala_ff", "--neighbours", "1"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_what = {line["what"]: line for line in map(json.loads, proc.stdout.splitlines())}
    ours = by_what["impala_ff_proc"]
    assert ours["mode"] == "processes" and ours["num_actors"] >= 1 and ours["median_steps_per_s"] > 0
    assert ours["peak_rss_mb_max"] > 300  # the learner's process and its actor process(es): a net and 16 envs each
    assert ours["actor_act_ms"] > 0 and ours["process_cpu_share"] > 0
    for what in ("impala_ff_proc", "impala_ff"):
        # None where a third of the 6-second window saw fewer than two updates (a loaded machine: seen in the full
        # suite beside a benchmark); the ratio itself is checked in tests/unit/test_bench_foreign.py
        steadiness = by_what[what]["last_third_over_first"]
        assert steadiness is None or steadiness > 0
    assert by_what["ratios"]["neighbours"] == 1
    assert by_what["ratios"]["impala_ff_proc/impala_ff"] == pytest.approx(
        ours["median_steps_per_s"] / by_what["impala_ff"]["median_steps_per_s"], rel=1e-2
    )
    # the neighbour is gone with the bench
    assert subprocess.run(["pgrep", "-f", "decoupled bench neighbour"], capture_output=True).returncode != 0


def test_a_training_neighbour_runs_while_the_block_does_and_leaves_nothing():
    """`--neighbour-kind train`: a second training of the throughput config, started for the block and gone after
    it with its run dir."""
    pytest.importorskip("envpool")
    import time
    from pathlib import Path

    from decoupled.runners.bench.commands import _Neighbours

    with _Neighbours(1, "train") as neighbours:
        time.sleep(3.0)
        (proc,) = neighbours.procs
        assert proc.poll() is None  # training
        tmp = Path(neighbours.tmp)
        assert "train" in proc.args and tmp.is_dir()
    assert proc.poll() is not None and not tmp.exists()


@pytest.mark.slow
def test_bench_throughput_measures_the_nav_agent_on_the_labyrinth(tmp_path):
    pytest.importorskip("vizdoom")
    by_what = _measured_pair(tmp_path, "nav", "impala_lstm_maze", "6", "4")
    for what in ("nav", "impala_lstm_maze", "ratios"):
        assert by_what[what]["game"] == "nav_maze_static_01"
    assert by_what["nav"]["num_envs"] == by_what["impala_lstm_maze"]["num_envs"] == 4


@pytest.mark.slow
def test_bench_labyrinth_measures_workers_with_shared_memory_and_pipes_against_one_env(tmp_path):
    pytest.importorskip("vizdoom")
    cmd = [sys.executable, "-m", "decoupled", "bench", "labyrinth", "--seconds", "0.5", "--repeats", "1"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_what = {line["what"]: line for line in map(json.loads, proc.stdout.splitlines())}
    one = by_what["steps_per_s_single_env_in_process"]["median"]
    for what, how in [("steps_per_s_vec_env_workers", "shared memory"), ("steps_per_s_vec_env_workers_pipes", "pipes")]:
        assert by_what[what]["observations"] == how and by_what[what]["median"] > 0
        assert by_what[what]["ratio_to_single_env"] == pytest.approx(by_what[what]["median"] / one, abs=0.01)


def test_bench_throughput_takes_the_ray_measurements_next_to_their_async_peer(monkeypatch, capsys):
    """`--only impala_ff,ray_2` parses and runs both (the workers stubbed: no Ray here); the ray line carries its
    per-rollout costs and the ratio to impala_ff."""
    from decoupled.runners.bench import commands
    from decoupled.runners.cli import build_parser

    seen = []

    def worker(a, timeout_s):
        seen.append(a["what"])
        out = {"steps_per_s": 100.0 if a["what"] == "impala_ff" else 80.0, "peak_rss_mb": 1.0, "mode": "async"}
        if a["what"] == "ray_2":
            out.update(mode="ray", num_actors=2, ray_rollout_bytes=123, ray_get_ms=0.5)
        return out

    monkeypatch.setattr(commands, "_run_worker", worker)
    args = build_parser().parse_args(["bench", "throughput", "--only", "impala_ff,ray_2", "--repeats", "1"])
    assert args.func(args) == 0
    assert seen == ["impala_ff", "ray_2"]
    lines = {x["what"]: x for x in map(json.loads, capsys.readouterr().out.splitlines())}
    assert lines["ray_2"]["mode"] == "ray" and lines["ray_2"]["ray_rollout_bytes"] == 123
    assert lines["ratios"]["ray_2/impala_ff"] == 0.8
    assert {"ray_1", "ray_2", "ray_4"} <= set(commands.THROUGHPUT_MEASUREMENTS)
    assert "runner.num_actors=4" in commands.TRAIN_VARIANTS["ray_4"]


def test_bench_throughput_rejects_an_unknown_measurement():
    proc = subprocess.run(
        [sys.executable, "-m", "decoupled", "bench", "throughput", "--only", "env,warp_drive"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "warp_drive" in proc.stderr


def test_bench_peer_trains_a_classic_control_teacher_a_student_can_distil_from(tmp_path):
    """`bench peer` on CartPole-v1: the zoo's PPO hyperparameters, one frame per step, whole-episode evaluation in
    scores.json; its model.zip loads as an SB3 teacher with the student env's spaces (agents/distill.py)."""
    pytest.importorskip("stable_baselines3")
    out = tmp_path / "peer"
    cmd = [sys.executable, "-m", "decoupled", "bench", "peer", "--algo", "ppo", "--game", "CartPole-v1"]
    cmd += ["--max-env-frames", "512", "--log-every-env-frames", "256", "--eval-episodes", "2", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["env_frames"] == 512 and info["hyperparameters"]["n_steps"] == 32 and info["planned_env_frames"] == 512
    frames = [json.loads(line)["env_frames"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert frames == [256, 512]  # 8 envs x 32 steps per rollout: a frame per step, no frame skip
    doc = json.loads((out / "eval" / "scores.json").read_text())
    episodes = doc["games"]["CartPole-v1"]
    assert doc["protocol"]["protocol"] == "gym" and len(episodes["episode_scores"]) == 2
    assert all(1 <= s <= 500 and s == f for s, f in zip(episodes["episode_scores"], episodes["episode_frames"]))
    from decoupled.agents.distill import load_sb3

    _, shape, actions, kind = load_sb3(str(out / "model.zip"), temperature=0.01)
    assert (shape, actions, kind) == ((4,), 2, "ppo")


@pytest.mark.slow
def test_bench_peer_trains_sb3_for_a_budget_writes_a_run_dir_and_plots_next_to_ours(tmp_path):
    pytest.importorskip("stable_baselines3")
    out = tmp_path / "peer"
    cmd = [
        sys.executable,
        "-m",
        "decoupled",
        "bench",
        "peer",
        "--algo",
        "ppo",
        "--game",
        "Pong",
        "--seconds",
        "4",
    ]
    cmd += ["--eval-episodes", "1", "--log-every-env-frames", "2048", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    frames = [r["env_frames"] for r in records]
    assert frames == sorted(frames) and frames[-1] >= 8 * 4  # at least one step of the 8 envs (a busy machine: few)
    assert all(r["env_frames"] % 4 == 0 and r["perf/wall_time_s"] >= 0 for r in records)
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["algo"] == "sb3_ppo" and info["env_frames"] == frames[-1] and info["wall_time_s"] >= 4
    doc = json.loads((out / "eval" / "scores.json").read_text())
    pong = doc["games"]["Pong"]
    assert len(pong["episode_scores"]) == 1 and -21 <= pong["episode_scores"][0] <= 21
    assert 0 < pong["episode_frames"][0] <= 108_000
    from decoupled.runners.evaluation.report import load_score_file

    run = load_score_file(out / "eval" / "scores.json")  # read the way `decoupled report` reads ours
    assert (run.protocol, run.max_episode_frames, run.greedy) == ("dqn_noop30", 108_000, False)
    assert (out / "model.zip").is_file()
    # overlaid with itself under two labels: the CLI takes several run dirs
    png = tmp_path / "both.png"
    records[-1].setdefault("train/episode_return", -21.0)  # a 4-second run may not finish a Pong game
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    plot = [
        sys.executable,
        "-m",
        "decoupled",
        "plot",
        str(out),
        str(out),
        "--labels",
        "a,b",
        "--out",
        str(png),
    ]
    proc = subprocess.run(plot, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_bench_dni_recall_solves_delays_inside_the_window_with_every_method():
    """Delays 1 and 2 fit in a window of 3: truncated BPTT and DNI alike must solve them within the budget."""
    cmd = [sys.executable, "-m", "decoupled", "bench", "dni", "--task", "recall", "--truncation", "3"]
    cmd += ["--seeds", "1", "--max-level", "2", "--updates-per-level", "2500"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = _json_lines(proc.stdout)
    by_method = {r["method"]: r for r in lines if "method" in r}
    assert set(by_method) == {"bptt", "dni", "dni_aux"}
    for r in by_method.values():
        assert r["max_solved_per_seed"] == [2], r["runs"]
        assert all(level["score"] >= 0.95 for level in r["runs"][0]["levels"])
    summary = lines[-1]
    assert summary["what"] == "summary" and summary["dni_median_max_solved"] == 2
    assert summary["dni_beats_bptt_on_every_seed"] is False  # equal, not better, inside the window
    cmd = [*cmd[:-6], "--seeds", "1", "--max-level", "1", "--updates-per-level", "2500"]
    proc = subprocess.run([*cmd, "--methods", "dni_critic,dni_critic_grad"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_method = {r["method"]: r for r in _json_lines(proc.stdout) if "method" in r}
    assert set(by_method) == {"dni_critic", "dni_critic_grad"}
    assert all(r["max_solved_per_seed"] == [1] for r in by_method.values()), by_method


@pytest.mark.slow
def test_bench_dni_delayed_cue_trains_each_method_and_plots(tmp_path):
    out = tmp_path / "dc"
    cmd = [sys.executable, "-m", "decoupled", "bench", "dni", "--task", "delayed_cue", "--truncation", "2"]
    cmd += ["--delay", "3", "--seeds", "1", "--frames", "6000", "--jobs", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)  # the config from any cwd
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = _json_lines(proc.stdout)
    by_method = {r["method"]: r for r in lines if "method" in r}
    assert set(by_method) == {"bptt", "dni", "bptt_long"}
    assert by_method["bptt"]["unroll"] == 2 and by_method["bptt_long"]["unroll"] == 4
    for m, r in by_method.items():
        assert len(r["final_return_per_seed"]) == 1 and -1.0 <= r["final_return_per_seed"][0] <= 1.0
        cfg = (out / f"{m}_s0" / "config.yaml").read_text()
        assert ("dni_lstm" in cfg) == (m == "dni")
        assert (out / f"{m}_s0" / "metrics.jsonl").stat().st_size > 0
    assert (out / "delayed_cue.png").stat().st_size > 1000


def test_bench_unreal_and_minatar_run_seeds_and_print_their_lines(tmp_path):
    """The learning benchmarks for real, tiny: a line per run and per method, curves, and a rerun reuses runs."""
    cmd = [sys.executable, "-m", "decoupled", "bench", "unreal", "--configs", "configs/unreal/catch.yaml",
           "--seeds", "1", "--frames", "3200", "--jobs", "2", "--out", str(tmp_path / "u"),
           "--override", "agent.replay_start_steps=320"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    methods = {x["method"]: x for x in lines if x.get("what") == "method"}
    assert set(methods) == {"base", "unreal"} and (tmp_path / "u" / "catch.png").is_file()
    assert (tmp_path / "u" / "catch_aux.png").read_bytes()[:4] == b"\x89PNG"
    assert "aux" in methods["unreal"] and "aux" not in methods["base"]
    assert 0 <= methods["unreal"]["aux"]["aux/reward_prediction/accuracy"]["first"] <= 1
    ablation = [str(tmp_path / "a") if x == str(tmp_path / "u") else x for x in cmd]
    ablation += ["--methods", "unreal", "--override", "agent.reward_prediction_sampling=uniform"]
    proc = subprocess.run(ablation, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [x["method"] for x in _json_lines(proc.stdout) if x.get("what") == "method"] == ["unreal"]
    assert not (tmp_path / "a" / "catch" / "base_s0").exists()
    proc = subprocess.run([*cmd, "--methods", "nope"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "--methods takes base and/or unreal" in proc.stderr
    cmd = [sys.executable, "-m", "decoupled", "bench", "minatar", "--games", "breakout", "--seeds", "1",
           "--frames", "3200", "--eval-episodes", "2", "--jobs", "1", "--out", str(tmp_path / "m")]  # fmt: skip
    for _ in range(2):  # the second time the finished run is reused, not retrained
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    (rec,) = [x for x in lines if x.get("what") == "method"]
    assert rec["name"] == "breakout" and len(rec["eval_mean_per_seed"]) == 1 and rec["minatar_paper_dqn_read_off"] > 0
    assert "training" not in proc.stdout  # reused: `decoupled train` printed nothing the second time


def test_an_interrupted_benchmark_run_resumes_from_its_checkpoint(tmp_path, capsys):
    """A bench run dir left with a checkpoint but short of its frames continues from it, keeping what it had."""
    from decoupled.runners.bench.learning import run_job
    from decoupled.runners.evaluation.plot import read_metrics

    config = str(ROOT / "configs/impala/catch.yaml")
    common = ["wandb.mode=disabled", "runner.log_every_env_frames=400", "runner.checkpoint_every_env_frames=1600"]
    run_dir = tmp_path / "run"
    run_job(config, [*common, "runner.total_env_frames=3200"], str(run_dir), 3200, 0)  # the "interrupted" run
    first = read_metrics(run_dir)
    capsys.readouterr()
    out = run_job(config, [*common, "runner.total_env_frames=6400"], str(run_dir), 6400, 0)
    assert "resumed" in capsys.readouterr().out
    recs = read_metrics(run_dir)
    assert recs[0] == first[0]  # the same run, continued: its early records are the ones written before
    assert recs[-1]["env_frames"] >= 6400 and out["curve"][-1][0] >= 6400
    frames = [r["env_frames"] for r in recs]
    assert frames == sorted(set(frames))  # no records written twice across the resume


def test_a_benchmark_run_that_ended_on_its_wall_clock_limit_is_reused_not_resumed(tmp_path, capsys):
    """A run stopped by `runner.max_wall_seconds` short of its frames (as the 60-minute Pong source column is) is
    finished: running its job again reads it as it is, instead of resuming it only to stop again at once."""
    from decoupled.runners.bench.learning import finished_run, run_job
    from decoupled.runners.evaluation.plot import read_metrics

    config = str(ROOT / "configs/impala/catch.yaml")
    overrides = ["wandb.mode=disabled", "runner.log_every_env_frames=400", "runner.total_env_frames=100000000",
                 "runner.max_wall_seconds=3"]  # fmt: skip
    run_dir = tmp_path / "run"
    run_job(config, overrides, str(run_dir), 100_000_000, 0)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "time_limit"
    before = read_metrics(run_dir)
    assert before[-1]["env_frames"] < 100_000_000 and finished_run(run_dir, 100_000_000)
    capsys.readouterr()
    out = run_job(config, overrides, str(run_dir), 100_000_000, 0)
    assert "resumed" not in capsys.readouterr().out
    assert read_metrics(run_dir) == before  # nothing trained or logged again
    assert [f for f, _, _ in out["curve"]] == [r["env_frames"] for r in before if "train/episode_return" in r]
    (run_dir / "summary.json").write_text("{cut short")  # a summary a crash cut: the frames decide again
    assert not finished_run(run_dir, 100_000_000) and finished_run(run_dir, before[-1]["env_frames"])


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGINT"])
def test_killing_the_benchmark_stops_its_workers_with_a_checkpoint_and_starts_no_queued_run(tmp_path, sig):
    """SIGKILL, or a SIGINT sent to `decoupled bench minatar` alone (not to its process group, as Ctrl-C would): its
    worker processes checkpoint their runs and exit, none is left, and the benchmark itself exits."""
    import os
    import signal
    import time

    import psutil

    out = tmp_path / "m"
    cmd = [sys.executable, "-m", "decoupled", "bench", "minatar", "--games", "breakout", "--seeds", "3",
           "--frames", "5000000", "--jobs", "2", "--out", str(out)]  # fmt: skip
    # A shell's background job inherits SIGINT ignored (and Python then keeps it so): give the benchmark the default.
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and not all((out / "breakout" / f"impala_s{s}" / "metrics.jsonl").is_file()
                                             for s in (0, 1)):  # fmt: skip
        time.sleep(0.5)
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert workers, "the benchmark started no worker processes"
    os.kill(proc.pid, getattr(signal, sig))
    try:
        proc.wait(timeout=90)
    finally:
        proc.kill()  # no-op when it exited; a benchmark that hung must not outlive the test
    _, alive = psutil.wait_procs(workers, timeout=60)
    for p in alive:
        p.kill()
    assert not alive, f"workers outlived the killed benchmark: {[p.pid for p in alive]}"
    for s in (0, 1):  # the started runs stopped with a checkpoint to resume from
        assert any((out / "breakout" / f"impala_s{s}" / "checkpoints").iterdir())
    assert not (out / "breakout" / "impala_s2").exists()  # the queued run never started


def test_frames_to_threshold_and_its_median_over_seeds():
    from decoupled.runners.bench.learning import _median_frames, _summarise

    curve = [(100, 0.0, 1.0), (200, 4.0, 2.0), (300, 6.0, 3.0), (400, 5.0, 4.0)]
    assert _summarise(curve, 400, threshold=5.0)["frames_to_threshold"] == 300
    assert _summarise(curve, 400, threshold=7.0)["frames_to_threshold"] is None
    assert "frames_to_threshold" not in _summarise(curve, 400)
    # a seed that never got there ranks after every other one
    assert _median_frames([300, None, 100]) == 300
    assert _median_frames([300, None, 100, 200]) == 250
    assert _median_frames([None, None, 100]) is None


def test_bench_feudal_runs_both_methods_with_goal_ablation(tmp_path):
    """FuN vs the LSTM baseline for real, tiny (MiniGrid's empty 5x5 room): a line per method, FuN's evaluation
    also with its goals zeroed and random, success rates, curves; a task without both configs is refused."""
    pytest.importorskip("minigrid")
    cmd = [sys.executable, "-m", "decoupled", "bench", "feudal", "--tasks", "minigrid_doorkey", "--seeds", "1",
           "--frames", "2400", "--eval-episodes", "3", "--jobs", "2", "--out", str(tmp_path / "f"),
           "--override", "env.id=MiniGrid-Empty-5x5-v0", "--override", "env.num_envs=4",
           "--override", "runner.unroll_length=20", "--override", "agent.hidden_sizes=[32]"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    methods = {x["method"]: x for x in _json_lines(proc.stdout) if x.get("what") == "method"}
    assert set(methods) == {"feudal", "lstm"} and (tmp_path / "f" / "minigrid_doorkey.png").is_file()
    fun = methods["feudal"]
    for key in ("eval_mean_per_seed", "eval_mean_ablate_zero_per_seed", "eval_mean_ablate_random_per_seed"):
        assert len(fun[key]) == 1
    assert 0 <= fun["success_per_seed"][0] <= 1 and "eval_mean_ablate_zero_per_seed" not in methods["lstm"]
    proc = subprocess.run([*cmd[:5], "--tasks", "nope"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "configs/feudal/nope.yaml" in proc.stderr


@pytest.mark.slow
def test_bench_throughput_measures_sample_factory_and_cleanrl_in_their_own_venvs(tmp_path):
    from decoupled.runners.bench.foreign import PeerUnavailable, peer_python

    try:
        peer_python("sf_appo"), peer_python("cleanrl_ppo")
    except PeerUnavailable as e:
        pytest.skip(f"the peers' venvs are not built (`make peers`): {e}")
    cmd = [sys.executable, "-m", "decoupled", "bench", "throughput", "--seconds", "20", "--warmup", "40"]
    proc = subprocess.run([*cmd, "--repeats", "1", "--only", "impala_ff,sf_appo,cleanrl_ppo"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_what = {line["what"]: line for line in map(json.loads, proc.stdout.splitlines())}
    for peer in ("sf_appo", "cleanrl_ppo"):
        assert by_what[peer]["median_steps_per_s"] > 0 and by_what[peer]["deviations"]
        assert by_what["ratios"][f"impala_ff/{peer}"] == pytest.approx(
            by_what["impala_ff"]["median_steps_per_s"] / by_what[peer]["median_steps_per_s"], rel=1e-2
        )
    assert by_what["ratios"]["impala_ff/sf_best"] == by_what["ratios"]["impala_ff/sf_appo"]  # the only SF setting
    assert by_what["sf_appo"]["peak_rss_mb_max"] > by_what["cleanrl_ppo"]["peak_rss_mb_max"] > 0  # SF: 4+ processes
