"""A corpus of bad configs and bad `decoupled train` / `decoupled config` inputs: every one exits 2, fast, before
anything starts, with a message that names the key or the file; none leaves a run dir or a process behind.

Each case runs the real command in its own process (its own session, so that anything it left running is found).
The time bound is 2 s for what the config and the env tell; the few errors that only building the net shows
(a torso the observations are too small for, a net too big for memory) also pay for importing torch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CATCH = (ROOT / "configs" / "impala" / "catch.yaml").read_text()
CARTPOLE = (ROOT / "configs" / "impala" / "cartpole.yaml").read_text()
FAST_S = 2.0  # the bound of the issue: what the config and the env tell
NET_S = 6.0  # errors that need the net built (torch's import alone takes 1-2 s on a 2-core machine)

ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)


FLOW_BOMB = (
    "{a: &a [x, x, x, x, x, x, x, x, x], "
    + ", ".join(f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi", strict=True))
    + "}"
)
FEUDAL = (ROOT / "configs" / "feudal" / "catch.yaml").read_text()


@dataclass
class Case:
    id: str
    expect: str  # a piece of the error message: the key or file it names
    overrides: tuple[str, ...] = ()
    text: str | None = CATCH  # the config file's text (None: no file is written; see `args`)
    raw: bytes | None = None  # the file's bytes where they are not text
    args: tuple[str, ...] | None = None  # the whole command line instead of `train FILE overrides`
    bound: float = FAST_S


def _edit(text: str, **sections) -> str:
    cfg = yaml.safe_load(text)
    for section, values in sections.items():
        if values is None:
            cfg.pop(section, None)
        else:
            cfg.setdefault(section, {}).update(values)
    return yaml.safe_dump(cfg)


CASES = [
    # --- the file itself
    Case("missing_file", "no config file", text=None, args=("train", "no/such/config.yaml")),
    Case("dir_not_file", "no config file", text=None, args=("train", "configs")),
    Case("not_utf8", "not UTF-8", raw=b"agent:\n  name: impala\n  torso: \xff\xfe\n"),
    Case("binary_garbage", "not UTF-8", raw=bytes(range(256)) * 4),
    Case("bad_yaml_syntax", "not valid YAML", text="agent: {name: impala\nenv: [\n"),
    Case("tab_indent", "not valid YAML", text="agent:\n\tname: impala\n"),
    Case("alias_bomb", "aliases", text=ALIAS_BOMB),
    Case("recursive_alias", "refers to itself", text="agent: &a\n  name: impala\n  x: *a\n"),
    Case("duplicate_section", "'runner' appears twice", text=CATCH + "runner:\n  seed: 3\n"),
    Case("duplicate_key", "'lr' appears twice", text=CATCH.replace("  lr: 0.003\n", "  lr: 0.003\n  lr: 0.1\n")),
    Case("top_level_list", "a mapping", text="- agent\n- env\n"),
    Case("top_level_scalar", "a mapping", text="impala\n"),
    Case("empty_file", "agent.name", text=""),
    Case("no_agent_name", "agent.name", text=_edit(CATCH, agent={"name": None})),
    Case("unknown_agent", "agent.name", overrides=("agent.name=a3c",)),
    Case("no_env_section", "env", text=_edit(CATCH, env=None)),
    Case("no_runner_section", "runner", text=_edit(CATCH, runner=None)),
    Case("no_runner_budget", "runner.total_env_frames", text=CATCH.replace("  total_env_frames: 160000\n", "")),
    # --- unknown keys at every depth
    Case("unknown_agent_key", "agent.hiden_sizes", overrides=("agent.hiden_sizes=[8]",)),
    Case("unknown_env_key", "env.num_env", overrides=("env.num_env=4",)),
    Case("unknown_optim_key", "optim.learning_rate", overrides=("optim.learning_rate=0.1",)),
    Case("unknown_runner_key", "runner.total_frames", overrides=("runner.total_frames=100",)),
    Case("unknown_wandb_key", "wandb.projekt", overrides=("wandb.projekt=x",)),
    Case("unknown_logger_key", "logger.tensorbord", overrides=("logger.tensorbord=false",)),
    Case("unknown_nested_key", "agent.dni.scal", overrides=("agent.core=dni_lstm", "agent.dni.scal=0.1")),
    Case("unknown_section", "trainer", overrides=("trainer.lr=1",)),
    # --- malformed overrides
    Case("override_no_equals", "section.key=value", overrides=("runner.seed",)),
    Case("override_empty_key", "section.key=value", overrides=("=3",)),
    Case("override_empty_part", "section.key=value", overrides=("runner..seed=3",)),
    Case("override_into_value", "is a value, not a section", overrides=("runner.seed.x=3",)),
    Case("override_bad_yaml", "cannot parse value", overrides=("agent.hidden_sizes=[1,",)),
    Case("override_alias_bomb", "aliases", overrides=("wandb.tags=" + FLOW_BOMB,)),
    # --- types: booleans are not numbers, numbers are finite
    Case("bool_frames", "runner.total_env_frames", overrides=("runner.total_env_frames=true",)),
    Case("bool_lr", "optim.lr", overrides=("optim.lr=yes",)),
    Case("bool_in_sizes", "agent.hidden_sizes", overrides=("agent.hidden_sizes=[8,true]",)),
    Case("bool_num_envs", "env.num_envs", overrides=("env.num_envs=on",)),
    Case("inf_eps", "optim.eps", overrides=("optim.eps=.inf",)),
    Case("nan_lr", "optim.lr", overrides=("optim.lr=.nan",)),
    Case("inf_entropy_cost", "agent.entropy_cost", overrides=("agent.entropy_cost=.inf",)),
    Case("nan_discount", "agent.discount", overrides=("agent.discount=.nan",)),
    Case("inf_grad_norm", "optim.max_grad_norm", overrides=("optim.max_grad_norm=.inf",)),
    Case("string_frames", "runner.total_env_frames", overrides=("runner.total_env_frames=lots",)),
    Case("list_for_number", "optim.lr", overrides=("optim.lr=[0.1]",)),
    Case("number_for_list", "agent.hidden_sizes", overrides=("agent.hidden_sizes=64",)),
    # --- ranges
    Case("zero_hidden", "agent.hidden_sizes", overrides=("agent.hidden_sizes=[0]",)),
    Case("negative_hidden", "agent.hidden_sizes", overrides=("agent.hidden_sizes=[-8]",)),
    Case("empty_hidden", "agent.hidden_sizes", overrides=("agent.hidden_sizes=[]",)),
    Case("zero_lstm", "agent.lstm_size", overrides=("agent.core=lstm", "agent.lstm_size=0")),
    Case("zero_frames", "runner.total_env_frames", overrides=("runner.total_env_frames=0",)),
    Case("negative_seed", "runner.seed", overrides=("runner.seed=-1",)),
    Case("huge_seed", "runner.seed", overrides=("runner.seed=99999999999999999999",)),
    Case("zero_envs", "env.num_envs", overrides=("env.num_envs=0",)),
    Case("zero_unroll", "runner.unroll_length", overrides=("runner.unroll_length=0",)),
    Case("zero_lr", "optim.lr", overrides=("optim.lr=0",)),
    Case("discount_above_one", "agent.discount", overrides=("agent.discount=1.5",)),
    Case("negative_cost", "agent.baseline_cost", overrides=("agent.baseline_cost=-1",)),
    Case("alpha_one", "optim.alpha", overrides=("optim.alpha=1.0",)),
    # --- choices and combinations
    Case("unknown_optimizer", "optim.name", overrides=("optim.name=sgd",)),
    Case("unknown_torso", "agent.torso", overrides=("agent.torso=resnet50",)),
    Case("unknown_backend", "env", overrides=("env.backend=mujoco",)),
    Case("unknown_transform", "env.transform", overrides=("env.transform=rotate",)),
    Case("unknown_wandb_mode", "wandb.mode", overrides=("wandb.mode=cloud",)),
    Case("bad_device_name", "runner.device", overrides=("runner.device=tpu",)),
    Case("cnn_on_vectors", "agent.torso=nature_cnn", text=CARTPOLE, overrides=("agent.torso=nature_cnn",)),
    Case("dni_settings_no_dni", "agent.dni", overrides=("agent.dni.scale=0.5",)),
    Case("actors_in_serial", "runner.num_actors", overrides=("runner.num_actors=2",)),
    Case("uneven_env_split", "env.num_envs", overrides=("runner.mode=async", "runner.num_actors=3")),
    Case("unreal_replay_ratio", "agent.replay_ratio", overrides=("agent.name=unreal", "agent.replay_ratio=1")),
    Case("feature_control_mlp", "agent.feature_control_cost", overrides=("agent.name=unreal",
                                                                          "agent.feature_control_cost=0.1")),
    Case("feudal_horizon", "agent.horizon", text=FEUDAL, overrides=("agent.horizon=30", "runner.unroll_length=20")),
    Case("progressive_no_columns", "agent.columns", overrides=("agent.name=progressive",)),
    Case("distill_no_teachers", "agent.teachers", overrides=("agent.name=distill",)),
    # --- what only the env or the net tells (before the run dir exists)
    Case("no_such_gym_env", "env.id", text=CARTPOLE, overrides=("env.id=NoSuchEnv-v0",)),
    Case("continuous_actions", "env.id", text=CARTPOLE, overrides=("env.id=Pendulum-v1",)),
    Case("no_such_minigrid_env", "env.id", text=CARTPOLE, overrides=("env.backend=minigrid",
                                                                      "env.id=MiniGrid-Nope-v0")),
    Case("cuda_without_gpu", "runner.device", overrides=("runner.device=cuda",)),
    Case("cnn_too_big_for_obs", "agent", overrides=("agent.torso=nature_cnn",), bound=NET_S),
    Case("net_beyond_memory", "GiB", overrides=("agent.hidden_sizes=[100000000,100000]",), bound=NET_S),
    Case("pixel_control_on_vectors", "pixel control", text=CARTPOLE, overrides=("agent.name=unreal",),
         bound=NET_S),
    # --- other command-line mistakes
    Case("train_nothing", "give a CONFIG", text=None, args=("train",)),
    Case("resume_missing_dir", "not a run dir", text=None, args=("train", "--resume", "no/such/run")),
    Case("config_keys_bad_section", "unknown config section", text=None, args=("config", "--keys", "agents")),
    Case("config_bad_key", "runner.sed", text=None, args=("config", "impala/catch", "runner.sed=1")),
]  # fmt: skip


def _no_process_left(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    os.killpg(pgid, signal.SIGKILL)
    return False


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_fast_naming_the_key_and_leaves_nothing(case: Case, tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    if case.raw is not None:
        cfg.write_bytes(case.raw)
    elif case.text is not None:
        cfg.write_text(case.text)
    run = tmp_path / "run"
    args = case.args or ("train", str(cfg), *case.overrides, "--run-dir", str(run))
    env = {**os.environ, "DECOUPLED_RUNS": str(tmp_path / "runs")}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "decoupled", *args],
        cwd=ROOT if case.args else tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    out, err = proc.communicate(timeout=120)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 2, f"exit {proc.returncode}\n{out}\n{err}"
    assert "Traceback" not in err, err
    assert case.expect in err, err
    assert seconds < case.bound, f"took {seconds:.2f}s (bound {case.bound}s)\n{err}"
    assert not run.exists() and not (tmp_path / "runs").exists(), "a run dir was left behind"
    assert _no_process_left(proc.pid), "a process of the command was still running"


def test_the_corpus_is_large_and_each_case_distinct() -> None:
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)
