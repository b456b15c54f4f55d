import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

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


# ----------------------------------------------------------------------------------------------- CLI comforts
def test_integers_in_exponent_form_are_read_as_numbers_in_files_and_overrides(tmp_path):
    from decoupled.runners.training.config import load_config

    cfg = load_config(ROOT / "configs" / "impala" / "catch.yaml", ["runner.total_env_frames=1e7", "optim.lr=3e-4"])
    assert cfg.runner.total_env_frames == 10_000_000 and isinstance(cfg.runner.total_env_frames, int)
    assert cfg.optim.lr == 3e-4
    assert (
        load_config(
            ROOT / "configs" / "impala" / "catch.yaml", ["runner.total_env_frames=10_000_000"]
        ).runner.total_env_frames
        == 10_000_000
    )  # noqa: E501
    assert load_config(ROOT / "configs" / "impala" / "catch.yaml", ["runner.seed=2.5E1"]).runner.seed == 25
    raw = yaml.safe_load((ROOT / "configs" / "impala" / "catch.yaml").read_text())
    raw["runner"]["total_env_frames"] = "1.5e5"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert load_config(tmp_path / "c.yaml").runner.total_env_frames == 150_000
    with pytest.raises(ConfigError, match="runner.total_env_frames"):  # not a whole number
        load_config(ROOT / "configs" / "impala" / "catch.yaml", ["runner.total_env_frames=1.5e-3"])
    # strings that only look like words stay strings
    assert load_config(ROOT / "configs" / "impala" / "catch.yaml", ["wandb.project=e7"]).wandb.project == "e7"


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "decoupled", *args], capture_output=True, text=True, timeout=120)


def test_overrides_may_be_written_as_options_the_way_sweep_launchers_pass_them():
    r = _cli("config", "impala/catch", "--runner.seed=3", "optim.lr=1e-3", "--runner.total_env_frames=1e5")
    assert r.returncode == 0, r.stderr
    resolved = yaml.safe_load(r.stdout)
    assert resolved["runner"]["seed"] == 3 and resolved["runner"]["total_env_frames"] == 100_000
    assert resolved["optim"]["lr"] == 1e-3
    r = _cli("config", "impala/catch", "--bogus")
    assert r.returncode == 2 and "unrecognized arguments: --bogus" in r.stderr
    r = _cli("eval", "--runner.seed=3")  # eval takes no config overrides
    assert r.returncode == 2 and "--runner.seed=3" in r.stderr
    r = _cli("config", "impala/catch", "--runner.sede=3")
    assert r.returncode == 2 and "runner.sede" in r.stderr


def test_config_keys_lists_every_key_with_its_type_default_and_description():
    r = _cli("config", "--keys", "runner")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    frames = next(line for line in lines if line.startswith("runner.total_env_frames:"))
    assert "int" in frames and "required" in frames and "emulator frames" in frames
    assert any(line.startswith("runner.unroll_length: int = 20") for line in lines)
    assert all(line.startswith("runner.") for line in lines)
    r = _cli("config", "--keys", "agent", "--agent", "feudal")
    assert r.returncode == 0 and "agent.horizon: int = 10" in r.stdout and "agent.dni.scale: float" in r.stdout
    everything = _cli("config", "--keys").stdout
    for section in ("agent.", "env.", "optim.", "runner.", "wandb."):
        assert f"\n{section}" in everything, section
    assert "# env.backend: minigrid" in everything and "# agent.name: unreal" in everything
    r = _cli("config", "--keys", "nope")
    assert r.returncode == 2 and "unknown config section 'nope'" in r.stderr


def test_the_progress_line_says_the_time_left(capsys, monkeypatch):
    from decoupled.runners.training import train as train_mod

    clock = {"t": 1000.0}
    monkeypatch.setattr(train_mod.time, "time", lambda: clock["t"])
    p = train_mod.Progress(total_env_frames=10_000, every_s=1.0)
    clock["t"] += 10.0
    p.maybe_print(1_000, elapsed=10.0)  # 1,000 frames in 10 s: 9,000 left at 100 frames/s
    clock["t"] += 10.0
    p.maybe_print(3_000, elapsed=20.0)  # 3,000 in 20 s: 7,000 left at 150 frames/s
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("| left 00:01:30") and out[1].endswith("| left 00:00:46")
