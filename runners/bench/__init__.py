"""`decoupled bench`: speed and learning benchmarks. `commands` holds the subcommands and the throughput and
labyrinth benchmarks; `dni` the synthetic-gradient benchmarks; `learning` the multi-seed learning benchmarks
(MinAtar, UNREAL against its base agent, FeUdal Networks); `peer` the Stable-Baselines3 peers; `backends` the
random-policy equivalence of the two Atari backends; `feudal_checks` the FeUdal Networks checks (oracle Manager,
sub-goals); `nav_checks` the navigation agent's checks (its depth head supervised on random-walk frames, the
evaluation of `bench nav`). `emit` prints one result as a JSON line for all of them.

Benchmarks use the training machinery and the evaluation tools; nothing imports them but the command line.
"""

import json
from typing import Any


def emit(record: dict[str, Any]) -> dict[str, Any]:
    """Print one benchmark result as a JSON line (every `decoupled bench` command does) and return it."""
    print(json.dumps(record), flush=True)
    return record


class BenchUsageError(ValueError):
    """A bad argument of a `decoupled bench` command (an unknown name, a config that does not load): the command line
    prints the message and exits 2, before the benchmark starts."""
