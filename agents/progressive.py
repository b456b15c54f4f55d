"""Progressive Neural Networks (Rusu et al. 2016, arXiv:1606.04671): a new column per task, earlier columns frozen,
lateral adapters from every earlier column into every layer of the new one but the first.

Columns. Every column has the architecture of the IMPALA agent's net (agents/impala.py: torso -> core -> policy and
baseline heads), taken layer by layer: the torso's conv and linear layers (`mlp`, `nature_cnn`, `minatar_cnn`), the
core (`none` or `lstm`), the heads. Earlier columns come from earlier runs (`agent.columns`: run dirs or checkpoint
dirs, oldest first; an IMPALA run is one column, a progressive run brings all of its columns), or are random
(`random`, the paper's baseline 4). They are frozen as the paper's "constants for the optimizer" ask: their parameters
do not require gradients (so they are out of the optimiser and of the gradient clip), they stay in eval mode, and
they run under `torch.no_grad()`; a test checks them bit-identical after training.

Adapters (Sec. 2, "adapters", the layer the paper uses): layer i of column k (i >= 2) adds

    U_i^(k) relu(V_i^(k) (alpha_i^(k) * h_{i-1}^(<k)))

to its pre-activation, where h_{i-1}^(<k) concatenates the earlier columns' activations of layer i-1, alpha is a
learned scalar (initial value `agent.alpha_init`, the paper's grid {1, 0.1, 0.01}), V reduces the concatenation to
the width of column k's own input of layer i (a 1x1 convolution on feature maps, a linear map on vectors) and U has
the shape of layer i's own weight (a convolution with the layer's kernel and stride, or a linear map), without bias.
The first linear layer after the convolutions reads the earlier columns' maps through a 1x1 V and a flattening U. The
LSTM core's lateral is added to its input features (the LSTM's input-to-gate weights then see it as one more input);
the policy and baseline heads each have an adapter from the earlier columns' core outputs. Frozen columns' own heads
are not part of the progressive forward pass (no lateral reads them); they are kept, loaded from their run, so that
`column_net(j)` plays column j alone on its own task.

Losses: the IMPALA loss with V-trace on the newest column's outputs (agents/impala.py; the paper trains each column
with A3C, the on-policy special case), plus UNREAL's auxiliary tasks on the newest column when their costs are above
0 (agents/unreal.py: pixel and feature control read its core output, reward prediction its torso features, value
replay its baseline; its replay holds every column's core state). An UNREAL run can be a source column (its torso
and core; its auxiliary heads stay with it). `agent.transfer` also gives the paper's baselines 2 and 3 on the same
runner: `finetune_output` (one column from the last source, only its heads train) and `finetune_all` (the whole
column trains). Baseline 1 is the IMPALA config on the target; baseline 4 is `columns: [random]`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from decoupled.agents import unreal
from decoupled.agents.base import AgentDef, AgentSetupError
from decoupled.agents.config import ARCHITECTURE_KEYS, RANDOM, ProgressiveConfig
from decoupled.agents.impala import ImpalaNet
from decoupled.agents.nets.cores import CoreState, LSTMCore
from decoupled.agents.nets.torsos import MinAtarCNN, MLPTorso, NatureCNN
from decoupled.envs.base import EnvSpec


# ----------------------------------------------------------------------------------------------- layers
def torso_layers(torso: nn.Module) -> list[nn.Module]:
    """The torso's weight layers in order (convs, then linear layers), each followed by a ReLU in its forward."""
    if isinstance(torso, NatureCNN):
        return [m for m in torso.convs if isinstance(m, nn.Conv2d)] + [torso.fc]
    if isinstance(torso, MinAtarCNN):
        return [torso.conv, torso.fc]
    if isinstance(torso, MLPTorso):
        return [m for m in torso.net if isinstance(m, nn.Linear)]
    raise ValueError(f"no layer-by-layer form for the torso {type(torso).__name__}")


