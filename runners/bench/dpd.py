"""`decoupled bench dpd`: Distilling Policy Distillation's tabular experiment (Czarnecki et al. 2019,
arXiv:1902.02186, Sec. 6) through the distill agent's own loss (`decoupled.agents.distill.distill_loss`).

Random grid worlds (N x N cells, 4 moves; with probability `--noise` a uniformly random move replaces the chosen one;
a goal cell pays 1 and ends the episode; every step ends it with probability 0.01, as the paper's absorbing state;
episodes start in the centre and are cut at `--horizon` steps). The teacher is softmax(Q* / `--temperature`) of the
optimal Q (value iteration, discount 0.99). The student is tabular: a table of logits and one of values, whose
per-state outputs stand in for the net's in `distill_loss`, so every variant's per-state loss, pseudo-reward and
V-trace REINFORCE term are the agent's. Each episode of the control policy is one [T+1, 1] batch; plain SGD steps
(learning rate 0.5, the REINFORCE term weighted 0.1 and gradients clipped at norm 10: without them the pure
pseudo-reward variants diverge).

Reported, exactly (dynamic programming, no sampling): the student's expected return from the start, KL(pi_T || pi_S)
averaged over the states the student visits (its discounted occupancy), and agreement with the teacher's argmax on
those states, after a quarter and after all of the episodes, per variant (mean over MDPs).

`--actions K` duplicates each move K times (|A| = 4K; the teacher's probability split evenly between copies): the
paper's scaling experiment, where expected entropy regularised distillation stays stable as |A| grows and entropy
regularised distillation (its pure-REINFORCE twin) degrades.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch

MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))


class GridMDP:
    """A random grid world with a goal; `P[s, a, s']`, `R[s, a]` (expected), `terminal_prob[s, a]`."""

    def __init__(self, size: int, noise: float, copies: int, rng: np.random.Generator, stop_prob: float = 0.01):
        self.size, self.copies, self.stop_prob = size, copies, stop_prob
        S, A = size * size, 4 * copies
        self.S, self.A = S, A
        self.start = (size // 2) * size + size // 2
        goal = self.start
        while goal == self.start:
            goal = int(rng.integers(S))
        self.goal = goal
        P = np.zeros((S, 4, S))
        for s in range(S):
            r, c = divmod(s, size)
            for a in range(4):
                for b, (dr, dc) in enumerate(MOVES):
                    p = (1 - noise) * (a == b) + noise / 4
                    nr, nc = min(max(r + dr, 0), size - 1), min(max(c + dc, 0), size - 1)
                    P[s, a, nr * size + nc] += p
        self.P = np.repeat(P, copies, axis=1)  # duplicated moves
        self.R = self.P[:, :, goal].copy()  # reaching the goal pays 1 and ends the episode
        self.C = self.P * (1 - stop_prob)  # continuing: to any cell but the goal, unless the episode stops
        self.C[:, :, goal] = 0.0
        self.R[goal], self.C[goal] = 0.0, 0.0

    def evaluate(self, pi: np.ndarray, gamma: float = 0.99) -> tuple[float, np.ndarray]:
        """(expected discounted return from the start, the discounted state occupancy) of policy pi [S, A]."""
        P_pi = np.einsum("sa,sat->st", pi, self.C)
        r_pi = (pi * self.R).sum(1)
        V = np.linalg.solve(np.eye(self.S) - gamma * P_pi, r_pi)
        occ = np.linalg.solve(np.eye(self.S) - gamma * P_pi.T, np.eye(self.S)[self.start])
        return float(V[self.start]), occ / occ.sum()

    def episode(
        self, pi: np.ndarray, rng: np.random.Generator, horizon: int
    ) -> tuple[list[int], list[int], list[float]]:
        """States s_0..s_T, actions, rewards of one episode under pi (the last state is where it ended)."""
        s, states, actions, rewards = self.start, [self.start], [], []
        for _ in range(horizon):
            a = int(rng.choice(self.A, p=pi[s]))
            nxt = int(rng.choice(self.S, p=self.P[s, a]))
            actions.append(a)
            rewards.append(float(nxt == self.goal and s != self.goal))
            states.append(nxt)
            if nxt == self.goal or rng.random() < self.stop_prob:
                return states, actions, rewards
            s = nxt
        return states, actions, rewards


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def train_student(
    mdp: GridMDP,
    teacher: np.ndarray,
    variant: str,
    episodes: int,
    lr: float,
    seed: int,
    horizon: int,
    reinforce_cost: float = 0.1,
    max_grad_norm: float = 10.0,
) -> list[dict[str, float]]:
    """SGD on a tabular student with distill_loss, one episode per update (the REINFORCE term weighted by
    `reinforce_cost`, gradients clipped at `max_grad_norm`); exact metrics at 1/4 and at the end."""
    from decoupled.agents.distill import DistillConfig, distill_loss

    cfg = DistillConfig(teachers=("tabular",), variant=variant, torso="mlp", discount=0.99, baseline_cost=0.5,
                        entropy_cost=0.0, loss_reduction="sum", teacher_prob_floor=1e-4,
                        reinforce_cost=reinforce_cost)  # fmt: skip
    control = cfg.pieces[0]
    rng = np.random.default_rng(seed)
    logits = torch.zeros(mdp.S, mdp.A, requires_grad=True)
    values = torch.zeros(mdp.S, requires_grad=True)
    t_logits = torch.as_tensor(np.log(np.clip(teacher, 1e-30, None)), dtype=torch.float32)
    v_teacher = torch.as_tensor(_teacher_values(mdp, teacher), dtype=torch.float32)
    opt = torch.optim.SGD([logits, values], lr=lr)
    marks, out, steps = {episodes // 4, episodes}, [], 0
    for ep in range(1, episodes + 1):
        pi_s = torch.softmax(logits.detach(), -1).numpy().astype(np.float64)
        pi_s /= pi_s.sum(1, keepdims=True)
        states, actions, rewards = mdp.episode(teacher if control == "teacher" else pi_s, rng, horizon)
        steps += len(actions)
        T = len(actions)
        idx = torch.as_tensor(states)
        ended = states[-1] == mdp.goal or T < horizon
        terminated = torch.zeros(T + 1, 1, dtype=torch.bool)
        truncated = torch.zeros(T + 1, 1, dtype=torch.bool)
        (terminated if ended else truncated)[T] = True
        behaviour = torch.zeros(T + 1, 1, mdp.A)
        control_logits = t_logits if control == "teacher" else logits.detach()
        behaviour[1:, 0] = control_logits[idx[:-1]]
        batch = {
            "obs": idx[:, None], "action": torch.as_tensor([0, *actions])[:, None],
            "reward": torch.as_tensor([0.0, *rewards])[:, None], "terminated": terminated, "truncated": truncated,
            "first": torch.zeros(T + 1, 1, dtype=torch.bool), "behaviour_logits": behaviour,
            "truncation_value": torch.zeros(T + 1, 1),
        }  # fmt: skip
        outputs = {
            "student_logits": logits[idx][:, None], "baseline": values[idx][:, None],
            "teacher_logits": t_logits[idx][:, None], "teacher_baseline": v_teacher[idx][:, None],
        }  # fmt: skip
        loss, _ = distill_loss(cfg, batch, outputs)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([logits, values], max_grad_norm)
        opt.step()
        if ep in marks:
            pi = torch.softmax(logits.detach(), -1).double().numpy()
            ret, occ = mdp.evaluate(pi)
            kl = (teacher * (np.log(np.clip(teacher, 1e-30, None)) - np.log(np.clip(pi, 1e-30, None)))).sum(1)
            agree = _agreement(teacher, pi, mdp.copies)
            out.append({"episodes": ep, "env_steps": steps, "return": ret, "kl_on_student_states": float(occ @ kl),
                        "agreement": float(occ @ agree)})  # fmt: skip
    return out


def _agreement(teacher: np.ndarray, student: np.ndarray, copies: int) -> np.ndarray:
    """Per state: does the student's argmax move (copies merged) equal the teacher's?"""
    t = teacher.reshape(len(teacher), 4, copies).sum(-1).argmax(-1)
    s = student.reshape(len(student), 4, copies).sum(-1).argmax(-1)
    return (t == s).astype(float)


def _teacher_values(mdp: GridMDP, teacher: np.ndarray) -> np.ndarray:
    P_pi = np.einsum("sa,sat->st", teacher, mdp.C)
    return np.linalg.solve(np.eye(mdp.S) - 0.99 * P_pi, (teacher * mdp.R).sum(1))


def teacher_policy(mdp: GridMDP, temperature: float) -> np.ndarray:
    """softmax(Q* / temperature) over the 4 moves, split evenly between each move's copies."""
    V = np.zeros(mdp.S)
    C4, R4 = mdp.C[:, :: mdp.copies], mdp.R[:, :: mdp.copies]
    for _ in range(3000):
        Q = R4 + 0.99 * (C4 @ V)
        V = Q.max(1)
    pi4 = _softmax(Q / temperature)
    return np.repeat(pi4 / mdp.copies, mdp.copies, axis=1)


