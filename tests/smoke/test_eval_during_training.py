"""Evaluation during training (`runner.eval_every_env_frames`): eval/ metrics on the env_frames axis in metrics.jsonl,
TensorBoard and the offline W&B run; checkpoints/best kept by eval score (and evaluable); the final and best eval in
the run's summary; training itself unchanged by it; a resumed run continues the schedule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import decoupled
from decoupled.runners.training.checkpoint import CheckpointManager
from decoupled.runners.training.wandb_reader import read_run_dir

EVAL = {"eval_every_env_frames": 10_000, "eval_episodes": 20}
BASE = {
    "total_env_frames": 40_000,
    "mode": "serial",
    "log_every_env_frames": 5_000,
    "checkpoint_every_env_frames": 20_000,
}


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


def test_eval_metrics_best_checkpoint_and_summary(tmp_path: Path, tensorboard_scalars):
    run = tmp_path / "run"
    decoupled.train("impala/catch", run_dir=run, runner={**BASE, **EVAL}, wandb={"mode": "offline"},
                    logger={"tensorboard": True})  # fmt: skip
    evals = [r for r in _records(run) if "eval/episode_return" in r]
    assert [r["env_frames"] for r in evals] == [10240, 20480, 30720, 40000]  # every 10k frames and at the end
    assert all(r["eval/episodes"] == 20 for r in evals)
    best_score = max(r["eval/episode_return"] for r in evals)
    assert evals[-1]["eval/best_episode_return"] == best_score
    # checkpoints/best holds the net of the best evaluation, and evaluates like any checkpoint
    (best,) = CheckpointManager(run / "checkpoints" / "best").list()
    manifest = json.loads((best / "manifest.json").read_text())
    assert manifest["meta"]["eval"]["eval/episode_return"] == best_score
    assert manifest["env_frames"] == next(r["env_frames"] for r in evals if r["eval/episode_return"] == best_score)
    assert len(decoupled.evaluate(run / "checkpoints" / "best", episodes=3)["episode_scores"]) == 3
    # the summary: the final and the best evaluation, in summary.json and in the W&B run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval/final_episode_return"] == evals[-1]["eval/episode_return"]
    assert summary["eval/best_episode_return"] == best_score and summary["status"] == "finished"
    (segment,) = read_run_dir(run)
    assert segment["summary"]["eval/best_episode_return"] == best_score
    wandb_evals = [row for row in segment["history"] if "eval/episode_return" in row]
    assert [row["env_frames"] for row in wandb_evals] == [r["env_frames"] for r in evals]
    # each evaluation films an episode: a GIF in videos/, a W&B video in the run; the run keeps config, env settings
    # and the console
    assert [r["eval/video"] for r in evals] == [str(run / "videos" / f"eval_{f:012d}.gif") for f in [10240, 20480,
                                                30720, 40000]]  # fmt: skip
    assert all(Path(r["eval/video"]).stat().st_size > 0 for r in evals)
    assert all(row.get("eval/video._type") == "video-file" for row in wandb_evals)
    assert segment["config"]["runner"]["eval_every_env_frames"] == 10_000
    assert segment["config"]["env_settings"]["name"] == "catch"
    (output,) = run.glob("wandb/offline-run-*/files/output.log")
    assert "finished at 40,000 env frames" in output.read_text()
    # TensorBoard: the same eval curve on the env_frames axis
    scalars, _ = tensorboard_scalars(run)
    tb = sorted((step, value) for tag, step, value in scalars if tag == "eval/episode_return")
    assert [s for s, _ in tb] == [r["env_frames"] for r in evals]


def test_evaluating_changes_nothing_in_training_and_a_resume_continues_the_schedule(tmp_path: Path):
    plain, evald, cut = tmp_path / "plain", tmp_path / "eval", tmp_path / "cut"
    decoupled.train("impala/catch", run_dir=plain, runner=BASE, wandb={"mode": "disabled"})
    decoupled.train("impala/catch", run_dir=evald, runner={**BASE, **EVAL}, wandb={"mode": "disabled"})

    def train_records(run: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k.startswith(("train/", "loss/"))} for r in _records(run)
                if "train/updates" in r]  # fmt: skip

    assert train_records(plain) == train_records(evald)  # eval has its own envs and random stream
    decoupled.train("impala/catch", run_dir=cut, runner={**BASE, **EVAL, "total_env_frames": 20_000},
                    wandb={"mode": "disabled"})  # fmt: skip
    decoupled.train(run_dir=cut, resume=True, overrides=["runner.total_env_frames=40000"])
    evals = [(r["env_frames"], r["eval/episode_return"]) for r in _records(cut) if "eval/episode_return" in r]
    full = [(r["env_frames"], r["eval/episode_return"]) for r in _records(evald) if "eval/episode_return" in r]
    # one eval at the end of the first segment (20,160), then every 10k frames after it: none twice
    frames = [f for f, _ in evals]
    assert frames == sorted(set(frames)) and frames[-1] == 40000 and len(frames) >= 4
    assert evals[0] == full[0]  # bit-identical training up to there: the same first evaluation
    assert json.loads((cut / "summary.json").read_text())["eval/final_env_frames"] == 40000


def test_the_training_entry_point_without_an_evaluator_says_how_to_get_one(tmp_path: Path):
    from decoupled.runners.training.train import train

    cfg = decoupled.load_config("impala/catch", runner=EVAL)
    with pytest.raises(ValueError, match="make_periodic_evaluator"):
        train(cfg, tmp_path / "r")


def test_decoupled_eval_adds_its_scores_and_video_to_the_runs_own_wandb_record(tmp_path: Path, capsys):
    from decoupled.runners.cli import main

    run = tmp_path / "run"
    decoupled.train("impala/catch", run_dir=run, runner={**BASE, "total_env_frames": 3200}, wandb={"mode": "offline"})
    assert main(["eval", str(run), "--episodes", "3"]) == 0
    assert "W&B: logged to run" in capsys.readouterr().out
    training, evaluation = read_run_dir(run)
    assert training["run_id"] == evaluation["run_id"]  # the same W&B run, resumed
    (row,) = [r for r in evaluation["history"] if "eval/catch/mean_score" in r]
    scores = json.loads((run / "eval" / "scores.json").read_text())["games"]["catch"]["episode_scores"]
    assert row["eval/catch/mean_score"] == pytest.approx(sum(scores) / 3) and row["eval/catch/episodes"] == 3
    assert row["eval/catch/video._type"] == "video-file"
