"""Atari suites and the pinned random / human score table, for human-normalised scores (HNS).

Score table `dqn_zoo_human_at30`: the 57 games of google-deepmind/dqn_zoo, `dqn_zoo/atari_data.py`
(`_ATARI_DATA`, Apache-2.0; copied from that file). Conditions there: returns averaged over
at least 3 episodes, each starting with 1-30 random no-ops, capped at 108,000 frames (30 minutes); "human" is a
professional game tester (the "human_at30" numbers; Nature DQN used others, dqn_zoo #28). The random column equals
google-research/reincarnating_rl `atari_scores.py` for 56 games (Video Pinball: 16256.9 here, 0.0 there).
HNS = (score - random) / (human - random): 0 is random play, 1 is the human tester. Every normalised score this
package writes carries `TABLE_ID`, so numbers against different tables are never mixed silently.

Suites:

* `atari57`: every game of the table.
* `atari26`: the Atari-100k set of Kaiser et al. 2019 (SimPLe, arXiv:1903.00374).
* `atari5`, `atari10`: Aitchison, Sweetser & Hutter 2022, "Atari-5: Distilling the Arcade Learning Environment
  down to Five Games" (arXiv:2210.02019; ICML 2023, PMLR 202:421-438). A linear regression in log space on the
  subset's HNS estimates the 57-game median HNS (within about 10% for Atari-5, 7% for Atari-10); see
  `atari5_median_estimate`.

Game names are the ALE id names (`ALE/<Game>-v5`, envpool's `<Game>-v5`): `Breakout`, `SpaceInvaders`, `Riverraid`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping

import numpy as np

TABLE_ID = "dqn_zoo_human_at30"
TABLE_SOURCE = "google-deepmind/dqn_zoo dqn_zoo/atari_data.py _ATARI_DATA (Apache-2.0): random and human_at30 scores"

# game -> (random, human), in the order of the source table.
ATARI_SCORES: dict[str, tuple[float, float]] = {
    "Alien": (227.8, 7127.7),
    "Amidar": (5.8, 1719.5),
    "Assault": (222.4, 742.0),
    "Asterix": (210.0, 8503.3),
    "Asteroids": (719.1, 47388.7),
    "Atlantis": (12850.0, 29028.1),
    "BankHeist": (14.2, 753.1),
    "BattleZone": (2360.0, 37187.5),
    "BeamRider": (363.9, 16926.5),
    "Berzerk": (123.7, 2630.4),
    "Bowling": (23.1, 160.7),
    "Boxing": (0.1, 12.1),
    "Breakout": (1.7, 30.5),
    "Centipede": (2090.9, 12017.0),
    "ChopperCommand": (811.0, 7387.8),
    "CrazyClimber": (10780.5, 35829.4),
    "Defender": (2874.5, 18688.9),
    "DemonAttack": (152.1, 1971.0),
    "DoubleDunk": (-18.6, -16.4),
    "Enduro": (0.0, 860.5),
    "FishingDerby": (-91.7, -38.7),
    "Freeway": (0.0, 29.6),
    "Frostbite": (65.2, 4334.7),
    "Gopher": (257.6, 2412.5),
    "Gravitar": (173.0, 3351.4),
    "Hero": (1027.0, 30826.4),
    "IceHockey": (-11.2, 0.9),
    "Jamesbond": (29.0, 302.8),
    "Kangaroo": (52.0, 3035.0),
    "Krull": (1598.0, 2665.5),
    "KungFuMaster": (258.5, 22736.3),
    "MontezumaRevenge": (0.0, 4753.3),
    "MsPacman": (307.3, 6951.6),
    "NameThisGame": (2292.3, 8049.0),
    "Phoenix": (761.4, 7242.6),
    "Pitfall": (-229.4, 6463.7),
    "Pong": (-20.7, 14.6),
    "PrivateEye": (24.9, 69571.3),
    "Qbert": (163.9, 13455.0),
    "Riverraid": (1338.5, 17118.0),
    "RoadRunner": (11.5, 7845.0),
    "Robotank": (2.2, 11.9),
    "Seaquest": (68.4, 42054.7),
    "Skiing": (-17098.1, -4336.9),
    "Solaris": (1236.3, 12326.7),
    "SpaceInvaders": (148.0, 1668.7),
    "StarGunner": (664.0, 10250.0),
    "Surround": (-10.0, 6.5),
    "Tennis": (-23.8, -8.3),
    "TimePilot": (3568.0, 5229.2),
    "Tutankham": (11.4, 167.6),
    "UpNDown": (533.4, 11693.2),
    "Venture": (0.0, 1187.5),
    "VideoPinball": (16256.9, 17667.9),
    "WizardOfWor": (563.5, 4756.5),
    "YarsRevenge": (3092.9, 54576.9),
    "Zaxxon": (32.5, 9173.3),
}

ATARI57: tuple[str, ...] = tuple(ATARI_SCORES)

# Kaiser et al. 2019 (SimPLe, arXiv:1903.00374): the 26 games of the Atari-100k benchmark (100k agent steps).
ATARI26: tuple[str, ...] = (
    "Alien",
    "Amidar",
    "Assault",
    "Asterix",
    "BankHeist",
    "BattleZone",
    "Boxing",
    "Breakout",
    "ChopperCommand",
    "CrazyClimber",
    "DemonAttack",
    "Freeway",
    "Frostbite",
    "Gopher",
    "Hero",
    "Jamesbond",
    "Kangaroo",
    "Krull",
    "KungFuMaster",
    "MsPacman",
    "Pong",
    "PrivateEye",
    "Qbert",
    "RoadRunner",
    "Seaquest",
    "UpNDown",
)

# Aitchison, Sweetser & Hutter 2022 (arXiv:2210.02019): regression weights on log10(1 + max(HNS%, 0)), no intercept
# (`USE_INTERCEPT = False` in maitchison/Atari-5 `atari5.py`). The values are the ones the first author hard-codes in
# maitchison/PPO `tools/plot_util.py` (`AtariScoreNormalizer.SUBSETS`), his code for the paper; they were not checked
# digit by digit against the paper's printed table. Cross-validated relative error: Atari-5 10.4%, Atari-10 7.2%.
ATARI5_WEIGHTS: dict[str, float] = {
    "BattleZone": 0.3819751237831753,
    "DoubleDunk": 0.0679099488887574,
    "NameThisGame": 0.310804148620847,
    "Phoenix": 0.12412619402774641,
    "Qbert": 0.08048518286466755,
}
ATARI10_WEIGHTS: dict[str, float] = {
    "Amidar": 0.08246357439570691,
    "Bowling": 0.0559032813915904,
    "Frostbite": 0.06912572845204429,
    "KungFuMaster": 0.09861731598935165,
    "Riverraid": 0.048594292965417056,  # "RiverRaid" in the source; the ALE id is Riverraid
    "BattleZone": 0.18882008828001498,
    "DoubleDunk": 0.08519154019954558,
    "NameThisGame": 0.12869695652405946,
    "Phoenix": 0.16432707026384483,
    "Qbert": 0.05922863791062832,
}
ATARI5: tuple[str, ...] = tuple(ATARI5_WEIGHTS)
ATARI10: tuple[str, ...] = tuple(ATARI10_WEIGHTS)

SUITES: dict[str, tuple[str, ...]] = {"atari57": ATARI57, "atari26": ATARI26, "atari10": ATARI10, "atari5": ATARI5}
REGRESSIONS: dict[str, dict[str, float]] = {"atari5": ATARI5_WEIGHTS, "atari10": ATARI10_WEIGHTS}


class UnknownGameError(ValueError):
    """A game name that is not one of the 57 (the message lists close matches)."""


def _key(name: str) -> str:
    """`ALE/Breakout-v5`, `BreakoutNoFrameskip-v4`, `breakout`, `space_invaders` -> `breakout`, `spaceinvaders`."""
    name = re.sub(r"-v\d+$", "", name.strip().split("/")[-1])
    name = re.sub(r"(NoFrameskip|Deterministic)$", "", name)
    return re.sub(r"[^a-z0-9]", "", name.lower())


_BY_KEY = {_key(g): g for g in ATARI57}


def canonical_game(name: str) -> str:
    """The table's name for `name` (case, underscores and ALE id decorations are ignored)."""
    game = _BY_KEY.get(_key(name))
    if game is None:
        close = difflib.get_close_matches(_key(name), list(_BY_KEY), n=4, cutoff=0.6)
        hint = f"; did you mean {', '.join(_BY_KEY[c] for c in close)}?" if close else ""
        raise UnknownGameError(f"unknown Atari game {name!r}{hint} (the 57 games: see envs/atari_data.py)")
    return game


