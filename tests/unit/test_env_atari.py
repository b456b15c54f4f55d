"""Unit tests for envs.atari: protocol presets, the envpool backend and the gymnasium/ale-py backend.

Why: the most common reason Atari results cannot be reproduced is a silent protocol difference (sticky actions,
no-op starts, life loss, clipped versus raw score, the 108k-frame cap). These tests read the
settings back from the built envs, check that life loss and clipping are training-only while the episode score is the
unclipped game score, check the frame cap and frame counting, and check that both backends agree.

Breakout facts used here: 5 lives; the ball is only launched by FIRE, so NOOP-only play never ends a game; bricks
in the middle and top rows give 4 and 7 points, so an unclipped reward > 1 appears once the ball reaches them. The
RAM addresses of the ball (x: 99, y: 101) and the paddle (x: 72) drive a scripted paddle that gets there quickly.
"""

from __future__ import annotations

import numpy as np
import pytest

from decoupled.envs import EnvCrashedError, make_vec_env
from decoupled.envs.atari import (
    PRESETS,
    EnvpoolAtariVecEnv,
    GymAtariVecEnv,
    ProtocolMismatchError,
    ale_rom_name,
    resolve_protocol,
)

try:
    from tests.unit.env_contract import check_contract, run_stream, streams_equal
except ImportError:  # tests/unit is on sys.path when pytest runs it as a rootless directory
    from env_contract import check_contract, run_stream, streams_equal

pytestmark = pytest.mark.atari

BACKENDS = ("atari", "atari_gym")
CLASSES = {"atari": EnvpoolAtariVecEnv, "atari_gym": GymAtariVecEnv}
NOOP, FIRE = 0, 1


def _require(backend: str) -> None:
    """Skip cleanly when the backend's optional packages are missing."""
    if backend == "atari":
        pytest.importorskip("envpool")
    else:
        pytest.importorskip("ale_py")
        pytest.importorskip("cv2", reason="gymnasium's AtariPreprocessing needs opencv (opencv-python-headless)")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    _require(request.param)
    return request.param


def _make(backend: str, num_envs: int = 1, seed: int = 0, mode: str = "train", **options):
    return make_vec_env(backend, "Breakout", num_envs, seed, mode=mode, options=options)


def _is_reset_stack(obs: np.ndarray) -> bool:
    """At the start of a game every stacked frame is the reset frame (envpool pushes it to all slots, gymnasium's
    FrameStackObservation pads with it)."""
    return all(np.array_equal(obs[0], obs[k]) for k in range(1, obs.shape[0]))


def _track_ball(ram: np.ndarray) -> np.ndarray:
    """Scripted Breakout paddle: FIRE when no ball is in play, else move under the ball."""
    ball_x, ball_y, paddle_x = ram[:, 99].astype(int), ram[:, 101].astype(int), ram[:, 72].astype(int)
    gap = ball_x - (paddle_x + 8)
    return np.where(ball_y == 0, FIRE, np.where(gap > 3, 2, np.where(gap < -3, 3, NOOP)))


# ---------------------------------------------------------------------------------------------- presets (no ALE)
def test_resolve_protocol_eval_never_clips_nor_ends_on_life_loss() -> None:
    for protocol in PRESETS:
        for clip in (True, False):
            ev = resolve_protocol(protocol, "eval", clip_rewards=clip)
            assert ev["reward_clip"] is False and ev["life_loss_terminal"] is False
            tr = resolve_protocol(protocol, "train", clip_rewards=clip)
            assert tr["reward_clip"] is clip
    assert resolve_protocol("dqn_noop30", "train")["life_loss_terminal"] is True
    assert resolve_protocol("machado2018", "train")["life_loss_terminal"] is False


def test_presets_match_the_papers() -> None:
    m, d = PRESETS["machado2018"], PRESETS["dqn_noop30"]
    assert (m["repeat_action_probability"], m["noop_max"]) == (0.25, 0)
    assert (d["repeat_action_probability"], d["noop_max"]) == (0.0, 30)
    for p in (m, d):
        assert p["max_episode_frames"] == 108_000 and p["frame_skip"] == 4 and p["max_pool_frames"] == 2
        assert p["screen_size"] == 84 and p["grayscale"] and p["frame_stack"] == 4 and not p["full_action_space"]


def test_resolve_protocol_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown Atari protocol"):
        resolve_protocol("nature", "train")
    with pytest.raises(ValueError, match="mode"):
        resolve_protocol("dqn_noop30", "test")
    with pytest.raises(ValueError, match="multiple of the frame skip"):
        resolve_protocol("dqn_noop30", "train", max_episode_frames=27_001)


