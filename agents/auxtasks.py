"""Auxiliary tasks as modules: each is a small head, where its input comes from, its targets and its loss, and any
agent with a torso and a core takes them by config (`agent.aux`, agents/config.py `AuxConfig`):

    agent.aux: {depth_conv: {cost: 3.33}, depth_lstm: {cost: 1.0}, loop_closure: {cost: 1.0}}

The tasks of Mirowski et al. 2017, "Learning to Navigate in Complex Environments" (arXiv:1611.03673; the v3 paper's
classification form):

- `depth_conv` (D1): from the torso's features f_t, an MLP (FC `hidden_size`, ReLU) -> 64 independent 8-way
  softmaxes, one per pixel of a coarse 4x16 depth map of the central field of view;
- `depth_lstm` (D2): the same head on the (top) core's output h_t;
- `loop_closure` (L): from h_t, an MLP -> one logit of "the agent is back within eta_1 of a place it left by more
  than eta_2 since its last (re)spawn" (binary cross-entropy; the v1 text's likelihood form has the wrong sign for
  minimisation).

Losses, per step t (summed over the 64 pixels for depth, as the paper's L_D = -sum_p log p(y_p)):

    L_D(t) = - sum_{p=1}^{64} log softmax(g(x_t))_{p, y_{t,p}}        L_L(t) = BCE(g_l(h_t), l_t)

computed online on the learner's unroll (no replay), on slots 0..T-1 of the [T+1] batch (each observation once),
and weighted like the base loss: per-step means times T*B under `loss_reduction: sum`, times 1 under `mean`.

Targets come from the env's extras (decoupled.envs.EnvBackend.extras; the labyrinth gives depth, position and
velocity): the actor records them per slot through `EnvTargets` (the depth classes of `nav_depth_targets`, the loop
label of a `LoopClosureTracker` per env column that restarts at every episode start and respawn), so the learner's
batch carries `aux/depth_classes` [T+1, B, 4, 16] and `aux/loop_closure` [T+1, B]. A net asks for them with
`env_targets(num_envs)`; inputs the net takes from the env (the Nav agent's velocity) are listed in its
`extra_inputs` and recorded the same way.

The heads are built from a forked RNG, so the agent's other parameters start as they would without them.

UNREAL's tasks (`pixel_control`, `reward_prediction`, `value_replay`, `feature_control`) are the modules of
agents/unreal.py, which learn from replay; `agent.aux` takes them too, and they mix with these.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from decoupled.agents.config import AuxConfig, AuxTaskConfig, LoopClosureTaskConfig

DEPTH_KEY = "aux/depth_classes"  # rollout / batch key: int8 [.., 4, 16] in 0..7
LOOP_KEY = "aux/loop_closure"  # float32 [..]: l_t
DEPTH_SHAPE, DEPTH_CLASSES = (4, 16), 8
CELL_SIZE = 96.0  # map units per maze cell of the labyrinth (envs/labyrinth.py CELL_SIZE; checked in the tests)


# ------------------------------------------------------------------------------------------------ actor side
class EnvTargets:
    """Per-slot arrays an actor derives from its envs' extras for one net: `fields` {key: (shape, dtype)}.

    `record(cols, extras, env_info, first)` -> {key: [len(cols), ...]} for the observations just received by the
    columns `cols` (`first`: they start an episode; `env_info["respawned"]`: the agent was teleported)."""

    def __init__(
        self,
        num_envs: int,
        depth: bool = False,
        loop: LoopClosureTaskConfig | None = None,
        velocity_size: int = 0,
    ):
        self.fields: dict[str, tuple[tuple[int, ...], Any]] = {}
        self.inputs: dict[str, int] = {}
        self.depth = depth
        if depth:
            self.fields[DEPTH_KEY] = (DEPTH_SHAPE, np.int8)
        self.trackers = None
        if loop is not None:
            from decoupled.envs.labyrinth import LoopClosureTracker  # numpy only; the engine is imported lazily

            eta1, eta2 = loop.eta1_cells * CELL_SIZE, loop.eta2_cells * CELL_SIZE
            self.trackers = [LoopClosureTracker(eta1, eta2) for _ in range(num_envs)]
            self.fields[LOOP_KEY] = ((), np.float32)
        if velocity_size:
            self.fields["velocity"] = ((velocity_size,), np.float32)
            self.inputs["velocity"] = velocity_size

    @staticmethod
    def _extra(extras: dict[str, np.ndarray], key: str, what: str) -> np.ndarray:
        if key not in extras:
            raise KeyError(
                f"{what} needs the env's {key!r} extra, and this env gives {sorted(extras) or 'none'} (the labyrinth "
                "backend gives depth, position and velocity)"
            )
        return np.asarray(extras[key])

    def input_arrays(self, extras: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The net's env inputs (velocity) from extras [n, ...]."""
        out = {}
        for key, size in self.inputs.items():
            v = self._extra(extras, key, "the nav agent's second LSTM").astype(np.float32)
            if v.shape[-1] != size:
                raise ValueError(f"the env's {key} has {v.shape[-1]} components, agent.velocity_size is {size}")
            out[key] = v
        return out

    def record(
        self, cols: slice, extras: dict[str, np.ndarray], env_info: dict[str, np.ndarray], first: np.ndarray
    ) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = dict(self.input_arrays(extras))
        if self.depth:
            from decoupled.envs.labyrinth import nav_depth_targets

            out[DEPTH_KEY] = nav_depth_targets(self._extra(extras, "depth", "a depth task")).astype(np.int8)
        if self.trackers is not None:
            pos = self._extra(extras, "position", "agent.aux.loop_closure")
            respawned = np.asarray(env_info.get("respawned", np.zeros(len(pos), bool)), bool)
            labels = np.zeros(len(pos), np.float32)
            for i, col in enumerate(range(cols.start, cols.stop)):
                tracker = self.trackers[col]
                if first[i]:
                    tracker.reset()
                labels[i] = tracker.update(pos[i], bool(respawned[i]))
            out[LOOP_KEY] = labels
        return out