def resolve_games(games: str | Iterable[str] | None = None, suite: str | None = None) -> list[str]:
    """A comma-separated list or an iterable of game names, or a named suite -> canonical names, in order, no
    duplicates. Exactly one of `games` and `suite` must be given."""
    if (games is None) == (suite is None):
        raise ValueError("give either a game list or a suite, not both (nor neither)")
    if suite is not None:
        if suite not in SUITES:
            close = difflib.get_close_matches(suite, list(SUITES), n=2)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ValueError(f"unknown suite {suite!r}{hint} (choose one of {', '.join(SUITES)})")
        return list(SUITES[suite])
    names = [g for g in (games.split(",") if isinstance(games, str) else games) if g.strip()]
    if not names:
        raise ValueError("the game list is empty")
    out: list[str] = []
    for game in map(canonical_game, names):
        if game not in out:
            out.append(game)
    return out


def check_in_table(games: Iterable[str], where: str = "") -> None:
    """Raise `UnknownGameError` naming every game the table has no random / human score for."""
    missing = [g for g in games if g not in ATARI_SCORES]
    if missing:
        src = f" in {where}" if where else ""
        hints = [f"{g!r} -> {_BY_KEY[_key(g)]}?" for g in missing if _key(g) in _BY_KEY]
        hint = f" (a different game with a similar name: {', '.join(hints)})" if hints else ""
        raise UnknownGameError(
            f"no random/human scores in table {TABLE_ID} for {', '.join(map(repr, missing))}{src}: human-normalised "
            f"scores exist for the 57 Atari games only, named as in ALE ids, e.g. Breakout{hint}"
        )


