"""`AgentDef`: the one record through which the runner knows an agent.

The runner is generic over AgentDefs: it builds the net with `make_net`, feeds learner batches through
`net(...)`, and turns them into a loss with `loss_fn`. Nothing in `agents/` knows about processes, files or logging.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict

from envs.base import EnvSpec


class AgentConfigBase(BaseModel):
    """Base of every agent's config section: unknown keys are an error, and the section names its agent."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True)
    name: str


@dataclass(frozen=True)
class AgentDef:
    name: str
    config_class: type[AgentConfigBase]
    make_net: Callable[[EnvSpec, Any], torch.nn.Module]
    # loss_fn(cfg, batch, outputs) -> (loss, metrics): batch is a dict of time-major [T+1, B, ...] tensors,
    # outputs the net's outputs on the whole batch. Metrics are 0-d tensors (the runner calls .item()).
    loss_fn: Callable[[Any, dict[str, torch.Tensor], dict[str, torch.Tensor]], tuple[torch.Tensor, dict]]
    # Keys the actor must record per step beyond the base ones (obs, action, reward, terminated, truncated,
    # behaviour_logits, truncation_value); each maps to a key of the net's outputs.
    actor_keys: tuple[str, ...] = ()
    # Agents that learn from replayed experience (envs/replay.py): make_replay(cfg, spec, net, unroll_length, seed)
    # -> a replay or None; the learner adds every rollout to it, asks sample_replay(cfg, replay) for a dict of
    # numpy arrays (None: nothing to replay yet), moves it to the device as batch["replay"], and puts
    # replay_outputs(cfg, net, batch["replay"]) into outputs["replay"] before calling loss_fn.
    make_replay: Callable[..., Any] | None = None
    sample_replay: Callable[[Any, Any], dict[str, Any] | None] | None = None
    replay_outputs: Callable[[Any, torch.nn.Module, dict[str, Any]], dict[str, torch.Tensor]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