# ------------------------------------------------------------------------------------------------ heads
def _mlp(input_size: int, hidden_size: int, out_size: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(input_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, out_size))


class DepthTask(nn.Module):
    """D1 / D2: input [T, B, F] -> logits [T, B, 4, 16, 8]."""

    def __init__(self, input_size: int, cfg: AuxTaskConfig, source: str):
        super().__init__()
        self.source = source
        self.head = _mlp(input_size, cfg.hidden_size, DEPTH_SHAPE[0] * DEPTH_SHAPE[1] * DEPTH_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x).view(*x.shape[:-1], *DEPTH_SHAPE, DEPTH_CLASSES)


class LoopClosureTask(nn.Module):
    """L: the core's output [T, B, H] -> one logit [T, B]."""

    def __init__(self, input_size: int, cfg: AuxTaskConfig):
        super().__init__()
        self.source = "core"
        self.head = _mlp(input_size, cfg.hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x).squeeze(-1)


class AuxTasks(nn.Module):
    """The heads of `agent.aux`; `forward(torso_features, core_out)` -> {"aux/<task>/logits": ...}."""

    def __init__(self, aux: AuxConfig, torso_size: int, core_size: int):
        super().__init__()
        self.cfg = aux
        heads: dict[str, nn.Module] = {}
        for name, cfg in aux.online_tasks().items():
            if name == "depth_conv":
                heads[name] = DepthTask(torso_size, cfg, "torso")
            elif name == "depth_lstm":
                heads[name] = DepthTask(core_size, cfg, "core")
            elif name == "loop_closure":
                heads[name] = LoopClosureTask(core_size, cfg)
            else:  # pragma: no cover - AuxConfig refuses other names
                raise ValueError(f"unknown auxiliary task {name!r}")
        self.heads = nn.ModuleDict(heads)

    def forward(self, torso_features: torch.Tensor, core_out: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            f"aux/{name}/logits": head(torso_features if head.source == "torso" else core_out)
            for name, head in self.heads.items()
        }

    def env_targets(self, num_envs: int, velocity_size: int = 0) -> EnvTargets:
        tasks = self.cfg.online_tasks()
        return EnvTargets(
            num_envs,
            depth=any(n in tasks for n in ("depth_conv", "depth_lstm")),
            loop=tasks.get("loop_closure"),  # type: ignore[arg-type]
            velocity_size=velocity_size,
        )


def build_aux_tasks(aux: AuxConfig | None, torso_size: int, core_size: int) -> AuxTasks | None:
    """The heads of `aux` from a forked RNG (the rest of the net initialises as without them); None when empty."""
    if aux is None or not aux.online_tasks():
        return None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(torch.initial_seed() + 3)
        return AuxTasks(aux, torso_size, core_size)


# ------------------------------------------------------------------------------------------------ losses
def depth_loss(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """logits [..., 4, 16, 8], classes [..., 4, 16] -> the per-step loss [...]: the sum over the 64 pixels of the
    cross-entropy."""
    lead = logits.shape[:-3]
    ce = F.cross_entropy(logits.reshape(-1, DEPTH_CLASSES), classes.reshape(-1).long(), reduction="none")
    return ce.view(*lead, -1).sum(-1)


def loop_closure_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy per step, [...]."""
    return F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none")


def aux_losses(
    aux: AuxConfig | None, batch: dict[str, Any], outputs: dict[str, Any], scale: float
) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """The weighted sum of the tasks' losses on slots 0..T-1 of a [T+1, B] batch (None without tasks), and metrics
    under aux/<task>/. `scale`: T*B under a summed base loss, 1 under a mean one."""
    if aux is None:
        return None, {}
    total: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = {}
    for name, cfg in aux.online_tasks().items():
        logits = outputs[f"aux/{name}/logits"][:-1]
        if name in ("depth_conv", "depth_lstm"):
            target = batch[DEPTH_KEY][:-1].long()
            per_step = depth_loss(logits, target)
            metrics[f"aux/{name}/accuracy"] = (logits.detach().argmax(-1) == target).float().mean()
        else:
            target = batch[LOOP_KEY][:-1]
            per_step = loop_closure_loss(logits, target)
            pred = (logits.detach() > 0).float()
            metrics[f"aux/{name}/accuracy"] = (pred == target).float().mean()
            metrics[f"aux/{name}/label_mean"] = target.float().mean()
            metrics[f"aux/{name}/recall"] = (pred * target).sum() / target.sum().clamp(min=1.0)
        loss = per_step.mean()
        metrics[f"aux/{name}/loss"] = loss.detach()
        term = cfg.cost * scale * loss
        total = term if total is None else total + term
    return total, metrics