class Adapter(nn.Module):
    """U relu(V (alpha * cat(h_{i-1}^(j), j < k))), the lateral into a layer shaped like `layer`.

    `in_channels`: the width of one earlier column's activation (channels of a map, or features of a vector), `mid`
    the width of this column's own input of the layer, `maps`: the activations are feature maps [N, C, H, W].
    """

    def __init__(self, layer: nn.Module, sources: int, in_channels: int, mid: int, maps: bool, alpha: float):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.maps = maps
        if maps:
            self.v: nn.Module = nn.Conv2d(sources * in_channels, mid, 1)
        else:
            self.v = nn.Linear(sources * in_channels, mid)
        if isinstance(layer, nn.Conv2d):
            self.u: nn.Module = nn.Conv2d(
                mid, layer.out_channels, layer.kernel_size, layer.stride, layer.padding, bias=False
            )
        else:
            assert isinstance(layer, nn.Linear)
            self.u = nn.Linear(layer.in_features if maps else mid, layer.out_features, bias=False)
        self.flatten = maps and isinstance(layer, nn.Linear)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(inputs, dim=1) if len(inputs) > 1 else inputs[0]
        h = F.relu(self.v(self.alpha * x))
        return self.u(h.flatten(1) if self.flatten else h)


class ColumnAdapters(nn.Module):
    """The adapters of one column k >= 2: one per torso layer but the first, one into the core (LSTM only), one per
    head."""

    def __init__(self, column: ImpalaNet, sources: int, alpha: float, obs_shape: tuple[int, ...]):
        super().__init__()
        layers = torso_layers(column.torso)
        shapes = _activation_shapes(column.torso, layers, obs_shape)
        self.torso = nn.ModuleList()
        for i in range(1, len(layers)):
            prev = shapes[i - 1]  # the shape of h_{i-1}: (C, H, W) for maps, (F,) for vectors
            maps = len(prev) == 3
            mid = prev[0]
            self.torso.append(Adapter(layers[i], sources, prev[0], mid, maps, alpha))
        feat = column.torso.out_size
        self.core: Adapter | None = None
        if isinstance(column.core, LSTMCore):
            self.core = Adapter(nn.Linear(feat, feat), sources, feat, feat, False, alpha)
        out = column.core.out_size
        self.policy = Adapter(column.heads.policy, sources, out, out, False, alpha)
        self.baseline = Adapter(column.heads.baseline, sources, out, out, False, alpha)


