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

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from decoupled.agents.base import AgentDef
from decoupled.agents.impala import ImpalaConfig, ImpalaNet, impala_loss, sequence_inputs, vtrace_inputs
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


class UnrealConfig(ImpalaConfig):
    """The base agent's settings (agents.impala) plus the auxiliary tasks'. Defaults: the paper's where known
    (UNREAL's hyperparameter table, as public reimplementations read it), an LSTM core as in the paper's agent."""

    name: Literal["unreal"] = "unreal"  # type: ignore[assignment]
    core: Literal["none", "lstm", "dni_lstm"] = Field("lstm", description="UNREAL's agent is a CNN-LSTM")
    pixel_control_cost: float = Field(
        0.01, ge=0.0, description="lambda_PC (paper: Labyrinth 0.01-0.1, Atari 0.0001-0.01); 0 turns PC off"
    )
    reward_prediction_cost: float = Field(1.0, ge=0.0, description="lambda_RP; 0 turns RP off")
    value_replay_cost: float = Field(1.0, ge=0.0, description="lambda_VR; 0 turns VR off")
    feature_control_cost: float = Field(0.0, ge=0.0, description="lambda_FC (an option, off in UNREAL's agent)")
    pixel_control_discount: float = Field(0.9, gt=0.0, le=1.0, description="gamma_pc (trfl: 0.9 is common)")
    pixel_control_cell: int = Field(4, ge=1, description="cell side in pixels (UNREAL: 4, a 20x20 grid on 80x80)")
    pixel_control_crop: int = Field(2, ge=0, description="pixels dropped at each border (84 -> the central 80)")
    reward_prediction_frames: int = Field(3, ge=1, le=16, description="k frames of context (paper: 3)")
    reward_prediction_hidden: int = Field(128, ge=0, description="RP hidden layer (paper: 128); 0: linear")
    reward_prediction_sampling: Literal["skewed", "uniform"] = Field(
        "skewed", description="skewed: half the windows end in a non-zero reward (the paper's); uniform: any"
    )
    reward_prediction_batch: int = Field(16, ge=1, description="RP windows per update")
    replay_sequences: int = Field(4, ge=1, description="replayed sequences per update (PC, VR and FC share them)")
    # replay_capacity_steps / replay_start_steps: the base agent's (the paper keeps 2,000 frames per A3C thread)

    @property
    def uses_replay(self) -> bool:
        return any(
            c > 0
            for c in (
                self.pixel_control_cost,
                self.reward_prediction_cost,
                self.value_replay_cost,
                self.feature_control_cost,
            )
        )

    @model_validator(mode="after")
    def _no_base_replay(self) -> UnrealConfig:
        if self.replay_ratio > 0:
            raise ValueError("agent.replay_ratio (V-trace on replayed sequences) is the impala agent's; UNREAL "
                             "replays for its auxiliary tasks (agent.value_replay_cost and the others)")  # fmt: skip
        return self

    @model_validator(mode="after")
    def _feature_control_needs_conv(self) -> UnrealConfig:
        if self.feature_control_cost > 0 and self.torso == "mlp":
            raise ValueError("agent.feature_control_cost > 0 needs a conv torso (feature maps); torso is mlp")
        return self


class UnrealNet(ImpalaNet):
    """ImpalaNet (torso -> core -> policy/baseline) plus the auxiliary heads whose cost is above 0."""

    def __init__(self, spec: EnvSpec, cfg: UnrealConfig):
        super().__init__(spec, cfg)
        add_auxiliary_heads(self, spec, cfg, self.torso, self.core.out_size)

    def replay_forward(self, inputs: dict[str, torch.Tensor], state) -> dict[str, torch.Tensor]:
        """The base outputs on replayed sequences [T+1, n] plus the PC / FC Q maps and FC's feature means."""
        obs = inputs["obs"]
        T, B = obs.shape[:2]
        flat = obs.reshape(T * B, *obs.shape[2:])
        maps = None
        if self.cfg.feature_control_cost > 0:
            features, maps = self.torso.forward_maps(flat)
        else:
            features = self.torso(flat)
        core_out, _ = self.core(
            features.view(T, B, -1), inputs["prev_action"], inputs["prev_reward"], inputs["first"], state
        )
        out: dict[str, torch.Tensor] = dict(self.heads(core_out))
        out.update(auxiliary_outputs(self, obs, core_out.reshape(T * B, -1), maps))
        return out

    def reward_prediction_logits(self, obs: torch.Tensor) -> torch.Tensor:
        """obs [k, n, *obs] -> logits [n, 3] (torso only, no core: RP must not train the LSTM, pitfall 8)."""
        k, n = obs.shape[:2]
        features = self.torso(obs.reshape(k * n, *obs.shape[2:])).view(k, n, -1)
        return self.reward_prediction(features)


def add_auxiliary_heads(net: nn.Module, spec: EnvSpec, cfg: UnrealConfig, torso: nn.Module, core_size: int) -> None:
    """The auxiliary heads whose cost is above 0, on `net` (UnrealNet, or a progressive net's newest column): pixel
    control and feature control read the core's output (`core_size`), reward prediction the torso's features."""
    net.cfg = cfg
    A = spec.num_actions
    stack = int(spec.extra.get("frame_stack", 1))
    net.pc_channels = slice(-1, None) if stack > 1 else slice(None)  # frame stacks: the newest frame
    net.obs_scale = float(spec.extra.get("obs_scale", 1.0))
    with torch.random.fork_rng(devices=[]):  # leave the global RNG as the base agent's net leaves it
        torch.manual_seed(torch.initial_seed() + 2)
        if cfg.pixel_control_cost > 0:
            net.pixel_control = PixelControlHead(core_size, A, pixel_control_grid(spec, cfg))
        if cfg.reward_prediction_cost > 0:
            net.reward_prediction = RewardPredictionHead(
                torso.out_size, cfg.reward_prediction_frames, cfg.reward_prediction_hidden
            )
        if cfg.feature_control_cost > 0:
            with torch.no_grad():
                _, maps = torso.forward_maps(torch.zeros(1, *spec.obs_shape, dtype=torch.uint8))
            net.feature_control = FeatureControlHead(core_size, A, maps.shape[1])


