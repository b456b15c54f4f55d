"""Every torso/core on the pixel backends runs end to end for a few updates (the real loop, small)."""

import json
from pathlib import Path

import pytest

from decoupled.runners.training.config import load_config
from decoupled.runners.training.train import train

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["env.num_envs=4", "runner.unroll_length=5", "runner.log_every_env_frames=1"]


@pytest.mark.parametrize(
    "config,frames,extra",
    [
        ("breakout.yaml", 320, ["agent.torso=nature_cnn"]),
        ("breakout.yaml", 160, ["agent.torso=impala_resnet", "agent.hidden_sizes=[256]", "agent.core=lstm"]),
        ("pong.yaml", 160, ["env.backend=atari_gym", "env.protocol=machado2018"]),
        ("minatar_breakout.yaml", 400, ["agent.core=lstm", "agent.lstm_size=32"]),
    ],
    ids=["envpool-nature", "envpool-resnet-lstm", "gym-machado", "minatar-lstm"],
)
def test_pixel_training_runs(tmp_path, config, frames, extra):
    if "minatar" not in config:
        pytest.importorskip("envpool")
        pytest.importorskip("ale_py")
    cfg = load_config(ROOT / "configs" / "impala" / config, SMALL + [f"runner.total_env_frames={frames}"] + extra)
    out = train(cfg, tmp_path)
    assert out["status"] == "finished" and out["env_frames"] >= frames
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) >= 2 and all(r["loss/total"] is not None for r in records)
    settings = json.loads((tmp_path / "env_settings.json").read_text())
    if "minatar" not in config:
        assert settings["protocol"] == cfg.env.protocol
        # frames are counted in emulator frames: 4 per agent step on Atari
        assert out["env_frames"] == out["updates"] * 4 * 5 * 4
