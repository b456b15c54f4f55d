"""The delayed-cue memory task (envs/memory.py): the env contract, the cue/answer timing, reward, state round trip."""

from __future__ import annotations

import numpy as np
import pytest

from decoupled.envs import make_vec_env
from decoupled.envs.memory import DelayedCueVecEnv
from decoupled.runners.training.config import ConfigError, load_config

try:
    from tests.unit.env_contract import check_contract
except ImportError:  # run from inside tests/unit
    from env_contract import check_contract


def test_delayed_cue_keeps_the_env_contract():
    env = make_vec_env("memory", "delayed_cue", 4, seed=0, options={"delay": 3, "num_cues": 3})
    stats = check_contract(env, steps=40, is_first_obs=lambda o: o[:3].sum() == 1.0 and o[-1] == 0.0)
    assert stats.episodes == 4 * (40 // 4)  # every env ends an episode every delay + 1 steps


def test_the_cue_shows_once_and_only_the_answer_at_the_query_step_is_scored():
    delay, n = 5, 64
    env = DelayedCueVecEnv(n, seed=1, delay=delay, num_cues=2)
    obs = env.reset()
    cue = obs[:, :2].argmax(1)
    assert np.all(obs[:, :2].sum(1) == 1.0) and np.all(obs[:, 2] == 0.0) and np.all(obs[:, 3] == 0.0)
    wrong = 1 - cue
    for t in range(1, delay + 1):  # wrong answers before the query cost nothing
        obs, reward, terminated, truncated, _ = env.step(wrong)
        assert np.all(reward == 0.0) and not terminated.any() and not truncated.any()
        assert np.all(obs[:, :2] == 0.0), "the cue is visible only at the first step"
        assert np.all(obs[:, 2] == float(t == delay)) and np.allclose(obs[:, 3], t / delay)
    answer = np.where(np.arange(n) % 2 == 0, cue, wrong)  # half right, half wrong
    obs, reward, terminated, _, info = env.step(answer)
    np.testing.assert_array_equal(reward, np.where(np.arange(n) % 2 == 0, 1.0, -1.0))
    assert terminated.all() and info["episode_done"].all()
    np.testing.assert_array_equal(info["episode_return"], reward)
    assert np.all(obs[:, :2].sum(1) == 1.0), "same-step autoreset: the next episode's cue is shown"
    assert 20 < int(obs[:, 0].sum()) < 44  # fresh cues, drawn uniformly


def test_state_round_trip_replays_the_same_cues():
    env = DelayedCueVecEnv(8, seed=3, delay=2)
    env.reset()
    env.step(np.zeros(8, np.int64))
    saved = env.get_state()
    run = [env.step(np.ones(8, np.int64))[0] for _ in range(7)]
    env.set_state(saved)
    again = [env.step(np.ones(8, np.int64))[0] for _ in range(7)]
    np.testing.assert_array_equal(np.stack(run), np.stack(again))


def test_bad_settings_name_the_fix():
    with pytest.raises(ValueError, match="delay >= 1"):
        DelayedCueVecEnv(2, seed=0, delay=0)
    with pytest.raises(ValueError, match="actions in"):
        DelayedCueVecEnv(2, seed=0).step(np.array([0, 2]))
    with pytest.raises(ValueError, match="delayed_cue"):
        make_vec_env("memory", "t_maze", 2, seed=0)
    with pytest.raises(ConfigError, match="image observations"):
        load_config("configs/impala/delayed_cue.yaml", ["agent.torso=nature_cnn"])
    assert load_config("configs/impala/delayed_cue.yaml", ["env.delay=12"]).env.options()["delay"] == 12
