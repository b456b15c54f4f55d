"""UNREAL: the base agent plus auxiliary tasks learned from replay (Jaderberg et al. 2016, arXiv:1611.05397).

UNsupervised REinforcement and Auxiliary Learning adds to an actor-critic agent (here the IMPALA agent: V-trace
on the on-policy unrolls, `agents.impala`) tasks that shape its representation from replayed experience:

    L = L_base + lambda_PC * sum_c L_Q^(c) + lambda_RP * L_RP + lambda_VR * L_VR   (+ lambda_FC * L_FC)   (Sec. 3.4)

- pixel control (PC): a dueling deconvolution head on the core output predicts, for every cell of a grid over
  the central crop, the Q values of "change the pixels of this cell", learned by n-step Q-learning on replayed
  sequences (`agents.ops.auxiliary`; `agents.nets.heads.PixelControlHead`);
- reward prediction (RP): from the torso features of three consecutive frames (no core), classify the reward that
  follows as zero / positive / negative, on windows drawn so that half end in a reward;
- value replay (VR): the base agent's value regression again, on replayed sequences (n-step returns);
- feature control (FC, an option; not in the paper's headline agent): Q-learning to change the mean activation of
  each channel of the torso's last conv layer.

Each task is a module (`UnrealTask`: `PixelControl`, `RewardPrediction`, `ValueReplay`, `FeatureControl`): its head
on the net, where its input comes from, its targets and its loss. The unreal agent takes them from its `*_cost`
settings; the impala and nav agents take the same modules from `agent.aux` (`agent.aux: {pixel_control: {cost:
0.01}, ...}`, read in these settings' terms by `agents.config.unreal_settings`), and the impala agent with them
trains exactly as this agent with the same settings (tested).

Replay (`envs.replay.SequenceReplay`): every column of every rollout, with the actor's core state at its start,
so replayed sequences run through the core from that state rather than from zeros (a reimplementers' pitfall). One
replay batch per update: `replay_sequences` sequences for PC, VR and FC (one forward pass over them serves all
three) and `reward_prediction_batch` windows for RP.

Deliberate deviations, with the reason:
- The base learner is IMPALA (V-trace, batched actors) instead of A3C's Hogwild threads: one synchronous learner
  fits this platform's actor-learner split; on-policy it is A2C with the same 20-step returns.
- Loss scale: each auxiliary term is weighted as if one replayed sequence (or one RP window) came with every
  on-policy sequence, as in UNREAL's A3C, where each thread's 20-step update carried one replayed sequence and one
  RP sample: per-transition means times T*B under `loss_reduction: sum` (the base loss sums over T*B), times 1
  under `mean`; RP, one window per sequence, gets 1/T of that.
- The RP head reads the torso output (the conv layers *and* the torso's FC layer) of each frame, so its gradient
  shapes the whole torso; the paper concatenates the conv outputs.
- Episode ends in PC/FC: the frame a finished episode ended on is not stored (slot t+1 holds the next episode's
  first frame), so the pixel change of an episode's last transition is unknown: that transition is left out of
  the PC/FC loss, and its pseudo-reward is 0 (UNREAL's reference: no pixel change at the terminal step), so the
  returns before it stop there without the change into the next episode's first frame
  (`agents.ops.auxiliary.pixel_control_loss`).

With every auxiliary cost at 0 no replay is built, no head is added, and the agent is exactly the base agent
(bit-identical updates; tested). The auxiliary heads are initialised from a forked RNG, so with them the base
net still starts from the base agent's parameters for the same seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from decoupled.agents.base import AgentDef
from decoupled.agents.config import UnrealConfig
from decoupled.agents.impala import ImpalaNet, impala_loss, sequence_inputs, vtrace_inputs
from decoupled.agents.nets.heads import FeatureControlHead, PixelControlHead, RewardPredictionHead
from decoupled.agents.ops.auxiliary import (
    feature_change_rewards,
    feature_control_loss,
    pixel_change_rewards,
    pixel_control_loss,
    reward_prediction_loss,
    value_replay_loss,
)
from decoupled.envs.base import EnvSpec
from decoupled.envs.replay import SequenceReplay


class UnrealNet(ImpalaNet):
    """ImpalaNet (torso -> core -> policy/baseline) plus the auxiliary heads whose cost is above 0."""

    def __init__(self, spec: EnvSpec, cfg: UnrealConfig):
        super().__init__(spec, cfg)
        add_auxiliary_heads(self, spec, cfg, self.torso, self.core.out_size)

    def replay_forward(self, inputs: dict[str, torch.Tensor], state) -> dict[str, torch.Tensor]:
        """The base outputs on replayed sequences [T+1, n] plus the PC / FC Q maps and FC's feature means."""
        obs = inputs["obs"]
        T, B = obs.shape[:2]
        features, maps = torso_features(self.torso, obs, self.cfg.feature_control_cost > 0)
        core_out, _ = self.core(
            features.view(T, B, -1), inputs["prev_action"], inputs["prev_reward"], inputs["first"], state
        )
        out: dict[str, torch.Tensor] = dict(self.heads(core_out))
        out.update(auxiliary_outputs(self, obs, core_out.reshape(T * B, -1), maps))
        return out

    def reward_prediction_logits(self, obs: torch.Tensor) -> torch.Tensor:
        return torso_reward_prediction(self.torso, self.reward_prediction, obs)


