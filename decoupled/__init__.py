"""decoupled: actor-learner RL agents of the DeepMind 2016-2017 family in PyTorch.

The Python API (decoupled/api.py), SB3-like where it fits:

    decoupled.train(config, **overrides)        train from a YAML path, a packaged name ("impala/catch") or a dict
    decoupled.load_policy(run_dir)              a trained policy: predict(obs, state) -> (action, state)
    decoupled.make_env(config_or_id)            the vectorised env of a run, a config or a gymnasium id
    decoupled.evaluate(policy, episodes=...)    whole-episode scores

Sub-packages: `decoupled.agents` (nets and losses, the agent registry), `decoupled.envs` (the env layer and its
backend registry, the replay layer), `decoupled.runners` (training machinery, evaluation tools, benchmarks, the
command line) and `decoupled.configs` (the shipped configs). Importing this package is cheap: the API's modules
(and torch) load on first use.
"""

from __future__ import annotations

import os
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

# torch's OpenMP threads spin while they wait for work by default. Here they share the cores with envpool's threads,
# the actor and the learner threads, and any other process, and spinning threads starve them: on Breakout with a
# second process running, the actor made 146 agent steps/s with spinning threads and 928 with passive ones. OpenMP
# reads this when torch loads it, so it is set before anything of this package imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    __version__ = version("decoupled")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

_API = ("train", "load_policy", "make_env", "evaluate", "load_config", "Policy", "PolicyState")
__all__ = ["__version__", *_API]

if TYPE_CHECKING:
    from decoupled.api import Policy, PolicyState, evaluate, load_config, load_policy, make_env, train  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module("decoupled.api"), name)
    raise AttributeError(f"module 'decoupled' has no attribute {name!r}")
