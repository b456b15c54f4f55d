"""IMPALA: the base actor-critic agent with V-trace (Espeholt et al. 2018, arXiv:1802.01561).

The net is torso -> core -> policy/baseline heads. The actors act with a (possibly stale) copy of the policy,
the behaviour policy mu; the learner corrects the lag with V-trace (Sec. 4 of the paper):

    loss = pg_loss + baseline_cost * baseline_loss + entropy_cost * entropy_loss      (Sec. 4.2)

with pg_loss = -rho_t log pi(a_t|x_t) (r_t + gamma v_{t+1} - V(x_t)), baseline_loss = 1/2 (v_t - V(x_t))^2 and
entropy_loss = -H(pi(.|x_t)).

Batch layout (TorchBeast's, time-major [T+1, B]): slot t holds obs_t, and the action, reward and done flags of
the transition *into* obs_t, plus the behaviour logits that chose that action. Slot 0 repeats the last slot of the
previous unroll, so the learner sees T transitions and the value of the state after the last one.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from decoupled.agents.auxtasks import aux_losses, build_aux_tasks
from decoupled.agents.base import AgentDef
from decoupled.agents.config import ImpalaConfig
from decoupled.agents.nets import make_core
from decoupled.agents.nets.cores import CoreState
from decoupled.agents.nets.heads import PolicyBaselineHead
from decoupled.agents.nets.torsos import make_torso
from decoupled.agents.ops.losses import action_log_probs, baseline_loss, entropy_loss, policy_gradient_loss
from decoupled.agents.ops.vtrace import vtrace_from_logits
from decoupled.envs.base import EnvSpec


class ImpalaNet(nn.Module):
    """torso -> core -> policy/baseline heads, over time-major inputs [T, B, ...]."""

    def __init__(self, spec: EnvSpec, cfg: ImpalaConfig):
        super().__init__()
        self.num_actions = spec.num_actions
        obs_scale = float(spec.extra.get("obs_scale", 1.0))
        self.torso = make_torso(cfg.torso, spec.obs_shape, obs_scale, tuple(cfg.hidden_sizes), cfg.channels_last)
        self.core = make_core(cfg.core, self.torso.out_size, spec.num_actions, cfg.lstm_size, cfg.dni)
        self.heads = PolicyBaselineHead(self.core.out_size, spec.num_actions)
        if cfg.init == "orthogonal":
            orthogonal_init(self.torso, math.sqrt(2.0))
            orthogonal_init(self.heads.policy, 0.01)
            orthogonal_init(self.heads.baseline, 1.0)
        # agent.aux's heads (agents/auxtasks.py), from a forked RNG: None without tasks (the plain agent)
        self.aux = build_aux_tasks(getattr(cfg, "aux", None), self.torso.out_size, self.core.out_size)

    def env_targets(self, num_envs: int):
        """What the actor records from the env's extras for agent.aux (None without tasks)."""
        return self.aux.env_targets(num_envs) if self.aux is not None else None

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> CoreState:
        return self.core.initial_state(batch_size, device)

    def forward(self, inputs: dict[str, torch.Tensor], state: CoreState) -> tuple[dict[str, torch.Tensor], CoreState]:
        """inputs: obs [T,B,*obs], first [T,B] bool, prev_action [T,B], prev_reward [T,B]."""
        obs = inputs["obs"]
        T, B = obs.shape[:2]
        features = self.torso(obs.reshape(T * B, *obs.shape[2:])).reshape(T, B, -1)
        extras: dict[str, Any] = {}
        core_out, state = self.core(
            features, inputs["prev_action"], inputs["prev_reward"], inputs["first"], state, extras=extras
        )
        if self.aux is not None:
            extras.update(self.aux(features, core_out))
        return {**self.heads(core_out), **extras}, state