def auxiliary_outputs(net: nn.Module, obs: torch.Tensor, h: torch.Tensor, maps: torch.Tensor | None) -> dict:
    """The PC / FC outputs on replayed sequences: obs [T, B, ...], the core's output h [T*B, H], the last conv
    layer's maps [T*B, C, h, w] (feature control)."""
    cfg = net.cfg
    T, B = obs.shape[:2]
    out: dict[str, torch.Tensor] = {}
    if cfg.feature_control_cost > 0:
        out["feature_means"] = maps.mean(dim=(-2, -1)).view(T, B, -1)
    if cfg.pixel_control_cost > 0:
        q = net.pixel_control(h)
        out["pixel_control_q"] = q.view(T, B, *q.shape[1:])
        c, k = cfg.pixel_control_crop, cfg.pixel_control_cell
        with torch.no_grad():  # the pseudo-rewards of the T transitions, [T-1, B, G_h, G_w]
            out["pixel_change"] = pixel_change_rewards(obs[:-1], obs[1:], c, k, net.obs_scale, net.pc_channels)
    if cfg.feature_control_cost > 0:
        q = net.feature_control(h)
        out["feature_control_q"] = q.view(T, B, *q.shape[1:])
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
    return SequenceReplay(cfg.replay_capacity_steps, unroll_length, spec.obs_shape, spec.obs_dtype, state_shapes, seed)


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
        out["seq"] = net.replay_forward(sequence_inputs(rb["seq"]), tuple(rb["seq_state"]))
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
    T -= 1
    scale = float(T * B) if cfg.loss_reduction == "sum" else 1.0  # per-transition means -> the base loss's units
    if "seq" in rb:
        s, o = rb["seq"], ro["seq"]
        inputs = vtrace_inputs(cfg, s, o["baseline"])
        actions_t = s["action"][1:]  # slot t+1 holds the action taken at obs_t
        continues = inputs["continues"]
        if cfg.value_replay_cost > 0:
            vr, _ = value_replay_loss(
                o["baseline"][:-1], inputs["rewards"], inputs["discounts"], continues, inputs["next_values"]
            )
            vr = vr.mean()
            loss = loss + cfg.value_replay_cost * scale * vr
            metrics["aux/value_replay/loss"] = vr.detach()
        pc_discounts = cfg.pixel_control_discount * continues  # cut at every episode end (see the docstring)
        if cfg.pixel_control_cost > 0:
            r_pc = o["pixel_change"]
            pc, targets = pixel_control_loss(o["pixel_control_q"], actions_t, r_pc, pc_discounts, continues, continues)
            pc = pc.sum() / continues.sum().clamp(min=1.0)
            loss = loss + cfg.pixel_control_cost * scale * pc
            metrics["aux/pixel_control/loss"] = pc.detach()
            metrics["aux/pixel_control/reward_mean"] = _mean_inside_episodes(r_pc, continues)
            metrics["aux/pixel_control/target_mean"] = targets.mean()
            metrics["aux/pixel_control/q_max_mean"] = o["pixel_control_q"].detach().max(dim=2).values.mean()
        if cfg.feature_control_cost > 0:
            m = o["feature_means"].detach()
            r_fc = feature_change_rewards(m[:-1].unsqueeze(-1).unsqueeze(-1), m[1:].unsqueeze(-1).unsqueeze(-1))
            fc = feature_control_loss(o["feature_control_q"], actions_t, r_fc, pc_discounts, continues, continues)
            fc = fc.sum() / continues.sum().clamp(min=1.0)
            loss = loss + cfg.feature_control_cost * scale * fc
            metrics["aux/feature_control/loss"] = fc.detach()
            metrics["aux/feature_control/reward_mean"] = _mean_inside_episodes(r_fc, continues)
    if "rp" in rb:
        ce, target = reward_prediction_loss(ro["rp_logits"], rb["rp"]["reward"])
        rp = ce.mean()
        loss = loss + cfg.reward_prediction_cost * (scale / T) * rp
        pred = ro["rp_logits"].detach().argmax(-1)
        correct = (pred == target).float()
        nonzero = (target != 0).float()
        metrics["aux/reward_prediction/loss"] = rp.detach()
        metrics["aux/reward_prediction/accuracy"] = correct.mean()
        metrics["aux/reward_prediction/accuracy_zero"] = (correct * (1 - nonzero)).sum() / (1 - nonzero).sum().clamp(
            min=1.0
        )
        metrics["aux/reward_prediction/accuracy_nonzero"] = (correct * nonzero).sum() / nonzero.sum().clamp(min=1.0)
        metrics["aux/reward_prediction/batch_nonzero_fraction"] = nonzero.mean()
        metrics["aux/reward_prediction/replay_nonzero_fraction"] = rb["rp"]["nonzero_fraction"].float()
    return loss, metrics


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