def torso_reward_prediction(torso: nn.Module, head: nn.Module, obs: torch.Tensor) -> torch.Tensor:
    """Reward prediction's logits: obs [k, n, *obs] -> [n, 3], from the torso's features of the k frames only (no
    core: the task must not train the LSTM, as in the paper), through `head` (the net's `reward_prediction`)."""
    k, n = obs.shape[:2]
    return head(torso(obs.reshape(k * n, *obs.shape[2:])).view(k, n, -1))


def torso_features(torso: nn.Module, obs: torch.Tensor, maps: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The torso on replayed observations [T, B, ...] -> features [T*B, F] and, when `maps` (feature control), its
    last conv layer's maps [T*B, C, h, w]."""
    flat = obs.reshape(obs.shape[0] * obs.shape[1], *obs.shape[2:])
    if maps:
        return torso.forward_maps(flat)
    return torso(flat), None


# ------------------------------------------------------------------------------------------------ the tasks
class UnrealTask:
    """One of UNREAL's auxiliary tasks as a module: `build` puts its head on the net (reading the core's output or
    the torso's features), `outputs` computes what its loss needs on replayed sequences (its targets included),
    `loss` returns its weighted term and metrics. Its settings are the unreal agent's (`agent.<name>_cost`, ...),
    or, for another agent, `agent.aux.<name>` read through `decoupled.agents.config.unreal_settings`."""

    name = ""
    sample = "seq"  # what it learns from: replayed sequences ("seq") or reward-prediction windows ("rp")

    def cost(self, cfg: UnrealConfig) -> float:
        return float(getattr(cfg, f"{self.name}_cost"))

    def build(self, net: nn.Module, spec: EnvSpec, cfg: UnrealConfig, torso: nn.Module, core_size: int) -> None:
        pass

    def outputs(self, net: nn.Module, obs: torch.Tensor, h: torch.Tensor, maps: torch.Tensor | None) -> dict:
        return {}

    def loss(self, cfg: UnrealConfig, rb: dict, ro: dict, ctx: dict, scale: float, T: int) -> tuple[Any, dict]:
        raise NotImplementedError


class PixelControl(UnrealTask):
    """Pixel control: a dueling deconv Q head on the core's output; targets: the pixel changes of the replayed
    frames (n-step Q-learning, `agents.ops.auxiliary.pixel_control_loss`)."""

    name = "pixel_control"

    def build(self, net, spec, cfg, torso, core_size):
        net.pixel_control = PixelControlHead(core_size, spec.num_actions, pixel_control_grid(spec, cfg))

    def outputs(self, net, obs, h, maps):
        T, B = obs.shape[:2]
        cfg = net.cfg
        q = net.pixel_control(h)
        out = {"pixel_control_q": q.view(T, B, *q.shape[1:])}
        c, k = cfg.pixel_control_crop, cfg.pixel_control_cell
        with torch.no_grad():  # the pseudo-rewards of the T transitions, [T-1, B, G_h, G_w]
            out["pixel_change"] = pixel_change_rewards(obs[:-1], obs[1:], c, k, net.obs_scale, net.pc_channels)
        return out

    def loss(self, cfg, rb, ro, ctx, scale, T):
        o, continues = ro["seq"], ctx["continues"]
        r_pc = o["pixel_change"]
        pc, targets = pixel_control_loss(o["pixel_control_q"], ctx["actions"], r_pc, ctx["pc_discounts"], continues,
                                         continues)  # fmt: skip
        pc = pc.sum() / continues.sum().clamp(min=1.0)
        metrics = {
            "aux/pixel_control/loss": pc.detach(),
            "aux/pixel_control/reward_mean": _mean_inside_episodes(r_pc, continues),
            "aux/pixel_control/target_mean": targets.mean(),
            "aux/pixel_control/q_max_mean": o["pixel_control_q"].detach().max(dim=2).values.mean(),
        }
        return cfg.pixel_control_cost * scale * pc, metrics


class RewardPrediction(UnrealTask):
    """Reward prediction: the torso's features of k replayed frames (no core) -> zero / positive / negative of the
    reward that follows; targets: the replayed reward."""

    name = "reward_prediction"
    sample = "rp"

    def build(self, net, spec, cfg, torso, core_size):
        net.reward_prediction = RewardPredictionHead(
            torso.out_size, cfg.reward_prediction_frames, cfg.reward_prediction_hidden
        )

    def loss(self, cfg, rb, ro, ctx, scale, T):
        ce, target = reward_prediction_loss(ro["rp_logits"], rb["rp"]["reward"])
        rp = ce.mean()
        pred = ro["rp_logits"].detach().argmax(-1)
        correct = (pred == target).float()
        nonzero = (target != 0).float()
        zero = 1 - nonzero
        metrics = {
            "aux/reward_prediction/loss": rp.detach(),
            "aux/reward_prediction/accuracy": correct.mean(),
            "aux/reward_prediction/accuracy_zero": (correct * zero).sum() / zero.sum().clamp(min=1.0),
            "aux/reward_prediction/accuracy_nonzero": (correct * nonzero).sum() / nonzero.sum().clamp(min=1.0),
            "aux/reward_prediction/batch_nonzero_fraction": nonzero.mean(),
            "aux/reward_prediction/replay_nonzero_fraction": rb["rp"]["nonzero_fraction"].float(),
        }
        return cfg.reward_prediction_cost * (scale / T) * rp, metrics


class ValueReplay(UnrealTask):
    """Value function replay: the base value head on replayed sequences, regressed on n-step returns."""

    name = "value_replay"

    def loss(self, cfg, rb, ro, ctx, scale, T):
        inputs = ctx["inputs"]
        vr, _ = value_replay_loss(
            ro["seq"]["baseline"][:-1], inputs["rewards"], inputs["discounts"], ctx["continues"], inputs["next_values"]
        )
        vr = vr.mean()
        return cfg.value_replay_cost * scale * vr, {"aux/value_replay/loss": vr.detach()}


class FeatureControl(UnrealTask):
    """Feature control: Q values per channel of the torso's last conv layer on the core's output; targets: the
    change of each channel's mean activation between replayed frames."""

    name = "feature_control"

    def build(self, net, spec, cfg, torso, core_size):
        with torch.no_grad():
            _, maps = torso.forward_maps(torch.zeros(1, *spec.obs_shape, dtype=torch.uint8))
        net.feature_control = FeatureControlHead(core_size, spec.num_actions, maps.shape[1])

    def outputs(self, net, obs, h, maps):
        T, B = obs.shape[:2]
        q = net.feature_control(h)
        means = maps.mean(dim=(-2, -1)).view(T, B, -1)
        return {"feature_means": means, "feature_control_q": q.view(T, B, *q.shape[1:])}

    def loss(self, cfg, rb, ro, ctx, scale, T):
        o, continues = ro["seq"], ctx["continues"]
        m = o["feature_means"].detach()
        r_fc = feature_change_rewards(m[:-1].unsqueeze(-1).unsqueeze(-1), m[1:].unsqueeze(-1).unsqueeze(-1))
        fc = feature_control_loss(o["feature_control_q"], ctx["actions"], r_fc, ctx["pc_discounts"], continues,
                                  continues)  # fmt: skip
        fc = fc.sum() / continues.sum().clamp(min=1.0)
        metrics = {
            "aux/feature_control/loss": fc.detach(),
            "aux/feature_control/reward_mean": _mean_inside_episodes(r_fc, continues),
        }
        return cfg.feature_control_cost * scale * fc, metrics


TASKS: dict[str, UnrealTask] = {
    t.name: t for t in (PixelControl(), RewardPrediction(), ValueReplay(), FeatureControl())
}
# The orders below are today's (heads drawn from one forked RNG in this order; loss terms added in this order): a
# change would change the updates (tests/unit/test_unreal_regression.py).
HEAD_ORDER = ("pixel_control", "reward_prediction", "feature_control")
LOSS_ORDER = ("value_replay", "pixel_control", "feature_control", "reward_prediction")


def active_tasks(cfg: UnrealConfig, order: tuple[str, ...]) -> list[UnrealTask]:
    return [TASKS[name] for name in order if TASKS[name].cost(cfg) > 0]


def add_auxiliary_heads(net: nn.Module, spec: EnvSpec, cfg: UnrealConfig, torso: nn.Module, core_size: int) -> None:
    """The auxiliary heads whose cost is above 0, on `net` (UnrealNet, or a progressive net's newest column): pixel
    control and feature control read the core's output (`core_size`), reward prediction the torso's features."""
    net.cfg = cfg
    stack = int(spec.extra.get("frame_stack", 1))
    net.pc_channels = slice(-1, None) if stack > 1 else slice(None)  # frame stacks: the newest frame
    net.obs_scale = float(spec.extra.get("obs_scale", 1.0))
    with torch.random.fork_rng(devices=[]):  # leave the global RNG as the base agent's net leaves it
        torch.manual_seed(torch.initial_seed() + 2)
        for task in active_tasks(cfg, HEAD_ORDER):
            task.build(net, spec, cfg, torso, core_size)


def auxiliary_outputs(net: nn.Module, obs: torch.Tensor, h: torch.Tensor, maps: torch.Tensor | None) -> dict:
    """The PC / FC outputs on replayed sequences: obs [T, B, ...], the core's output h [T*B, H], the last conv
    layer's maps [T*B, C, h, w] (feature control)."""
    out: dict[str, torch.Tensor] = {}
    for task in active_tasks(net.cfg, HEAD_ORDER):
        out.update(task.outputs(net, obs, h, maps))
    return out


def pixel_control_grid(spec: EnvSpec, cfg: UnrealConfig) -> tuple[int, int]:
    if len(spec.obs_shape) != 3:
        raise ValueError(f"pixel control needs image observations [C,H,W], got {spec.obs_shape}; set "
                             "agent.pixel_control_cost=0")  # fmt: skip
    H, W = spec.obs_shape[-2:]
    c, k = cfg.pixel_control_crop, cfg.pixel_control_cell
    h, w = H - 2 * c, W - 2 * c
    if h < 3 * k or w < 3 * k or h % k or w % k:
        raise ValueError(
            f"pixel control: {H}x{W} frames cropped by agent.pixel_control_crop={c} do not split into a grid of "
            f"at least 3x3 cells of agent.pixel_control_cell={k} pixels (Atari 84x84: crop 2, cell 4; MinAtar "
            "10x10: crop 0, cell 1)"
        )
    return h // k, w // k


def make_net(spec: EnvSpec, cfg: UnrealConfig) -> torch.nn.Module:
    return UnrealNet(spec, cfg) if cfg.uses_replay else ImpalaNet(spec, cfg)


# ------------------------------------------------------------------------------------------------ replay
def make_replay(cfg: UnrealConfig, spec: EnvSpec, net: torch.nn.Module, unroll_length: int, seed: int):
    """The replay every auxiliary task samples from; None with every auxiliary cost at 0 (the base agent)."""
    if not cfg.uses_replay:
        return None
    state_shapes = tuple(tuple(s.shape[1:]) for s in net.initial_state(1))
    # inputs the net takes from the env's extras (the nav agent's velocity) are replayed with the observations
    extra = {key: ((size,), np.float32) for key, size in getattr(net, "extra_inputs", {}).items()}
    return SequenceReplay(
        cfg.replay_capacity_steps, unroll_length, spec.obs_shape, spec.obs_dtype, state_shapes, seed,
        extra_fields=extra or None,
    )  # fmt: skip


def sample_replay(cfg: UnrealConfig, replay: SequenceReplay) -> dict[str, Any] | None:
    """One update's replay batch (numpy): `seq` sequences [T+1, n] with `seq_state`, and `rp` windows."""
    if replay.num_steps < max(cfg.replay_start_steps, 1):
        return None
    out: dict[str, Any] = {}
    if cfg.pixel_control_cost > 0 or cfg.value_replay_cost > 0 or cfg.feature_control_cost > 0:
        s = replay.sample_sequences(cfg.replay_sequences)
        out["seq"], out["seq_state"] = s["data"], s["initial_state"]
    if cfg.reward_prediction_cost > 0:
        try:
            w = replay.sample_reward_windows(
                cfg.reward_prediction_batch, cfg.reward_prediction_frames, cfg.reward_prediction_sampling == "skewed"
            )
            out["rp"] = {"obs": w["obs"], "reward": w["reward"], "nonzero_fraction": np.float32(w["nonzero_fraction"])}
        except ValueError:  # no window of k frames of one episode yet (episodes shorter than k so far)
            pass
    return out or None


def replay_outputs(cfg: UnrealConfig, net: UnrealNet, rb: dict[str, Any]) -> dict[str, torch.Tensor]:
    out: dict[str, Any] = {}
    if "seq" in rb:
        inputs = sequence_inputs(rb["seq"])
        for key in getattr(net, "extra_inputs", {}):  # the nav agent's velocity, replayed with the observations
            inputs[key] = rb["seq"][key]
        out["seq"] = net.replay_forward(inputs, tuple(rb["seq_state"]))
    if "rp" in rb:
        out["rp_logits"] = net.reward_prediction_logits(rb["rp"]["obs"])
    return out


# ------------------------------------------------------------------------------------------------ loss
def unreal_loss(
    cfg: UnrealConfig, batch: dict[str, Any], outputs: dict[str, Any]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The base loss on the on-policy batch plus the weighted auxiliary losses on `batch["replay"]`."""
    loss, metrics = impala_loss(cfg, batch, outputs)
    rb, ro = batch.get("replay"), outputs.get("replay")
    if rb is None or ro is None:
        return loss, metrics
    T, B = batch["action"].shape
    return add_replay_task_losses(cfg, loss, metrics, rb, ro, T - 1, B), metrics


def add_replay_task_losses(
    cfg: UnrealConfig, loss: torch.Tensor, metrics: dict, rb: dict[str, Any], ro: dict[str, Any], T: int, B: int
) -> torch.Tensor:
    """`loss` plus the active tasks' weighted terms on the replay batch `rb` and the net's outputs on it `ro` (added
    in LOSS_ORDER), their metrics put in `metrics`. T, B: the on-policy batch's new transitions per column and its
    columns, which set the terms' scale (see "Loss scale" above). Another agent (feudal) adds them to its own loss."""
    scale = float(T * B) if cfg.loss_reduction == "sum" else 1.0  # per-transition means -> the base loss's units
    ctx: dict[str, Any] = {}
    if "seq" in rb:
        s, o = rb["seq"], ro["seq"]
        inputs = vtrace_inputs(cfg, s, o["baseline"])
        continues = inputs["continues"]
        ctx = {
            "inputs": inputs,
            "actions": s["action"][1:],  # slot t+1 holds the action taken at obs_t
            "continues": continues,
            "pc_discounts": cfg.pixel_control_discount * continues,  # cut at every episode end (the docstring)
        }
    for task in active_tasks(cfg, LOSS_ORDER):
        if task.sample not in rb:
            continue
        term, task_metrics = task.loss(cfg, rb, ro, ctx, scale, T)
        loss = loss + term
        metrics.update(task_metrics)
    return loss


def _mean_inside_episodes(pseudo_rewards: torch.Tensor, continues: torch.Tensor) -> torch.Tensor:
    """The mean pseudo-reward [T, N, ...] over the transitions that stay in one episode (the others have none)."""
    per_transition = pseudo_rewards.detach().flatten(2).mean(-1)  # [T, N]
    return (per_transition * continues).sum() / continues.sum().clamp(min=1.0)


def loss_sum_factor(cfg: UnrealConfig, batch: dict[str, Any]) -> float:
    """Summed loss / this loss: 1 under `sum`, T*B under `mean` (the auxiliary terms are scaled with the base loss,
    see "Loss scale" above; the replayed sequences add no transitions to the base loss)."""
    if cfg.loss_reduction == "sum":
        return 1.0
    return float(batch["action"][1:].numel())


AGENT = AgentDef(
    name="unreal",
    config_class=UnrealConfig,
    make_net=make_net,
    loss_fn=unreal_loss,
    make_replay=make_replay,
    sample_replay=sample_replay,
    replay_outputs=replay_outputs,
    loss_sum_factor=loss_sum_factor,
)
