"""The replay layer (envs/replay.py): storage, bounds, sampling statistics, episode boundaries, checkpoints."""

import numpy as np
import pytest

from decoupled.envs.replay import SequenceReplay


def _rollout(T, B, rng, reward_p=0.0, done_p=0.0, start=0, obs_shape=(2, 3, 3)):
    """A rollout message in the actor's layout; obs encode (column, slot index) so samples can be traced back."""
    data = {
        "obs": np.zeros((T + 1, B, *obs_shape), np.uint8),
        "action": rng.integers(0, 4, (T + 1, B)),
        "reward": np.where(rng.random((T + 1, B)) < reward_p, rng.choice([-1.0, 1.0], (T + 1, B)), 0.0).astype(
            np.float32
        ),
        "terminated": rng.random((T + 1, B)) < done_p,
        "truncated": np.zeros((T + 1, B), bool),
        "behaviour_logits": np.zeros((T + 1, B, 4), np.float32),
        "truncation_value": np.zeros((T + 1, B), np.float32),
    }
    for t in range(T + 1):
        data["obs"][t, :, 0] = t
        data["obs"][t, :, 1] = (start + np.arange(B))[:, None, None] % 256
    state = [np.full((B, 5), start, np.float32) + np.arange(B)[:, None], np.zeros((B, 5), np.float32)]
    return {"data": data, "initial_state": state, "policy_version": 0}


def test_stores_each_column_as_a_sequence_with_its_start_state():
    rng = np.random.default_rng(0)
    rep = SequenceReplay(100, 5, (2, 3, 3), np.uint8, ((5,), (5,)), seed=0)
    ro = _rollout(5, 4, rng, start=10)
    rep.add(ro)
    assert rep.size == 4 and rep.num_steps == 20
    s = rep.sample_sequences(64)
    assert s["data"]["obs"].shape == (6, 64, 2, 3, 3) and s["initial_state"][0].shape == (64, 5)
    cols = s["index"]  # stored in column order
    np.testing.assert_array_equal(s["data"]["obs"][:, :, 1, 0, 0], np.broadcast_to(10 + cols, (6, 64)))
    np.testing.assert_array_equal(s["data"]["obs"][:, 0, 0, 0, 0], np.arange(6))  # time-major, slot order kept
    np.testing.assert_array_equal(s["initial_state"][0][:, 0], 10 + cols)
    np.testing.assert_array_equal(s["data"]["reward"], ro["data"]["reward"][:, cols])
    np.testing.assert_array_equal(s["data"]["action"], ro["data"]["action"][:, cols])


def test_bounded_ring_keeps_the_newest_sequences():
    rng = np.random.default_rng(1)
    rep = SequenceReplay(30, 5, (2, 3, 3), np.uint8, ((5,), (5,)))  # 6 sequences
    for k in range(5):
        rep.add(_rollout(5, 4, rng, start=4 * k))
    assert rep.size == rep.capacity == 6 and rep.added == 20
    stored = set(rep.data["obs"][:, 0, 1, 0, 0].tolist())
    assert stored == set(range(14, 20))  # the last six columns ever added
    with pytest.raises(ValueError, match="holds no sequence"):
        SequenceReplay(4, 5, (1,), np.float32)


def test_reward_windows_skewed_to_half_nonzero_and_uniform_follows_the_buffer():
    """Spec check U-4: 2% rewarding transitions; skewed draws are 0.5 +- 0.02 non-zero, uniform ones ~0.02."""
    rng = np.random.default_rng(2)
    rep = SequenceReplay(2000, 20, (2, 2, 2), np.uint8, ())
    for _ in range(5):
        ro = _rollout(20, 20, rng, reward_p=0.02, done_p=0.01, obs_shape=(2, 2, 2))
        ro["initial_state"] = []
        rep.add(ro)
    skewed = rep.sample_reward_windows(10_000, k=3, skewed=True)
    assert skewed["obs"].shape == (3, 10_000, 2, 2, 2)
    assert abs(np.mean(skewed["reward"] != 0) - 0.5) < 0.02
    uniform = rep.sample_reward_windows(10_000, k=3, skewed=False)
    assert abs(np.mean(uniform["reward"] != 0) - skewed["nonzero_fraction"]) < 0.01
    assert 0.01 < skewed["nonzero_fraction"] < 0.03


