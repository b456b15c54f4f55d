"""UNREAL's updates stay bit-identical across refactors of its auxiliary tasks: the final parameters of short serial
runs (several task mixes, both loss reductions, feature control, a progressive net's newest column with the tasks,
and the impala agent taking the same tasks through `agent.aux`) against tests/data/unreal_regression.npz, recorded
with the code before the tasks became modules. Exact on the CPU kind they were recorded on; elsewhere (another SIMD
level) to float32 rounding. `DECOUPLED_RECORD=1 pytest ...` rewrites the file: only when an update is meant to
change."""

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "unreal_regression.npz"
COMMON = ["runner.mode=serial", "wandb.mode=disabled", "runner.log_every_env_frames=100000000",
          "runner.torch_threads=1", "runner.unroll_length=8", "env.num_envs=4"]  # fmt: skip
SMALL = ["agent.hidden_sizes=[32]", "agent.lstm_size=32"]
RUNS = {
    "catch_sum_uniform": ("configs/unreal/catch.yaml", [
        "runner.total_env_frames=1280", "agent.loss_reduction=sum", "agent.reward_prediction_sampling=uniform",
        "agent.reward_prediction_hidden=0", "agent.replay_start_steps=64"]),
    "breakout_fc": ("configs/unreal/minatar_breakout.yaml", [
        "runner.total_env_frames=640", "agent.feature_control_cost=0.01", "agent.replay_start_steps=64", *SMALL]),
    "breakout_pc_only": ("configs/unreal/minatar_breakout.yaml", [
        "runner.total_env_frames=640", "agent.reward_prediction_cost=0", "agent.value_replay_cost=0",
        "agent.replay_start_steps=32", *SMALL]),
    "progressive_pc_rp": ("configs/progressive/minatar_breakout_hflip.yaml", [
        "runner.total_env_frames=640", "agent.columns=[random]", "agent.pixel_control_cost=0.01",
        "agent.pixel_control_crop=0", "agent.pixel_control_cell=1", "agent.reward_prediction_cost=1.0",
        "agent.replay_start_steps=32", "agent.hidden_sizes=[32]"]),
}  # fmt: skip


def _final_parameters(config, overrides):
    from decoupled.runners.training.checkpoint import CheckpointManager
    from decoupled.runners.training.config import load_config
    from decoupled.runners.training.train import train

    cfg = load_config(ROOT / config, overrides + COMMON)
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, Path(tmp))
        state, _ = CheckpointManager(Path(tmp) / "checkpoints").load_latest()
    return {k: v.numpy().copy() for k, v in state["net"].items()}


def _digest(params):
    h = hashlib.sha256()
    for k in sorted(params):
        h.update(k.encode())
        h.update(np.ascontiguousarray(params[k]).tobytes())
    return h.hexdigest()


def _assert_recorded(stored, name: str, params: dict) -> None:
    """`params` are the run's recorded final parameters: bit for bit on the CPU they were recorded on (the digest),
    within float tolerance on another (kernels differ between instruction sets)."""
    keys = sorted(k.split("/", 1)[1] for k in stored.files if k.startswith(f"{name}/") and k != f"{name}/digest")
    assert sorted(params) == keys
    if str(stored["cpu_capability"]) == torch.backends.cpu.get_cpu_capability():
        assert _digest(params) == str(stored[f"{name}/digest"])
    else:
        for k in keys:
            np.testing.assert_allclose(params[k], stored[f"{name}/{k}"], rtol=1e-4, atol=1e-5, err_msg=k)


def test_record_when_asked(monkeypatch):
    if os.environ.get("DECOUPLED_RECORD") != "1":
        pytest.skip("DECOUPLED_RECORD=1 rewrites the recorded runs")
    monkeypatch.chdir(ROOT)
    out = {"cpu_capability": np.array(torch.backends.cpu.get_cpu_capability())}
    for name, (config, overrides) in RUNS.items():
        params = _final_parameters(config, overrides)
        out[f"{name}/digest"] = np.array(_digest(params))
        out.update({f"{name}/{k}": v for k, v in params.items()})
    np.savez_compressed(DATA, **out)


@pytest.mark.parametrize("name", list(RUNS))
def test_unreal_updates_are_unchanged(name, monkeypatch):
    if os.environ.get("DECOUPLED_RECORD") == "1":
        pytest.skip("recording")
    monkeypatch.chdir(ROOT)
    stored = np.load(DATA)
    params = _final_parameters(*RUNS[name])
    _assert_recorded(stored, name, params)


UNREAL_KEYS = {
    "pixel_control": {"pixel_control_cost": "cost", "pixel_control_discount": "discount",
                      "pixel_control_cell": "cell", "pixel_control_crop": "crop"},
    "reward_prediction": {"reward_prediction_cost": "cost", "reward_prediction_frames": "frames",
                          "reward_prediction_hidden": "hidden_size", "reward_prediction_sampling": "sampling",
                          "reward_prediction_batch": "batch"},
    "value_replay": {"value_replay_cost": "cost"},
    "feature_control": {"feature_control_cost": "cost"},
}  # fmt: skip


def _as_impala_with_aux(config, overrides, tmp_path):
    """The run config of `config` + `overrides` (an unreal agent) rewritten as the impala agent with the same tasks
    under agent.aux."""
    import yaml

    from decoupled.runners.training.config import load_config

    cfg = load_config(ROOT / config, overrides).model_dump(mode="json")
    agent = cfg["agent"]
    aux = {}
    for task, keys in UNREAL_KEYS.items():
        values = {new: agent.pop(old) for old, new in keys.items()}
        if values["cost"] > 0:
            aux[task] = values
    aux["replay_sequences"] = agent.pop("replay_sequences")
    agent.update(name="impala", aux=aux)
    path = tmp_path / "impala_aux.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.parametrize("name", ["catch_sum_uniform", "breakout_fc"])
def test_impala_with_unreals_tasks_in_agent_aux_is_the_unreal_agent(name, monkeypatch, tmp_path):
    """`agent.aux: {pixel_control: ..., reward_prediction: ..., value_replay: ...}` on the impala agent takes the
    same task modules: the same updates, parameter for parameter, as `agent.name: unreal` with those settings."""
    if os.environ.get("DECOUPLED_RECORD") == "1":
        pytest.skip("recording")
    monkeypatch.chdir(ROOT)
    stored = np.load(DATA)
    config, overrides = RUNS[name]
    params = _final_parameters(_as_impala_with_aux(config, overrides, tmp_path), [])
    _assert_recorded(stored, name, params)