def orthogonal_init(module: nn.Module, gain: float) -> None:
    """Orthogonal weights (Saxe et al. 2014) with `gain` and zero biases for every conv and linear layer of `module`,
    as OpenAI baselines' Atari nets are initialised."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            w = torch.empty(m.weight.shape)  # contiguous: channels-last conv weights cannot be viewed flat
            nn.init.orthogonal_(w, gain)
            with torch.no_grad():
                m.weight.copy_(w)
            nn.init.zeros_(m.bias)


def make_net(spec: EnvSpec, cfg: ImpalaConfig) -> ImpalaNet:
    return ImpalaNet(spec, cfg)


def vtrace_inputs(cfg: ImpalaConfig, batch: dict[str, torch.Tensor], baseline: torch.Tensor) -> dict:
    """The per-transition quantities of a [T+1,B] batch, aligned to transitions t = 0..T-1.

    `next_values[t]` is the value of the true successor of transition t: V(obs_{t+1}) normally, the actor's
    value of the final observation when the episode was truncated there (`truncation_value`), anything when it
    terminated (the discount is 0 there).
    """
    terminated_tp1 = batch["terminated"][1:]
    truncated_tp1 = batch["truncated"][1:]
    values_tp1 = baseline[1:].detach()
    next_values = torch.where(truncated_tp1, batch["truncation_value"][1:], values_tp1)
    return {
        "rewards": batch["reward"][1:],
        "discounts": cfg.discount * (~terminated_tp1).float(),
        "continues": (~(terminated_tp1 | truncated_tp1)).float(),
        "next_values": next_values,
    }


def impala_loss(
    cfg: ImpalaConfig, batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The IMPALA loss (Sec. 4.2) on a [T+1, B] batch and the net's outputs on it."""
    logits_t = outputs["policy_logits"][:-1]  # pi(.|obs_t), t = 0..T-1
    values_t = outputs["baseline"][:-1]
    actions_t = batch["action"][1:]  # slot t+1 holds the action taken at obs_t
    behaviour_logits_t = batch["behaviour_logits"][1:]
    T, B = actions_t.shape
    vt = vtrace_from_logits(
        behaviour_logits=behaviour_logits_t,
        target_logits=logits_t.detach(),
        actions=actions_t,
        values=values_t.detach(),
        clip_rho_threshold=cfg.clip_rho_threshold,
        clip_c_threshold=cfg.clip_c_threshold,
        clip_pg_rho_threshold=cfg.clip_pg_rho_threshold,
        **vtrace_inputs(cfg, batch, outputs["baseline"]),
    )
    scale = float(T * B) if cfg.loss_reduction == "sum" else 1.0
    pg = policy_gradient_loss(logits_t, actions_t, vt.pg_advantages) * scale
    bl = baseline_loss(vt.vs, values_t) * scale
    ent = entropy_loss(logits_t) * scale
    loss = pg + cfg.baseline_cost * bl + cfg.entropy_cost * ent
    if outputs.get("dni/wants_column_loss"):  # a dni_lstm core's critic regresses this loss per batch column
        outputs["dni/column_loss"] = column_loss(cfg, logits_t, actions_t, values_t, vt) * scale / (T * B)
    aux, aux_metrics = aux_losses(getattr(cfg, "aux", None), batch, outputs, scale)
    if aux is not None:
        loss = loss + aux
    metrics = {
        **aux_metrics,
        "loss/total": loss.detach(),
        "loss/policy": pg.detach(),
        "loss/baseline": bl.detach(),
        "loss/entropy": ent.detach(),
        "train/entropy": -ent.detach() / scale,
        "train/rho_mean": vt.log_rhos.exp().mean(),
        "train/value_mean": values_t.detach().mean(),
        "train/vs_mean": vt.vs.mean(),
    }
    return loss, metrics


def column_loss(cfg: ImpalaConfig, logits_t: torch.Tensor, actions_t: torch.Tensor, values_t: torch.Tensor, vt: Any):
    """The policy, baseline and entropy terms summed over time per batch column, [B], detached: their sum over the
    columns divided by T * B is the loss above (before its auxiliary terms)."""
    with torch.no_grad():
        log_probs = torch.log_softmax(logits_t, -1)
        pg = -(action_log_probs(logits_t, actions_t) * vt.pg_advantages)
        bl = 0.5 * (vt.vs - values_t) ** 2
        neg_entropy = (log_probs.exp() * log_probs).sum(-1)
        return (pg + cfg.baseline_cost * bl + cfg.entropy_cost * neg_entropy).sum(0)


def make_replay(cfg: ImpalaConfig, spec: EnvSpec, net: nn.Module, unroll_length: int, seed: int):
    """The replay of `replay_ratio` > 0 (with the behaviour logits V-trace needs); None otherwise."""
    if cfg.replay_ratio <= 0:
        return None
    from decoupled.envs.replay import SequenceReplay

    state_shapes = tuple(tuple(s.shape[1:]) for s in net.initial_state(1))
    return SequenceReplay(
        cfg.replay_capacity_steps, unroll_length, spec.obs_shape, spec.obs_dtype, state_shapes, seed, spec.num_actions
    )


def sample_replay(cfg: ImpalaConfig, replay: Any) -> dict[str, Any] | None:
    """`replay_ratio` x (the on-policy batch's sequences) replayed sequences, uniformly from the replay."""
    if replay.num_steps < max(cfg.replay_start_steps, 1):
        return None
    n = max(1, round(cfg.replay_ratio * replay.last_columns))
    s = replay.sample_sequences(n)
    return {"seq": s["data"], "seq_state": s["initial_state"]}


