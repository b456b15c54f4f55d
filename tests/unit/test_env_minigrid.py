"""envs/minigrid.py: MiniGrid behind the env contract (the symbolic view, seeding, truncation at max_steps,
episode statistics), built by config, and refused clearly for an unknown id."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("minigrid")

from decoupled.envs import make_vec_env  # noqa: E402
from decoupled.envs.minigrid import MiniGridVecEnv  # noqa: E402

try:
    from tests.unit.env_contract import check_contract, run_stream, streams_equal
except ImportError:  # tests/unit is on sys.path when pytest runs it as a rootless directory
    from env_contract import check_contract, run_stream, streams_equal


@pytest.mark.parametrize("env_id", ["MiniGrid-DoorKey-5x5-v0", "MiniGrid-FourRooms-v0", "MiniGrid-KeyCorridorS3R1-v0"])
def test_contract(env_id):
    env = MiniGridVecEnv(env_id, num_envs=3, seed=0, max_episode_steps=30)
    assert env.spec.obs_shape == (3, 7, 7) and env.spec.obs_dtype == np.uint8 and env.spec.num_actions == 7
    stats = check_contract(env, steps=120)
    assert stats.episodes > 0 and stats.truncated > 0
    assert env.settings()["max_steps"] == 30 and env.get_state() is None  # no exact snapshots (module docstring)
    env.close()


def test_truncation_at_max_steps_and_the_view_is_the_symbolic_image():
    import gymnasium as gym

    env = MiniGridVecEnv("MiniGrid-Empty-8x8-v0", num_envs=2, seed=3, max_episode_steps=5)
    obs = env.reset()
    ref = gym.make("MiniGrid-Empty-8x8-v0", max_steps=5)
    first, _ = ref.reset(seed=3)
    np.testing.assert_array_equal(obs[0], np.transpose(first["image"], (2, 0, 1)))
    for _ in range(5):
        obs, reward, terminated, truncated, info = env.step(np.array([0, 0]))  # turning never reaches the goal
    assert truncated.all() and not terminated.any() and (reward == 0).all()
    assert info["episode_done"].all() and (info["episode_frames"] == 5).all() and (info["episode_return"] == 0).all()


def test_seeded_streams_repeat_and_success_is_rewarded():
    actions = np.random.default_rng(0).integers(0, 7, size=(200, 2))
    a = run_stream(MiniGridVecEnv("MiniGrid-Empty-5x5-v0", 2, seed=7), actions)
    b = run_stream(make_vec_env("minigrid", "MiniGrid-Empty-5x5-v0", 2, 7), actions)
    assert streams_equal(a, b)
    env = MiniGridVecEnv("MiniGrid-Empty-5x5-v0", 1, seed=0)
    env.reset()
    # Empty-5x5: the agent starts at (1, 1) facing east, the goal is at (3, 3): forward, forward, right, fwd, fwd
    for action in [2, 2, 1, 2]:
        env.step(np.array([action]))
    _, reward, terminated, _, info = env.step(np.array([2]))
    assert terminated[0] and 0 < reward[0] <= 1 and info["episode_return"][0] == pytest.approx(float(reward[0]))


def test_an_unknown_id_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown MiniGrid env 'MiniGrid-Nope-v0'"):
        MiniGridVecEnv("MiniGrid-Nope-v0", 1, 0)
