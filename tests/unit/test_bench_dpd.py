"""`decoupled bench dpd` (runners/bench/dpd.py): the grid worlds are proper MDPs, the teacher is near-optimal, and the
distill agent's loss teaches a tabular student (teacher-driven and on-policy distillation reach the teacher)."""

from __future__ import annotations

import numpy as np
import pytest

from decoupled.runners.bench.dpd import GridMDP, teacher_policy, train_student


def test_the_grid_world_is_a_proper_mdp_and_the_teacher_near_optimal():
    mdp = GridMDP(6, 0.1, copies=2, rng=np.random.default_rng(0))
    assert mdp.A == 8 and np.allclose(mdp.P.sum(-1), 1.0)
    assert (mdp.C.sum(-1) + mdp.R <= 1.0 + 1e-9).all()  # continuing + reaching the goal: at most everything
    teacher = teacher_policy(mdp, temperature=0.05)
    uniform = np.full((mdp.S, mdp.A), 1 / mdp.A)
    assert np.allclose(teacher.sum(1), 1.0)
    assert mdp.evaluate(teacher)[0] > 2 * mdp.evaluate(uniform)[0]


@pytest.mark.parametrize("variant", ["teacher_distill", "on_policy_distill"])
def test_distillation_through_the_agents_loss_reaches_the_teacher(variant):
    mdp = GridMDP(6, 0.1, copies=1, rng=np.random.default_rng(1))
    teacher = teacher_policy(mdp, temperature=0.05)
    first, last = train_student(mdp, teacher, variant, episodes=200, lr=0.5, seed=0, horizon=60)
    assert last["kl_on_student_states"] < first["kl_on_student_states"] or last["kl_on_student_states"] < 0.01
    assert last["agreement"] > 0.9
    assert last["return"] == pytest.approx(mdp.evaluate(teacher)[0], abs=0.05)
