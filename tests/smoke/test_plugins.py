"""Plug-ins and user envs, as a user does it: docs/extending.md's package built and installed from the page's own
code, trained with `decoupled train`, resumed, and loaded; a user's gymnasium env by `module:Id`; a broken plug-in
named in its error."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "extending.md"


def _doc_files() -> dict[str, str]:
    """Every fenced block of docs/extending.md whose first line is `# file: PATH`."""
    files = {}
    for block in re.findall(r"```\w*\n(.*?)```", DOC.read_text(), flags=re.S):
        first, _, rest = block.partition("\n")
        if first.startswith("# file: "):
            files[first.removeprefix("# file: ").strip()] = block  # the comment line is valid in each format
    return files


def _env(pythonpath: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(pythonpath)
    env["WANDB_MODE"] = "disabled"  # these runs test plug-ins, not W&B (whose finish can lag on a loaded machine)
    return env


def _cli(args, cwd, env, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "decoupled", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _records(run: Path) -> list[dict]:
    """metrics.jsonl's metric records (a `wandb/incomplete` status record, when W&B lagged, is not one)."""
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if "wandb/incomplete" not in r]


@pytest.mark.slow
def test_the_extending_guide_builds_a_plugin_that_trains_resumes_and_acts(tmp_path):
    files = _doc_files()
    assert {"pyproject.toml", "corridor_plugin/env.py", "corridor_plugin/agent.py", "corridor.yaml"} <= set(files)
    pkg = tmp_path / "corridor_plugin_pkg"
    for name, text in files.items():
        dest = (tmp_path if name.endswith(".yaml") else pkg) / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
    site = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(site),
         str(pkg)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stderr
    env = _env(site)

    out = _cli(["train", "corridor.yaml", "--run-dir", "run"], tmp_path, env)
    assert out.returncode == 0, out.stdout + out.stderr
    run = tmp_path / "run"
    recs = _records(run)
    assert recs[-1]["env_frames"] == 20000
    # it learned: the optimum is 5 steps to the goal, a random walk needs about 25 and is often cut at 24
    assert recs[-1]["train/episode_frames"] < 8, [r.get("train/episode_frames") for r in recs]

    out = _cli(["train", "--resume", "run", "runner.total_env_frames=24000"], tmp_path, env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "resumed" in out.stdout and _records(run)[-1]["env_frames"] == 24000

    script = textwrap.dedent("""
        import decoupled
        policy = decoupled.load_policy("run", seed=0)
        env = decoupled.make_env("run", num_envs=2)
        obs, state = env.reset(seed=0), None
        for _ in range(5):
            action, state = policy.predict(obs, state, deterministic=True)
            obs, reward, terminated, truncated, info = env.step(action)
        print("reached", bool(terminated.all()))
        print("mean", decoupled.evaluate(policy, episodes=4)["mean_score"])
    """)
    acted = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert acted.returncode == 0, acted.stderr
    assert "reached True" in acted.stdout and "mean 1.0" in acted.stdout


GYM_MODULE = '''
import gymnasium as gym
import numpy as np


class Corridor(gym.Env):
    """A user's own env, registered when its module is imported."""

    def __init__(self, length=5):
        self.length = length
        self.observation_space = gym.spaces.Box(0.0, 1.0, (length,), np.float32)
        self.action_space = gym.spaces.Discrete(2)

    def _obs(self):
        obs = np.zeros(self.length, np.float32)
        obs[self.pos] = 1.0
        return obs

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = 0
        return self._obs(), {}

    def step(self, action):
        self.pos = int(np.clip(self.pos + (1 if action == 1 else -1), 0, self.length - 1))
        done = self.pos == self.length - 1
        return self._obs(), float(done), done, False, {}


gym.register("Corridor-v0", entry_point=Corridor, max_episode_steps=20)
'''


@pytest.mark.slow
def test_a_users_gymnasium_env_by_module_and_id_trains_checkpoints_and_resumes(tmp_path):
    (tmp_path / "my_corridor.py").write_text(GYM_MODULE)
    env = _env(tmp_path)
    base = ["env.backend=gym", "env.id=my_corridor:Corridor-v0", "env.num_envs=4", "runner.log_every_env_frames=400",
            "runner.checkpoint_every_env_frames=800", "wandb.mode=disabled"]  # fmt: skip
    out = _cli(["train", "impala/cartpole", *base, "runner.total_env_frames=2400", "--run-dir", "run"], tmp_path, env)
    assert out.returncode == 0, out.stdout + out.stderr
    run = tmp_path / "run"
    assert len(list((run / "checkpoints").iterdir())) >= 2  # the periodic ones and the final one were written
    out = _cli(["train", "--resume", "run", "runner.total_env_frames=4000"], tmp_path, env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "resuming with new episodes: the env cannot be snapshotted" in out.stderr
    recs = _records(run)
    assert recs[-1]["env_frames"] == 4000
    assert [r["env_frames"] for r in recs] == sorted({r["env_frames"] for r in recs})  # monotonic, no duplicates
    out = _cli(["eval", "run", "--episodes", "4", "--no-video"], tmp_path, env)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_broken_plugin_is_named_in_the_error(tmp_path, monkeypatch):
    from decoupled.agents import agent_names, get_agent
    from decoupled.plugins import PluginError

    dist = tmp_path / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[decoupled.agents]\nbroken = no_such_module_anywhere:AGENT\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "broken" in agent_names()
    with pytest.raises(PluginError, match=r"'broken' declared by broken-plugin .*ModuleNotFoundError"):
        get_agent("broken")
