"""FeUdal Networks (FuN): a Manager that sets goals in a learned latent space and a Worker that follows them
(Vezhnevets et al. 2017, arXiv:1703.01161).

Architecture (Sec. 3, Fig. 1), per step t, all rows of a time-major [S, B] batch:

    z_t   = f_percept(x_t)                         the torso (shared; `agent.torso`)
    s_t   = f_Mspace(z_t) = ReLU(W z_t)            the Manager's state space, d = `manager_size`
    g^_t  = dLSTM(s_t)                             dilated LSTM, r = `dilation` cores (agents/nets/cores.py)
    g_t   = g^_t / ||g^_t||                        a unit goal every step (w.p. `random_goal_prob` a random one)
    w_t   = phi(sum_{i=t-c}^{t} sg(g_i))           phi linear without bias, d -> k = `goal_embedding`, c = `horizon`
    U_t   = f_Wrnn(z_t)  reshaped [|A|, k]         the Worker's LSTM (or dni_lstm) core, then a linear map (below)
    pi_t  = softmax(U_t w_t)

Losses (Sec. 3.1-3.3, eqs. 7-9), with d_cos the cosine similarity:

    Worker:  actor-critic on r_t + alpha r^I_t with its own critic V^D and discount gamma_W (eq. 9), where
             r^I_t = mean_{i=1..c} d_cos(s_t - s_{t-i}, g_{t-i})        (eq. 8, no gradient)
    Manager: transition policy gradient, the ascent direction A^M_t grad d_cos(s_{t+c} - s_t, g_t)     (eq. 7)
             with A^M_t = R^M_t - V^M(x_t) on the extrinsic reward, its own critic and discount gamma_M.

Gradient isolation, as the paper says ("no gradients are propagated between Worker and Manager"): goals enter phi
detached, so the Worker's loss never reaches the Manager; s_{t+c} - s_t is detached in the TPG cosine (the paper
ignores s's dependence on theta there, against trivial solutions), so the TPG reaches the Manager's dLSTM,
f_Mspace and the shared torso only through g_t; r^I is computed without gradient. The TPG and V^M never reach phi,
the Worker's core or its heads. `tests/unit/test_feudal.py` checks each of these.

Choices where the paper is silent, and deviations:

* **Look-ahead across unrolls.** The TPG term of step t needs s_{t+c}. Instead of dropping the last c steps of
  every unroll, each rollout repeats the previous rollout's last c transitions in front of its own
  (`AgentDef.overlap` = c: the batch is [c + T + 1, B] with the core state before its first slot). The TPG is
  computed for the goals of slots 0..T-1 (the repeats' goals one update late, with the current parameters), the
  Worker's loss and both value losses for the T new transitions only, so every step counts once. The intrinsic
  reward of a new transition needs the c states and goals before it: the repeats provide them too.
* **Policy lag.** The runner's actors may act with parameters a few updates old. Both critics' targets are V-trace
  targets (Espeholt et al. 2018) with the Worker's truncated importance weights (the actions are the Worker's; the
  Manager's "transition policy" is realised through them): the Worker's on r + alpha r^I with V^D and gamma_W, the
  Manager's on r with V^M and gamma_M. A^M_t = v^M_t - V^M(x_t); on-policy (no lag) both reduce to the paper's
  n-step returns to the end of the unroll. Exploration goals are part of the behaviour policy: the learner recomputes
  goals without them, and V-trace's weights correct the Worker's resulting mismatch like any other lag.
* **The Worker's U.** The Worker's core output (`worker_size`, 256 as the paper) goes through a linear map to
  |A| x k (the paper does not say how its 256 units become |A| x k). Its core takes the previous action and reward
  as every core here does.
* **Critics.** V^D is linear on the Worker's core output; V^M is linear on the percept z_t (from x_t, as the paper's
  V^M(x_t, theta); a critic on the goal g^ is the bug that stopped an earlier reimplementation converging).
* **Episode boundaries.** Manager and Worker states, the goal history and the dilation tick reset where an episode
  starts. r^I terms whose s_{t-i}, g_{t-i} lie before an episode start are left out (the mean is over the rest), and
  a transition that ends an episode gets r^I = 0 (its next slot is the next episode's first observation); TPG terms
  whose window [t, t+c] crosses an episode start are left out, as are those with ||s_{t+c} - s_t|| below
  `min_transition_norm` (the cosine of a near-zero transition is noise).
* **Truncation.** The Worker bootstraps with the actor's V^D of the final observation where an episode is cut; the
  Manager, whose V^M of it the actor does not record, bootstraps with V^M of the last observation before the cut.

Auxiliary tasks (`agent.aux`, as for the impala and nav agents): the depth and loop-closure heads of
agents/auxtasks.py read the shared torso's features and the Worker's core output and learn online on the T new
observations of each batch; UNREAL's pixel control, reward prediction and feature control (agents/unreal.py) learn
from a replay of the overlapped rollouts, through the torso and the Worker's core only (the Manager is not run on
replay). So none of them reaches the Manager's dLSTM, f_Mspace or V^M; they shape the shared torso as UNREAL's do.
UNREAL's value replay is not taken: V^D's target includes r^I, which needs the Manager.

Diagnostics (`feudal/` metrics): the intrinsic reward, the cosine of realised transitions with goals, the variance of
s and of the goals (a collapsed s makes every r^I 0), both critics' losses and the Manager's advantage. `net.goal_
ablation = "zero" | "random"` plays the same policy with the Manager's goals replaced (`decoupled eval
--ablate-goals`): if the score does not fall, the Worker is not using the Manager.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from decoupled.agents import unreal
from decoupled.agents.auxtasks import aux_losses, build_aux_tasks
from decoupled.agents.base import AgentDef
from decoupled.agents.config import FeudalConfig, unreal_settings
from decoupled.agents.impala import orthogonal_init
from decoupled.agents.nets import make_core
from decoupled.agents.nets.cores import CoreState, DilatedLSTM
from decoupled.agents.nets.torsos import make_torso
from decoupled.agents.ops.losses import baseline_loss, entropy_loss, policy_gradient_loss
from decoupled.agents.ops.vtrace import vtrace_from_logits
from decoupled.envs.base import EnvSpec

GOAL_ABLATIONS = ("none", "zero", "random")
_EPS = 1e-8  # in the norms of cosines and goals


class FeudalNet(nn.Module):
    """Percept -> (Manager: Mspace -> dLSTM -> goals) and (Worker: core -> U, V^D); policy = softmax(U w)."""

    def __init__(self, spec: EnvSpec, cfg: FeudalConfig):
        super().__init__()
        self.cfg = self.feudal_cfg = cfg  # `cfg` becomes UNREAL's task settings when agent.aux names its tasks
        A, d, k = spec.num_actions, cfg.manager_size, cfg.goal_embedding
        self.num_actions = A
        obs_scale = float(spec.extra.get("obs_scale", 1.0))
        self.torso = make_torso(cfg.torso, spec.obs_shape, obs_scale, tuple(cfg.hidden_sizes), cfg.channels_last)
        F_ = self.torso.out_size
        # the Worker's core is built first: its (h, c) lead the net's state (a dni_lstm core's hook relies on it)
        self.worker = make_core(cfg.worker_core, F_, A, cfg.worker_size, cfg.dni)
        self.action_embedding = nn.Linear(self.worker.out_size, A * k)  # U_t
        self.worker_value = nn.Linear(self.worker.out_size, 1)  # V^D
        self.goal_embedding = nn.Linear(d, k, bias=False)  # phi
        self.manager_space = nn.Sequential(nn.Linear(F_, d), nn.ReLU())  # f_Mspace
        self.manager = DilatedLSTM(d, d, cfg.dilation)
        self.manager_value = nn.Linear(F_, 1)  # V^M(x_t), on the percept
        self.goal_ablation: str = "none"  # evaluation only: "zero" or "random" replaces the Manager's goals
        if cfg.init == "orthogonal":
            orthogonal_init(self.torso, math.sqrt(2.0))
            orthogonal_init(self.action_embedding, 0.01)
            orthogonal_init(self.worker_value, 1.0)
            orthogonal_init(self.manager_value, 1.0)
        # agent.aux's heads on the shared torso and the Worker's core output (from forked RNGs: the net above starts
        # as without them); UNREAL's replay tasks learn on replayed sequences through the Worker's core only
        self.aux = build_aux_tasks(cfg.aux, F_, self.worker.out_size)
        self.unreal = unreal_settings(cfg)
        if self.unreal is not None:
            unreal.add_auxiliary_heads(self, spec, self.unreal, self.torso, self.worker.out_size)

    def env_targets(self, num_envs: int):
        """What the actor records from the env's extras for agent.aux (None without such tasks)."""
        return self.aux.env_targets(num_envs) if self.aux is not None else None

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> CoreState:
        """(Worker core state..., dLSTM h [B,r,d], c [B,r,d], tick [B], the previous c goals [B,c,d])."""
        goals = torch.zeros(batch_size, self.feudal_cfg.horizon, self.feudal_cfg.manager_size, device=device)
        return (*self.worker.initial_state(batch_size, device), *self.manager.initial_state(batch_size, device), goals)

    def _split(self, state: CoreState) -> tuple[CoreState, CoreState, torch.Tensor]:
        n = len(state) - 4
        return tuple(state[:n]), tuple(state[n : n + 3]), state[n + 3]

    def _random_goals(self, like: torch.Tensor) -> torch.Tensor:
        return F.normalize(torch.randn_like(like), dim=-1, eps=_EPS)

    def forward(self, inputs: dict[str, torch.Tensor], state: CoreState) -> tuple[dict[str, torch.Tensor], CoreState]:
        """inputs: obs [S,B,*obs], first [S,B], prev_action [S,B], prev_reward [S,B]. Outputs per slot:
        policy_logits, baseline (V^D), manager_value (V^M), manager_state (s), goal (g, with gradient)."""
        obs, first = inputs["obs"], inputs["first"]
        S, B = obs.shape[:2]
        z = self.torso(obs.reshape(S * B, *obs.shape[2:])).reshape(S, B, -1)  # [S,B,F]
        worker_state, manager_state, history = self._split(state)
        extras: dict[str, Any] = {}
        if self.training and torch.is_grad_enabled():  # the learner's windows overlap by `horizon` steps
            extras["dni/next_window_slot"] = -(1 + self.feudal_cfg.horizon)
        worker_out, worker_state = self.worker(
            z, inputs["prev_action"], inputs["prev_reward"], first, worker_state, extras=extras
        )
        s = self.manager_space(z)  # [S,B,d]
        # exploration goals only when acting for training (actors run without gradient; eval nets are in eval mode)
        acting = self.training and not torch.is_grad_enabled()
        goals, pooled = [], []
        h, c, tick = manager_state
        for t in range(S):
            keep = (~first[t]).float()  # [B]: 0 where an episode starts at t
            h, c = h * keep[:, None, None], c * keep[:, None, None]
            tick = tick * (~first[t]).long()
            history = history * keep[:, None, None]
            g_hat, (h, c, tick) = self.manager.step(s[t], (h, c, tick))
            g = F.normalize(g_hat, dim=-1, eps=_EPS)  # [B,d]
            used = g.detach()
            if acting and self.feudal_cfg.random_goal_prob > 0:
                swap = torch.rand(B, device=g.device) < self.feudal_cfg.random_goal_prob
                used = torch.where(swap[:, None], self._random_goals(used), used)
            if self.goal_ablation == "zero":
                used = torch.zeros_like(used)
            elif self.goal_ablation == "random":
                used = self._random_goals(used)
            pooled.append(history.sum(1) + used)  # sum_{i=t-c}^{t} g_i, goals detached (eq. 5)
            history = torch.cat([history[:, 1:], used[:, None]], 1)
            goals.append(g)
        w = self.goal_embedding(torch.stack(pooled))  # [S,B,k]
        U = self.action_embedding(worker_out).reshape(S, B, self.num_actions, -1)  # [S,B,A,k]
        logits = torch.einsum("sbak,sbk->sba", U, w)
        outputs = {
            "policy_logits": logits,
            "baseline": self.worker_value(worker_out).squeeze(-1),
            "manager_value": self.manager_value(z).squeeze(-1),
            "manager_state": s,
            "goal": torch.stack(goals),
            **extras,
        }
        if self.aux is not None:
            outputs.update(self.aux(z, worker_out))
        return outputs, (*worker_state, h, c, tick, history)

    def replay_forward(self, inputs: dict[str, torch.Tensor], state: CoreState) -> dict[str, torch.Tensor]:
        """UNREAL's tasks' outputs on replayed sequences [S, n] (pixel / feature control on the Worker's core output,
        from the Worker's stored state; the Manager is not run) and V^D ("baseline")."""
        obs = inputs["obs"]
        S, B = obs.shape[:2]
        z, maps = unreal.torso_features(self.torso, obs, self.unreal.feature_control_cost > 0)
        worker_state, _, _ = self._split(state)
        worker_out, _ = self.worker(
            z.view(S, B, -1), inputs["prev_action"], inputs["prev_reward"], inputs["first"], worker_state
        )
        out = {"baseline": self.worker_value(worker_out).squeeze(-1)}
        out.update(unreal.auxiliary_outputs(self, obs, worker_out.reshape(S * B, -1), maps))
        return out

    def reward_prediction_logits(self, obs: torch.Tensor) -> torch.Tensor:
        return unreal.torso_reward_prediction(self.torso, self.reward_prediction, obs)  # the shared torso only


