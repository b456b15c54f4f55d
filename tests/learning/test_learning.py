"""Learning tests: the real agent, trained from the shipped configs, must solve small tasks.

These are the regression net that unit tests cannot be (ray PR #4332: V-trace passed its unit tests while
Breakout stopped learning). They run in `make test` (about a minute each on 2 cores).
"""

from pathlib import Path

import numpy as np
import pytest

from decoupled.runners.evaluation.evaluate import load_policy, run_episodes
from decoupled.runners.training.config import load_config
from decoupled.runners.training.train import train

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.learning


def _train_and_eval(config, tmp_path, episodes, overrides=()):
    cfg = load_config(ROOT / "configs" / "impala" / config, list(overrides))
    out = train(cfg, tmp_path)
    assert out["status"] == "finished"
    cfg, net, _ = load_policy(tmp_path)
    return np.asarray(run_episodes(cfg, episodes, seed=1000, net=net)["episode_scores"])


@pytest.mark.parametrize("seed", [0, 1])
def test_impala_solves_catch(tmp_path, seed):
    scores = _train_and_eval("catch.yaml", tmp_path, 200, [f"runner.seed={seed}"])
    assert scores.mean() >= 0.9, f"catch mean return {scores.mean():.3f} over 200 episodes (random: about -0.6)"


def test_impala_lstm_solves_catch(tmp_path):
    scores = _train_and_eval("catch.yaml", tmp_path, 200, ["agent.core=lstm", "agent.lstm_size=64"])
    assert scores.mean() >= 0.9, f"catch (LSTM core) mean return {scores.mean():.3f}"


def test_impala_reaches_475_on_cartpole(tmp_path):
    scores = _train_and_eval("cartpole.yaml", tmp_path, 20)
    assert scores.mean() >= 475, f"CartPole-v1 mean return {scores.mean():.1f} over 20 episodes"
