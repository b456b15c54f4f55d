"""The shipped progressive configs as a user runs them: `decoupled train configs/progressive/<pair>.yaml` trains a
second and a third column from earlier runs (a small source through the same CLI), checkpoints, resumes and
evaluates; the baselines' configs train; `decoupled bench transfer` prints and draws its transfer matrix; `decoupled
bench distill` compares methods from one teacher and `bench distill-multi` scores a multi-game student per game."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

try:
    from tests.smoke.cli_helpers import cli as _cli
    from tests.smoke.cli_helpers import last_frames as _frames
except ImportError:  # tests/smoke is on sys.path when pytest runs it as a rootless directory
    from cli_helpers import cli as _cli
    from cli_helpers import last_frames as _frames

SMALL = ["wandb.mode=disabled", "runner.torch_threads=1", "runner.log_every_env_frames=1", "env.num_envs=4",
         "runner.unroll_length=10"]  # fmt: skip


def _train(config: str, run: Path, frames: int, *extra: str) -> None:
    budget = [f"runner.total_env_frames={frames}", f"runner.checkpoint_every_env_frames={frames}"]
    r = _cli("train", config, *SMALL, *budget, *extra, "--run-dir", str(run))
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.slow
def test_minatar_progressive_configs_train_two_and_three_columns_resume_and_evaluate(tmp_path: Path):
    pytest.importorskip("minatar")
    src, p2, p3 = tmp_path / "breakout", tmp_path / "hflip", tmp_path / "vflip"
    _train("configs/impala/minatar_breakout.yaml", src, 400)
    _train("configs/progressive/minatar_breakout_hflip.yaml", p2, 400, f"agent.columns=[{src}]")
    _train("configs/progressive/minatar_breakout_vflip_3col.yaml", p3, 400, f"agent.columns=[{src}, {p2}]")
    r = _cli("train", "--resume", str(p3), "runner.total_env_frames=800")
    assert r.returncode == 0, r.stderr[-3000:]
    assert _frames(p3) == 800
    r = _cli("eval", str(p3), "--episodes", "1", "--no-video")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((p3 / "env_settings.json").read_text())["transform"] == "vflip"
    _train("configs/impala/minatar_breakout_hflip.yaml", tmp_path / "b1", 200)  # baseline 1: from scratch
    for b in ("b2", "b3", "b4"):
        _train(f"configs/progressive/minatar_breakout_hflip_{b}.yaml", tmp_path / b, 200, f"agent.columns=[{src}]"
               if b in ("b2", "b3") else "runner.seed=0")  # fmt: skip
    _train("configs/progressive/minatar_breakout_white.yaml", tmp_path / "white", 200, f"agent.columns=[{src}]")


@pytest.mark.slow
@pytest.mark.atari
def test_pong_soup_configs_train_from_the_pong_recipe(tmp_path: Path):
    pytest.importorskip("envpool")
    src = tmp_path / "pong"
    atari = ["runner.mode=serial", "env.num_envs=2", "agent.hidden_sizes=[32]"]
    _train("configs/impala/pong.yaml", src, 160, *atari)
    for t in ("hflip", "noisy"):
        _train(f"configs/progressive/pong_{t}.yaml", tmp_path / t, 160, f"agent.columns=[{src}]", *atari)
        settings = json.loads((tmp_path / t / "env_settings.json").read_text())
        assert settings["transform"] == t


@pytest.mark.slow
def test_bench_transfer_prints_and_draws_the_transfer_matrix(tmp_path: Path):
    r = _cli("bench", "transfer", "--source", "impala/catch", "--source-frames", "1600", "--frames", "1600",
             "--targets", "hflip", "--seeds", "2", "--source-seeds", "1", "--jobs", "2", "--source-jobs", "1", "--out",
             str(tmp_path), "--override", "runner.torch_threads=null")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    summary = next(x for x in lines if x.get("what") == "summary")
    row = summary["matrix"]["hflip"]
    assert set(row) == {"b1", "b2", "b3", "b4", "progressive"} and row["b1"]["transfer"] == 1.0
    assert all(isinstance(v["transfer"], float) for v in row.values())
    assert (tmp_path / "catch.png").is_file() and (tmp_path / "catch" / "catch_hflip.png").is_file()
    # the progressive run's first column is the source run's
    # (--source-seeds 1: both target seeds build on source seed 0, and no second source is trained)
    for s in (0, 1):
        init = json.loads((tmp_path / "catch" / "hflip" / f"progressive_s{s}" / "init_sources.json").read_text())
        assert "source_s0" in init["columns"][0]
    assert not (tmp_path / "catch" / "source_s1").exists()
    assert summary["source_seeds"] == 1 and len(row["progressive"]["per_seed"]) == 2
    # the source alone on the machine (--source-jobs 1) with torch's default threads (the catch config's own 1
    # overridden), the targets one thread each
    threads = {run: json.loads((tmp_path / "catch" / run / "env_settings.json").read_text())["learner_torch_threads"]
               for run in ("source_s0", "hflip/b1_s0", "hflip/progressive_s0")}  # fmt: skip
    # torch's default in a fresh process (tests run before this one may have set this process's threads)
    default = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert threads == {"source_s0": int(default), "hflip/b1_s0": 1, "hflip/progressive_s0": 1}


@pytest.mark.slow
def test_bench_transfer_to_another_minatar_game_through_the_union_channels(tmp_path: Path):
    pytest.importorskip("minatar")
    r = _cli("bench", "transfer", "--source", "configs/impala/minatar_breakout.yaml", "--source-frames", "800",
             "--frames", "800", "--targets", "id:space_invaders", "--methods", "b1,b2,progressive", "--seeds", "1",
             "--jobs", "1", "--override", "env.channels=union", "--override", "env.num_envs=4", "--out",
             str(tmp_path))  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    summary = next(
        json.loads(x) for x in r.stdout.splitlines() if x.startswith('{"bench": "transfer", "what": "summary')
    )
    assert set(summary["matrix"]["id:space_invaders"]) == {"b1", "b2", "progressive"}
    run = tmp_path / "minatar_breakout" / "id_space_invaders" / "progressive_s0"
    settings = json.loads((run / "env_settings.json").read_text())
    assert settings["game"] == "space_invaders" and settings["channels"] == "union"


@pytest.mark.slow
def test_bench_distill_compares_methods_from_one_teacher(tmp_path: Path):
    teacher = tmp_path / "teacher"
    _train("configs/impala/catch.yaml", teacher, 1600)
    r = _cli("bench", "distill", "--config", "configs/distill/catch.yaml", "--teacher", str(teacher), "--methods",
             "on_policy,on_policy_sobolev", "--frames", "1600", "--seeds", "1", "--jobs", "1", "--eval-episodes", "2",
             "--out", str(tmp_path / "b"))  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith('{"bench": "distill", "what": "method"')]
    assert {x["method"] for x in lines} == {"on_policy", "on_policy_sobolev"}
    assert all(0 <= x["final_logs"][0]["distill/agreement"] <= 1 for x in lines)
    assert (tmp_path / "b" / "catch.png").is_file()


@pytest.mark.slow
def test_bench_distill_multi_trains_teachers_then_one_student_and_scores_it_per_game(tmp_path: Path):
    out = tmp_path / "b"
    args = ["bench", "distill-multi", "--games", "breakout,freeway", "--teacher-frames", "3000", "--frames", "3000",
            "--seeds", "1", "--jobs", "1", "--eval-episodes", "2", "--out", str(out),
            "--override", "env.num_envs=4"]  # fmt: skip
    r = _cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith('{"bench": "distill-multi", "what"')]
    teachers = {x["game"]: x for x in lines if x["what"] == "teacher"}
    (student,) = [x for x in lines if x["what"] == "student"]
    assert set(teachers) == set(student["eval_mean"]) == {"breakout", "freeway"}
    for g, t in teachers.items():  # the fractions are the student's per-game score over its teacher's
        if t["eval_mean"]:
            assert student["fraction_of_teacher"][g] == round(student["eval_mean"][g] / t["eval_mean"], 3)
        if t["eval_mean"] != t["random_eval_mean"]:
            expected = (student["eval_mean"][g] - t["random_eval_mean"]) / (t["eval_mean"] - t["random_eval_mean"])
            assert student["fraction_above_random"][g] == round(expected, 3)
    assert 0 <= student["final_logs"]["distill/agreement"] <= 1
    assert (out / "students.png").is_file() and (out / "fractions.png").is_file()
    config = (out / "students" / "student_s0" / "config.yaml").read_text()
    assert str(out / "teachers" / "breakout") in config and str(out / "teachers" / "freeway") in config
    r = _cli(*args[:-2], "--games", "breakout")  # one game is no multi-game student
    assert r.returncode == 2 and "two or more" in r.stderr
    bad = tmp_path / "bad"  # a student override that cannot load stops before any teacher trains
    r = _cli(*args[:-4], "--out", str(bad), "--override", "agent.no_such_key=1")
    assert r.returncode == 2 and "no_such_key" in r.stderr and not (bad / "teachers").exists()