VARIANTS = ("teacher_distill", "on_policy_distill", "n_distill", "entropy_regularised", "expected_entropy_regularised")


def bench_dpd(args: argparse.Namespace) -> list[dict[str, Any]]:
    from decoupled.runners.bench import emit

    torch.set_num_threads(1)
    variants = [v.strip() for v in args.variants.split(",")]
    records = []
    t0 = time.time()
    for copies in [int(k) for k in args.actions.split(",")]:
        for variant in variants:
            per_mdp = []
            for m in range(args.mdps):
                mdp = GridMDP(args.size, args.noise, copies, np.random.default_rng(m))
                teacher = teacher_policy(mdp, args.temperature)
                per_mdp.append(
                    train_student(mdp, teacher, variant, args.episodes, args.lr, m, args.horizon, args.reinforce_cost)
                )
            rec: dict[str, Any] = {"bench": "dpd", "variant": variant, "actions": 4 * copies, "mdps": args.mdps}
            teacher_returns = [
                GridMDP(args.size, args.noise, copies, np.random.default_rng(m)) for m in range(args.mdps)
            ]
            rec["teacher_return"] = round(statistics.fmean(
                mdp.evaluate(teacher_policy(mdp, args.temperature))[0] for mdp in teacher_returns), 4)  # fmt: skip
            for i, when in enumerate(("quarter", "end")):
                for key in ("env_steps", "return", "kl_on_student_states", "agreement"):
                    rec[f"{key}_{when}"] = round(statistics.fmean(run[i][key] for run in per_mdp), 4)
            records.append(emit(rec))
    summary = {"bench": "dpd", "what": "summary", "seconds": round(time.time() - t0, 1), "episodes": args.episodes,
               "lr": args.lr, "reinforce_cost": args.reinforce_cost, "size": args.size, "noise": args.noise,
               "temperature": args.temperature}  # fmt: skip
    records.append(emit(summary))
    return records


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variants", default=",".join(VARIANTS), help="rows of the paper's Table 1 (agents/distill.py)")
    p.add_argument("--actions", default="1", help="copies of each of the 4 moves, comma-separated (1,16,250: 4-1000)")
    p.add_argument("--mdps", type=int, default=10)
    p.add_argument("--episodes", type=int, default=1500)
    p.add_argument("--size", type=int, default=10)
    p.add_argument("--noise", type=float, default=0.1)
    p.add_argument("--temperature", type=float, default=0.05)
    p.add_argument("--horizon", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--reinforce-cost", type=float, default=0.1, help="weight of the REINFORCE term (0.1: its variance)")
