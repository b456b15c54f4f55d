"""The README's Python API section, run exactly as written there, and the API's edges."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import decoupled

ROOT = Path(__file__).resolve().parents[2]


def _readme_api_code() -> str:
    section = ROOT.joinpath("README.md").read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return code


@pytest.mark.slow
def test_the_readme_api_example_runs_as_written(tmp_path):
    out = subprocess.run([sys.executable, "-c", _readme_api_code()], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    mean, episodes = re.search(r"mean score (-?[\d.]+) over (\d+) episodes", out.stdout).groups()
    assert int(episodes) == 20 and -1.0 <= float(mean) <= 1.0
    assert len(list((tmp_path / "runs").iterdir())) == 1  # the default run dir, under the working directory


@pytest.fixture(scope="module")
def catch_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("api") / "run"
    result = decoupled.train(
        "impala/catch",
        run_dir=run,
        runner__total_env_frames=3200,
        overrides=["runner.seed=2"],
        wandb={"mode": "disabled"},
    )
    assert result["status"] == "finished" and result["env_frames"] == 3200
    return run


def test_train_applies_overrides_then_sections(catch_run):
    cfg = decoupled.load_config(catch_run / "config.yaml")
    assert cfg.runner.seed == 2 and cfg.runner.total_env_frames == 3200 and cfg.wandb.mode == "disabled"
    both = decoupled.load_config("impala/catch", ["runner.seed=5"], runner={"seed": 7})
    assert both.runner.seed == 7  # sections win over overrides, both over the file


def test_resume_continues_the_run(catch_run):
    result = decoupled.train(run_dir=catch_run, resume=True, overrides=["runner.total_env_frames=4800"])
    assert result["env_frames"] == 4800
    with pytest.raises(ValueError, match="resume=True"):
        decoupled.train("impala/catch", run_dir=catch_run, resume=True)


def test_predict_single_and_batched_observations_agree(catch_run):
    policy = decoupled.load_policy(catch_run, seed=0)
    env = decoupled.make_env(catch_run, num_envs=3)
    obs = env.reset(seed=1)
    batch_action, state = policy.predict(obs, deterministic=True)
    assert batch_action.shape == (3,) and state.first.tolist() == [False] * 3
    single = [policy.predict(o, deterministic=True)[0] for o in obs]
    assert single == batch_action.tolist() and all(isinstance(a, int) for a in single)
    with pytest.raises(ValueError, match="this policy takes"):
        policy.predict(np.zeros((3, 7)), state)
    env.close()


def test_make_env_takes_a_gymnasium_id_and_evaluate_a_run_dir(catch_run):
    env = decoupled.make_env("CartPole-v1", num_envs=2)
    assert env.spec.num_actions == 2 and env.reset(seed=0).shape == (2, 4)
    env.close()
    scores = decoupled.evaluate(catch_run, episodes=6, seed=3)
    assert len(scores["episode_scores"]) == 6 and set(scores["episode_scores"]) <= {-1.0, 1.0}


def test_the_api_loads_lazily():
    code = "import sys, decoupled; print('torch' in sys.modules); decoupled.load_policy; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["False", "True"], out.stderr


def test_loading_a_policy_leaves_the_global_rng_alone(catch_run):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    decoupled.load_policy(catch_run)  # no seed: the policy's own generator is seeded, not torch's
    assert torch.equal(torch.rand(3), expected)