def test_ale_rom_names() -> None:
    assert ale_rom_name("Breakout") == "breakout"
    assert ale_rom_name("SpaceInvaders") == "space_invaders"
    assert ale_rom_name("ALE/MontezumaRevenge-v5") == "montezuma_revenge"
    assert ale_rom_name("UpNDown") == "up_n_down"


def test_every_atari57_game_has_a_rom() -> None:
    ale_py = pytest.importorskip("ale_py")
    from decoupled.envs.atari_data import ATARI57

    assert len(ATARI57) == 57
    for game in ATARI57:
        assert ale_py.roms.get_rom_path(ale_rom_name(game)), game


# ---------------------------------------------------------------------------------------------- both backends
def test_contract(backend: str) -> None:
    env = _make(backend, num_envs=2, seed=0, max_episode_frames=400)
    assert env.spec.obs_shape == (4, 84, 84) and env.spec.obs_dtype == np.uint8 and env.spec.frame_skip == 4
    assert env.spec.extra["obs_scale"] == pytest.approx(1 / 255)
    if backend == "atari_gym" or "action_meanings" in env.spec.extra:  # envpool gets the names from ale-py
        assert env.spec.extra["action_meanings"] == ["NOOP", "FIRE", "RIGHT", "LEFT"]
    stats = check_contract(env, steps=160, is_first_obs=_is_reset_stack, pixels=True)
    assert stats.episodes >= 2 and stats.terminated >= 2, "the check must see game ends and life losses"
    env.close()


@pytest.mark.parametrize("protocol", list(PRESETS))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_preset_settings_are_read_back(backend: str, protocol: str, mode: str) -> None:
    env = _make(backend, mode=mode, protocol=protocol)
    s = env.settings()
    p = PRESETS[protocol]
    assert (s["protocol"], s["mode"]) == (protocol, mode)
    assert s["repeat_action_probability"] == pytest.approx(p["repeat_action_probability"])
    # envpool cannot play zero no-ops (noop_max=0 segfaults): it plays exactly one no-op frame instead.
    assert s["noop_max"] == (max(1, p["noop_max"]) if backend == "atari" else p["noop_max"])
    assert s["life_loss_terminal"] is (mode == "train" and p["life_loss_terminal_in_training"])
    assert s["reward_clip"] is (mode == "train")
    assert s["max_episode_frames"] == 108_000 and s["frame_skip"] == 4 and s["frame_stack"] == 4
    assert s["screen_size"] == [84, 84] and s["grayscale"] is True and s["full_action_space"] is False
    assert s["num_actions"] == 4 and s["protocol_settings"] == resolve_protocol(protocol, mode)
    if backend == "atari":
        assert s["envpool_config"]["use_fire_reset"] is False
        assert s["envpool_config"]["max_episode_steps"] == 27_000
    else:
        assert s["ale_frameskip"] == 1  # the skip is AtariPreprocessing's, not ALE's (no double skipping)
    env.close()


