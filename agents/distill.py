"""Policy distillation: a student learns from a teacher, in every variant of Distilling Policy Distillation
(Czarnecki et al. 2019, arXiv:1902.02186), with Sobolev (input-Jacobian) matching (Czarnecki et al. 2017,
arXiv:1706.04859).

The student has the IMPALA agent's architecture (agents/impala.py: any torso and core, sized by `agent.torso`,
`agent.hidden_sizes`, ...). The teacher is a trained run of this platform (`agent.teachers: [RUN_DIR]`, a run dir or a
checkpoint dir of any agent) or a Stable-Baselines3 model file (`.zip`: PPO and A2C through their action
distributions, DQN through softmax(Q / `agent.teacher_temperature`), as policy distillation from DQN teachers did,
Rusu et al. 2015, arXiv:1511.06295), loaded when the run starts and again when it resumes, frozen (no gradient,
eval mode, out of the optimiser), and left out of checkpoints: they keep a digest of its parameters instead, and a
resumed run whose teacher has changed stops with a message. The teacher must play the student's env: the same
observation shape and type and the same actions (checked against the teacher's own env, or an SB3 model's spaces;
refused with the reason otherwise).

DPD's unified update (Sec. 3 of the paper): a control policy q acts, a per-state loss l matches the student to the
teacher on every visited state, and a pseudo-reward r^ (optionally plus the env reward, "+R") drives a REINFORCE
term with the student's critic as baseline (V-trace, which also corrects for q != pi_theta):

    update = E_q [ sum_t grad l(tau_t) - grad log pi_theta(a_t|tau_t) (R^_t - V(tau_t)) ]

`agent.variant` names the paper's rows (Table 1), each a (control, per-state loss, pseudo-reward):

    teacher_distill               teacher  H(pi_T || pi_theta)                  0
    on_policy_distill             student  H(pi_T || pi_theta)                  0
    entropy_regularised           student  0                                    log pi_T(a_t | x_t)
    n_distill                     student  H(pi_T || pi_theta)                  -H(pi_T || pi_theta) at x_{t+1}
    expected_entropy_regularised  student  H(pi_theta || pi_T)                  E_{a ~ pi_theta} log pi_T(a | x_{t+1})
    teacher_v_reward              student  0                                    r_t + gamma V_T(x_{t+1}) - V_T(x_t)
    value_gated                   student  H(pi_T || pi_theta) 1[V_T > V_theta] 0

with H(p || q) = -sum_a p(a) log q(a). `agent.control` overrides the variant's control policy (`mixture`: the teacher
acts with probability `agent.teacher_action_prob` at each step, i.e. q = p pi_T + (1 - p) pi_theta), and
`agent.plus_reward` adds the env reward to the pseudo-reward (the paper's "+R"). Expected entropy regularised takes
the expectation over the next action in closed form (the same expected update as sampling it, lower variance).
The teacher's probabilities are floored at `agent.teacher_prob_floor` inside every log (a near-deterministic
teacher's log pi would be -inf). With neither a pseudo-reward nor +R, no REINFORCE term is formed; the critic then
learns the env return (V-trace), which value gating compares with the teacher's.

Sobolev training (`agent.sobolev_cost` > 0): the per-state loss gains the squared distance between the student's and
the teacher's input-Jacobians of log pi (`agent.sobolev_target`: `log_pi`, `centred_logits` or `value`), each
projected on one random unit vector u per state over the outputs, ||J_theta^T u - J_T^T u||^2: one vector-Jacobian
product per net, with `create_graph` for the student. Gradients are taken with respect to the net's input units (the
observation times its `obs_scale`), on `agent.sobolev_states` states of each batch; feed-forward students and
teachers only (a recurrent net's Jacobian involves its state).

Evaluation (`decoupled eval`, evaluation during training) plays the student: in eval mode the net's policy is the
student's, in training mode the control policy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from decoupled.agents.base import AgentDef, AgentSetupError, LearnerHook, module_learner_hooks
from decoupled.agents.config import VARIANTS, DistillConfig  # noqa: F401 - VARIANTS re-exported
from decoupled.agents.impala import ImpalaNet, vtrace_inputs
from decoupled.agents.nets.cores import CoreState
from decoupled.agents.ops.losses import baseline_loss, entropy_loss, policy_gradient_loss
from decoupled.agents.ops.vtrace import vtrace_from_logits
from decoupled.envs import probe_spec
from decoupled.envs.base import EnvSpec


class DistillNet(nn.Module):
    """The student (an IMPALA net) and the frozen teacher, kept outside the module tree (not in `parameters()`,
    `state_dict()` or `modules()`): `init_net` loads it. Outputs: `policy_logits` (the control policy in training
    mode, the student's in eval mode), `baseline` (the student's critic), `student_logits`, and with a teacher
    loaded `teacher_logits` and `teacher_baseline`."""

    def __init__(self, spec: EnvSpec, cfg: DistillConfig):
        super().__init__()
        self.spec, self.cfg = spec, cfg
        self.student = ImpalaNet(spec, cfg)
        self.teachers: list[nn.Module] = []  # a plain list: no parameters, state or mode of the student's
        self.teacher_sources: list[dict[str, Any]] = []
        # sha256 of the teacher's parameters, saved in checkpoints: a resume checks that the teacher is the same
        self.register_buffer("teacher_digest", torch.zeros(32, dtype=torch.uint8))

    def set_teacher(self, teacher: nn.Module, source: dict[str, Any]) -> None:
        self.set_teachers([teacher], [source])

    def set_teachers(self, teachers: list[nn.Module], sources: list[dict[str, Any]]) -> None:
        for teacher in teachers:
            teacher.requires_grad_(False)
            teacher.eval()
        self.teachers, self.teacher_sources = list(teachers), list(sources)

    @property
    def teachers_sha256(self) -> str:
        """The digest of every teacher's parameters (one teacher: its own)."""
        digests = [src["params_sha256"] for src in self.teacher_sources]
        return digests[0] if len(digests) == 1 else hashlib.sha256("".join(digests).encode()).hexdigest()

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> CoreState:
        state = tuple(self.student.initial_state(batch_size, device))
        for t in self.teachers:
            state += tuple(t.initial_state(batch_size, device))
        return state

    def forward(self, inputs: dict[str, torch.Tensor], state: CoreState) -> tuple[dict[str, torch.Tensor], CoreState]:
        n = len(self.student.initial_state(1))
        s_out, s_state = self.student(inputs, tuple(state[:n]))
        out = {"student_logits": s_out["policy_logits"], "baseline": s_out["baseline"]}
        new_state = tuple(s_state)
        if self.teachers:
            with torch.no_grad():
                t_out, t_state = self._teach(inputs, tuple(state[n:]))
            out["teacher_logits"], out["teacher_baseline"] = t_out["policy_logits"], t_out["baseline"]
            new_state += tuple(t_state)
        elif self.training:
            raise RuntimeError("the distill net trains with its teacher: load it first (AgentDef.init_net)")
        out["policy_logits"] = self._control(out) if self.training else out["student_logits"]
        return out, new_state

    def _teach(self, inputs: dict[str, torch.Tensor], state: CoreState) -> tuple[dict[str, torch.Tensor], CoreState]:
        """The teacher's outputs; with one teacher per game, each observation's game's (named by the env's game
        planes, the last G channels, which the teachers, trained on one game each, do not see)."""
        if len(self.teachers) == 1:
            return self.teachers[0](inputs, state)
        G = len(self.teachers)
        obs = inputs["obs"]
        game = obs[:, :, -G:].flatten(3).float().sum(-1).argmax(-1)  # [T, B]: the lit plane
        view = {**inputs, "obs": obs[:, :, :-G]}
        logits, values, new_state, i = [], [], (), 0
        for teacher in self.teachers:
            k = len(teacher.initial_state(1))
            o, st = teacher(view, tuple(state[i : i + k]))
            logits.append(o["policy_logits"])
            values.append(o["baseline"])
            new_state += tuple(st)
            i += k
        pick = game[..., None, None].expand(*game.shape, 1, logits[0].shape[-1])
        chosen = torch.stack(logits, -2).gather(-2, pick).squeeze(-2)
        value = torch.stack(values, -1).gather(-1, game[..., None]).squeeze(-1)
        return {"policy_logits": chosen, "baseline": value}, new_state

    def _control(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        control = self.cfg.pieces[0]
        if control == "teacher":
            return out["teacher_logits"]
        if control == "student":
            return out["student_logits"].detach()
        p = self.cfg.teacher_action_prob  # q = p pi_T + (1 - p) pi_theta, as logits (log-probabilities)
        mix = p * F.softmax(out["teacher_logits"], -1) + (1 - p) * F.softmax(out["student_logits"].detach(), -1)
        return mix.clamp_min(1e-30).log()

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False):  # type: ignore[override]
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        saved = bytes(self.teacher_digest.tolist())
        if self.teacher_sources and any(saved) and saved.hex() != self.teachers_sha256:
            names = ", ".join(f"{s['path']} ({s['params_sha256'][:12]}...)" for s in self.teacher_sources)
            raise AgentSetupError(
                f"agent.teachers = {names}: their parameters are not the ones this run was trained with (sha256 "
                f"{saved.hex()[:12]}...): restore those teachers, or start a new run"
            )
        return result


