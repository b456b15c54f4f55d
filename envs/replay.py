"""The replay layer: recent experience sequences from every actor, for the agents that learn from replay.

UNREAL (Jaderberg et al. 2016, arXiv:1611.05397) trains its auxiliary tasks on replayed experience: pixel control
and value-function replay on short sequences, reward prediction on windows of three frames whose next reward is
skewed towards the rewarding ones. `SequenceReplay` keeps what they need, and is meant for every agent that
replays (FeUdal and the navigation agent attach the same auxiliary heads).

What is stored: every column of every learner rollout, as one *sequence* of T+1 slots in the rollout's layout
(`runners/training/actor_learner.py`: slot t holds obs_t and the action, reward, terminated / truncated flags of the
transition *into* obs_t; slot 0 repeats the previous rollout's last slot), together with the actor's core state
at slot 0. So a replayed sequence can be fed to a recurrent core from the state the actor had there (the pitfall
of reimplementations that restart the LSTM from zeros, miyosuda/unreal#17), and it carries T transitions.

Bounded memory: `capacity_steps` agent steps in all (`capacity_steps // T` sequences), the oldest sequence
overwritten first; uint8 frames stay uint8. The arrays are allocated at full size up front with `np.zeros`, whose
pages the OS maps lazily, so the resident memory grows with what is actually stored.

Sampling (a numpy Generator of the replay's own, saved in checkpoints, so a resumed run samples what an
uninterrupted one would):

- `sample_sequences(n)`: n stored sequences, uniformly (value replay, pixel control): time-major [T+1, n, ...].
- `sample_reward_windows(n, k)`: n windows of k consecutive observations (slots tau-k .. tau-1 of one stored
  sequence, all of one episode) and the reward of the transition that follows them (slot tau). `skewed`: half of
  the draws end in a non-zero reward and half in a zero one, as the paper balances them ("sampled such that zero
  and non-zero rewards are equally represented"); when one kind is not in the buffer yet, the other is drawn
  (the sampler must not fail before the first reward). `uniform`: any valid window. Windows
  end at slots k..T of a sequence, so 2 of every T transitions (those whose three frames would straddle two
  stored sequences) are never reward-prediction targets.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SEQUENCE_KEYS = ("obs", "action", "reward", "terminated", "truncated", "truncation_value")
# kept when the replay is built with `num_actions`: what V-trace needs to learn from replayed sequences
BEHAVIOUR_KEY = "behaviour_logits"


class SequenceReplay:
    """A ring of T+1-slot sequences (with the core state at each sequence's start); see the module docstring."""

    def __init__(
        self,
        capacity_steps: int,
        unroll_length: int,
        obs_shape: tuple[int, ...],
        obs_dtype: Any,
        state_shapes: tuple[tuple[int, ...], ...] = (),
        seed: int = 0,
        num_actions: int | None = None,
        extra_fields: dict[str, tuple[tuple[int, ...], Any]] | None = None,
    ):
        if unroll_length < 1:
            raise ValueError(f"unroll_length must be >= 1, got {unroll_length}")
        self.T = int(unroll_length)
        self.capacity = int(capacity_steps) // self.T
        if self.capacity < 1:
            raise ValueError(
                f"a replay of {capacity_steps} steps holds no sequence of {self.T} steps; raise the capacity"
            )
        L, N = self.T + 1, self.capacity
        self.data = {
            "obs": np.zeros((N, L, *obs_shape), obs_dtype),
            "action": np.zeros((N, L), np.int64),
            "reward": np.zeros((N, L), np.float32),
            "terminated": np.zeros((N, L), bool),
            "truncated": np.zeros((N, L), bool),
            "truncation_value": np.zeros((N, L), np.float32),
        }
        if num_actions is not None:  # the behaviour policy's logits, for off-policy corrections (V-trace)
            self.data[BEHAVIOUR_KEY] = np.zeros((N, L, int(num_actions)), np.float32)
        for key, (shape, dtype) in (extra_fields or {}).items():  # more per-slot rollout keys (a net's env inputs)
            self.data[key] = np.zeros((N, L, *shape), dtype)
        self.keys = tuple(self.data)
        self.last_columns = 0  # columns of the last rollout added
        self.state_shapes = tuple(tuple(s) for s in state_shapes)
        self.states = [np.zeros((N, *s), np.float32) for s in self.state_shapes]
        self.size = 0  # sequences stored
        self.next = 0  # where the next one goes
        self.added = 0  # sequences ever added
        self.rng = np.random.default_rng(seed)

    # ------------------------------------------------------------------------------------------ adding
    @property
    def num_steps(self) -> int:
        """Transitions stored (T per sequence)."""
        return self.size * self.T

    def add(self, rollout: dict[str, Any]) -> None:
        """Store every column of a rollout message (`data` arrays [T+1, B, ...], `initial_state` [B, ...])."""
        data = rollout["data"]
        L, B = data["reward"].shape
        if L != self.T + 1:
            raise ValueError(f"rollouts of {L - 1} steps do not fit a replay of {self.T}-step sequences")
        init = rollout.get("initial_state", [])
        if len(init) != len(self.states):
            raise ValueError(f"rollout core state has {len(init)} parts, the replay {len(self.states)}")
        self.last_columns = B
        for start in range(0, B, self.capacity):  # more columns than capacity: only the last ones stay
            cols = np.arange(start, min(B, start + self.capacity))
            where = (self.next + np.arange(len(cols))) % self.capacity
            for k in self.keys:
                self.data[k][where] = np.swapaxes(data[k][:, cols], 0, 1)
            for store, s in zip(self.states, init, strict=True):
                store[where] = np.asarray(s)[cols]
            self.next = int((self.next + len(cols)) % self.capacity)
            self.size = min(self.capacity, self.size + len(cols))
            self.added += len(cols)

    # ------------------------------------------------------------------------------------------ sampling
    def sample_sequences(self, n: int) -> dict[str, Any]:
        """n sequences drawn uniformly (with replacement): `data` time-major [T+1, n, ...] in the rollout layout,
        `initial_state` [n, ...] per state part, and the drawn sequence indices."""
        if self.size == 0:
            raise ValueError("the replay is empty")
        idx = self.rng.integers(0, self.size, n)
        return {
            "data": {k: np.ascontiguousarray(np.swapaxes(v[idx], 0, 1)) for k, v in self.data.items()},
            "initial_state": [s[idx] for s in self.states],
            "index": idx,
        }

    def reward_windows(self, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
        """Flat indices (sequence * (T+1) + tau) of every valid window end tau, split into (zero, non-zero)
        rewards. Valid: tau in k..T and no episode starts at slots tau-k+1 .. tau-1 (the k frames are of one
        episode; the transition into tau always belongs to the episode of slot tau-1)."""
        if not 1 <= k <= self.T:
            raise ValueError(f"reward windows need 1 <= k <= T={self.T}, got k={k}")
        n, L = self.size, self.T + 1
        first = self.data["terminated"][:n] | self.data["truncated"][:n]  # [n, L]: obs at that slot starts one
        valid = np.zeros((n, L), bool)
        valid[:, k:] = True
        for j in range(1, k):  # an episode start at tau - j (j = 1..k-1) splits the window
            valid[:, k:] &= ~first[:, k - j : L - j]
        nonzero = self.data["reward"][:n] != 0
        flat_valid = valid.reshape(-1)
        flat_nonzero = nonzero.reshape(-1)
        return np.flatnonzero(flat_valid & ~flat_nonzero), np.flatnonzero(flat_valid & flat_nonzero)

    def sample_reward_windows(self, n: int, k: int = 3, skewed: bool = True) -> dict[str, np.ndarray]:
        """n windows: `obs` time-major [k, n, ...] (slots tau-k .. tau-1), `reward` [n] (slot tau), `nonzero_fraction`
        of the buffer's valid windows (to see the skew's effect) and the flat window indices."""
        zero, nonzero = self.reward_windows(k)
        if len(zero) + len(nonzero) == 0:
            raise ValueError(f"the replay holds no window of {k} frames of one episode yet")
        if skewed and len(zero) and len(nonzero):
            pick_nonzero = self.rng.random(n) < 0.5
            ends = np.where(
                pick_nonzero,
                nonzero[self.rng.integers(0, len(nonzero), n)],
                zero[self.rng.integers(0, len(zero), n)],
            )
        else:
            pool = np.concatenate([zero, nonzero])
            ends = pool[self.rng.integers(0, len(pool), n)]
        L = self.T + 1
        seq, tau = ends // L, ends % L
        slots = tau[None, :] - np.arange(k, 0, -1)[:, None]  # [k, n]: tau-k .. tau-1
        return {
            "obs": self.data["obs"][seq[None, :], slots],  # [k, n, ...]
            "reward": self.data["reward"][seq, tau],
            "nonzero_fraction": np.float32(len(nonzero) / (len(zero) + len(nonzero))),
            "index": ends,
        }

    # ------------------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The stored sequences as laid out in the ring, the counters and the sampler's RNG: a run resumed from it
        samples exactly what the uninterrupted run would have."""
        n = self.size
        return {
            "T": self.T,
            "capacity": self.capacity,
            "next": self.next,
            "added": self.added,
            "data": {k: v[:n] for k, v in self.data.items()},
            "states": [s[:n] for s in self.states],
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`. With another capacity than the saved one the newest sequences that fit are kept
        (oldest first), so sampling goes on from the same contents but not in the same order."""
        if int(state["T"]) != self.T:
            raise ValueError(f"the checkpoint's replay holds {state['T']}-step sequences, this run uses {self.T}")
        stored = {k: np.asarray(v) for k, v in state["data"].items()}
        if set(stored) != set(self.data):
            raise ValueError(f"the checkpoint's replay has keys {sorted(stored)}, expected {sorted(self.data)}")
        if len(state["states"]) != len(self.states):
            raise ValueError("the checkpoint's replay stores another core state layout than this run's core")
        for k, v in stored.items():
            if v.shape[1:] != self.data[k].shape[1:]:
                raise ValueError(f"replay {k}: stored shape {v.shape[1:]} vs {self.data[k].shape[1:]} in this run")
        states = [np.asarray(s) for s in state["states"]]
        n, saved_next = len(stored["reward"]), int(state["next"])
        if int(state["capacity"]) == self.capacity:
            order = np.arange(n)
            self.next = saved_next
        else:
            oldest_first = (np.arange(n) + (saved_next if n == int(state["capacity"]) else 0)) % max(n, 1)
            order = oldest_first[max(0, n - self.capacity) :]
            self.next = len(order) % self.capacity
        for k, v in stored.items():
            self.data[k][: len(order)] = v[order]
        for store, s in zip(self.states, states, strict=True):
            store[: len(order)] = s[order]
        self.size, self.added = len(order), int(state["added"])
        self.rng.bit_generator.state = state["rng"]

    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.data.values()) + sum(s.nbytes for s in self.states)