def test_protocol_mismatch_is_refused(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if backend == "atari":
        real = EnvpoolAtariVecEnv._read_config
        fake = staticmethod(lambda pool: {**real(pool), "repeat_action_probability": 0.25})
        monkeypatch.setattr(EnvpoolAtariVecEnv, "_read_config", fake)
    else:
        real = GymAtariVecEnv._read_back
        monkeypatch.setattr(GymAtariVecEnv, "_read_back", lambda self, i=0: {**real(self, i), "noop_max": 7})
    with pytest.raises(ProtocolMismatchError, match="differs from its protocol"):
        _make(backend, protocol="dqn_noop30")


def test_same_seed_same_stream_different_seed_differs(backend: str) -> None:
    actions = np.random.default_rng(0).integers(0, 4, size=(120, 2))
    a = run_stream(_make(backend, 2, seed=3, max_episode_frames=240), actions)
    b = run_stream(_make(backend, 2, seed=3, max_episode_frames=240), actions)
    c = run_stream(_make(backend, 2, seed=4, max_episode_frames=240), actions)
    assert streams_equal(a, b)
    assert not streams_equal(a, c)


def test_reset_with_seed_restarts_the_stream(backend: str) -> None:
    actions = np.random.default_rng(1).integers(0, 4, size=(60, 2))
    env = _make(backend, 2, seed=9)
    first = run_stream(env, actions)
    again = run_stream(env, actions, seed=9)
    assert streams_equal(first, again)
    np.testing.assert_array_equal(env.reset(seed=9), env.reset(seed=9))
    env.step(actions[0])
    assert all(_is_reset_stack(o) for o in env.reset()), "reset() without a seed must start new games"


def test_frame_cap_truncates_not_terminates(backend: str) -> None:
    # 200 frames = 50 agent steps; NOOP never launches the ball, so only the cap can end the game.
    env = _make(backend, 2, seed=0, protocol="machado2018", max_episode_frames=200)
    env.reset()
    for t in range(1, 101):
        obs, reward, terminated, truncated, info = env.step(np.full(2, NOOP))
        assert not terminated.any() and not reward.any()
        assert truncated.all() == (t % 50 == 0) and info["episode_done"].all() == (t % 50 == 0)
        if t % 50 == 0:
            np.testing.assert_array_equal(info["episode_frames"], [200, 200])  # emulator frames, not agent steps
            np.testing.assert_array_equal(info["episode_return"], [0.0, 0.0])
            assert all(_is_reset_stack(o) for o in obs)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_dqn_noop30_life_loss_is_a_training_terminal_only(backend: str, mode: str) -> None:
    env = _make(backend, 1, seed=1, mode=mode, protocol="dqn_noop30")
    env.reset()
    terminals, lives_at_terminal, steps, raw_sum = 0, [], 0, 0.0
    while True:
        _, reward, terminated, truncated, info = env.step(np.array([FIRE]))  # paddle still: every life is lost
        steps += 1
        assert not truncated[0] and steps < 3000
        raw_sum += float(reward[0])
        if terminated[0]:
            terminals += 1
            lives_at_terminal.append(int(info["lives"][0]))
        if info["episode_done"][0]:
            break
        assert np.isnan(info["episode_return"][0]) and info["episode_frames"][0] == 0
    assert terminals == (5 if mode == "train" else 1)
    if mode == "train":
        assert lives_at_terminal[:4] == [4, 3, 2, 1], "one terminal per lost life, the game goes on"
    # The episode statistics cover the whole game (all 5 lives), counted in emulator frames.
    assert info["episode_frames"][0] == 4 * steps
    assert info["episode_return"][0] == pytest.approx(raw_sum)  # Breakout's bottom rows give 1: clipping is a no-op


def test_rewards_clipped_in_training_only_and_episode_return_unclipped(backend: str) -> None:
    # Same seed and actions in train and eval mode of machado2018 (no life-loss terminals): identical games, so the
    # only difference must be the clipping of the per-step reward. Play until a game that scored a 4- or 7-point
    # brick has ended (game over or the 1,500-step cap).
    frames = 1500 * 4
    train = _make(backend, 1, seed=0, mode="train", protocol="machado2018", max_episode_frames=frames)
    evalu = _make(backend, 1, seed=0, mode="eval", protocol="machado2018", max_episode_frames=frames)
    train.reset()
    evalu.reset()
    sum_train = sum_eval = 0.0
    checked = False
    for _ in range(6000):
        a = _track_ball(evalu.ram())
        _, rt, _, _, it = train.step(a)
        _, re, _, _, ie = evalu.step(a)
        assert rt[0] == np.sign(re[0]), "training rewards are the clipped game rewards"
        sum_train += float(rt[0])
        sum_eval += float(re[0])
        assert it["episode_done"][0] == ie["episode_done"][0], "train and eval games must stay identical"
        if ie["episode_done"][0]:
            assert it["episode_return"][0] == ie["episode_return"][0] == sum_eval  # unclipped in both modes
            if sum_eval > sum_train:
                checked = True
                break
            sum_train = sum_eval = 0.0
    assert checked, "the scripted paddle should reach the 4- and 7-point bricks"


def test_dqn_noop30_training_score_is_unclipped(backend: str) -> None:
    # dqn_noop30 in training: rewards are clipped and lives end learning episodes, but the game's score (over all
    # lives, unclipped) is what episode_return reports. Track the ball for 1,000 steps, then let the game end.
    env = _make(backend, 1, seed=0, mode="train", protocol="dqn_noop30")
    env.reset()
    clipped, steps = 0.0, 0
    while True:
        a = _track_ball(env.ram()) if steps < 1000 else np.array([FIRE])
        _, reward, _, truncated, info = env.step(a)
        steps += 1
        assert reward[0] in (0.0, 1.0) and not truncated[0] and steps < 6000
        clipped += float(reward[0])
        if info["episode_done"][0]:
            break
    assert info["episode_return"][0] > clipped, "a 4- or 7-point brick must count in full in the game score"
    assert info["episode_frames"][0] == 4 * steps


def test_backends_agree() -> None:
    _require("atari")
    _require("atari_gym")
    keys = (
        "frame_skip",
        "repeat_action_probability",
        "life_loss_terminal",
        "reward_clip",
        "max_episode_frames",
        "frame_stack",
        "screen_size",
        "grayscale",
        "max_pool_frames",
        "full_action_space",
        "num_actions",
        "obs_scale",
        "protocol",
        "mode",
        "protocol_settings",
    )
    for protocol in PRESETS:
        for game, n_actions in (("Breakout", 4), ("Pong", 6)):
            a = EnvpoolAtariVecEnv(game, 1, 0, protocol=protocol)
            g = GymAtariVecEnv(game, 1, 0, protocol=protocol)
            assert a.spec == g.spec and a.spec.num_actions == n_actions
            sa, sg = a.settings(), g.settings()
            assert {k: sa[k] for k in keys} == {k: sg[k] for k in keys}
            a.close()
            g.close()
    # Same preprocessing: with no no-op starts and NOOP actions both emulators show the same pixels.
    a = EnvpoolAtariVecEnv("Breakout", 1, 0, protocol="machado2018")
    g = GymAtariVecEnv("Breakout", 1, 0, protocol="machado2018")
    np.testing.assert_array_equal(a.reset(), g.reset())
    for _ in range(20):
        np.testing.assert_array_equal(a.step(np.array([NOOP]))[0], g.step(np.array([NOOP]))[0])


def test_gym_backend_renders_rgb() -> None:
    _require("atari_gym")
    env = GymAtariVecEnv("Breakout", 2, 0)
    env.reset()
    frame = env.render_rgb(1)
    assert frame.shape == (210, 160, 3) and frame.dtype == np.uint8 and frame.any()


def test_crash_is_wrapped_with_context(backend: str) -> None:
    env = _make(backend, 2, seed=30)
    env.reset()

    def boom(*args: object) -> None:
        raise RuntimeError("emulator died")

    if backend == "atari":
        env._pool.send = boom  # a step is envpool send + recv
        pattern = r"envpool.*Breakout.*seeds 30.*emulator died"
    else:
        env._envs[1].step = boom
        pattern = r"gymnasium/ale-py.*Breakout.*index 1.*seed 31.*emulator died"
    with pytest.raises(EnvCrashedError, match=pattern):
        env.step(np.zeros(2, np.int64))


def test_unknown_game_is_a_clear_error(backend: str) -> None:
    with pytest.raises(ValueError, match="cannot build"):
        make_vec_env(backend, "NotAGame", 1, 0)


@pytest.mark.parametrize("game,steps", [("Breakout", 700), ("Pong", 1000)])
def test_both_backends_play_the_same_game_frame_for_frame_when_their_randomness_is_pinned(monkeypatch, game, steps):
    """With one no-op frame at every reset and no sticky actions, nothing random is left in either backend: the same
    actions must give the same rewards, episode ends and stacked frames on both (envpool bundles its own ALE build;
    this is what makes their random-policy score distributions, compared in `decoupled bench backends`, differ
    only through their random number generators). Breakout and Pong are paddle games."""
    _require("atari")
    _require("atari_gym")
    monkeypatch.setitem(PRESETS, "pinned", {**PRESETS["dqn_noop30"], "noop_max": 1})
    envs = [cls(game, 2, seed=0, mode="eval", protocol="pinned") for cls in (EnvpoolAtariVecEnv, GymAtariVecEnv)]
    try:
        assert envs[0].spec.num_actions == envs[1].spec.num_actions
        actions = np.random.default_rng(0).integers(0, envs[0].spec.num_actions, (steps, 2))
        obs = [e.reset(seed=0) for e in envs]
        assert np.array_equal(obs[0], obs[1])
        ends = 0
        for t in range(steps):
            (o0, r0, d0, c0, i0), (o1, r1, d1, c1, i1) = (e.step(actions[t]) for e in envs)
            assert np.array_equal(r0, r1), f"step {t}: rewards {r0} vs {r1}"
            assert np.array_equal(d0, d1) and np.array_equal(c0, c1), f"step {t}: episode ends differ"
            assert np.array_equal(o0, o1), f"step {t}: frames differ"
            ends += int(d0.sum())
            for key in ("episode_return", "episode_frames"):
                assert np.array_equal(i0[key], i1[key], equal_nan=True), f"step {t}: {key} differs"
        assert ends >= (1 if game == "Breakout" else 0)
    finally:
        for e in envs:
            e.close()
