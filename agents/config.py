"""The `agent` section of a run config for each built-in agent (typed, validated at load), and their base.

Each agent's module (agents/impala.py, ...) holds its maths; its config section lives here, in a module that imports
neither torch nor any env, so that `decoupled config` and a bad config's error take well under a second. The agent
modules re-export their section (`from decoupled.agents.impala import ImpalaConfig` works). A plug-in agent brings
its own section class, a subclass of `AgentConfigBase` (docs/extending.md).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, PositiveInt, field_validator, model_validator

from decoupled.sections import ConfigSection, config_warning


class AgentSetupError(ValueError):
    """An agent cannot be built from what its config names (a source run that is missing, corrupt or of another
    net): raised before training starts, with the config key and the reason."""


class AgentConfigBase(ConfigSection):
    """Base of every agent's config section: unknown keys are an error, and the section names its agent."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True, allow_inf_nan=False)
    name: str

    def check_run(self, run: Any) -> None:
        """Checks of this section against the rest of the run's config (`run.runner`, `run.env`), at load: raise
        ValueError with a message that names the keys (e.g. a horizon longer than `runner.unroll_length`)."""


# ----------------------------------------------------------------------------------------------- sub-sections
class DNIConfig(ConfigSection):
    """`agent.dni.*`: settings of the synthetic-gradient core (`agent.core: dni_lstm`)."""

    enabled: bool = Field(True, description="false: the plain LSTM core (bit-identical), M not even built")
    scale: float = Field(
        0.1, gt=0.0, le=1.0, description="lambda: scales the injected synthetic gradient and discounts the "
        "bootstrapped target; keep it well below 1 (0.5 diverged on recall once the LSTM held memory; 1 diverges)",
    )  # fmt: skip
    hidden_size: int = Field(0, ge=0, description="M's hidden layer; 0: a linear M on [h; c] (the paper's, for RNNs)")
    lr: float = Field(1e-3, gt=0.0, description="Adam learning rate of M (its own optimiser)")
    max_grad_norm: float | None = Field(1.0, gt=0.0, description="gradient-norm clip of M's update; null: none")
    context: tuple[Literal["reward", "value"], ...] = Field(
        (), description="cDNI: condition M on the clipped reward into the boundary slot and/or the value there"
    )
    aux_cost: float = Field(0.0, ge=0.0, description="DNI+Aux: weight of predicting the window-end synthetic gradient")
    normalize: bool = Field(
        False, description="M predicts the gradient in units of a running RMS of its targets (scale-free; see below)"
    )
    normalize_decay: float = Field(0.99, ge=0.0, lt=1.0, description="decay of that running RMS")
    module: Literal["gradient", "critic"] = Field(
        "gradient", description="gradient: M regresses the gradient (the DNI paper); critic: a critic predicts the "
        "loss and its gradient is the synthetic gradient, trained Sobolev-style on the loss value and its gradient "
        "(Czarnecki et al. 2017, arXiv:1706.04859, Sec. 4.3)",
    )  # fmt: skip
    critic_value_cost: float = Field(
        0.1, ge=0.0, description="critic: weight of matching the loss value (0: its gradient alone; 1 kept the "
        "critic at chance on `bench dni --task recall`, 0.1 did not)",
    )  # fmt: skip
    critic_gradient_cost: float = Field(1.0, ge=0.0, description="critic: weight of matching the loss's gradient")

    @model_validator(mode="after")
    def _critic(self) -> DNIConfig:
        if self.module == "critic":
            if self.normalize:
                raise ValueError("agent.dni.normalize applies to module=gradient; the critic predicts the loss as is")
            if self.critic_value_cost == 0 and self.critic_gradient_cost == 0:
                raise ValueError("agent.dni.critic_value_cost and critic_gradient_cost are both 0: the critic learns "
                                 "nothing; give one of them a positive weight")  # fmt: skip
        return self


def _critic_value_needs_impala_loss(dni: DNIConfig, agent: str) -> None:
    """The critic's value target is the agent's loss per batch column, which IMPALA's loss (impala, unreal, nav)
    leaves and `agent`'s does not."""
    if dni.module == "critic" and dni.critic_value_cost > 0:
        raise ValueError(
            f"agent.dni.critic_value_cost: the {agent} agent's loss does not give the per-column loss values a "
            "critic's value term regresses; set agent.dni.critic_value_cost=0 (the critic matches the gradient alone)"
        )


