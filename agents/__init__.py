"""Agents: the maths (nets and losses). `get_agent(name)` returns an agent's `AgentDef`.

Agents are found in a registry: the built-in ones (`impala`, `unreal`, `feudal`, `progressive`, `distill`, `nav`), those
added with `register_agent`, and those that installed packages declare under the entry-point group
`decoupled.agents` (docs/extending.md).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from decoupled.agents.config import AgentConfigBase, AgentSetupError
from decoupled.plugins import EntryPointRegistry

if TYPE_CHECKING:
    from decoupled.agents.base import AgentDef, LearnerHook


def __getattr__(name: str) -> Any:  # AgentDef and LearnerHook import torch: only when asked for
    if name in ("AgentDef", "LearnerHook"):
        from decoupled.agents import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# built-in agents, imported when first asked for (each module defines AGENT)
_BUILTIN_MODULES = {
    "impala": "decoupled.agents.impala",
    "unreal": "decoupled.agents.unreal",
    "feudal": "decoupled.agents.feudal",
    "progressive": "decoupled.agents.progressive",
    "distill": "decoupled.agents.distill",
    "nav": "decoupled.agents.nav",
}
# the built-in agents' config sections (agents/config.py): a config validates without importing torch
_BUILTIN_CONFIGS = {
    "impala": "ImpalaConfig",
    "unreal": "UnrealConfig",
    "feudal": "FeudalConfig",
    "progressive": "ProgressiveConfig",
    "distill": "DistillConfig",
    "nav": "NavConfig",
}


def _agent_def() -> type:
    from decoupled.agents.base import AgentDef  # imports torch: only once an agent is looked up

    return AgentDef


_REGISTRY: EntryPointRegistry[AgentDef] = EntryPointRegistry("decoupled.agents", _agent_def, "agent")


def _registry() -> EntryPointRegistry[AgentDef]:
    return _REGISTRY


def agent_names() -> tuple[str, ...]:
    """Every agent name, built-in, registered or declared by an installed package, without importing any."""
    return tuple(dict.fromkeys([*_BUILTIN_MODULES, *_registry().names()]))


def get_agent(name: str) -> AgentDef:
    registry = _registry()
    if name in _BUILTIN_MODULES and name not in registry.names():
        registry.register(name, importlib.import_module(_BUILTIN_MODULES[name]).AGENT)
    if name not in agent_names():
        raise KeyError(f"unknown agent {name!r}; available: {', '.join(agent_names())}")
    return registry.get(name)


def get_agent_config(name: str) -> type[AgentConfigBase]:
    """The `agent` section class of agent `name`; for a built-in agent without importing its module (or torch)."""
    registry = _registry()
    if name in _BUILTIN_CONFIGS and name not in registry.names():
        from decoupled.agents import config

        return getattr(config, _BUILTIN_CONFIGS[name])
    return get_agent(name).config_class


def register_agent(agent: AgentDef, *, replace: bool = False) -> None:
    """Add an agent under `agent.name` (an error if the name is taken, unless `replace`)."""
    if agent.name in _BUILTIN_MODULES and not replace:
        raise ValueError(f"{agent.name!r} is a built-in agent (pass replace=True to swap it)")
    _registry().register(agent.name, agent, replace=replace)


__all__ = [
    "AgentConfigBase",
    "AgentDef",
    "AgentSetupError",
    "LearnerHook",
    "agent_names",
    "get_agent",
    "get_agent_config",
    "register_agent",
]
