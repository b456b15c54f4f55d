"""Nav A3C+D1D2L: the navigation agent of Mirowski et al. 2017, "Learning to Navigate in Complex Environments"
(arXiv:1611.03673, ICLR'17; the v3 paper's depth classification and D1/D2 split).

    x_t -> conv torso (16 8x8/4, 32 4x4/2, FC 256) -> f_t
    LSTM1 (64):  [f_t, r_{t-1}]                    -> h1_t       (the reward goes to the first LSTM only)
    LSTM2 (256): [f_t, h1_t, v_t, a_{t-1}]         -> h_t        (velocity and previous action to the second)
    pi, V: linear heads on h_t
    D1: depth classes from f_t; D2: depth classes from h_t; L: loop closure from h_t   (agents/auxtasks.py)

    L = L_base + beta_D1 L_D1 + beta_D2 L_D2 + beta_L L_L

`agent.aux` chooses the auxiliary tasks (default D1, D2 and L with the smallest of the weights the paper samples
from; `agent.aux: {}` is the paper's Nav A3C). UNREAL's tasks (Jaderberg et al. 2017, arXiv:1611.05397) compose
with them: `agent.aux.pixel_control` etc. add UNREAL's replay, whose sequences carry the velocity input too, and its
heads (agents/unreal.py). `agent.core: dni_lstm` makes the second LSTM a synthetic-gradient core
(agents/nets/dni.py). The velocity v_t is the env's agent-frame velocity extra (`velocity`: the labyrinth's
forward and lateral displacement over the last step and its yaw change; DMLab's has 6 components) of the same
observation, recorded by the actor; a_{t-1} and r_{t-1} are zeroed where an episode starts, and both LSTMs reset
there.

Deliberate deviations, with the reason:
- The base learner is IMPALA's (V-trace on the actors' batched unrolls) instead of 16 asynchronous A3C threads: the
  platform's synchronous actor-learner split; on-policy it is A2C with the unroll's n-step returns.
- The second LSTM is the platform's core (agents/nets/cores.py), which also takes a reward input: it is fed 0, so
  that the reward reaches the first LSTM only (the paper's routing); its input thus has one unused column.
- r_{t-1} into the first LSTM is unclipped by default (the v3 paper's unclipped rewards; `agent.reward_clip`).
- The loop-closure label uses the simulator's true positions (the paper integrates velocity) and restarts its
  history at every respawn as well as at episode starts (a respawn teleports the agent).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from decoupled.agents import unreal
from decoupled.agents.auxtasks import build_aux_tasks
from decoupled.agents.base import AgentDef
from decoupled.agents.config import NavConfig, unreal_settings
from decoupled.agents.impala import impala_loss, orthogonal_init
from decoupled.agents.nets import make_core
from decoupled.agents.nets.cores import CoreState
from decoupled.agents.nets.heads import PolicyBaselineHead
from decoupled.agents.nets.torsos import make_torso
from decoupled.envs.base import EnvSpec


class NavNet(nn.Module):
    """torso -> LSTM1 -> LSTM2 (the core) -> policy/baseline, plus agent.aux's heads. The state is
    (LSTM2's state..., h1, c1): the core's state first, as the synthetic-gradient core's learner hook expects."""

    def __init__(self, spec: EnvSpec, cfg: NavConfig):
        super().__init__()
        self.cfg = self.nav_cfg = cfg  # `cfg` becomes UNREAL's task settings when agent.aux names its tasks
        self.num_actions = A = spec.num_actions
        obs_scale = float(spec.extra.get("obs_scale", 1.0))
        self.torso = make_torso(cfg.torso, spec.obs_shape, obs_scale, tuple(cfg.hidden_sizes), cfg.channels_last)
        F_ = self.torso.out_size
        self.lstm1 = nn.LSTMCell(F_ + 1, cfg.lstm1_size)
        self.core = make_core(cfg.core, F_ + cfg.lstm1_size + cfg.velocity_size, A, cfg.lstm_size, cfg.dni)
        self.heads = PolicyBaselineHead(self.core.out_size, A)
        if cfg.init == "orthogonal":
            orthogonal_init(self.torso, math.sqrt(2.0))
            orthogonal_init(self.heads.policy, 0.01)
            orthogonal_init(self.heads.baseline, 1.0)
        self.aux = build_aux_tasks(cfg.aux, F_, self.core.out_size)
        # inputs beyond obs/first/prev_action/prev_reward, taken from the env's extras: {key: size}
        self.extra_inputs = {"velocity": cfg.velocity_size} if cfg.velocity_size else {}
        self.unreal = unreal_settings(cfg)  # UNREAL's replay tasks of agent.aux (agents/unreal.py), or None
        if self.unreal is not None:
            unreal.add_auxiliary_heads(self, spec, self.unreal, self.torso, self.core.out_size)

    def env_targets(self, num_envs: int):
        from decoupled.agents.auxtasks import EnvTargets

        size = self.nav_cfg.velocity_size
        if self.aux is not None:
            return self.aux.env_targets(num_envs, size)
        return EnvTargets(num_envs, velocity_size=size) if size else None

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> CoreState:
        zeros = torch.zeros(batch_size, self.nav_cfg.lstm1_size, device=device)
        return (*self.core.initial_state(batch_size, device), zeros, zeros.clone())

    def forward(self, inputs: dict[str, torch.Tensor], state: CoreState) -> tuple[dict[str, torch.Tensor], CoreState]:
        """inputs: obs [T,B,*obs], first [T,B], prev_action [T,B], prev_reward [T,B], velocity [T,B,V]."""
        out, state, _ = self._run(inputs, state)
        return out, state

    def replay_forward(self, inputs: dict[str, torch.Tensor], state: CoreState) -> dict[str, torch.Tensor]:
        """The outputs on replayed sequences [T+1, n] plus UNREAL's tasks' (pixel / feature control)."""
        out, _, (features_maps, core_out) = self._run(inputs, state, maps=self.unreal.feature_control_cost > 0)
        T, B = inputs["obs"].shape[:2]
        out.update(unreal.auxiliary_outputs(self, inputs["obs"], core_out.reshape(T * B, -1), features_maps))
        return out

    def reward_prediction_logits(self, obs: torch.Tensor) -> torch.Tensor:
        return unreal.torso_reward_prediction(self.torso, self.reward_prediction, obs)

    def _run(self, inputs: dict[str, torch.Tensor], state: CoreState, maps: bool = False):
        cfg = self.nav_cfg
        obs, first = inputs["obs"], inputs["first"]
        T, B = obs.shape[:2]
        flat = obs.reshape(T * B, *obs.shape[2:])
        conv_maps = None
        if maps:
            features, conv_maps = self.torso.forward_maps(flat)
        else:
            features = self.torso(flat)
        features = features.reshape(T, B, -1)
        not_first = (~first).unsqueeze(-1).float()
        reward = inputs["prev_reward"].float()
        if cfg.reward_clip is not None:
            reward = reward.clamp(-cfg.reward_clip, cfg.reward_clip)
        x1 = torch.cat([features, reward.unsqueeze(-1) * not_first], -1)
        *core_state, h1, c1 = state
        outs = []
        for t in range(T):
            mask = not_first[t]
            h1, c1 = self.lstm1(x1[t], (h1 * mask, c1 * mask))
            outs.append(h1)
        h1_all = torch.stack(outs)
        parts = [features, h1_all]
        if cfg.velocity_size:
            if "velocity" not in inputs:
                raise KeyError(
                    "the nav net takes the env's velocity as input 'velocity' [T, B, V] (agent.velocity_size)"
                )
            parts.append(inputs["velocity"].float())
        x2 = torch.cat(parts, -1)
        extras: dict[str, Any] = {}
        # the core adds one-hot a_{t-1} (zeroed at episode starts); its reward input is held at 0 (see the docstring)
        core_out, core_state = self.core(
            x2, inputs["prev_action"], torch.zeros_like(reward), first, tuple(core_state), extras=extras
        )
        out = {**self.heads(core_out), **extras}
        if self.aux is not None:
            out.update(self.aux(features, core_out))
        return out, (*core_state, h1, c1), (conv_maps, core_out)


def make_net(spec: EnvSpec, cfg: NavConfig) -> NavNet:
    return NavNet(spec, cfg)


def nav_loss(cfg: NavConfig, batch: dict[str, Any], outputs: dict[str, Any]) -> tuple[torch.Tensor, dict]:
    """The IMPALA loss plus agent.aux's weighted losses: the online tasks' (impala_loss adds them), and UNREAL's on
    the replayed sequences when agent.aux names them (unreal_loss, with UNREAL's settings read from agent.aux)."""
    settings = unreal_settings(cfg)
    if settings is None:
        return impala_loss(cfg, batch, outputs)
    return unreal.unreal_loss(settings, batch, outputs)


def make_replay(cfg: NavConfig, spec: EnvSpec, net: nn.Module, unroll_length: int, seed: int):
    """UNREAL's replay (with the velocity input replayed) when agent.aux names its tasks; None otherwise."""
    settings = unreal_settings(cfg)
    return None if settings is None else unreal.make_replay(settings, spec, net, unroll_length, seed)


def sample_replay(cfg: NavConfig, replay: Any) -> dict[str, Any] | None:
    return unreal.sample_replay(unreal_settings(cfg), replay)


def replay_outputs(cfg: NavConfig, net: NavNet, rb: dict[str, Any]) -> dict[str, Any]:
    return unreal.replay_outputs(unreal_settings(cfg), net, rb)


def loss_sum_factor(cfg: NavConfig, batch: dict[str, Any]) -> float:
    return 1.0 if cfg.loss_reduction == "sum" else float(batch["action"][1:].numel())


AGENT = AgentDef(
    name="nav",
    config_class=NavConfig,
    make_net=make_net,
    loss_fn=nav_loss,
    make_replay=make_replay,
    sample_replay=sample_replay,
    replay_outputs=replay_outputs,
    loss_sum_factor=loss_sum_factor,
)