def make_net(spec: EnvSpec, cfg: DistillConfig) -> DistillNet:
    return DistillNet(spec, cfg)


# ----------------------------------------------------------------------------------------------- teachers
def params_sha256(net: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def check_teacher_env(where: str, student: EnvSpec, teacher: EnvSpec) -> None:
    """Refuse a teacher whose env the student's cannot stand in for: observation shape, type and scale (frame stack,
    size, colour), the number and meaning of the actions."""
    problems = []
    if tuple(student.obs_shape) != tuple(teacher.obs_shape):
        problems.append(f"observations {tuple(teacher.obs_shape)} vs the student's {tuple(student.obs_shape)}")
    if student.obs_dtype != teacher.obs_dtype:
        problems.append(f"observation type {teacher.obs_dtype} vs the student's {student.obs_dtype}")
    s_scale, t_scale = student.extra.get("obs_scale", 1.0), teacher.extra.get("obs_scale", 1.0)
    if s_scale != t_scale:
        problems.append(f"observation scale {t_scale} vs the student's {s_scale}")
    if student.num_actions != teacher.num_actions:
        problems.append(f"{teacher.num_actions} actions vs the student's {student.num_actions}")
    s_meaning, t_meaning = student.extra.get("action_meanings"), teacher.extra.get("action_meanings")
    if s_meaning is not None and t_meaning is not None and list(s_meaning) != list(t_meaning):
        problems.append(f"actions {list(t_meaning)} vs the student's {list(s_meaning)}")
    if problems:
        raise AgentSetupError(
            f"{where}: the teacher's env ({teacher.name}) does not match the student's ({student.name}): "
            + "; ".join(problems)
        )


class SB3Teacher(nn.Module):
    """A Stable-Baselines3 model (.zip) behind the nets' interface: PPO and A2C through their action distribution
    (logits) and value, DQN through softmax(Q / temperature) and max Q. Observations go in as stored by our env
    ([N, C, H, W] uint8 or vectors); the policy applies its own preprocessing (SB3 scales images by 1/255)."""

    def __init__(self, model: Any, kind: str, temperature: float):
        super().__init__()
        self.policy, self.kind, self.temperature = model.policy, kind, temperature
        self.policy.set_training_mode(False)

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> CoreState:
        return ()

    def forward(self, inputs: dict[str, torch.Tensor], state: CoreState) -> tuple[dict[str, torch.Tensor], CoreState]:
        obs = inputs["obs"]
        T, B = obs.shape[:2]
        flat = obs.reshape(T * B, *obs.shape[2:]).float()
        if self.kind == "dqn":
            q = self.policy.q_net(flat)
            logits, value = q / self.temperature, q.max(-1).values
        else:
            logits = self.policy.get_distribution(flat).distribution.logits
            value = self.policy.predict_values(flat).squeeze(-1)
        return {"policy_logits": logits.reshape(T, B, -1), "baseline": value.reshape(T, B)}, state


def load_sb3(path: str, temperature: float) -> tuple[SB3Teacher, tuple[int, ...], int, str]:
    """(teacher, its observation shape, its action count, its algorithm) of an SB3 .zip (PPO, A2C or DQN)."""
    from stable_baselines3 import A2C, DQN, PPO
    from stable_baselines3.common.save_util import load_from_zip_file

    data, _, _ = load_from_zip_file(path, device="cpu")
    policy_class = str(data.get("policy_class", ""))
    if "dqn" in policy_class.lower() or "QNetwork" in policy_class:
        kind, cls = "dqn", DQN
    elif "n_epochs" in data:
        kind, cls = "ppo", PPO
    else:
        kind, cls = "a2c", A2C
    model = cls.load(path, device="cpu")
    space = model.action_space
    if not hasattr(space, "n"):
        raise ValueError(f"an SB3 {kind} model with a {type(space).__name__} action space (discrete actions only)")
    return SB3Teacher(model, kind, temperature), tuple(model.observation_space.shape), int(space.n), kind


def load_teachers(
    cfg: DistillConfig, net: DistillNet, load: Callable[[str], tuple[Any, dict, str]], resume: bool = False
) -> dict[str, Any]:
    """Load, check and freeze the teacher (new runs and resumes alike); a resumed run's checkpoint then checks its
    digest (`DistillNet.load_state_dict`)."""
    games = net.spec.extra.get("games")
    teachers, sources = [], []
    for k, path in enumerate(cfg.teachers):
        where = f"agent.teachers[{k}] = {path}"
        if str(path).endswith(".zip"):
            teacher, source = _load_sb3_teacher(cfg, net, path, where)
        else:
            teacher, source = _load_platform_teacher(cfg, net, path, where, load, games[k] if games else None)
        teachers.append(teacher)
        sources.append(source)
    device = next(net.parameters()).device
    net.set_teachers([t.to(device) for t in teachers], sources)
    if not resume:
        net.teacher_digest.copy_(torch.tensor(list(bytes.fromhex(net.teachers_sha256)), dtype=torch.uint8))
    return {"teachers": sources}


def _student_view(spec: EnvSpec) -> EnvSpec:
    """The student's env as a teacher of one of its games sees it: without the game planes."""
    G = int(spec.extra.get("game_planes", 0))
    if not G:
        return spec
    extra = {k: v for k, v in spec.extra.items() if k not in ("games", "game_planes")}
    return EnvSpec(spec.name, (spec.obs_shape[0] - G, *spec.obs_shape[1:]), spec.obs_dtype, spec.num_actions,
                   spec.frame_skip, extra)  # fmt: skip


def _load_platform_teacher(
    cfg: DistillConfig, net: DistillNet, path: str, where: str, load: Callable, game: str | None
) -> tuple[nn.Module, dict[str, Any]]:
    from decoupled.agents import get_agent

    try:
        t_cfg, state, ckpt = load(path)
    except Exception as e:  # missing, corrupt: the loader's reason, with the teacher named
        raise AgentSetupError(f"{where}: cannot load it: {e}") from e
    try:
        spec = probe_spec(t_cfg.env.backend, t_cfg.env.id, t_cfg.env.options())  # the env it was trained on
    except Exception as e:
        raise AgentSetupError(f"{where}: cannot build the env it was trained on ({t_cfg.env.backend}): {e}") from e
    if game is not None and t_cfg.env.id != game:
        raise AgentSetupError(f"{where}: a teacher of {t_cfg.env.id}; this position of env.games is {game}")
    check_teacher_env(where, _student_view(net.spec), spec)
    agent = get_agent(t_cfg.agent_name)
    teacher = agent.make_net(spec, t_cfg.agent)
    if agent.init_net is not None:  # its checkpoint holds what it needs (e.g. a progressive net's columns)
        agent.init_net(t_cfg.agent, teacher, load, True)
    try:
        teacher.load_state_dict(state["net"])
    except (RuntimeError, AgentSetupError) as e:
        raise AgentSetupError(f"{where}: its checkpoint does not fit its own net: {e}") from e
    if cfg.sobolev_cost > 0 and getattr(t_cfg.agent, "core", "none") != "none":
        raise AgentSetupError(f"{where}: agent.sobolev_cost > 0 needs a feed-forward teacher (its core is recurrent)")
    source = {"path": path, "checkpoint": ckpt, "agent": t_cfg.agent_name, "params_sha256": params_sha256(teacher)}
    return teacher, source


def _load_sb3_teacher(cfg: DistillConfig, net: DistillNet, path: str, where: str) -> tuple[nn.Module, dict[str, Any]]:
    try:
        teacher, obs_shape, num_actions, kind = load_sb3(path, cfg.teacher_temperature)
    except Exception as e:  # missing, corrupt, not an SB3 model
        raise AgentSetupError(f"{where}: cannot load it as a Stable-Baselines3 model: {e}") from e
    problems = []
    student = _student_view(net.spec)
    if tuple(obs_shape) != tuple(student.obs_shape):  # SB3 keeps images channels-first after VecTransposeImage
        problems.append(f"observations {tuple(obs_shape)} vs the student's {tuple(student.obs_shape)}")
    if num_actions != net.spec.num_actions:
        problems.append(f"{num_actions} actions vs the student's {net.spec.num_actions}")
    if problems:
        raise AgentSetupError(
            f"{where}: the SB3 {kind} teacher does not fit the student's env ({net.spec.name}): "
            + "; ".join(problems)
            + " (frame stack, size, colour and the action set must be the env's own)"
        )
    if cfg.sobolev_cost > 0 and kind != "dqn" and getattr(teacher.policy, "lstm_actor", None) is not None:
        raise AgentSetupError(f"{where}: agent.sobolev_cost > 0 needs a feed-forward teacher")
    return teacher, {"path": path, "checkpoint": path, "agent": f"sb3_{kind}", "params_sha256": params_sha256(teacher)}


# ----------------------------------------------------------------------------------------------- loss
def _log_probs(logits: torch.Tensor, floor: float | None = None) -> torch.Tensor:
    if floor is None:
        return F.log_softmax(logits, -1)
    return F.softmax(logits, -1).clamp_min(floor).log()


def distill_loss(
    cfg: DistillConfig, batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPD's update on a [T+1, B] batch: the per-state loss on states 0..T-1 and, with a pseudo-reward or +R, the
    student's V-trace policy gradient and critic on r^ (+ r)."""
    _, state_loss, pseudo = cfg.pieces
    floor = cfg.teacher_prob_floor
    s_logits_all = outputs["student_logits"]
    t_logits_all = outputs["teacher_logits"].detach()
    s_logits, t_logits = s_logits_all[:-1], t_logits_all[:-1]
    log_s, log_t = F.log_softmax(s_logits, -1), _log_probs(t_logits, floor)
    p_s, p_t = log_s.exp(), F.softmax(t_logits, -1)
    T, B = s_logits.shape[:2]
    scale = float(T * B) if cfg.loss_reduction == "sum" else 1.0
    values = outputs["baseline"][:-1]
    ce = -(p_t * log_s).sum(-1)  # H(pi_T || pi_theta) per state
    metrics: dict[str, torch.Tensor] = {
        "distill/cross_entropy": ce.detach().mean(),
        "distill/kl": (ce.detach() + (p_t * log_t).sum(-1)).mean(),  # KL(pi_T || pi_theta)
        "distill/agreement": (s_logits.detach().argmax(-1) == t_logits.argmax(-1)).float().mean(),
        "distill/student_entropy": -(p_s.detach() * log_s.detach()).sum(-1).mean(),
    }
    if state_loss == "cross_entropy":
        per_state = ce
    elif state_loss == "reverse_cross_entropy":  # H(pi_theta || pi_T): the gradient flows through pi_theta
        per_state = -(p_s * log_t).sum(-1)
    elif state_loss == "value_gated_cross_entropy":
        gate = (outputs["teacher_baseline"][:-1].detach() > values.detach()).float()
        per_state = ce * gate
        metrics["distill/gate_open"] = gate.mean()
    else:
        per_state = torch.zeros_like(ce)
    loss = cfg.distill_cost * per_state.mean() * scale
    metrics["distill/state_loss"] = per_state.detach().mean()

    inputs = vtrace_inputs(cfg, batch, outputs["baseline"])
    actions = batch["action"][1:]
    if cfg.reinforce:
        rewards = pseudo_rewards(cfg, pseudo, batch, outputs, inputs)
        metrics["distill/pseudo_reward"] = rewards.mean()
        if cfg.plus_reward:
            rewards = rewards + inputs["rewards"]
        inputs = {**inputs, "rewards": rewards}
    vt = vtrace_from_logits(
        behaviour_logits=batch["behaviour_logits"][1:],
        target_logits=s_logits.detach(),
        actions=actions,
        values=values.detach(),
        clip_rho_threshold=cfg.clip_rho_threshold,
        clip_c_threshold=cfg.clip_c_threshold,
        clip_pg_rho_threshold=cfg.clip_pg_rho_threshold,
        **inputs,
    )
    # the critic: of the REINFORCE reward when there is one, else of the env return (what value gating compares)
    bl = baseline_loss(vt.vs, values) * scale
    loss = loss + cfg.baseline_cost * bl
    metrics["loss/baseline"] = bl.detach()
    if cfg.reinforce:
        pg = policy_gradient_loss(s_logits, actions, vt.pg_advantages) * scale
        ent = entropy_loss(s_logits) * scale
        loss = loss + cfg.reinforce_cost * pg + cfg.entropy_cost * ent
        metrics["loss/policy"] = pg.detach()
    metrics["loss/total"] = loss.detach()
    metrics["train/rho_mean"] = vt.log_rhos.exp().mean()
    return loss, metrics


def pseudo_rewards(
    cfg: DistillConfig, pseudo: str, batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor], inputs: dict
) -> torch.Tensor:
    """r^_t of transition t (x_t, a_t -> x_{t+1}) for t = 0..T-1, [T, B]; terms at x_{t+1} count only inside the
    episode (0 where it ended at t+1)."""
    floor = cfg.teacher_prob_floor
    t_logits = outputs["teacher_logits"].detach()
    s_logits = outputs["student_logits"].detach()
    continues = inputs["continues"]
    if pseudo == "none":
        return torch.zeros_like(continues)
    if pseudo == "teacher_log_prob":  # entropy regularised: log pi_T(a_t | x_t)
        log_t = _log_probs(t_logits[:-1], floor)
        return log_t.gather(-1, batch["action"][1:].long().unsqueeze(-1)).squeeze(-1)
    if pseudo == "next_neg_cross_entropy":  # N-distill: -H(pi_T || pi_theta) at x_{t+1}
        ce_next = (F.softmax(t_logits[1:], -1) * F.log_softmax(s_logits[1:], -1)).sum(-1)
        return ce_next * continues
    if pseudo == "next_teacher_log_prob":  # EER: E_{a ~ pi_theta(x_{t+1})} log pi_T(a | x_{t+1})
        e_next = (F.softmax(s_logits[1:], -1) * _log_probs(t_logits[1:], floor)).sum(-1)
        return e_next * continues
    if pseudo == "teacher_v_shaping":  # r_t + gamma V_T(x_{t+1}) - V_T(x_t)
        v_t = outputs["teacher_baseline"].detach()
        return inputs["rewards"] + inputs["discounts"] * continues * v_t[1:] - v_t[:-1]
    raise ValueError(f"unknown pseudo-reward {pseudo!r}")


# ----------------------------------------------------------------------------------------------- Sobolev
def sobolev_term(
    student: nn.Module, teacher: nn.Module, obs: torch.Tensor, target: str, obs_scale: float, generator: torch.Generator
) -> torch.Tensor:
    """The mean over states of ||J_S^T u - J_T^T u||^2, J the Jacobian of `target` (log pi, centred logits or the
    value) with respect to the input in the net's units (observation x obs_scale), u a random unit vector per state
    over the outputs (for the value: 1). obs [N, *obs_shape] as stored; student and teacher are feed-forward nets of
    the IMPALA interface."""
    n = obs.shape[0]

    def outputs(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        zeros = torch.zeros(1, n, device=x.device)
        out, _ = net({"obs": x[None], "first": zeros.bool(), "prev_action": zeros.long(), "prev_reward": zeros}, ())
        if target == "value":
            return out["baseline"][0][:, None]
        logits = out["policy_logits"][0]
        return F.log_softmax(logits, -1) if target == "log_pi" else logits - logits.mean(-1, keepdim=True)

    x = obs.detach() if obs.is_floating_point() else obs.detach().float()
    x_s, x_t = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_s = outputs(student, x_s)
    with torch.enable_grad():
        out_t = outputs(teacher, x_t)
    u = torch.randn(out_s.shape, generator=generator).to(out_s.device, out_s.dtype)
    u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-12)
    (g_s,) = torch.autograd.grad((out_s * u).sum(), x_s, create_graph=True)
    (g_t,) = torch.autograd.grad((out_t * u).sum(), x_t)
    diff = (g_s - g_t.detach()) / obs_scale  # d/d(x * scale) = (d/dx) / scale
    return diff.pow(2).flatten(1).sum(1).mean()


class SobolevHook(LearnerHook):
    """Adds `agent.sobolev_cost` x the Sobolev term (`sobolev_term`) on `agent.sobolev_states` states of each batch."""

    name = "sobolev"

    def __init__(self, cfg: DistillConfig, net: DistillNet):
        self.cfg, self.net = cfg, net
        self.generator = torch.Generator().manual_seed(int(cfg.sobolev_states) * 7919)

    def extra_loss(self, batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]):
        obs = batch["obs"][:-1]
        T, B = obs.shape[:2]
        flat = obs.reshape(T * B, *obs.shape[2:])
        k = min(self.cfg.sobolev_states, T * B)
        idx = torch.randperm(T * B, generator=self.generator)[:k].to(flat.device)
        scale = float(self.net.spec.extra.get("obs_scale", 1.0))
        term = sobolev_term(
            self.net.student, self.net.teachers[0], flat[idx], self.cfg.sobolev_target, scale, self.generator
        )
        reduction = float(T * B) if self.cfg.loss_reduction == "sum" else 1.0
        return self.cfg.sobolev_cost * term * reduction, {"distill/sobolev": term.detach()}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def learner_hooks(cfg: DistillConfig, net: DistillNet) -> list[LearnerHook]:
    hooks = module_learner_hooks(cfg, net)  # the student's own (a dni_lstm core's); the teacher is not a submodule
    if cfg.sobolev_cost > 0:
        hooks.append(SobolevHook(cfg, net))
    return hooks


def loss_sum_factor(cfg: DistillConfig, batch: dict[str, Any]) -> float:
    return 1.0 if cfg.loss_reduction == "sum" else float(batch["action"][1:].numel())


AGENT = AgentDef(
    name="distill",
    config_class=DistillConfig,
    make_net=make_net,
    loss_fn=distill_loss,
    learner_hooks=learner_hooks,
    loss_sum_factor=loss_sum_factor,
    init_net=load_teachers,
)
