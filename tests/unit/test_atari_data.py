"""Unit tests for envs.atari_data: the pinned score table, the suites, HNS and the Atari-5 regression.

Why: a human-normalised score is only as good as the table it divides by; these tests pin the table's spot values
(dqn_zoo `atari_data.py`: alien, breakout, pong), its id, the suites' membership, the name resolution
users type (`breakout`, `ALE/Breakout-v5`) and the Atari-5 formula on hand-computed values.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from decoupled.envs.atari_data import (
    ATARI5,
    ATARI5_WEIGHTS,
    ATARI10,
    ATARI26,
    ATARI57,
    ATARI_SCORES,
    SUITES,
    TABLE_ID,
    UnknownGameError,
    atari5_median_estimate,
    canonical_game,
    check_in_table,
    human_normalized_score,
    resolve_games,
)


def test_table_has_57_games_with_the_pinned_spot_values() -> None:
    assert TABLE_ID == "dqn_zoo_human_at30"
    assert len(ATARI_SCORES) == 57 == len(ATARI57)
    assert ATARI_SCORES["Alien"] == (227.8, 7127.7)
    assert ATARI_SCORES["Breakout"] == (1.7, 30.5)
    assert ATARI_SCORES["Pong"] == (-20.7, 14.6)
    assert ATARI_SCORES["VideoPinball"] == (16256.9, 17667.9)  # dqn_zoo's value (reincarnating_rl has 0.0)
    assert all(human > random for random, human in ATARI_SCORES.values())


def test_suites() -> None:
    assert {k: len(v) for k, v in SUITES.items()} == {"atari57": 57, "atari26": 26, "atari10": 10, "atari5": 5}
    assert all(g in ATARI_SCORES for games in SUITES.values() for g in games)
    assert set(ATARI5) == {"BattleZone", "DoubleDunk", "NameThisGame", "Phoenix", "Qbert"}
    assert set(ATARI5) < set(ATARI10)
    assert set(ATARI10) - set(ATARI5) == {"Amidar", "Bowling", "Frostbite", "KungFuMaster", "Riverraid"}
    assert "Breakout" in ATARI26 and "Pong" in ATARI26 and "UpNDown" in ATARI26


def test_human_normalized_score_on_known_values() -> None:
    assert human_normalized_score("Breakout", 1.7) == 0.0
    assert human_normalized_score("Breakout", 30.5) == pytest.approx(1.0)
    assert human_normalized_score("Pong", -20.7) == 0.0
    assert human_normalized_score("Pong", 14.6) == pytest.approx(1.0)
    assert human_normalized_score("Pong", 21.0) == pytest.approx(41.7 / 35.3)
    assert human_normalized_score("Alien", (227.8 + 7127.7) / 2) == pytest.approx(0.5)
    np.testing.assert_allclose(human_normalized_score("Breakout", np.array([1.7, 30.5, 59.3])), [0.0, 1.0, 2.0])


@pytest.mark.parametrize(
    ("name", "game"),
    [
        ("Breakout", "Breakout"),
        ("breakout", "Breakout"),
        ("ALE/Breakout-v5", "Breakout"),
        ("BreakoutNoFrameskip-v4", "Breakout"),
        ("space_invaders", "SpaceInvaders"),
        ("RiverRaid", "Riverraid"),
        ("ms_pacman", "MsPacman"),
    ],
)
def test_canonical_game_names(name: str, game: str) -> None:
    assert canonical_game(name) == game


def test_bad_names_are_clear_errors() -> None:
    with pytest.raises(UnknownGameError, match="did you mean Breakout"):
        canonical_game("Breakot")
    with pytest.raises(UnknownGameError, match="unknown Atari game 'Zork'"):
        resolve_games("Pong,Zork")
    with pytest.raises(ValueError, match="unknown suite 'atari6'.*did you mean atari26"):
        resolve_games(suite="atari6")
    with pytest.raises(ValueError, match="not both"):
        resolve_games("Pong", "atari5")
    with pytest.raises(ValueError, match="empty"):
        resolve_games(" , ")
    with pytest.raises(UnknownGameError, match=rf"{TABLE_ID}.*'breakout' in x.json.*Breakout"):
        check_in_table(["Pong", "breakout"], "x.json")  # MinAtar's breakout is not Atari's


def test_resolve_games_keeps_order_and_drops_duplicates() -> None:
    assert resolve_games("Pong,breakout,ALE/Pong-v5") == ["Pong", "Breakout"]
    assert resolve_games(suite="atari5") == list(ATARI5)


def test_atari5_regression() -> None:
    # Weights of Aitchison, Sweetser & Hutter 2022 (arXiv:2210.02019) as maitchison/PPO tools/plot_util.py has them
    assert ATARI5_WEIGHTS["BattleZone"] == 0.3819751237831753
    assert ATARI5_WEIGHTS["Qbert"] == 0.08048518286466755
    assert atari5_median_estimate(dict.fromkeys(ATARI5, 0.0)) == 0.0
    assert atari5_median_estimate(dict.fromkeys(ATARI5, -3.0)) == 0.0  # negative HNS count as 0 (clip)
    # Hand computation: every game at human level (HNS 100%) gives 10**(sum(w) * log10(101)) - 1 percent.
    want = (10 ** (sum(ATARI5_WEIGHTS.values()) * math.log10(101.0)) - 1.0) / 100.0
    assert atari5_median_estimate(dict.fromkeys(ATARI5, 1.0)) == pytest.approx(want)
    assert 0.84 < want < 0.86  # no intercept and sum(w) = 0.966: not exactly 1
    one = {**dict.fromkeys(ATARI5, 0.0), "NameThisGame": 2.0}  # only one game above random
    assert atari5_median_estimate(one) == pytest.approx((201.0 ** ATARI5_WEIGHTS["NameThisGame"] - 1.0) / 100.0)
    assert atari5_median_estimate(dict.fromkeys(ATARI10, 1.0), "atari10") > 0.0
    with pytest.raises(ValueError, match="needs scores on Qbert"):
        atari5_median_estimate({g: 1.0 for g in ATARI5 if g != "Qbert"})