def _activation_shapes(torso: nn.Module, layers: list[nn.Module], obs_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The shape of each layer's output (per sample) for observations of `obs_shape`."""
    shapes = []
    with torch.no_grad():
        x = torch.zeros(1, *obs_shape)
        x = x.flatten(1) if isinstance(torso, MLPTorso) else x
        for layer in layers:
            if isinstance(layer, nn.Linear) and x.dim() > 2:
                x = x.flatten(1)
            x = layer(x)
            shapes.append(tuple(x.shape[1:]))
    return shapes


# ----------------------------------------------------------------------------------------------- the net
class ProgressiveNet(nn.Module):
    """K columns; the last is trained (with its adapters), the earlier ones are frozen. Time-major inputs [T, B, ...]
    as every agent's net; outputs the newest column's `policy_logits` and `baseline`."""

    def __init__(self, spec: EnvSpec, cfg: ProgressiveConfig):
        super().__init__()
        self.transfer = cfg.transfer
        self.num_actions = spec.num_actions
        n_frozen = len(cfg.columns) if cfg.transfer == "progressive" else 0
        n_columns = n_frozen + 1
        self.columns = nn.ModuleList(ImpalaNet(spec, cfg) for _ in range(n_columns))
        self.adapters = nn.ModuleList(
            [nn.Module()]
            + [ColumnAdapters(self.columns[k], k, cfg.alpha_init, spec.obs_shape) for k in range(1, n_columns)]
        )
        self.frozen = n_frozen  # columns 0..frozen-1 never train
        # whether column j's heads hold its own run's (1) or are unused random ones (0, another action count)
        self.register_buffer("heads_loaded", torch.zeros(n_columns, dtype=torch.uint8))
        self._layers = [torso_layers(c.torso) for c in self.columns]
        self._state_sizes = [len(c.initial_state(1)) for c in self.columns]
        for j in range(self.frozen):
            self._freeze(self.columns[j])
            self._freeze(self.adapters[j])
        if cfg.transfer == "finetune_output":
            self._freeze(self.columns[0].torso)
            self._freeze(self.columns[0].core)
        self.cfg = cfg
        if cfg.uses_replay:  # UNREAL's auxiliary heads on the newest column (its torso features and core output)
            unreal.add_auxiliary_heads(self, spec, cfg, self.columns[-1].torso, self.columns[-1].core.out_size)

    @staticmethod
    def _freeze(module: nn.Module) -> None:
        module.requires_grad_(False)
        module.eval()

    def train(self, mode: bool = True) -> ProgressiveNet:
        super().train(mode)
        for j in range(self.frozen):  # frozen columns stay in eval mode
            self.columns[j].eval()
            self.adapters[j].eval()
        return self

    def frozen_parameters(self) -> list[tuple[str, torch.Tensor]]:
        """(name, tensor) of every parameter that never trains."""
        return [(n, p) for n, p in self.named_parameters() if not p.requires_grad]

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> CoreState:
        return tuple(t for c in self.columns for t in c.initial_state(batch_size, device))

    def _split_state(self, state: CoreState) -> list[CoreState]:
        out, i = [], 0
        for n in self._state_sizes:
            out.append(tuple(state[i : i + n]))
            i += n
        return out

    def _torso(self, k: int, x0: torch.Tensor, lower: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        """Column k's torso activations h_1..h_n from the scaled input x0 and the earlier columns' activations."""
        acts: list[torch.Tensor] = []
        h = x0
        for i, layer in enumerate(self._layers[k]):
            if isinstance(layer, nn.Linear) and h.dim() > 2:
                h = h.flatten(1)
            z = layer(h)
            if k > 0 and i > 0:
                z = z + self.adapters[k].torso[i - 1]([col[i - 1] for col in lower])
            h = self._perturb(k, i, F.relu(z))
            acts.append(h)
        return acts

    # Perturbation sensitivity (`decoupled analyze aps`): Gaussian noise added to one layer of one column after its
    # ReLU, fresh on every forward pass: {(column, layer index in `layer_names()`): (std per unit, generator)}.
    perturbation: dict[tuple[int, int], tuple[torch.Tensor, torch.Generator]] | None = None

    def _perturb(self, k: int, i: int, h: torch.Tensor) -> torch.Tensor:
        if not self.perturbation or (k, i) not in self.perturbation:
            return h
        std, gen = self.perturbation[(k, i)]
        shape = (1, -1, 1, 1) if h.dim() == 4 else (1, -1)
        noise = torch.randn(h.shape, generator=gen, device=h.device, dtype=h.dtype)
        return h + noise * std.reshape(shape)

    def _column(
        self,
        k: int,
        x0: torch.Tensor,
        shape: tuple[int, int],
        inputs: dict[str, torch.Tensor],
        state: CoreState,
        lower_acts: list[list[torch.Tensor]],
    ) -> tuple[list[torch.Tensor], torch.Tensor, CoreState]:
        """Column k: (torso activations, core output [T*B, H], new core state)."""
        T, B = shape
        col = self.columns[k]
        acts = self._torso(k, x0, lower_acts)
        features = acts[-1]
        if k > 0 and self.adapters[k].core is not None:
            features = features + self.adapters[k].core([a[-1] for a in lower_acts])
        core_out, new_state = col.core(
            features.reshape(T, B, -1), inputs["prev_action"], inputs["prev_reward"], inputs["first"], state
        )
        return acts, self._perturb(k, len(self._layers[k]), core_out.reshape(T * B, -1)), new_state

    def forward(self, inputs: dict[str, torch.Tensor], state: CoreState) -> tuple[dict[str, torch.Tensor], CoreState]:
        outputs, _, new_state = self._forward(inputs, state, record=False)
        return outputs, new_state

    def forward_with_activations(
        self, inputs: dict[str, torch.Tensor], state: CoreState
    ) -> tuple[dict[str, torch.Tensor], dict[tuple[int, str], torch.Tensor], CoreState]:
        """The forward pass with every column's activations in the autograd graph, frozen columns included (for
        the Fisher sensitivity of the policy to them, `decoupled analyze afs`): (outputs, {(column, layer name):
        activation [T*B, ...]}, new state). Layer names: `conv1`.., `fc1`.. in torso order, and `core` (LSTM)."""
        return self._forward(inputs, state, record=True)

    def layer_names(self) -> list[str]:
        names, counts = [], {"conv": 0, "fc": 0}
        for layer in self._layers[-1]:
            kind = "conv" if isinstance(layer, nn.Conv2d) else "fc"
            counts[kind] += 1
            names.append(f"{kind}{counts[kind]}")
        return names + (["core"] if isinstance(self.columns[-1].core, LSTMCore) else [])

    def _input(self, obs: torch.Tensor) -> torch.Tensor:
        """Stored observations [N, ...] -> the float input every column reads (flattened for MLP torsos)."""
        torso0 = self.columns[-1].torso
        x0 = torso0._float(obs)
        return x0.flatten(1) if isinstance(torso0, MLPTorso) else x0

    def _torsos(self, obs: torch.Tensor) -> list[torch.Tensor]:
        """The newest column's torso activations on obs [N, ...] (the earlier columns' torsos feed its laterals)."""
        x0, lower = self._input(obs), []
        for k in range(len(self.columns)):
            with torch.no_grad() if k < self.frozen else contextlib.nullcontext():
                acts = self._torso(k, x0, lower)
            lower.append(acts)
        return acts

    def replay_forward(self, inputs: dict[str, torch.Tensor], state: CoreState) -> dict[str, torch.Tensor]:
        """The outputs on replayed sequences [T+1, n] plus UNREAL's PC / FC outputs from the newest column (as
        `agents.unreal.UnrealNet.replay_forward`)."""
        newest: dict[str, Any] = {}
        out, _, _ = self._forward(inputs, state, record=False, newest=newest)
        maps = None
        if self.cfg.feature_control_cost > 0:  # the newest column's last conv layer's maps (after its ReLU)
            convs = [
                a for a, layer in zip(newest["acts"], self._layers[-1], strict=True) if isinstance(layer, nn.Conv2d)
            ]
            maps = convs[-1]
        return {**out, **unreal.auxiliary_outputs(self, inputs["obs"], newest["core_out"], maps)}

    def reward_prediction_logits(self, obs: torch.Tensor) -> torch.Tensor:
        """obs [k, n, *obs] -> logits [n, 3] from the newest column's torso features (no core, as UNREAL's)."""
        k, n = obs.shape[:2]
        features = self._torsos(obs.reshape(k * n, *obs.shape[2:]))[-1].view(k, n, -1)
        return self.reward_prediction(features)

    def _forward(
        self, inputs: dict[str, torch.Tensor], state: CoreState, record: bool, newest: dict | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[tuple[int, str], torch.Tensor], CoreState]:
        obs = inputs["obs"]
        T, B = obs.shape[:2]
        states = self._split_state(state)
        x0 = self._input(obs.reshape(T * B, *obs.shape[2:]))
        if record:  # every activation, frozen columns' too, becomes a function of a leaf that requires grad
            x0 = x0.detach().requires_grad_(True)
        lower_acts: list[list[torch.Tensor]] = []
        lower_out: list[torch.Tensor] = []
        new_states: list[CoreState] = []
        recorded: dict[tuple[int, str], torch.Tensor] = {}
        names = self.layer_names()
        for k in range(len(self.columns)):
            frozen = k < self.frozen and not record
            with torch.no_grad() if frozen else contextlib.nullcontext():
                acts, out, s = self._column(k, x0, (T, B), inputs, states[k], lower_acts)
            if record:
                for name, a in zip(names, [*acts, out] if "core" in names else acts, strict=True):
                    recorded[(k, name)] = a
            if k < len(self.columns) - 1:
                lower_acts.append(acts)
                lower_out.append(out)
            new_states.append(s)
        if newest is not None:
            newest.update(acts=acts, core_out=out)
        heads = self.columns[-1].heads
        logits, baseline = heads.policy(out), heads.baseline(out).squeeze(-1)
        if lower_out:
            logits = logits + self.adapters[-1].policy(lower_out)
            baseline = baseline + self.adapters[-1].baseline(lower_out).squeeze(-1)
        outputs = {"policy_logits": logits.reshape(T, B, -1), "baseline": baseline.reshape(T, B)}
        return outputs, recorded, tuple(t for s in new_states for t in s)

    def column_net(self, j: int) -> nn.Module:
        """Column j (0-based) alone, with its own heads, as a net of the agent it came from (only for j = 0 or a
        column without laterals into it; the others need the columns below them)."""
        if j != 0 and self.transfer == "progressive":
            raise ValueError(f"column {j} reads columns 0..{j - 1} through its adapters; only column 0 plays alone")
        if not bool(self.heads_loaded[j]):
            raise ValueError(f"column {j}'s heads were not loaded from its run (another action count)")
        return self.columns[j]


def make_net(spec: EnvSpec, cfg: ProgressiveConfig) -> ProgressiveNet:
    return ProgressiveNet(spec, cfg)


# ----------------------------------------------------------------------------------------------- sources
def _describe(cfg: Any) -> str:
    a = cfg.agent
    return f"{cfg.agent_name} ({', '.join(f'{k}={getattr(a, k)}' for k in ARCHITECTURE_KEYS if hasattr(a, k))})"


def init_from_sources(
    cfg: ProgressiveConfig, net: ProgressiveNet, load: Callable[[str], tuple[Any, dict, str]], resume: bool = False
) -> dict:
    """Load the earlier columns (and, for the finetuning baselines, the one source column) from their runs; nothing on
    a resume (the run's checkpoints hold every column, so a resumed or evaluated run needs no source run).

    `load(path) -> (run config, checkpoint state, checkpoint path)` reads a run dir or a checkpoint dir. Raises
    `AgentSetupError` naming the column and the reason when a column cannot be used. Returns what was loaded, per
    column: its checkpoint path (or 'random')."""
    if resume:
        return {}
    want = cfg.architecture()
    loaded: list[str] = []
    for j, path in enumerate(cfg.columns):
        where = f"agent.columns[{j}] = {path}"
        if path == RANDOM:
            _no_laterals(net, j)  # a random column of its own: nothing flows into it from the columns before
            loaded.append(RANDOM)
            continue
        try:
            src_cfg, state, ckpt = load(path)
        except Exception as e:  # a missing run, a corrupt checkpoint: what the loader says, with the column named
            raise AgentSetupError(f"{where}: cannot load it: {e}") from e
        name = src_cfg.agent_name
        if name not in ("impala", "unreal", "progressive"):
            raise AgentSetupError(
                f"{where}: a {name} run; a progressive column is an impala or unreal net ({_describe_want(want)})"
            )
        have = {k: getattr(src_cfg.agent, k) for k in ARCHITECTURE_KEYS}
        if have != want:
            raise AgentSetupError(
                f"{where}: its net is {_describe(src_cfg)}, this run's columns are {_describe_want(want)}"
            )
        net_state = state["net"]
        if name in ("impala", "unreal"):  # an UNREAL run's auxiliary heads stay with it
            _load_column(net, j, net_state, where)
            _no_laterals(net, j)  # it was trained alone: its laterals must add exactly nothing
        else:
            _load_progressive(net, j, net_state, src_cfg.agent, where)
        loaded.append(ckpt)
    return {"columns": loaded}


def _describe_want(want: dict[str, Any]) -> str:
    return "impala (" + ", ".join(f"{k}={v}" for k, v in want.items()) + ")"


def _no_laterals(net: ProgressiveNet, j: int) -> None:
    """Column j >= 1 as a standalone net: every adapter into it outputs 0 (U = 0), so it computes what it did alone."""
    if j == 0:
        return
    with torch.no_grad():
        for module in net.adapters[j].modules():
            if isinstance(module, Adapter):
                module.u.weight.zero_()


def _load_column(net: ProgressiveNet, j: int, net_state: dict[str, torch.Tensor], where: str) -> None:
    """An IMPALA net's state into column j: torso and core must fit; the heads load when the action counts agree."""
    column = net.columns[j]
    body = {k: v for k, v in net_state.items() if k.startswith(("torso.", "core."))}
    heads = {k[len("heads.") :]: v for k, v in net_state.items() if k.startswith("heads.")}
    policy = heads.get("policy.weight")
    if isinstance(column.core, LSTMCore) and policy is not None and policy.shape[0] != net.num_actions:
        raise AgentSetupError(
            f"{where}: it acts with {policy.shape[0]} actions, this env with {net.num_actions}; an LSTM core reads the "
            "previous action, so its columns need the same action set (MinAtar: env.full_action_set=true everywhere)"
        )
    try:
        missing, unexpected = column.load_state_dict(body, strict=False)
    except RuntimeError as e:
        raise AgentSetupError(f"{where}: its torso or core does not fit this env's observations: {e}") from e
    missing = [m for m in missing if not m.startswith("heads.")]
    if missing or unexpected:
        raise AgentSetupError(f"{where}: its net does not match (missing {missing}, unexpected {unexpected})")
    shapes_match = all(
        heads.get(k) is not None and heads[k].shape == v.shape for k, v in column.heads.state_dict().items()
    )
    if shapes_match:
        column.heads.load_state_dict(heads)
        net.heads_loaded[j] = 1
    elif net.transfer != "progressive":  # finetuning on another action set: new heads (random)
        print(f"{where}: another action count; its heads start afresh", flush=True)


def _load_progressive(net: ProgressiveNet, j: int, net_state: dict[str, torch.Tensor], src: Any, where: str) -> None:
    """A progressive run's columns 0..m-1 into columns 0..m-1 (m = j + 1): the ones listed before it must be its own."""
    if net.transfer != "progressive":
        raise AgentSetupError(f"{where}: finetuning takes a one-column (impala or unreal) source")
    if src.transfer != "progressive":
        raise AgentSetupError(f"{where}: a {src.transfer} run has one column; give its source instead")
    m = len(src.columns) + 1
    if m != j + 1:
        raise AgentSetupError(
            f"{where}: a progressive run of {m} columns must come at position {m - 1} of agent.columns (after the "
            f"{m - 1} columns it was trained on), not at {j}"
        )
    listed = net.cfg.columns
    for i in range(m):
        prefix = f"columns.{i}."
        part = {k[len(prefix) :]: v for k, v in net_state.items() if k.startswith(prefix)}
        if i < j and listed[i] != RANDOM:  # already loaded from the list: it must be the same column
            mine = net.columns[i].state_dict()
            same = all(
                k in part and torch.equal(part[k].to(v.device), v)
                for k, v in mine.items()
                if not k.startswith("heads.")
            )
            if not same:
                raise AgentSetupError(
                    f"{where}: its column {i} is not agent.columns[{i}] (a progressive run must follow the columns "
                    "it was trained on, in order)"
                )
            continue
        _load_column(net, i, part, where)  # its own column (or a random one it drew: copied, not redrawn)
        if i > 0:
            prefix = f"adapters.{i}."
            adapters = {k[len(prefix) :]: v for k, v in net_state.items() if k.startswith(prefix)}
            try:
                net.adapters[i].load_state_dict(adapters)
            except RuntimeError as e:
                raise AgentSetupError(f"{where}: its adapters do not fit: {e}") from e


AGENT = AgentDef(
    name="progressive",
    config_class=ProgressiveConfig,
    make_net=make_net,
    loss_fn=unreal.unreal_loss,  # the IMPALA loss, plus the auxiliary losses when a cost is above 0
    make_replay=unreal.make_replay,
    sample_replay=unreal.sample_replay,
    replay_outputs=unreal.replay_outputs,
    loss_sum_factor=unreal.loss_sum_factor,
    init_net=init_from_sources,
)