# ----------------------------------------------------------------------------------------------- auxiliary tasks
class AuxTaskConfig(ConfigSection):
    """One auxiliary task of `agent.aux`: its loss weight and its head's size."""

    cost: float = Field(ge=0.0, description="the task's loss weight (0 keeps the head but adds no loss)")
    hidden_size: int = Field(128, ge=1, description="the head's hidden ReLU layer (the Nav paper: 128)")


class LoopClosureTaskConfig(AuxTaskConfig):
    """`agent.aux.loop_closure`: the Nav paper's loop-closure thresholds, in maze cells."""

    eta1_cells: float = Field(1.0, gt=0.0, description="eta_1: a return within this distance of an earlier position")
    eta2_cells: float = Field(2.0, gt=0.0, description="eta_2: after having been farther than this from it")

    @model_validator(mode="after")
    def _ordered(self) -> LoopClosureTaskConfig:
        if self.eta2_cells <= self.eta1_cells:
            raise ValueError(f"eta2_cells={self.eta2_cells} must be larger than eta1_cells={self.eta1_cells}")
        return self


class PixelControlTaskConfig(ConfigSection):
    """`agent.aux.pixel_control`: UNREAL's pixel control (the unreal agent's pixel_control_* settings)."""

    cost: float = Field(ge=0.0, description="lambda_PC (paper: Labyrinth 0.01-0.1, Atari 0.0001-0.01)")
    discount: float = Field(0.9, gt=0.0, le=1.0, description="gamma_pc (trfl: 0.9 is common)")
    cell: int = Field(4, ge=1, description="cell side in pixels (UNREAL: 4, a 20x20 grid on 80x80)")
    crop: int = Field(2, ge=0, description="pixels dropped at each border (84 -> the central 80)")


class RewardPredictionTaskConfig(ConfigSection):
    """`agent.aux.reward_prediction`: UNREAL's reward prediction (the unreal agent's reward_prediction_*)."""

    cost: float = Field(ge=0.0, description="lambda_RP")
    frames: int = Field(3, ge=1, le=16, description="k frames of context (paper: 3)")
    hidden_size: int = Field(128, ge=0, description="the hidden layer (paper: 128); 0: linear")
    sampling: Literal["skewed", "uniform"] = Field("skewed", description="skewed: half the windows end in a reward")
    batch: int = Field(16, ge=1, description="windows per update")


class CostOnlyTaskConfig(ConfigSection):
    """`agent.aux.value_replay` / `agent.aux.feature_control`: a weight."""

    cost: float = Field(ge=0.0, description="the task's loss weight")


#: task -> (the env extras its targets come from, where its head reads from, what it predicts). The first three
#: learn online on the learner's unroll (agents/auxtasks.py), the others on replayed experience (agents/unreal.py).
AUX_TASKS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "depth_conv": (("depth",), "torso features", "the 4x16 depth classes (Nav D1)"),
    "depth_lstm": (("depth",), "core output", "the 4x16 depth classes (Nav D2)"),
    "loop_closure": (("position",), "core output", "the loop-closure label (Nav L)"),
    "pixel_control": ((), "core output on replayed sequences", "the pixel changes' n-step returns (UNREAL PC)"),
    "reward_prediction": ((), "torso features of replayed frames", "the next reward's sign (UNREAL RP)"),
    "value_replay": ((), "the value head on replayed sequences", "n-step returns (UNREAL VR)"),
    "feature_control": ((), "core output on replayed sequences", "conv features' changes (UNREAL FC)"),
}
ONLINE_TASKS = ("depth_conv", "depth_lstm", "loop_closure")
REPLAY_TASKS = ("pixel_control", "reward_prediction", "value_replay", "feature_control")