def test_reward_windows_never_cross_an_episode_start():
    rng = np.random.default_rng(3)
    rep = SequenceReplay(1000, 10, (2, 3, 3), np.uint8, ((5,), (5,)))
    for _ in range(4):
        rep.add(_rollout(10, 8, rng, reward_p=0.2, done_p=0.3))
    w = rep.sample_reward_windows(5000, k=3)
    L = rep.T + 1
    seq, tau = w["index"] // L, w["index"] % L
    first = rep.data["terminated"] | rep.data["truncated"]
    assert (tau >= 3).all()
    assert not (first[seq, tau - 1] | first[seq, tau - 2]).any()  # frames tau-3..tau-1 are of one episode
    # the window's frames are the slots tau-3..tau-1 and the target is slot tau's reward
    np.testing.assert_array_equal(w["obs"][:, :, 0, 0, 0], np.stack([tau - 3, tau - 2, tau - 1]))
    np.testing.assert_array_equal(w["reward"], rep.data["reward"][seq, tau])
    # windows that do cross a start exist in the buffer, so the test can fail
    assert (first[:, 1:-1] | first[:, 2:]).any()


def test_reward_windows_fall_back_when_no_reward_was_seen_yet():
    rng = np.random.default_rng(4)
    rep = SequenceReplay(1000, 10, (2, 3, 3), np.uint8, ((5,), (5,)))
    rep.add(_rollout(10, 4, rng, reward_p=0.0))
    w = rep.sample_reward_windows(100, k=3, skewed=True)
    assert (w["reward"] == 0).all() and w["nonzero_fraction"] == 0.0
    with pytest.raises(ValueError, match="empty"):
        SequenceReplay(1000, 10, (1,), np.float32).sample_sequences(1)


def test_sequences_keep_episode_boundaries_inside_them():
    """A stored sequence that crosses an episode end keeps its flags where they were (the losses cut there)."""
    rng = np.random.default_rng(5)
    rep = SequenceReplay(100, 5, (2, 3, 3), np.uint8, ((5,), (5,)))
    ro = _rollout(5, 2, rng)
    ro["data"]["terminated"][3, 1] = True
    rep.add(ro)
    s = rep.sample_sequences(50)
    col1 = s["index"] == 1
    assert col1.any() and (~col1).any()
    assert s["data"]["terminated"][3, col1].all() and not s["data"]["terminated"][:, ~col1].any()


def test_state_dict_round_trip_continues_the_same_samples():
    rng = np.random.default_rng(6)
    a = SequenceReplay(60, 5, (2, 3, 3), np.uint8, ((5,), (5,)), seed=7)
    for k in range(4):  # wraps around: 16 columns into 12 slots
        a.add(_rollout(5, 4, rng, reward_p=0.3, start=4 * k))
    b = SequenceReplay(60, 5, (2, 3, 3), np.uint8, ((5,), (5,)), seed=99)
    b.load_state_dict(a.state_dict())
    assert b.size == a.size and b.added == a.added and b.next == a.next
    nxt = _rollout(5, 4, rng, reward_p=0.3, start=100)
    a.add(nxt)
    b.add(nxt)
    sa, sb = a.sample_sequences(8), b.sample_sequences(8)
    for k in sa["data"]:
        np.testing.assert_array_equal(sa["data"][k], sb["data"][k])
    np.testing.assert_array_equal(sa["initial_state"][0], sb["initial_state"][0])
    wa, wb = a.sample_reward_windows(32), b.sample_reward_windows(32)
    np.testing.assert_array_equal(wa["obs"], wb["obs"])
    small = SequenceReplay(20, 5, (2, 3, 3), np.uint8, ((5,), (5,)))
    small.load_state_dict(a.state_dict())  # a smaller capacity keeps the newest
    assert small.size == 4 and set(small.data["obs"][:, 0, 1, 0, 0].tolist()) == {100, 101, 102, 103}
    with pytest.raises(ValueError, match="5-step"):
        SequenceReplay(100, 6, (2, 3, 3), np.uint8, ((5,), (5,))).load_state_dict(a.state_dict())