def make_net(spec: EnvSpec, cfg: FeudalConfig) -> FeudalNet:
    return FeudalNet(spec, cfg)


# --------------------------------------------------------------------------------------------------- the maths
def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """d_cos over the last dim, with an epsilon in the norms (zero vectors give 0, never NaN)."""
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + _EPS)


def starts_in(first: torch.Tensor, lag: int) -> torch.Tensor:
    """For `first` [S,B] and slots j >= lag: whether an episode starts in slots j-lag+1..j, [S-lag, B] bool."""
    counts = torch.cumsum(first.long(), 0)  # [S,B]: the starts in slots 0..j
    return (counts[lag:] - counts[: counts.shape[0] - lag]) > 0


def intrinsic_rewards(s: torch.Tensor, g: torch.Tensor, first: torch.Tensor, c: int) -> torch.Tensor:
    """r^I of the transitions into slots c..S-1 (eq. 8), [S-c, B]: for slot j the mean over i = 1..c of
    d_cos(s_j - s_{j-i}, g_{j-i}), terms with an episode start in slots j-i+1..j left out; 0 where slot j itself
    starts an episode (the transition into it ended one) or no term is left. No gradient."""
    with torch.no_grad():
        S = s.shape[0]
        total = torch.zeros(S - c, *s.shape[1:-1], device=s.device)
        count = torch.zeros_like(total)
        for i in range(1, c + 1):
            valid = (~starts_in(first, i)[c - i :]).float()  # [S-c,B]: slots j-i+1..j hold no start, j = c..S-1
            total += cosine(s[c:] - s[c - i : S - i], g[c - i : S - i]) * valid
            count += valid
        return total / count.clamp(min=1.0) * (~first[c:]).float()


