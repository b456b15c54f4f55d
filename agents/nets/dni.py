"""Synthetic-gradient LSTM core (DNI; Jaderberg et al. 2016, arXiv:1608.05343; Czarnecki et al. 2017,
arXiv:1703.00522), for any recurrent agent.

Truncated BPTT stops the gradient at the start of each unroll. A synthetic-gradient module M predicts what it
cuts off: dL_future/ds, the gradient of every later loss with respect to the core state s = [h; c] at a window
boundary. Over one learner window that starts at state s_0 (a leaf: the actor's core state at slot 0) and whose
boundary state is s_T (the state the next window starts from):

    inject:  loss += < lambda * sg(M(s_T)), s_T >                     (so dloss/ds_T gets lambda * M(s_T))
    target:  delta_0 = dloss/ds_0 = true gradient inside the window + lambda * M(s_T) ds_T/ds_0
    train M: || M(s_0) - sg(delta_0) / sigma ||^2, its own optimiser and gradient clip (sigma: below; inject
             then uses lambda * sigma * M(s_T))

`lambda` (`dni.scale`, below 1) scales the injected gradient and, through the target, discounts the bootstrap:
with lambda = 1 the bootstrap feeds on itself through the near-identity cell path and diverges (a known
pitfall 4.5). M's last layer starts at zero, so training starts as exact truncated BPTT.

Window layout (the learner's time-major [T+1] batch): slot T repeats as slot 0 of the next unroll, so the boundary
state s_T is the state *before* the last slot, the state the actor starts its next unroll from (with
`runner.unroll_length: 1` that is the state after the first step, which DNI+Aux predicts from: the same state).
Episode starts: where the next window begins an episode (`first[T]`) the state is reset before it is used, so no
synthetic gradient is injected there; where this window begins one (`first[0]`), s_0 influences nothing and the
sample is left out of M's regression (M predicts the gradient of a continuing episode; the injection mask accounts
for ends).
Episode starts inside the window cut the true gradient and the bootstrap path in the LSTM itself (the state is
multiplied by 0).

Target scale (`dni.normalize`, off by default): the gradients M regresses are as small as the loss makes them
(~1e-3 early on), while Adam moves M's output by about its learning rate per step whatever the gradient's size, so
an unnormalised M predicts 10-100x more than its targets at first. With `normalize` M predicts delta / sigma, sigma
a running RMS of the target entries (kept in checkpoints), and the injection is lambda * sigma * M(s_T). It is
not the default because it did worse where measured: on `recall` (T=3, D=4) the normalised M stays at chance
where the unnormalised one solves it, its early oversized predictions apparently being what first makes the state
carry the bit (BENCHMARKS.md, DNI section). With M at zero either way training starts as exact truncated BPTT.

Options: `dni.context` conditions M on more than the state (cDNI): the clipped reward into the boundary slot and/or
the agent's (detached) value there. `dni.aux_cost` > 0 adds DNI+Aux: a head on the state after the window's first
step predicts the synthetic gradient injected at the window's end, an MSE loss whose gradient trains the core.

`SyntheticGradients` does the learner's part (leaf state, injection, M's update, checkpoint state) as a
`LearnerHook` (decoupled/agents/base.py) that the core hands out (`DNILSTMCore.learner_hook`), so an agent that
uses the `dni_lstm` core needs no code for it and the runner knows nothing of synthetic gradients.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from decoupled.agents.base import LearnerHook
from decoupled.agents.config import DNIConfig  # noqa: F401 - re-exported
from decoupled.agents.nets.cores import CoreState, LSTMCore, core_inputs


class SyntheticGradientModule(nn.Module):
    """M: [s; context] -> predicted dL_future/ds. Linear, or one hidden ReLU layer; the last layer starts at zero."""

    def __init__(self, state_size: int, context_size: int = 0, hidden_size: int = 0):
        super().__init__()
        inp = state_size + context_size
        self.hidden = nn.Sequential(nn.Linear(inp, hidden_size), nn.ReLU()) if hidden_size else nn.Identity()
        self.out = nn.Linear(hidden_size or inp, state_size)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, state: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = state if context is None or context.shape[-1] == 0 else torch.cat([state, context], -1)
        return self.out(self.hidden(x))


class DNILSTMCore(LSTMCore):
    """The LSTM core plus the synthetic-gradient module M (and the DNI+Aux head). Acting is the LSTM's; in the
    learner's forward (`extras` given) it also hands out the window's boundary state and its first-step state."""

    def __init__(self, input_size: int, num_actions: int, hidden_size: int, cfg: DNIConfig):
        super().__init__(input_size, num_actions, hidden_size)  # the LSTM first: same init as LSTMCore's
        self.cfg = cfg
        if cfg.enabled:
            with torch.random.fork_rng(devices=[]):  # M's init leaves the global RNG, so the rest of the net is
                torch.manual_seed(torch.initial_seed() + 1)  # initialised as it would be with the plain LSTM core
                self.sg = SyntheticGradientModule(2 * hidden_size, len(cfg.context), cfg.hidden_size)
                if cfg.aux_cost > 0:
                    self.aux = nn.Linear(2 * hidden_size, 2 * hidden_size)

    def forward(self, features, prev_action, prev_reward, first, state: CoreState, extras: dict | None = None):
        x = core_inputs(features, prev_action, prev_reward, first, self.num_actions)
        if extras is None or not self.cfg.enabled or x.shape[0] < 2:
            outputs, final, _ = self.run(x, first, state)
            return outputs, final
        # the slot where the next window starts: the last one, or earlier when windows overlap (a net sets
        # extras["dni/next_window_slot"] to -(1 + overlap) then, see AgentDef.overlap)
        nxt = int(extras.get("dni/next_window_slot", -1))
        outputs, final, kept = self.run(x, first, state, keep=(0, nxt - 1))
        extras["dni/first_step_state"] = kept[0]
        extras["dni/boundary_state"] = kept[nxt - 1]  # before that slot: the state the next window starts from
        extras["dni/next_window_slot"] = nxt
        return outputs, final

    def learner_hook(self) -> SyntheticGradients | None:
        """The learner's side of this core (M's update, the injection); M is trained by it, not the agent."""
        return SyntheticGradients(self) if self.cfg.enabled else None


def _cat(state: CoreState) -> torch.Tensor:
    return torch.cat(list(state), -1)


class SyntheticGradients(LearnerHook):
    """The learner's side of a `dni_lstm` core: call `leaf(state)` before the forward pass, add `inject(...)` to
    the loss before its backward pass, then `update(...)` once the gradients are there (as a `LearnerHook`:
    `prepare_state`, `extra_loss`, `after_update`)."""

    name = "dni"

    def __init__(self, core: DNILSTMCore):
        self.core, self.cfg = core, core.cfg
        self.optimizer = torch.optim.Adam(core.sg.parameters(), lr=self.cfg.lr)
        self.updates = 0
        self.sigma = 1.0  # the running RMS of the target entries (dni.normalize); 1 until the first target
        self.sigma_seen = False

    # ------------------------------------------------------------------------------------------------ the hook
    def own_parameters(self) -> Iterable[nn.Parameter]:
        return self.core.sg.parameters()

    def prepare_state(self, state: CoreState) -> CoreState:
        return self.leaf(state)

    def extra_loss(self, batch, outputs):
        return self.inject(batch, outputs)

    def after_update(self, state, batch, outputs):
        return self.update(state, batch, outputs)

    # ------------------------------------------------------------------------------------------------ pieces
    def leaf(self, state: CoreState) -> CoreState:
        """The window-start state as leaves, so that its gradient (M's target) is collected by the backward pass.
        The core's (h, c) come first in the net's state tuple; anything after them (another module's state, as
        FuN's Manager) passes through unchanged."""
        return tuple(s.detach().requires_grad_(True) for s in state[:2]) + tuple(state[2:])

    def context(self, batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor], slot: int) -> torch.Tensor:
        parts = []
        for name in self.cfg.context:
            if name == "reward":
                parts.append(batch["reward"][slot].float().clamp(-1.0, 1.0))
            else:  # value
                parts.append(outputs["baseline"][slot].detach().float())
        B = batch["first"].shape[1]
        return torch.stack(parts, -1) if parts else torch.zeros(B, 0, device=batch["first"].device)

    def inject(
        self, batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss term whose gradient at the boundary state is the scaled synthetic gradient (0 where the next
        window starts an episode), plus the DNI+Aux loss."""
        s_T = _cat(outputs["dni/boundary_state"])
        nxt = int(outputs.get("dni/next_window_slot", -1))
        with torch.no_grad():
            g = self.cfg.scale * self.sigma * self.core.sg(s_T.detach(), self.context(batch, outputs, nxt))
            g = g * (~batch["first"][nxt]).unsqueeze(-1).float()
        term = (g * s_T).sum()
        metrics = {"dni/injected_norm": g.norm(dim=-1).mean()}
        if self.cfg.aux_cost > 0:
            pred = self.core.aux(_cat(outputs["dni/first_step_state"]))
            end = batch["first"].shape[0] + nxt + 1  # up to the next window's first slot
            same_episode = (~batch["first"][1:end].any(0)).float()  # the window's end belongs to the same episode
            aux = (((pred - g) ** 2).sum(-1) * same_episode).sum() / same_episode.sum().clamp(min=1.0)
            term = term + self.cfg.aux_cost * aux
            metrics["dni/aux_loss"] = aux.detach()
        return term, metrics

    def update(
        self, leaf_state: CoreState, batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        """Regress M(s_0) on the gradient the backward pass left at the leaf s_0; step M's own optimiser."""
        leaf_state = leaf_state[:2]  # the core's (h, c)
        s0 = _cat(leaf_state).detach()
        target = torch.cat([s.grad if s.grad is not None else torch.zeros_like(s) for s in leaf_state], -1)
        valid = ~batch["first"][0]
        n = int(valid.sum())
        if n == 0:
            return {}
        if self.cfg.normalize:
            rms = float(target[valid].pow(2).mean().sqrt())
            if math.isfinite(rms) and rms > 0.0:
                d = self.cfg.normalize_decay
                self.sigma = rms if not self.sigma_seen else d * self.sigma + (1.0 - d) * rms
                self.sigma_seen = True
        pred = self.core.sg(s0, self.context(batch, outputs, 0))
        err = ((pred - target / self.sigma) ** 2).sum(-1)[valid]
        loss = err.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = list(self.core.sg.parameters())
        if self.cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)  # M's gradients must not reach the agent's clip or optimiser
        self.updates += 1
        with torch.no_grad():
            p, t = pred.detach()[valid] * self.sigma, target[valid]  # both in gradient units
            cos = torch.nn.functional.cosine_similarity(p, t, dim=-1, eps=1e-12)
            return {
                "dni/sg_loss": float(loss),
                "dni/target_scale": self.sigma,
                "dni/cosine": float(cos.mean()),
                "dni/pred_norm": float(p.norm(dim=-1).mean()),
                "dni/target_norm": float(t.norm(dim=-1).mean()),
            }

    # ------------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "updates": self.updates,
            "sigma": self.sigma,
            "sigma_seen": self.sigma_seen,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state.get("updates", 0))
        self.sigma = float(state.get("sigma", 1.0))
        self.sigma_seen = bool(state.get("sigma_seen", False))
