"""Agents: the maths (nets and losses). `get_agent(name)` returns an agent's `AgentDef`.

Agents are found in a registry: the built-in ones (`impala`, `unreal`, `feudal`, `progressive`, `distill`), those
added with `register_agent`, and those that installed packages declare under the entry-point group
`decoupled.agents` (docs/extending.md).
"""

from __future__ import annotations

import importlib

from decoupled.agents.base import AgentConfigBase, AgentDef, AgentSetupError, LearnerHook
from decoupled.plugins import EntryPointRegistry

# built-in agents, imported when first asked for (each module defines AGENT)
_BUILTIN_MODULES = {
    "impala": "decoupled.agents.impala",
    "unreal": "decoupled.agents.unreal",
    "feudal": "decoupled.agents.feudal",
    "progressive": "decoupled.agents.progressive",
    "distill": "decoupled.agents.distill",
}
_REGISTRY: EntryPointRegistry[AgentDef] = EntryPointRegistry("decoupled.agents", AgentDef, "agent")


def agent_names() -> tuple[str, ...]:
    """Every agent name, built-in, registered or declared by an installed package, without importing any."""
    return tuple(dict.fromkeys([*_BUILTIN_MODULES, *_REGISTRY.names()]))


def get_agent(name: str) -> AgentDef:
    if name in _BUILTIN_MODULES and name not in _REGISTRY.names():
        _REGISTRY.register(name, importlib.import_module(_BUILTIN_MODULES[name]).AGENT)
    if name not in agent_names():
        raise KeyError(f"unknown agent {name!r}; available: {', '.join(agent_names())}")
    return _REGISTRY.get(name)


def register_agent(agent: AgentDef, *, replace: bool = False) -> None:
    """Add an agent under `agent.name` (an error if the name is taken, unless `replace`)."""
    if agent.name in _BUILTIN_MODULES and not replace:
        raise ValueError(f"{agent.name!r} is a built-in agent (pass replace=True to swap it)")
    _REGISTRY.register(agent.name, agent, replace=replace)


__all__ = [
    "AgentConfigBase",
    "AgentDef",
    "AgentSetupError",
    "LearnerHook",
    "agent_names",
    "get_agent",
    "register_agent",
]
