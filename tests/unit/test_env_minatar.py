"""Unit tests for envs.minatar (MinAtar, Young & Tian 2019, behind the env contract).

Why: MinAtar is the CPU learning benchmark, so its defaults must be the paper's (sticky actions 0.1, difficulty
ramping, minimal action set), its seeding must make runs repeatable (MinAtar keeps its own RandomState), and a
snapshot must let a resumed run continue exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("minatar")

from decoupled.envs import EnvCrashedError, make_vec_env  # noqa: E402
from decoupled.envs.minatar import GAMES, MinAtarVecEnv, canonical_game  # noqa: E402

try:
    from tests.unit.env_contract import check_contract, roundtrip_checkpoint, run_stream, streams_equal
except ImportError:  # tests/unit is on sys.path when pytest runs it as a rootless directory
    from env_contract import check_contract, roundtrip_checkpoint, run_stream, streams_equal

# Minimal action sets and channel counts of minatar 1.0.15 (environments/*.py).
EXPECTED = {
    "asterix": ([0, 1, 2, 3, 4], 4),
    "breakout": ([0, 1, 3], 4),
    "freeway": ([0, 2, 4], 7),
    "seaquest": ([0, 1, 2, 3, 4, 5], 10),
    "space_invaders": ([0, 1, 3, 5], 6),
}


@pytest.mark.parametrize("game", GAMES)
def test_contract(game: str) -> None:
    env = MinAtarVecEnv(game, num_envs=3, seed=0, max_episode_steps=60)
    actions, channels = EXPECTED[game]
    assert env.spec.obs_shape == (channels, 10, 10) and env.spec.obs_dtype == np.uint8
    assert env.spec.num_actions == len(actions) and env.settings()["minimal_action_set"] == actions
    assert env.spec.extra["obs_scale"] == 1.0
    stats = check_contract(env, steps=150)
    assert stats.episodes >= 3, "the check must see autoresets"
    obs = env.reset()
    assert set(np.unique(obs)) <= {0, 1}, "MinAtar planes are binary"


@pytest.mark.parametrize(
    ("env_id", "game"),
    [
        ("breakout", "breakout"),
        ("MinAtar/Breakout-v1", "breakout"),
        ("MinAtar/SpaceInvaders-v0", "space_invaders"),
        ("SpaceInvaders", "space_invaders"),
        ("space_invaders", "space_invaders"),
        ("Seaquest-v1", "seaquest"),
    ],
)
def test_game_name_mapping(env_id: str, game: str) -> None:
    assert canonical_game(env_id) == game


def test_unknown_game_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown MinAtar game"):
        MinAtarVecEnv("pong", 1, seed=0)


def test_defaults_are_the_papers_and_read_back() -> None:
    env = make_vec_env("minatar", "MinAtar/Asterix-v1", 2, seed=0)
    s = env.settings()
    assert s["sticky_action_prob"] == 0.1 and s["difficulty_ramping"] is True
    assert s["game"] == "asterix" and s["max_episode_steps"] is None
    off = MinAtarVecEnv("asterix", 1, seed=0, sticky_action_prob=0.0, difficulty_ramping=False).settings()
    assert off["sticky_action_prob"] == 0.0 and off["difficulty_ramping"] is False


def test_same_seed_same_stream_different_seed_differs() -> None:
    actions = np.random.default_rng(0).integers(0, 3, size=(200, 2))
    a = run_stream(MinAtarVecEnv("breakout", 2, seed=3), actions)
    b = run_stream(MinAtarVecEnv("breakout", 2, seed=3), actions)
    c = run_stream(MinAtarVecEnv("breakout", 2, seed=4), actions)
    assert streams_equal(a, b)
    assert not streams_equal(a, c)
    # env i is seeded with seed + i: env 1 of seed 3 plays as env 0 of seed 4.
    d = run_stream(MinAtarVecEnv("breakout", 1, seed=4), actions[:, 1:2])
    assert all(np.array_equal(x[0][1], y[0][0]) for x, y in zip(a, d))


def test_truncation_is_not_termination() -> None:
    env = MinAtarVecEnv("freeway", 2, seed=0, max_episode_steps=30)  # freeway only ends after 2500 steps
    env.reset()
    for t in range(1, 31):
        _, _, terminated, truncated, info = env.step(np.zeros(2, np.int64))
        assert not terminated.any()
        assert truncated.all() == (t == 30)
    np.testing.assert_array_equal(info["episode_frames"], [30, 30])


def test_termination_on_game_end() -> None:
    # Breakout with NOOP only: the ball falls past the paddle and the game ends, marked terminated.
    env = MinAtarVecEnv("breakout", 1, seed=0, sticky_action_prob=0.0)
    env.reset()
    for _ in range(200):
        _, _, terminated, truncated, info = env.step(np.zeros(1, np.int64))
        if terminated[0]:
            break
    assert terminated[0] and not truncated[0] and info["episode_done"][0]


@pytest.mark.parametrize("game", GAMES)
def test_snapshot_continues_bit_identically(game: str, tmp_path) -> None:
    rng = np.random.default_rng(5)
    env = MinAtarVecEnv(game, 2, seed=21, max_episode_steps=150)
    n = env.spec.num_actions
    env.reset()
    for _ in range(97):
        env.step(rng.integers(0, n, 2))
    state = roundtrip_checkpoint(env.get_state(), tmp_path)
    restored = MinAtarVecEnv(game, 2, seed=0, max_episode_steps=150)
    restored.set_state(state)
    for a in rng.integers(0, n, size=(200, 2)):
        want, got = env.step(a), restored.step(a)
        for x, y in zip(want[:4], got[:4]):
            np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(want[4]["episode_frames"], got[4]["episode_frames"])
        np.testing.assert_array_equal(want[4]["final_obs"], got[4]["final_obs"])


def test_step_exception_is_wrapped_with_context() -> None:
    env = MinAtarVecEnv("breakout", 2, seed=10)
    env.reset()

    def boom(action: int) -> None:
        raise RuntimeError("grid broke")

    env._envs[1].act = boom
    with pytest.raises(EnvCrashedError, match=r"minatar.*breakout.*index 1.*seed 11.*grid broke"):
        env.step(np.zeros(2, np.int64))


@pytest.mark.parametrize("game", ["breakout", "seaquest", "space_invaders"])
def test_union_channels_place_each_games_planes_by_name_in_one_layout(game):
    from decoupled.envs.minatar import UNION_CHANNELS

    own = make_vec_env("minatar", game, 2, 4)
    union = make_vec_env("minatar", game, 2, 4, options={"channels": "union"})
    try:
        names = own._envs[0].env.channels  # name -> the game's own plane
        assert union.spec.obs_shape == (len(UNION_CHANNELS), 10, 10) and own.spec.num_actions == union.spec.num_actions
        pairs = [(own.reset(4), union.reset(4))]
        for t in range(20):
            a = np.full(2, t % own.spec.num_actions)
            pairs.append((own.step(a)[0], union.step(a)[0]))
        for o, u in pairs:
            for name, plane in names.items():
                np.testing.assert_array_equal(u[:, UNION_CHANNELS.index(name)], o[:, plane])
            assert u.sum() == o.sum()  # nothing else lit
    finally:
        own.close()
        union.close()


def test_full_action_set_plays_minatars_six_actions():
    env = make_vec_env("minatar", "breakout", 1, 0, options={"full_action_set": True})
    try:
        assert env.spec.num_actions == 6 and env.spec.extra["action_meanings"][5] == "FIRE"
        assert env.settings()["action_set"] == [0, 1, 2, 3, 4, 5]
        env.reset(0)
        for a in range(6):
            env.step(np.array([a]))
    finally:
        env.close()