def human_normalized_score(game: str, score: float | np.ndarray) -> float | np.ndarray:
    """(score - random) / (human - random) against `TABLE_ID`; 0 = random play, 1 = the human tester."""
    check_in_table([game])
    random, human = ATARI_SCORES[game]
    out = (np.asarray(score, np.float64) - random) / (human - random)
    return float(out) if out.ndim == 0 else out


def atari5_median_estimate(hns: Mapping[str, float], subset: str = "atari5") -> float:
    """Aitchison et al. 2022's estimate of the 57-game median HNS from the subset's HNS (fractions, 1 = human).

    est% = 10 ** sum_i w_i * log10(1 + max(HNS%_i, 0)) - 1, with HNS% = 100 * HNS (the regression is fitted on
    percentages, without an intercept). Every game of the subset must be in `hns`.
    """
    if subset not in REGRESSIONS:
        raise ValueError(f"no regression for {subset!r}; choose one of {', '.join(REGRESSIONS)}")
    weights = REGRESSIONS[subset]
    missing = [g for g in weights if g not in hns]
    if missing:
        raise ValueError(f"the {subset} estimate needs scores on {', '.join(missing)}")
    log_score = sum(w * np.log10(1.0 + max(100.0 * float(hns[g]), 0.0)) for g, w in weights.items())
    return float((10.0**log_score - 1.0) / 100.0)
