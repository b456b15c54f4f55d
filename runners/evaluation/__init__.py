"""The user tools over trained runs: `decoupled eval` (`evaluate`: checkpoints or a random policy under an Atari
protocol, scores and videos), `decoupled suite` (`suite`: one run per game, then eval and report), `decoupled report`
(`report`: human-normalised scores, aggregates with bootstrap CIs), `decoupled plot` (`plot`), `decoupled render`
(`render`: labyrinth episodes).

They build on the training machinery (configs, checkpoints, the net's inputs) and never the other way round.
"""

import argparse
from pathlib import Path


def check_out_dir(out: str | Path, flag: str = "--out") -> Path:
    """`out` as an output dir to be (a dir, or nothing yet, with no file where one of its dirs belongs); a ValueError
    that says what to give instead, before any work is done."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {out} is a file: give a dir (the results are written into it)")
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ValueError(f"{flag} {out}: {blocking} is a file, not a dir; give a dir path")
    return out


def positive_int(text: str) -> int:
    """argparse `type=` of a count that must be at least 1: a bad value is a usage error (exit 2) naming the option."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (give one >= 1)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small (give a whole number >= 1)")
    return value


def non_negative_int(text: str) -> int:
    """argparse `type=` of a count that may be 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (give one >= 0)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative (give a whole number >= 0)")
    return value


def positive_float(text: str) -> float:
    """argparse `type=` of a number of seconds that must be above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (give one > 0)") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value:g} is too small (give a number > 0)")
    return value
