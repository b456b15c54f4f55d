"""`AgentDef`: the one record through which the runner knows an agent, and `LearnerHook`, the agent-specific part
of a training step that a pure loss cannot express.

The runner is generic over AgentDefs: it builds the net with `make_net`, feeds learner batches through
`net(...)`, turns them into a loss with `loss_fn`, and runs the agent's learner hooks around the update (the
synthetic-gradient core's is one: decoupled/agents/nets/dni.py). Nothing in `agents/` knows about processes,
files or logging.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from decoupled.agents.config import AgentConfigBase, AgentSetupError, config_warning  # noqa: F401 - re-exported
from decoupled.envs.base import EnvSpec


class LearnerHook:
    """A part of the learner's step beyond "loss, backward, clip, step", owned by the agent or by one of its modules.

    Each update the learner calls, in this order:

        state = hook.prepare_state(state)             # the core state at slot 0, before the forward pass
        term, metrics = hook.extra_loss(batch, outputs)   # after the agent's loss_fn; term (or None) is added
        ... backward, gradient clip, the agent's optimiser step ...
        metrics = hook.after_update(state, batch, outputs)  # only after an update that was applied

    Parameters that the hook trains itself (`own_parameters`) are left out of the agent's optimiser and gradient
    clip. `state_dict` / `load_state_dict` go into checkpoints under the hook's `name`, unique per learner. The
    defaults do nothing, so a hook overrides only what it needs.
    """

    name: str = "hook"

    def own_parameters(self) -> Iterable[torch.nn.Parameter]:
        return ()

    def prepare_state(self, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return state

    def extra_loss(
        self, batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        return None, {}

    def after_update(
        self, state: tuple[torch.Tensor, ...], batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def module_learner_hooks(cfg: Any, net: torch.nn.Module) -> list[LearnerHook]:
    """The hooks of the net's modules: every module with a `learner_hook()` method that returns one (a core with a
    training step of its own, such as the synthetic-gradient core, brings it to any agent that uses it)."""
    hooks = []
    for module in net.modules():
        make = getattr(module, "learner_hook", None)
        hook = make() if callable(make) else None
        if hook is not None:
            hooks.append(hook)
    return hooks


def trainable_parameters(net: torch.nn.Module, hooks: Iterable[LearnerHook]) -> Iterator[torch.nn.Parameter]:
    """The parameters the agent's optimiser trains: all of the net's but those a hook trains itself and frozen ones
    (requires_grad False, e.g. a progressive net's earlier columns), in order."""
    own = {id(p) for hook in hooks for p in hook.own_parameters()}
    return (p for p in net.parameters() if id(p) not in own and p.requires_grad)


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
    # learner_hooks(cfg, net) -> the LearnerHooks of this agent's training step (default: those of the net's
    # modules). An agent with a step of its own (a second optimiser, a target update) returns its hook here.
    learner_hooks: Callable[[Any, torch.nn.Module], list[LearnerHook]] = module_learner_hooks
    # overlap(cfg) -> how many transitions of the previous rollout each rollout repeats in front of its own (the
    # batch is then [overlap + T + 1, B]): for losses that need look-ahead past the unroll's end (FuN's s_{t+c}).
    overlap: Callable[[Any], int] = lambda cfg: 0
    # loss_sum_factor(cfg, batch) -> how many times larger this update's loss would be if it summed over the
    # batch's transitions instead of averaging (1 for a summed loss). The learner divides optim.max_grad_norm by it,
    # so that a gradient clip means the same (summed-loss units, the IMPALA paper's 40) under either reduction.
    # None: 1 (a loss with no reduction setting).
    loss_sum_factor: Callable[[Any, dict[str, Any]], float] | None = None
    # init_net(cfg, net, load, resume) -> a JSON-able record: fill a net from other runs, called for every copy the
    # runner builds (the learner's and each actor's) before training, `resume` True when the run continues from its
    # checkpoint (which then loads over it). E.g. a progressive net's earlier columns (new runs only: its checkpoints
    # hold them), a distillation student's teachers (every time: checkpoints leave them out). `load(path)` reads a run
    # dir or checkpoint dir -> (its config, its checkpoint state, the checkpoint path). Raise AgentSetupError.
    init_net: Callable[[Any, torch.nn.Module, Callable[[str], tuple[Any, dict, str]], bool], dict] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
