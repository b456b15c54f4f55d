import subprocess
import sys
import time
from pathlib import Path

import pytest

from decoupled.runners.training.config import ConfigError, apply_overrides, load_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
CATCH = ROOT / "configs" / "impala" / "catch.yaml"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg.runner.total_env_frames > 0
    assert cfg.agent_name == path.parent.name


def test_required_configs_are_shipped():
    names = {p.relative_to(ROOT / "configs").as_posix() for p in CONFIGS}
    for need in ["catch", "cartpole", "minatar_breakout", "breakout", "pong"]:
        assert f"impala/{need}.yaml" in names


def _errors(overrides, path=CATCH):
    with pytest.raises(ConfigError) as e:
        load_config(path, overrides)
    return dict(e.value.errors), str(e.value)


def test_unknown_key_names_full_path():
    errors, text = _errors(["runner.no_such_key=1"])
    assert "runner.no_such_key" in errors
    assert "unknown key" in errors["runner.no_such_key"]
    assert "runner.no_such_key" in text


def test_unknown_nested_env_key_path_has_no_union_tag():
    errors, _ = _errors(["env.colums=4"])
    assert list(errors) == ["env.colums"]


def test_wrong_type_and_out_of_range_are_all_reported():
    errors, _ = _errors(["runner.unroll_length=abc", "agent.discount=1.5", "optim.lr=-1"])
    assert set(errors) == {"runner.unroll_length", "agent.discount", "optim.lr"}


def test_unknown_agent_and_unknown_section():
    errors, _ = _errors(["agent.name=nope"])
    assert "agent.name" in errors
    errors, _ = _errors(["trainer.steps=3"])
    assert "trainer" in errors


def test_override_through_a_value_is_an_error():
    with pytest.raises(ConfigError, match="runner.seed is a value"):
        apply_overrides({"runner": {"seed": 1}}, ["runner.seed.x=2"])
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides({}, ["runner.seed"])


def test_overrides_parse_yaml_values():
    cfg = load_config(CATCH, ["runner.total_env_frames=2000", "agent.hidden_sizes=[8, 8]", "optim.lr=1e-3"])
    assert cfg.runner.total_env_frames == 2000
    assert cfg.agent.hidden_sizes == (8, 8)
    assert cfg.optim.lr == pytest.approx(1e-3)


def test_inconsistent_keys_fail():
    raw = {
        "agent": {"name": "impala", "torso": "nature_cnn"},
        "env": {"backend": "classic", "id": "CartPole-v1"},
        "runner": {"total_env_frames": 10},
    }
    with pytest.raises(ConfigError, match="image observations"):
        validate_config(raw)


def test_labyrinth_maze_size_must_be_odd():
    raw = {"agent": {"name": "impala", "torso": "nature_cnn"}, "runner": {"total_env_frames": 10},
           "env": {"backend": "labyrinth", "id": "nav_maze_static_01", "maze_size": [7, 8]}}  # fmt: skip
    with pytest.raises(ConfigError, match=r"env.maze_size must be odd .* got \(7, 8\)"):
        validate_config(raw)
    raw["env"]["maze_size"] = [7, 9]
    assert validate_config(raw).env.options()["maze_size"] == (7, 9)


def test_round_trip_is_identical(tmp_path):
    from decoupled.runners.training.config import dump_config

    cfg = load_config(CATCH, ["runner.seed=7"])
    dump_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg and again.digest() == cfg.digest()


def test_cli_bad_key_exits_nonzero_fast_and_names_key(tmp_path):
    t0 = time.time()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "decoupled",
            "train",
            str(CATCH),
            "runner.no_such_key=1",
            "--run-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "runner.no_such_key" in proc.stderr
    assert time.time() - t0 < 15
    assert not (tmp_path / "metrics.jsonl").exists()  # nothing started


def test_rmsprop_tf_is_tensorflows_rmsprop():
    """optim.name=rmsprop_tf: the mean square starts at 1 and eps sits inside the square root (tf.train.RMSProp)."""
    import torch

    from decoupled.runners.training.train import make_optimizer

    cfg = load_config("configs/impala/catch.yaml", ["optim.name=rmsprop_tf", "optim.lr=0.1", "optim.eps=0.01"])
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = make_optimizer(cfg, [p])
    g = torch.tensor([0.5, 0.001])
    p.grad = g.clone()
    opt.step()
    ms = 0.99 * 1.0 + 0.01 * g**2
    torch.testing.assert_close(p.detach(), torch.tensor([1.0, -2.0]) - 0.1 * g / torch.sqrt(ms + 0.01))
    torch_rms = make_optimizer(load_config("configs/impala/catch.yaml", ["optim.name=rmsprop", "optim.lr=0.1"]), [p])
    assert type(torch_rms) is torch.optim.RMSprop and type(opt) is not torch.optim.RMSprop
