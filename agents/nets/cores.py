"""Cores: what sits between the torso and the heads, shared by every agent.

Every core takes the torso features of a time-major unroll [T, B, F] together with the previous action, the
previous reward and the episode-start flags, and returns features [T, B, out_size] and its new state. The
previous action and reward are inputs of the core (Espeholt et al. 2018, Fig. 3; UNREAL, Nav), zeroed where an
episode starts; the recurrent state is reset to the initial state where an episode starts (`first[t]` is True
when obs_t is the first observation of an episode, so the reset happens *before* processing obs_t).

`forward(features, prev_action, prev_reward, first, state, extras=None)`: a core may write tensors the learner
needs beyond the features into `extras` (the synthetic-gradient core, agents/nets/dni.py, puts its window states
there); the net merges them into its outputs. Actors pass no `extras`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

CoreState = tuple[torch.Tensor, ...]


def core_inputs(
    features: torch.Tensor, prev_action: torch.Tensor, prev_reward: torch.Tensor, first: torch.Tensor, num_actions: int
) -> torch.Tensor:
    """[T,B,F] features + one-hot a_{t-1} + clipped r_{t-1}, both zeroed at episode starts -> [T,B,F+A+1]."""
    not_first = (~first).unsqueeze(-1).float()  # [T,B,1]
    onehot = F.one_hot(prev_action.long(), num_actions).float() * not_first
    reward = prev_reward.float().clamp(-1.0, 1.0).unsqueeze(-1) * not_first
    return torch.cat([features, onehot, reward], dim=-1)


class FeedForwardCore(nn.Module):
    """No memory: the features pass through unchanged (the feed-forward IMPALA agent)."""

    def __init__(self, input_size: int, num_actions: int, use_prev_action_reward: bool = False):
        super().__init__()
        self.num_actions = num_actions
        self.use_prev = use_prev_action_reward
        self.out_size = input_size + (num_actions + 1 if use_prev_action_reward else 0)

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> CoreState:
        return ()

    def forward(self, features, prev_action, prev_reward, first, state: CoreState, extras: dict | None = None):
        if self.use_prev:
            features = core_inputs(features, prev_action, prev_reward, first, self.num_actions)
        return features, state


class LSTMCore(nn.Module):
    """An LSTM over [features, a_{t-1}, r_{t-1}] that resets its state at episode starts.

    Steps one time step at a time so the reset can happen at any t inside the unroll (as TorchBeast does); the
    state crosses unroll boundaries through `state`, so an unroll of length T continued from the returned state
    equals one long unroll.
    """

    def __init__(self, input_size: int, num_actions: int, hidden_size: int = 256):
        super().__init__()
        self.num_actions = num_actions
        self.hidden_size = hidden_size
        self.lstm = nn.LSTMCell(input_size + num_actions + 1, hidden_size)
        self.out_size = hidden_size

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> CoreState:
        zeros = torch.zeros(batch_size, self.hidden_size, device=device)
        return (zeros, zeros.clone())

    def forward(self, features, prev_action, prev_reward, first, state: CoreState, extras: dict | None = None):
        x = core_inputs(features, prev_action, prev_reward, first, self.num_actions)  # [T,B,F+A+1]
        outputs, final, _ = self.run(x, first, state)
        return outputs, final

    def run(
        self, x: torch.Tensor, first: torch.Tensor, state: CoreState, keep: tuple[int, ...] = ()
    ) -> tuple[torch.Tensor, CoreState, dict[int, CoreState]]:
        """The LSTM over core inputs x [T,B,*]: outputs [T,B,H], the final state, and the states after the steps
        listed in `keep` (negative indices count from the end)."""
        h, c = state
        T = x.shape[0]
        keep_at: dict[int, list[int]] = {}
        for k in keep:  # two indices may name one step (0 and -2 when T = 2: a one-step unroll's [T+1] window)
            keep_at.setdefault(k % T, []).append(k)
        kept: dict[int, CoreState] = {}
        outputs = []
        for t in range(T):
            mask = (~first[t]).unsqueeze(-1).float()  # [B,1]: 0 where an episode starts at t
            h, c = self.lstm(x[t], (h * mask, c * mask))
            outputs.append(h)
            for k in keep_at.get(t, ()):
                kept[k] = (h, c)
        return torch.stack(outputs), (h, c), kept


class DilatedLSTM(nn.Module):
    """The dilated LSTM of FeUdal Networks (Vezhnevets et al. 2017, arXiv:1703.01161, Sec. 4.1): `dilation` = r
    separate (h, c) groups ("cores") sharing one LSTM cell; at step t only core t mod r is updated, and the output
    is the sum of the r cores' current h (with r equal to the horizon c, the paper's "sum of the last c outputs").
    The Manager thus emits a goal at every step, and each core sees every r-th step: a memory r times longer per
    cell update. `tick` [B] counts each row's steps since its episode started.

    Cores are stored as [B, r, H] tensors and updated out of place (`torch.where`), so autograd flows through the
    recurrence of every core."""

    def __init__(self, input_size: int, hidden_size: int, dilation: int):
        super().__init__()
        assert dilation >= 1, f"dilation must be >= 1, got {dilation}"
        self.cell = nn.LSTMCell(input_size, hidden_size)
        self.hidden_size, self.dilation = hidden_size, dilation

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> CoreState:
        zeros = torch.zeros(batch_size, self.dilation, self.hidden_size, device=device)
        return (zeros, zeros.clone(), torch.zeros(batch_size, dtype=torch.int64, device=device))

    def step(self, x: torch.Tensor, state: CoreState) -> tuple[torch.Tensor, CoreState]:
        """One step for x [B, I]: (output [B, H], next state). Reset a row by zeroing its state first."""
        h, c, tick = state
        B = x.shape[0]
        active = tick % self.dilation  # [B]
        rows = torch.arange(B, device=x.device)
        h_new, c_new = self.cell(x, (h[rows, active], c[rows, active]))
        mask = F.one_hot(active, self.dilation).bool().unsqueeze(-1)  # [B, r, 1]
        h = torch.where(mask, h_new.unsqueeze(1), h)
        c = torch.where(mask, c_new.unsqueeze(1), c)
        return h.sum(1), (h, c, tick + 1)
