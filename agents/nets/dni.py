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

Sobolev-trained critic (`dni.module: critic`; Sobolev Training, Czarnecki et al. 2017, arXiv:1706.04859,
Sec. 4.3): instead of regressing the gradient, a critic L^(s) predicts the loss still to come and the synthetic
gradient is its gradient dL^/ds. It is trained on both, value and derivative:

    inject:  loss += < lambda * sg(dL^/ds (s_T)), s_T >
    train:   value_cost * (L^(s_0) - sg(l_window + lambda * L^(s_T)))^2
             + gradient_cost * || dL^/ds (s_0) - sg(delta_0) ||^2

l_window is the agent's loss of each batch column in this window (the agent leaves it as outputs["dni/column_loss"]:
impala, unreal and nav do; an agent whose loss does not is refused unless `critic_value_cost` is 0) and delta_0 the
same target as above, the gradient of exactly that value target in s_0. A synthetic gradient that is the gradient
of a scalar is a conservative field, which a free M need not be. Where an episode starts inside the window, the
value target still counts the new episode's losses, which s_0 cannot change: noise in the value term, not a bias
in the gradient term.

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


class SyntheticGradientCritic(nn.Module):
    """A critic L^(s, context) of the loss still to come, whose gradient dL^/ds is the synthetic gradient (Sobolev
    Training, Czarnecki et al. 2017, arXiv:1706.04859, Sec. 4.3). With `hidden_size` 0 a quadratic form in
    x = [s; context], x^T A x / 2 + b^T x + c: its gradient in s is linear in x, the symmetric case of a linear M
    (Czarnecki et al. 2017, arXiv:1703.00522), and one Adam step changes it about as much as it changes a linear M's
    output (scaling the form by 1 / n, n = len(x), slowed the gradient n-fold and the critic stayed at chance on
    `bench dni --task recall`); with a hidden size, that plus one tanh layer. Everything starts at zero, so training
    starts as exact truncated BPTT."""

    def __init__(self, state_size: int, context_size: int = 0, hidden_size: int = 0):
        super().__init__()
        inp = state_size + context_size
        self.quadratic = nn.Parameter(torch.zeros(inp, inp))
        self.linear = nn.Linear(inp, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.hidden = nn.Sequential(nn.Linear(inp, hidden_size), nn.Tanh()) if hidden_size else None
        if hidden_size:
            self.out = nn.Linear(hidden_size, 1)
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def value(self, state: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """The predicted loss per sample, [B]."""
        x = state if context is None or context.shape[-1] == 0 else torch.cat([state, context], -1)
        v = 0.5 * ((x @ self.quadratic) * x).sum(-1) + self.linear(x).squeeze(-1)
        if self.hidden is not None:
            v = v + self.out(self.hidden(x)).squeeze(-1)
        return v

    def value_and_gradient(
        self, state: torch.Tensor, context: torch.Tensor | None = None, create_graph: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(L^ [B], dL^/ds [B, S]); `create_graph` keeps the gradient differentiable in the critic's parameters
        (its Sobolev loss), otherwise both come back detached."""
        with torch.enable_grad():
            s = state.detach().requires_grad_(True)
            v = self.value(s, context)
            (g,) = torch.autograd.grad(v.sum(), s, create_graph=create_graph)
        return (v, g) if create_graph else (v.detach(), g.detach())

    def forward(self, state: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.value_and_gradient(state, context)[1]


class DNILSTMCore(LSTMCore):
    """The LSTM core plus the synthetic-gradient module M (and the DNI+Aux head). Acting is the LSTM's; in the
    learner's forward (`extras` given) it also hands out the window's boundary state and its first-step state."""

    def __init__(self, input_size: int, num_actions: int, hidden_size: int, cfg: DNIConfig):
        super().__init__(input_size, num_actions, hidden_size)  # the LSTM first: same init as LSTMCore's
        self.cfg = cfg
        if cfg.enabled:
            with torch.random.fork_rng(devices=[]):  # M's init leaves the global RNG, so the rest of the net is
                torch.manual_seed(torch.initial_seed() + 1)  # initialised as it would be with the plain LSTM core
                module = SyntheticGradientCritic if cfg.module == "critic" else SyntheticGradientModule
                self.sg = module(2 * hidden_size, len(cfg.context), cfg.hidden_size)
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
        if self.cfg.module == "critic" and self.cfg.critic_value_cost > 0:
            # the agent's loss then leaves "dni/column_loss": its value per batch column
            extras["dni/wants_column_loss"] = True
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
        self.bootstrap: torch.Tensor | float = 0.0  # critic: lambda * L^(s_T) of the last injection, per column

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
        keep = (~batch["first"][nxt]).float()
        if self.cfg.module == "critic":  # the critic's gradient; its value (scaled alike) bootstraps the value target
            v_T, g = self.core.sg.value_and_gradient(s_T.detach(), self.context(batch, outputs, nxt))
            self.bootstrap = self.cfg.scale * v_T * keep
            g = self.cfg.scale * g * keep.unsqueeze(-1)
        else:
            with torch.no_grad():
                g = self.cfg.scale * self.sigma * self.core.sg(s_T.detach(), self.context(batch, outputs, nxt))
                g = g * keep.unsqueeze(-1)
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
        metrics = {}
        if self.cfg.module == "critic":
            value, pred = self.core.sg.value_and_gradient(s0, self.context(batch, outputs, 0), create_graph=True)
            grad_loss = ((pred - target) ** 2).sum(-1)[valid].mean()
            loss = self.cfg.critic_gradient_cost * grad_loss
            metrics["dni/critic_gradient_loss"] = float(grad_loss.detach())
            if self.cfg.critic_value_cost > 0:
                if "dni/column_loss" not in outputs:
                    raise RuntimeError(
                        "agent.dni.module=critic with critic_value_cost > 0 needs the agent's loss per batch column "
                        "(outputs['dni/column_loss']), which this agent's loss does not leave; set "
                        "agent.dni.critic_value_cost=0 to train the critic on the gradient alone"
                    )
                # the loss still to come from s_0: this window's loss of each column plus the (scaled) critic's
                # value at the window's end, the value whose gradient in s_0 is `target`
                value_target = outputs["dni/column_loss"].detach() + self.bootstrap
                value_loss = ((value - value_target) ** 2)[valid].mean()
                loss = loss + self.cfg.critic_value_cost * value_loss
                metrics["dni/critic_value_loss"] = float(value_loss.detach())
                metrics["dni/critic_value"] = float(value.detach()[valid].mean())
        else:
            pred = self.core.sg(s0, self.context(batch, outputs, 0))
            loss = ((pred - target / self.sigma) ** 2).sum(-1)[valid].mean()
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
                **metrics,
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
