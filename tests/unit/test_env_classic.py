"""Unit tests for envs.classic (gymnasium classic control behind the env contract).

Why: classic control is the backend of the fast smoke and learning tests, and the one whose snapshot must make a
resumed run bit-identical; truncation at the time limit must stay `truncated`, not
`terminated`, or the learner stops bootstrapping where it should not (gym #2510).
"""

from __future__ import annotations

import numpy as np
import pytest

from decoupled.envs import EnvCrashedError, make_vec_env
from decoupled.envs.classic import ClassicVecEnv

try:
    from tests.unit.env_contract import check_contract, roundtrip_checkpoint, run_stream, streams_equal
except ImportError:  # tests/unit is on sys.path when pytest runs it as a rootless directory
    from env_contract import check_contract, roundtrip_checkpoint, run_stream, streams_equal


def _balance(obs: np.ndarray) -> np.ndarray:
    """A hand-made CartPole controller (push towards where the pole falls) that balances for 500 steps."""
    theta, theta_dot = obs[:, 2], obs[:, 3]
    return (theta + 0.5 * theta_dot > 0).astype(np.int64)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Acrobot-v1", "MountainCar-v0"])
def test_contract(env_id: str) -> None:
    env = ClassicVecEnv(env_id, num_envs=3, seed=0, max_episode_steps=25)
    assert env.spec.obs_dtype == np.float32 and env.spec.extra["obs_scale"] == 1.0
    stats = check_contract(env, steps=80)
    assert stats.episodes >= 3, "the check must see autoresets"
    env.close()


def test_cartpole_same_step_autoreset_obs_is_a_reset_state() -> None:
    # CartPole's reset draws every state variable from U(-0.05, 0.05): the obs returned on a done step must be one.
    env = ClassicVecEnv("CartPole-v1", num_envs=2, seed=1)
    stats = check_contract(env, steps=200, is_first_obs=lambda o: bool(np.all(np.abs(o) <= 0.05)))
    assert stats.terminated >= 2


def test_make_vec_env_dispatch() -> None:
    env = make_vec_env("classic", "CartPole-v1", 2, seed=3)
    assert isinstance(env, ClassicVecEnv) and env.spec.num_actions == 2 and env.spec.obs_shape == (4,)
    s = env.settings()
    assert s["max_episode_steps"] == 500 and s["num_envs"] == 2 and s["seed"] == 3


def test_cartpole_truncates_at_500_not_terminated() -> None:
    env = ClassicVecEnv("CartPole-v1", num_envs=2, seed=0)
    obs = env.reset()
    for t in range(1, 501):
        obs, reward, terminated, truncated, info = env.step(_balance(obs))
        assert not terminated.any(), f"the controller dropped the pole at step {t}"
        if t < 500:
            assert not truncated.any() and not info["episode_done"].any()
    assert truncated.all() and not terminated.any()
    assert info["episode_done"].all()
    np.testing.assert_array_equal(info["episode_return"], [500.0, 500.0])
    np.testing.assert_array_equal(info["episode_frames"], [500, 500])
    assert np.all(np.abs(obs) <= 0.05), "obs after truncation is already the next episode's first obs"
    assert not np.array_equal(obs, info["final_obs"])


def test_max_episode_steps_override_is_read_back() -> None:
    env = ClassicVecEnv("CartPole-v1", num_envs=1, seed=0, max_episode_steps=7)
    assert env.settings()["max_episode_steps"] == 7
    obs = env.reset()
    for _ in range(7):
        obs, _, terminated, truncated, info = env.step(_balance(obs))
    assert truncated[0] and not terminated[0] and info["episode_frames"][0] == 7


def test_same_seed_same_stream_different_seed_differs() -> None:
    actions = np.random.default_rng(0).integers(0, 2, size=(150, 3))
    a = run_stream(ClassicVecEnv("CartPole-v1", 3, seed=7), actions)
    b = run_stream(ClassicVecEnv("CartPole-v1", 3, seed=7), actions)
    c = run_stream(ClassicVecEnv("CartPole-v1", 3, seed=8), actions)
    assert streams_equal(a, b)
    assert not streams_equal(a, c)
    # env i is seeded with seed + i: env 1 of seed 7 is env 0 of seed 8.
    d = run_stream(ClassicVecEnv("CartPole-v1", 1, seed=8), actions[:, 1:2])
    assert all(np.array_equal(x[0][1], y[0][0]) for x, y in zip(a, d))


def test_reset_with_seed_restarts_the_stream() -> None:
    actions = np.random.default_rng(1).integers(0, 2, size=(60, 2))
    env = ClassicVecEnv("CartPole-v1", 2, seed=5)
    first = run_stream(env, actions)
    again = run_stream(env, actions, seed=5)
    assert streams_equal(first, again)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Acrobot-v1", "MountainCar-v0"])
def test_snapshot_continues_bit_identically(env_id: str, tmp_path) -> None:
    rng = np.random.default_rng(2)
    env = ClassicVecEnv(env_id, num_envs=3, seed=11, max_episode_steps=40)
    env.reset()
    for _ in range(57):  # mid-episode, after some autoresets
        env.step(rng.integers(0, env.spec.num_actions, 3))
    state = roundtrip_checkpoint(env.get_state(), tmp_path)

    restored = ClassicVecEnv(env_id, num_envs=3, seed=999, max_episode_steps=40)
    restored.set_state(state)
    actions = rng.integers(0, env.spec.num_actions, size=(200, 3))
    for a in actions:
        want = env.step(a)
        got = restored.step(a)
        for x, y in zip(want[:4], got[:4]):
            np.testing.assert_array_equal(x, y)
        for key in ("final_obs", "episode_done", "episode_return", "episode_frames"):
            np.testing.assert_array_equal(want[4][key], got[4][key])


def test_snapshot_refuses_other_env() -> None:
    env = ClassicVecEnv("CartPole-v1", 2, seed=0)
    env.reset()
    with pytest.raises(ValueError, match="snapshot"):
        ClassicVecEnv("Acrobot-v1", 2, seed=0).set_state(env.get_state())
    with pytest.raises(ValueError, match="envs"):
        ClassicVecEnv("CartPole-v1", 3, seed=0).set_state(env.get_state())


def test_continuous_action_space_is_refused() -> None:
    with pytest.raises(ValueError, match="Discrete"):
        ClassicVecEnv("Pendulum-v1", 1, seed=0)


def test_step_exception_is_wrapped_with_context() -> None:
    env = ClassicVecEnv("CartPole-v1", 2, seed=40)
    env.reset()

    def boom(action: int) -> None:
        raise RuntimeError("physics exploded")

    env._envs[1].step = boom
    with pytest.raises(EnvCrashedError, match=r"classic.*CartPole-v1.*index 1.*seed 41.*physics exploded"):
        env.step(np.zeros(2, np.int64))