def sequence_inputs(seq: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The net's inputs for a batch of replayed sequences in the rollout layout (prev action/reward = slot's own)."""
    return {"obs": seq["obs"], "first": seq["first"], "prev_action": seq["action"], "prev_reward": seq["reward"]}


def replay_outputs(cfg: ImpalaConfig, net: nn.Module, rb: dict[str, Any]) -> dict[str, Any]:
    outputs, _ = net(sequence_inputs(rb["seq"]), tuple(rb["seq_state"]))
    return {"seq": outputs}


def impala_replay_loss(
    cfg: ImpalaConfig, batch: dict[str, Any], outputs: dict[str, Any]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The IMPALA loss on the on-policy batch and the replayed sequences as one batch of B + n sequences, as if
    concatenated (V-trace corrects the replayed ones from their stored behaviour logits): under `loss_reduction:
    sum` the two sums add; under `mean` the two means are weighted by their transition counts, T*B and T*n, so that
    every transition, replayed or not, weighs 1 / (T*(B + n)) as in the mean over the concatenated batch."""
    loss, metrics = impala_loss(cfg, batch, outputs)
    rb, ro = batch.get("replay"), outputs.get("replay")
    if rb is None or ro is None:
        return loss, metrics
    r_loss, r_metrics = impala_loss(cfg, rb["seq"], ro["seq"])
    metrics["replay/loss"] = r_metrics["loss/total"]
    metrics["replay/rho_mean"] = r_metrics["train/rho_mean"]
    if cfg.loss_reduction == "sum":
        return loss + r_loss, metrics
    on_policy, replayed = batch["action"][1:].numel(), rb["seq"]["action"][1:].numel()
    return (on_policy * loss + replayed * r_loss) / (on_policy + replayed), metrics


def loss_sum_factor(cfg: ImpalaConfig, batch: dict[str, Any]) -> float:
    """Summed loss / this loss: 1 under `sum`; under `mean` the transitions averaged over, T*B on-policy plus T*n
    replayed (`impala_replay_loss`). The learner divides the gradient clip by it (`AgentDef.loss_sum_factor`)."""
    if cfg.loss_reduction == "sum":
        return 1.0
    n = batch["action"][1:].numel()
    replay = batch.get("replay")
    if replay is not None and "seq" in replay:
        n += replay["seq"]["action"][1:].numel()
    return float(n)


# ------------------------------------------------------------------------------------------------ UNREAL's tasks
# `agent.aux` may name UNREAL's replay tasks (pixel_control, reward_prediction, value_replay, feature_control): the
# agent is then the IMPALA agent with those task modules of agents/unreal.py, exactly as `agent.name: unreal` with
# the same settings (tested), read through `unreal_settings`.
def _unreal_tasks(cfg: Any) -> Any:
    if getattr(cfg, "name", None) != "impala":
        return None
    from decoupled.agents.config import unreal_settings

    return unreal_settings(cfg)


def _unreal() -> AgentDef:
    """The unreal agent's definition, from the registry: agents/unreal.py builds on this module, not the reverse."""
    from decoupled.agents import get_agent

    return get_agent("unreal")


def make_agent_net(spec: EnvSpec, cfg: ImpalaConfig) -> nn.Module:
    settings = _unreal_tasks(cfg)
    return make_net(spec, cfg) if settings is None else _unreal().make_net(spec, settings)


def make_agent_replay(cfg: ImpalaConfig, spec: EnvSpec, net: nn.Module, unroll_length: int, seed: int):
    settings = _unreal_tasks(cfg)
    if settings is None:
        return make_replay(cfg, spec, net, unroll_length, seed)
    return _unreal().make_replay(settings, spec, net, unroll_length, seed)


def sample_agent_replay(cfg: ImpalaConfig, replay: Any) -> dict[str, Any] | None:
    settings = _unreal_tasks(cfg)
    return sample_replay(cfg, replay) if settings is None else _unreal().sample_replay(settings, replay)


def agent_replay_outputs(cfg: ImpalaConfig, net: nn.Module, rb: dict[str, Any]) -> dict[str, Any]:
    settings = _unreal_tasks(cfg)
    return replay_outputs(cfg, net, rb) if settings is None else _unreal().replay_outputs(settings, net, rb)


def agent_loss(cfg: ImpalaConfig, batch: dict[str, Any], outputs: dict[str, Any]) -> tuple[torch.Tensor, dict]:
    settings = _unreal_tasks(cfg)
    return impala_replay_loss(cfg, batch, outputs) if settings is None else _unreal().loss_fn(settings, batch, outputs)


def agent_loss_sum_factor(cfg: ImpalaConfig, batch: dict[str, Any]) -> float:
    settings = _unreal_tasks(cfg)
    return loss_sum_factor(cfg, batch) if settings is None else _unreal().loss_sum_factor(settings, batch)


AGENT = AgentDef(
    name="impala",
    config_class=ImpalaConfig,
    make_net=make_agent_net,
    loss_fn=agent_loss,
    make_replay=make_agent_replay,
    sample_replay=sample_agent_replay,
    replay_outputs=agent_replay_outputs,
    loss_sum_factor=agent_loss_sum_factor,
)
