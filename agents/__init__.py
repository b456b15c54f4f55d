"""Agents: the maths (nets and losses). `get_agent(name)` returns an agent's `AgentDef`."""

from __future__ import annotations

from agents.base import AgentConfigBase, AgentDef

_AGENT_MODULES = {"impala": "agents.impala", "unreal": "agents.unreal"}


def agent_names() -> tuple[str, ...]:
    return tuple(_AGENT_MODULES)


def get_agent(name: str) -> AgentDef:
    import importlib

    if name not in _AGENT_MODULES:
        raise KeyError(f"unknown agent {name!r}; available: {', '.join(_AGENT_MODULES)}")
    return importlib.import_module(_AGENT_MODULES[name]).AGENT


__all__ = ["AgentConfigBase", "AgentDef", "agent_names", "get_agent"]