def transition_policy_gradient(
    s: torch.Tensor, g: torch.Tensor, advantages: torch.Tensor, first: torch.Tensor, c: int, min_norm: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The TPG loss terms (eq. 7) for the goals of slots 0..S-1-c: -sg(A^M_t) d_cos(sg(s_{t+c} - s_t), g_t), [S-c,B],
    with the mask of terms kept (no episode start in slots t+1..t+c, ||s_{t+c} - s_t|| >= min_norm) and the realised
    cosines (detached). `advantages` [S-c,B] are those of the same goals."""
    S = s.shape[0]
    delta = (s[c:] - s[: S - c]).detach()  # [S-c,B,d]
    cos = cosine(delta, g[: S - c])
    keep = ~starts_in(first, c)
    if min_norm > 0:
        keep = keep & (delta.norm(dim=-1) >= min_norm)
    return -advantages.detach() * cos * keep.float(), keep, cos.detach()


def feudal_loss(
    cfg: FeudalConfig, batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The FuN loss on an overlapped [c + T + 1, B] batch (see the module docstring for which slots count where)."""
    c = cfg.horizon
    S = batch["reward"].shape[0]
    T = S - 1 - c
    assert T >= c, f"a FuN batch needs the {c} overlap slots in front of an unroll of at least {c}, got {S} slots"
    first = batch["first"]
    s, g = outputs["manager_state"], outputs["goal"]
    logits, v_w, v_m = outputs["policy_logits"], outputs["baseline"], outputs["manager_value"]
    terminated, truncated = batch["terminated"][1:], batch["truncated"][1:]  # of the transitions into slots 1..S-1
    continues = (~(terminated | truncated)).float()
    behaviour, actions, extrinsic = batch["behaviour_logits"][1:], batch["action"][1:], batch["reward"][1:]
    new = slice(c, S - 1)  # the T new transitions (taken at slots c..S-2)
    r_int = intrinsic_rewards(s.detach(), g.detach(), first, c)[1:]  # transitions into slots c+1..S-1

    # Worker: V-trace actor-critic on r + alpha r^I with V^D and gamma_W (eq. 9)
    next_w = torch.where(truncated[new], batch["truncation_value"][1:][new], v_w[c + 1 :].detach())
    vt_w = vtrace_from_logits(
        behaviour_logits=behaviour[new],
        target_logits=logits[new].detach(),
        actions=actions[new],
        discounts=cfg.worker_discount * (~terminated[new]).float(),
        rewards=extrinsic[new] + cfg.intrinsic_weight * r_int,
        values=v_w[new].detach(),
        next_values=next_w,
        continues=continues[new],
        clip_rho_threshold=cfg.clip_rho_threshold,
        clip_c_threshold=cfg.clip_c_threshold,
        clip_pg_rho_threshold=cfg.clip_pg_rho_threshold,
    )
    # Manager critic: V-trace on the extrinsic reward with V^M and gamma_M over every transition of the batch
    v_m_next = torch.where(truncated, v_m[:-1].detach(), v_m[1:].detach())
    vt_m = vtrace_from_logits(
        behaviour_logits=behaviour,
        target_logits=logits[:-1].detach(),
        actions=actions,
        discounts=cfg.manager_discount * (~terminated).float(),
        rewards=extrinsic,
        values=v_m[:-1].detach(),
        next_values=v_m_next,
        continues=continues,
        clip_rho_threshold=cfg.clip_rho_threshold,
        clip_c_threshold=cfg.clip_c_threshold,
        clip_pg_rho_threshold=cfg.clip_pg_rho_threshold,
    )
    advantages_m = vt_m.vs - v_m[:-1].detach()  # [S-1,B]
    tpg_terms, tpg_keep, realised_cos = transition_policy_gradient(
        s, g, advantages_m[: S - c], first, c, cfg.min_transition_norm
    )
    tpg_terms, tpg_keep, realised_cos = tpg_terms[:T], tpg_keep[:T], realised_cos[:T]  # goals of slots 0..T-1

    B = first.shape[1]
    scale = float(T * B) if cfg.loss_reduction == "sum" else 1.0
    pg = policy_gradient_loss(logits[new], actions[new], vt_w.pg_advantages) * scale
    bl_w = baseline_loss(vt_w.vs, v_w[new]) * scale
    ent = entropy_loss(logits[new]) * scale
    bl_m = baseline_loss(vt_m.vs[new], v_m[new]) * scale
    tpg = tpg_terms.sum() / (T * B) * scale
    loss = (
        pg + cfg.baseline_cost * bl_w + cfg.entropy_cost * ent + cfg.manager_cost * tpg + cfg.manager_value_cost * bl_m
    )
    metrics: dict[str, torch.Tensor] = {}
    if cfg.aux.online_tasks():  # on the T new observations, slots c..S-2 (the overlap's were counted last time)
        targets = {k: v[c:] for k, v in batch.items() if k.startswith("aux/")}
        heads = {k: v[c:] for k, v in outputs.items() if k.startswith("aux/")}
        aux, metrics = aux_losses(cfg.aux, targets, heads, scale)
        loss = loss + aux
    settings = unreal_settings(cfg)
    rb, ro = batch.get("replay"), outputs.get("replay")
    if settings is not None and rb is not None and ro is not None:
        loss = unreal.add_replay_task_losses(settings, loss, metrics, rb, ro, T, B)
    kept = tpg_keep.float()
    with torch.no_grad():
        s_new, g_new = s[c:].detach(), g[c:].detach()
        metrics = {
            **metrics,
            "loss/total": loss.detach(),
            "loss/policy": pg.detach(),
            "loss/baseline": bl_w.detach(),
            "loss/entropy": ent.detach(),
            "loss/manager_tpg": tpg.detach(),
            "loss/manager_value": bl_m.detach(),
            "train/entropy": -ent.detach() / scale,
            "train/rho_mean": vt_w.log_rhos.exp().mean(),
            "feudal/intrinsic_reward": r_int.mean(),
            "feudal/goal_cosine": (realised_cos * kept).sum() / kept.sum().clamp(min=1.0),
            "feudal/tpg_kept_fraction": kept.mean(),
            "feudal/state_variance": s_new.var(dim=(0, 1)).mean(),
            "feudal/goal_variance": g_new.var(dim=(0, 1)).mean(),
            "feudal/manager_advantage": advantages_m[new].mean(),
            "feudal/manager_value_mean": v_m[new].mean(),
            "feudal/worker_value_mean": v_w[new].mean(),
        }
    return loss, metrics


def loss_sum_factor(cfg: FeudalConfig, batch: dict[str, Any]) -> float:
    """Summed loss / this loss: 1 under `sum`; under `mean` the T*B new transitions averaged over (the overlap's
    repeats excluded). The learner divides the gradient clip by it (`AgentDef.loss_sum_factor`)."""
    if cfg.loss_reduction == "sum":
        return 1.0
    return float(batch["action"][1 + cfg.horizon :].numel())


def make_replay(cfg: FeudalConfig, spec: EnvSpec, net: nn.Module, unroll_length: int, seed: int):
    """UNREAL's replay when agent.aux names its tasks (None otherwise). It stores the rollouts as they come, with the
    overlap in front: sequences of horizon + unroll_length transitions from the actor's state before the first."""
    settings = unreal_settings(cfg)
    if settings is None:
        return None
    return unreal.make_replay(settings, spec, net, cfg.horizon + unroll_length, seed)


def sample_replay(cfg: FeudalConfig, replay: Any) -> dict[str, Any] | None:
    return unreal.sample_replay(unreal_settings(cfg), replay)


def replay_outputs(cfg: FeudalConfig, net: FeudalNet, rb: dict[str, Any]) -> dict[str, Any]:
    return unreal.replay_outputs(unreal_settings(cfg), net, rb)


AGENT = AgentDef(
    name="feudal",
    config_class=FeudalConfig,
    make_net=make_net,
    loss_fn=feudal_loss,
    make_replay=make_replay,
    sample_replay=sample_replay,
    replay_outputs=replay_outputs,
    overlap=lambda cfg: cfg.horizon,
    loss_sum_factor=loss_sum_factor,
)