class AuxConfig(ConfigSection):
    """`agent.aux`: the auxiliary tasks an agent with a torso and a core takes, by name, e.g.
    `{depth_conv: {cost: 3.33}, depth_lstm: {cost: 1.0}, loop_closure: {cost: 1.0}}` (agents/auxtasks.py) or UNREAL's
    `{pixel_control: {cost: 0.01}, reward_prediction: {cost: 1}, value_replay: {cost: 1}}` (agents/unreal.py)."""

    depth_conv: AuxTaskConfig | None = Field(None, description="D1: depth classes from the torso's features")
    depth_lstm: AuxTaskConfig | None = Field(None, description="D2: depth classes from the (top) core's output")
    loop_closure: LoopClosureTaskConfig | None = Field(None, description="L: loop closure from the core's output")
    pixel_control: PixelControlTaskConfig | None = Field(None, description="UNREAL's pixel control (replay)")
    reward_prediction: RewardPredictionTaskConfig | None = Field(None, description="UNREAL's reward prediction")
    value_replay: CostOnlyTaskConfig | None = Field(None, description="UNREAL's value function replay")
    feature_control: CostOnlyTaskConfig | None = Field(None, description="UNREAL's feature control (conv torsos)")
    replay_sequences: int = Field(4, ge=1, description="replayed sequences per update (PC, VR and FC share them)")

    @model_validator(mode="before")
    @classmethod
    def _known_tasks(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in data:
                if name not in AUX_TASKS and name != "replay_sequences":
                    raise ValueError(f"agent.aux: unknown auxiliary task {name!r}; choose from {', '.join(AUX_TASKS)}")
        return data

    def tasks(self) -> dict[str, Any]:
        """The tasks asked for, in AUX_TASKS order."""
        return {name: getattr(self, name) for name in AUX_TASKS if getattr(self, name) is not None}

    def online_tasks(self) -> dict[str, Any]:
        return {k: v for k, v in self.tasks().items() if k in ONLINE_TASKS}

    def replay_tasks(self) -> dict[str, Any]:
        return {k: v for k, v in self.tasks().items() if k in REPLAY_TASKS}

    def check_torso(self, torso: str) -> None:
        """Feature control reads a conv layer's maps: refuse it on an MLP torso."""
        if self.feature_control is not None and torso == "mlp":
            raise ValueError("agent.aux.feature_control needs a conv torso (feature maps); torso is mlp")


def check_aux_feeds(aux: AuxConfig, run: Any) -> None:
    """Refuse, at load, auxiliary tasks whose targets the run's env cannot give (depth on Atari, loop closure
    without positions): the env backend declares its extras (decoupled.envs.EnvBackend.extras)."""
    tasks = aux.tasks()
    if not tasks:
        return
    from decoupled.envs import get_env_backend  # no torch, no env module

    backend = get_env_backend(run.env.backend)
    has = set(getattr(backend, "extras", ()))
    for name in tasks:
        if name == "pixel_control" and backend.observations == "vector":
            raise ValueError(
                f"agent.aux.pixel_control needs image observations (its targets: the pixel changes); env.backend="
                f"{run.env.backend} gives vectors"
            )
        needs = AUX_TASKS[name][0]
        missing = [k for k in needs if k not in has]
        if missing:
            raise ValueError(
                f"agent.aux.{name} needs the env's {' and '.join(missing)} (its targets: {AUX_TASKS[name][2]}); "
                f"env.backend={run.env.backend} gives {', '.join(sorted(has)) or 'no extras'} (the labyrinth "
                "backend gives depth, position and velocity)"
            )


# ----------------------------------------------------------------------------------------------- agents
class ImpalaConfig(AgentConfigBase):
    """Defaults are the IMPALA paper's Atari values (Table G.1) where it gives them."""

    name: Literal["impala"] = "impala"
    torso: Literal["mlp", "nature_cnn", "impala_resnet", "minatar_cnn"] = Field(
        "nature_cnn", description="observation encoder; nature_cnn is the paper's 'shallow' net, impala_resnet 'deep'"
    )
    hidden_sizes: tuple[PositiveInt, ...] = Field(
        (512,), min_length=1, description="MLP layer sizes; the CNN torsos use the last entry as their FC size"
    )
    core: Literal["none", "lstm", "dni_lstm"] = Field(
        "none",
        description="'lstm': recurrent core fed [features, a_tm1, r_tm1]; 'dni_lstm': the same with a synthetic-"
        "gradient module at the unroll boundary (agents/nets/dni.py, settings under agent.dni)",
    )
    lstm_size: int = Field(256, ge=1)
    dni: DNIConfig = Field(DNIConfig(), description="the synthetic-gradient core's settings (core: dni_lstm)")
    init: Literal["torch", "orthogonal"] = Field(
        "torch",
        description="parameter init: torch's layer defaults (TorchBeast's), or orthogonal with gain sqrt(2) for the "
        "torso, 0.01 for the policy head and 1 for the baseline head, biases 0 (OpenAI baselines / SB3 / CleanRL)",
    )
    channels_last: bool = Field(
        True, description="conv torsos compute in NHWC layout (oneDNN's fast path on the CPU; false: NCHW)"
    )
    discount: float = Field(0.99, gt=0.0, le=1.0)
    baseline_cost: float = Field(0.5, ge=0.0)
    entropy_cost: float = Field(0.01, ge=0.0)
    clip_rho_threshold: float | None = Field(1.0, gt=0.0, description="rho-bar of V-trace; null: no clipping")
    clip_c_threshold: float | None = Field(1.0, gt=0.0, description="c-bar of V-trace; null: no clipping")
    clip_pg_rho_threshold: float | None = Field(1.0, gt=0.0, description="clip of rho in the pg advantage")
    replay_ratio: float = Field(
        0.0,
        ge=0.0,
        le=8.0,
        description="replayed sequences per on-policy sequence in every learner batch, learned with V-trace from "
        "their stored behaviour logits (mixing replay with on-policy data as Schmitt et al. 2019, arXiv:1909.11583, "
        "LASER); 0: on-policy only, as the IMPALA paper",
    )
    replay_capacity_steps: int = Field(
        20_000, ge=1, description="agent steps kept in replay, over all envs (envs/replay.py), when anything replays"
    )
    replay_start_steps: int = Field(2_000, ge=0, description="no update from replay before it holds this many steps")
    loss_reduction: Literal["sum", "mean"] = Field(
        "sum",
        description="'sum' over the T*B batch as the paper's TensorFlow code does, so its learning rate and "
        "RMSProp epsilon keep their meaning; 'mean' makes the loss scale independent of the batch size "
        "(optim.max_grad_norm stays in summed-loss units: the learner divides it by the transitions averaged over)",
    )
    aux: AuxConfig = Field(
        AuxConfig(), description="auxiliary tasks by name (agents/auxtasks.py), e.g. {depth_lstm: {cost: 3.33}}"
    )

    @model_validator(mode="after")
    def _aux_here(self) -> ImpalaConfig:
        if self.aux.tasks() and self.name not in ("impala", "nav", "unreal"):
            raise ValueError(
                f"agent.aux: the {self.name} agent takes no agent.aux tasks (impala, unreal, nav and feudal do)"
            )
        if self.name == "unreal" and self.aux.replay_tasks():
            names = ", ".join(self.aux.replay_tasks())
            raise ValueError(
                f"agent.aux.{{{names}}}: the unreal agent sets UNREAL's own tasks with agent.<task>_cost (e.g. "
                "agent.pixel_control_cost=0.01); its agent.aux takes the depth and loop-closure tasks"
            )
        if self.aux.tasks() and self.replay_ratio > 0:
            raise ValueError("agent.aux with agent.replay_ratio > 0: replayed sequences carry no aux targets yet")
        self.aux.check_torso(self.torso)
        return self

    def check_run(self, run: Any) -> None:
        check_aux_feeds(self.aux, run)

    @model_validator(mode="after")
    def _dni_needs_its_core(self) -> ImpalaConfig:
        # Compared with the defaults, not with the keys given: a saved run's config.yaml lists every field.
        if self.core != "dni_lstm" and self.dni != DNIConfig():
            raise ValueError(f"agent.dni settings apply to agent.core=dni_lstm, not core={self.core}")
        if self.core == "none" and self.lstm_size != type(self).model_fields["lstm_size"].default:
            config_warning(f"agent.lstm_size={self.lstm_size} does nothing with agent.core=none (set agent.core=lstm)")
        return self


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


def unreal_settings(cfg: Any) -> UnrealConfig | None:
    """The UNREAL task settings of an agent config, in the unreal agent's terms (agents/unreal.py reads these): the
    config itself for the unreal (and progressive) agent, a view of `agent.aux`'s replay tasks for another agent
    (their costs 0 where not asked for), None when it has none."""
    if isinstance(cfg, UnrealConfig):
        return cfg
    aux = getattr(cfg, "aux", None)
    if aux is None or not aux.replay_tasks():
        return None
    # an agent without some of the base agent's settings (feudal: no `discount`) gets their defaults; the tasks that
    # would read them are refused in its config (feudal's value_replay)
    fields = {k: getattr(cfg, k, f.default) for k, f in ImpalaConfig.model_fields.items() if k != "name"}
    pc, rp = aux.pixel_control, aux.reward_prediction
    fields.update(
        pixel_control_cost=pc.cost if pc else 0.0,
        reward_prediction_cost=rp.cost if rp else 0.0,
        value_replay_cost=aux.value_replay.cost if aux.value_replay else 0.0,
        feature_control_cost=aux.feature_control.cost if aux.feature_control else 0.0,
        replay_sequences=aux.replay_sequences,
    )
    if pc:
        fields.update(pixel_control_discount=pc.discount, pixel_control_cell=pc.cell, pixel_control_crop=pc.crop)
    if rp:
        fields.update(
            reward_prediction_frames=rp.frames,
            reward_prediction_hidden=rp.hidden_size,
            reward_prediction_sampling=rp.sampling,
            reward_prediction_batch=rp.batch,
        )
    return UnrealConfig.model_construct(**fields)  # the fields are validated already (no validators re-run)


class FeudalConfig(AgentConfigBase):
    """Defaults are the paper's (Sec. 4, Tables) where it gives them; its sampled ranges are noted."""

    name: Literal["feudal"] = "feudal"
    torso: Literal["mlp", "nature_cnn", "impala_resnet", "minatar_cnn"] = Field(
        "nature_cnn", description="f_percept; the paper's is the Nature-CNN-like 2-conv net with FC 256"
    )
    hidden_sizes: tuple[PositiveInt, ...] = Field(
        (256,), min_length=1, description="MLP layers; CNNs use the last as FC"
    )
    channels_last: bool = Field(True, description="conv torsos compute in NHWC layout")
    init: Literal["torch", "orthogonal"] = Field("torch", description="as agent.init of impala")
    manager_size: int = Field(256, ge=2, description="d: the Manager's state, goal and dLSTM size")
    dilation: int = Field(10, ge=1, le=1000, description="r: the dilated LSTM's cores")
    horizon: int = Field(10, ge=1, le=1000, description="c: the goal horizon (TPG look-ahead, r^I and pooling)")
    goal_embedding: int = Field(16, ge=1, description="k: the goal embedding and action-embedding size")
    worker_core: Literal["lstm", "dni_lstm"] = Field("lstm", description="the Worker's recurrent core")
    worker_size: int = Field(256, ge=1, description="the Worker's LSTM units")
    dni: DNIConfig = Field(DNIConfig(), description="the Worker's synthetic-gradient core (worker_core: dni_lstm)")
    random_goal_prob: float = Field(
        0.01, ge=0.0, le=1.0, description="epsilon: a random unit goal instead of the Manager's while acting (the "
        "paper: 'a small probability', value not given)",
    )  # fmt: skip
    intrinsic_weight: float = Field(0.5, ge=0.0, description="alpha of r + alpha r^I (the paper samples U(0, 1))")
    worker_discount: float = Field(0.95, gt=0.0, le=1.0, description="gamma_W (paper: 0.95 on Atari)")
    manager_discount: float = Field(0.99, gt=0.0, le=1.0, description="gamma_M (paper: 0.99 or 0.95 on Atari)")
    baseline_cost: float = Field(0.5, ge=0.0, description="weight of the Worker critic's loss")
    manager_value_cost: float = Field(0.5, ge=0.0, description="weight of the Manager critic's loss")
    manager_cost: float = Field(1.0, ge=0.0, description="weight of the transition policy gradient term")
    entropy_cost: float = Field(1e-3, ge=0.0, description="paper: LogUniform(1e-4, 1e-3)")
    min_transition_norm: float = Field(
        0.0, ge=0.0, description="TPG terms with ||s_{t+c} - s_t|| below this are left out (0: none)"
    )
    clip_rho_threshold: float | None = Field(1.0, gt=0.0, description="V-trace rho-bar (both critics)")
    clip_c_threshold: float | None = Field(1.0, gt=0.0, description="V-trace c-bar")
    clip_pg_rho_threshold: float | None = Field(1.0, gt=0.0, description="clip of rho in the Worker's advantage")
    loss_reduction: Literal["sum", "mean"] = Field("sum", description="as agent.loss_reduction of impala")
    replay_capacity_steps: int = Field(
        20_000, ge=1, description="agent steps kept in replay for agent.aux's UNREAL tasks, over all envs"
    )
    replay_start_steps: int = Field(2_000, ge=0, description="no update from replay before it holds this many steps")
    aux: AuxConfig = Field(
        AuxConfig(), description="auxiliary tasks by name on the Worker's core and the shared torso (agents/auxtasks.py"
        ", agents/unreal.py), e.g. {pixel_control: {cost: 0.01}}; value_replay is not taken (V^D's target has r^I)",
    )  # fmt: skip

    @model_validator(mode="after")
    def _dni_needs_its_core(self) -> FeudalConfig:
        if self.worker_core != "dni_lstm" and self.dni != DNIConfig():
            raise ValueError(f"agent.dni settings apply to agent.worker_core=dni_lstm, not {self.worker_core}")
        _critic_value_needs_impala_loss(self.dni, "feudal")
        return self

    @model_validator(mode="after")
    def _aux_here(self) -> FeudalConfig:
        if self.aux.value_replay is not None:
            raise ValueError(
                "agent.aux.value_replay: the feudal agent does not take it: the Worker critic's target includes the "
                "intrinsic reward, which replayed sequences do not carry (pixel_control, reward_prediction, "
                "feature_control and the depth / loop-closure tasks are taken)"
            )
        self.aux.check_torso(self.torso)
        return self

    def check_run(self, run: Any) -> None:
        check_aux_feeds(self.aux, run)
        T = run.runner.unroll_length
        if self.horizon > T:
            raise ValueError(
                f"agent.horizon={self.horizon} is longer than runner.unroll_length={T}: each rollout carries the "
                "previous rollout's last `horizon` steps for the transition policy gradient, so the unroll must be "
                "at least that long (the paper: horizon 10, unroll 400)"
            )


#: The Nav paper's D1D2L agent: the auxiliary weights are the smallest of the values its arXiv v3 appendix samples
#: from (D1 {3.33, 10, 33}, D2 {1, 3.33, 10}, L {1, 3.33, 10}): each depth loss sums 64 per-pixel cross-entropies.
NAV_AUX = AuxConfig(
    depth_conv=AuxTaskConfig(cost=3.33),
    depth_lstm=AuxTaskConfig(cost=1.0),
    loop_closure=LoopClosureTaskConfig(cost=1.0),
)


class NavConfig(ImpalaConfig):
    """Nav A3C+D1D2L (Mirowski et al. 2017, arXiv:1611.03673): the conv torso, a first LSTM (`lstm1_size`) fed
    [f_t, r_{t-1}], a second, policy LSTM (`core`, `lstm_size`) fed [f_t, h1_t, v_t, a_{t-1}], and the auxiliary
    tasks of `agent.aux` (default D1, D2 and L; `agent.aux: {}` is the paper's plain Nav A3C)."""

    name: Literal["nav"] = "nav"  # type: ignore[assignment]
    hidden_sizes: tuple[PositiveInt, ...] = Field((256,), min_length=1, description="the torso's FC size (256)")
    core: Literal["lstm", "dni_lstm"] = Field(  # type: ignore[assignment]
        "lstm", description="the second (policy) LSTM: lstm, or dni_lstm (synthetic gradients, settings agent.dni)"
    )
    lstm1_size: int = Field(64, ge=1, description="the first LSTM (the paper: 64)")
    lstm_size: int = Field(256, ge=1, description="the second LSTM (the paper: 256)")
    velocity_size: int = Field(
        3, ge=0, description="components of the env's agent-frame velocity extra fed to the second LSTM (the "
        "labyrinth's: forward, lateral, yaw rate; DMLab's: 6); 0: no velocity input",
    )  # fmt: skip
    reward_clip: float | None = Field(
        None, gt=0.0, description="clip of r_{t-1} into the first LSTM; null: unclipped (the paper's v3)"
    )
    entropy_cost: float = Field(1e-3, ge=0.0, description="the paper samples [1e-4, 1e-3]")
    aux: AuxConfig = Field(NAV_AUX, description="the auxiliary tasks (default: the paper's D1, D2 and L)")

    @model_validator(mode="after")
    def _on_policy(self) -> NavConfig:
        if self.replay_ratio > 0:
            raise ValueError("agent.replay_ratio: the nav agent learns on-policy only (the paper's; set it to 0)")
        return self

    def check_run(self, run: Any) -> None:
        super().check_run(run)
        if self.velocity_size:
            from decoupled.envs import get_env_backend

            if "velocity" not in getattr(get_env_backend(run.env.backend), "extras", ()):
                raise ValueError(
                    f"agent.velocity_size={self.velocity_size}: the nav agent's second LSTM takes the env's velocity, "
                    f"which env.backend={run.env.backend} does not give; set agent.velocity_size=0"
                )


# progressive: a frozen random column in agent.columns, and the settings every column must share
RANDOM = "random"
ARCHITECTURE_KEYS = ("torso", "hidden_sizes", "core", "lstm_size")


class ProgressiveConfig(UnrealConfig):
    """The new column's architecture and loss settings are IMPALA's (agent.torso, agent.core, ...), and UNREAL's
    auxiliary tasks can ride on the newest column (agent.pixel_control_cost, ...: off by default); every earlier
    column must have the same torso and core."""

    name: Literal["progressive"] = "progressive"  # type: ignore[assignment]
    core: Literal["none", "lstm", "dni_lstm"] = Field("none", description="the columns' core: none or lstm")
    pixel_control_cost: float = Field(0.0, ge=0.0, description="UNREAL's pixel control on the newest column; 0: off")
    reward_prediction_cost: float = Field(0.0, ge=0.0, description="UNREAL's reward prediction on the newest column")
    value_replay_cost: float = Field(0.0, ge=0.0, description="UNREAL's value replay on the newest column; 0: off")
    columns: tuple[str, ...] = Field(
        min_length=1,
        description="earlier columns, oldest first: run dirs or checkpoint dirs of impala or progressive runs (a "
        "progressive run brings its own columns, which must be the ones listed before it), or 'random' for a "
        "random frozen column (the paper's baseline 4)",
    )
    transfer: Literal["progressive", "finetune_output", "finetune_all"] = Field(
        "progressive",
        description="progressive: a new column with lateral adapters; finetune_output / finetune_all: no new column, "
        "the last source column is trained, its heads only or whole (the paper's baselines 2 and 3)",
    )
    alpha_init: float = Field(0.1, gt=0.0, description="initial value of each adapter's learned input scale alpha")

    @field_validator("columns")
    @classmethod
    def _named(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(not str(c).strip() for c in v):
            raise ValueError("agent.columns has an empty entry; give run dirs, checkpoint dirs or 'random'")
        return v

    @model_validator(mode="after")
    def _supported(self) -> ProgressiveConfig:
        if self.torso not in ("mlp", "nature_cnn", "minatar_cnn"):
            raise ValueError(f"agent.torso={self.torso}: progressive columns take mlp, nature_cnn or minatar_cnn")
        if self.core not in ("none", "lstm"):
            raise ValueError(f"agent.core={self.core}: progressive columns take core none or lstm")
        if self.replay_ratio > 0:
            raise ValueError("agent.replay_ratio: the progressive agent learns on-policy only (set it to 0)")
        if self.transfer != "progressive" and (len(self.columns) != 1 or self.columns[0] == RANDOM):
            raise ValueError(
                f"agent.transfer={self.transfer} finetunes one source column: give one run in agent.columns"
            )
        return self

    def architecture(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ARCHITECTURE_KEYS}


# variant -> (control policy, per-state loss, pseudo-reward); the rows of Table 1 of the paper
VARIANTS: dict[str, tuple[str, str, str]] = {
    "teacher_distill": ("teacher", "cross_entropy", "none"),
    "on_policy_distill": ("student", "cross_entropy", "none"),
    "entropy_regularised": ("student", "none", "teacher_log_prob"),
    "n_distill": ("student", "cross_entropy", "next_neg_cross_entropy"),
    "expected_entropy_regularised": ("student", "reverse_cross_entropy", "next_teacher_log_prob"),
    "teacher_v_reward": ("student", "none", "teacher_v_shaping"),
    "value_gated": ("student", "value_gated_cross_entropy", "none"),
}


class DistillConfig(ImpalaConfig):
    """The student's architecture and optimisation are IMPALA's; the rest says how it learns from its teacher."""

    name: Literal["distill"] = "distill"  # type: ignore[assignment]
    entropy_cost: float = Field(0.0, ge=0.0, description="entropy bonus of the student's REINFORCE term")
    teachers: tuple[str, ...] = Field(
        min_length=1,
        max_length=8,
        description="the teacher: a run dir or checkpoint dir of this platform, or a Stable-Baselines3 model (.zip: "
        "PPO, A2C, DQN); a multi-game student (MinAtar env.games) has one per game, in env.games' order",
    )
    variant: Literal[tuple(VARIANTS)] = Field(  # type: ignore[valid-type]
        "on_policy_distill", description="a row of Distilling Policy Distillation's Table 1 (agents/distill.py)"
    )
    control: Literal["teacher", "student", "mixture"] | None = Field(
        None, description="who acts; null: the variant's (teacher for teacher_distill, the student otherwise)"
    )
    teacher_action_prob: float = Field(0.5, ge=0.0, le=1.0, description="control: mixture's share of teacher actions")
    plus_reward: bool = Field(False, description="add the env reward to the pseudo-reward (the paper's '+R' rows)")
    distill_cost: float = Field(1.0, ge=0.0, description="weight of the per-state loss")
    reinforce_cost: float = Field(
        1.0, ge=0.0, description="weight of the REINFORCE term of a pseudo-reward or +R (its variance may need < 1)"
    )
    teacher_prob_floor: float = Field(1e-4, gt=0.0, lt=1.0, description="floor of pi_T inside every log")
    sobolev_cost: float = Field(0.0, ge=0.0, description="weight of the Sobolev (input-Jacobian) term; 0: off")
    sobolev_target: Literal["log_pi", "centred_logits", "value"] = Field(
        "log_pi", description="whose input-Jacobian is matched (raw logits are defined up to a per-state constant)"
    )
    sobolev_states: int = Field(64, ge=1, description="states of each batch the Sobolev term is taken on")
    teacher_temperature: float = Field(
        0.01, gt=0.0, description="an SB3 DQN teacher's policy: softmax(Q / temperature) (Rusu et al. 2015: 0.01)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> DistillConfig:
        _critic_value_needs_impala_loss(self.dni, "distill")
        if self.replay_ratio > 0:
            raise ValueError("agent.replay_ratio: the distill agent learns from the control policy's rollouts only")
        if self.plus_reward and self.variant == "teacher_v_reward":
            raise ValueError("agent.plus_reward: teacher_v_reward's pseudo-reward already holds the env reward")
        if self.sobolev_cost > 0 and self.core != "none":
            raise ValueError("agent.sobolev_cost > 0 needs a feed-forward student (agent.core: none)")
        if self.sobolev_cost > 0 and len(self.teachers) > 1:
            raise ValueError("agent.sobolev_cost > 0 takes one teacher (a multi-game student's Sobolev term: not yet)")
        return self

    def check_run(self, run: Any) -> None:
        games = getattr(run.env, "games", None)
        if len(self.teachers) > 1 and (games is None or len(games) != len(self.teachers)):
            raise ValueError(
                f"agent.teachers names {len(self.teachers)} teachers: one per game of a multi-game env (MinAtar "
                f"env.id=multi with env.games), in env.games' order; this env has {list(games or [])}"
            )
        if games is not None and len(self.teachers) != len(games):
            raise ValueError(f"agent.teachers: one per game of env.games ({len(games)}), got {len(self.teachers)}")

    @property
    def pieces(self) -> tuple[str, str, str]:
        """(control, per-state loss, pseudo-reward) of this config."""
        control, state_loss, pseudo = VARIANTS[self.variant]
        return self.control or control, state_loss, pseudo

    @property
    def reinforce(self) -> bool:
        """Whether a REINFORCE term is formed (a pseudo-reward, or the env reward through +R)."""
        return self.pieces[2] != "none" or self.plus_reward
