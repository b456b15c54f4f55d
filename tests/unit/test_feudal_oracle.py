"""`decoupled bench feudal-oracle` (FuN's Worker against an oracle Manager): the oracle's goals, the net it builds,
the references it reports, and the benchmark run for real at a tiny budget."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from decoupled.envs.base import EnvSpec
from decoupled.runners.bench.feudal_checks import (
    GRID,
    FeudalOracleConfig,
    OpenGridEnv,
    make_oracle_net,
    oracle_goals,
    reference_cosines,
)


def _net():
    cfg = FeudalOracleConfig(
        torso="mlp", hidden_sizes=(16,), manager_size=2, dilation=10, horizon=10, goal_embedding=4, worker_size=16,
        random_goal_prob=0.0, init="orthogonal",
    )  # fmt: skip
    return make_oracle_net(EnvSpec("grid", (2,), np.dtype(np.float32), 4), cfg)


def _walk(steps: int, batch: int, seed: int = 0):
    """Observations of random walks on the grid, with an episode start in row 0 at step 23."""
    rng = np.random.default_rng(seed)
    envs = [OpenGridEnv() for _ in range(batch)]
    obs = [[e.reset(seed=seed + i)[0] for i, e in enumerate(envs)]]
    for _ in range(steps - 1):
        obs.append([e.step(int(rng.integers(4)))[0] for e in envs])
    first = torch.zeros(steps, batch, dtype=torch.bool)
    first[0] = True
    first[23, 0] = True
    return torch.tensor(np.array(obs)), first


def test_the_oracle_holds_each_goal_for_c_steps_of_an_episode_and_the_state_space_is_the_position():
    net = _net().eval()
    obs, first = _walk(40, 3)
    inputs = {"obs": obs, "first": first, "prev_action": torch.zeros(40, 3, dtype=torch.long),
              "prev_reward": torch.zeros(40, 3)}  # fmt: skip
    with torch.no_grad():
        out, _ = net(inputs, net.initial_state(3))
    assert torch.equal(out["manager_state"], obs)
    g = out["goal"]
    assert torch.allclose(g.norm(dim=-1), torch.ones(40, 3), atol=1e-5)
    changes = (g[1:] - g[:-1]).abs().sum(-1) > 1e-6  # [39, 3]: the goal at step t+1 differs from step t's
    seen = [{int(t) + 1 for t in np.flatnonzero(changes[:, b].numpy())} for b in range(3)]
    # a new goal every 10 steps of an episode: row 0 starts a new episode at step 23
    assert seen == [{10, 20, 23, 33}, {10, 20, 30}, {10, 20, 30}]


def test_the_learner_recomputes_the_goals_the_actor_acted_on():
    """Acting step by step with the carried state and one forward pass over the whole sequence agree exactly."""
    net = _net().eval()
    obs, first = _walk(30, 4, seed=3)
    actions = torch.randint(0, 4, (30, 4), generator=torch.Generator().manual_seed(0))
    prev = torch.cat([torch.zeros(1, 4, dtype=torch.long), actions[:-1]])
    inputs = {"obs": obs, "first": first, "prev_action": prev, "prev_reward": torch.zeros(30, 4)}
    with torch.no_grad():
        whole, _ = net(inputs, net.initial_state(4))
        state, goals, logits = net.initial_state(4), [], []
        for t in range(30):
            out, state = net({k: v[t : t + 1] for k, v in inputs.items()}, state)
            goals.append(out["goal"][0])
            logits.append(out["policy_logits"][0])
    assert torch.equal(torch.stack(goals), whole["goal"])
    assert torch.allclose(torch.stack(logits), whole["policy_logits"], atol=1e-6)


def test_oracle_goals_cover_every_direction_and_the_references_bracket_following():
    angles = torch.atan2(*oracle_goals(torch.rand(20000, 2), torch.randint(0, 60, (20000,))).T.flip(0))
    counts = torch.histc(angles, 8, -np.pi, np.pi)
    assert counts.min() > 0.85 * counts.mean()
    refs = reference_cosines(episodes=500)
    assert abs(refs["random"]) < 0.05
    assert refs["follower"] > 0.15
    assert OpenGridEnv().observation_space.shape == (2,) and GRID == 15


def test_bench_feudal_oracle_trains_a_seed_prints_its_cosines_and_reuses_a_finished_run(tmp_path):
    cmd = [sys.executable, "-m", "decoupled", "bench", "feudal-oracle", "--seeds", "1", "--frames", "1500",
           "--manager-frames", "1500", "--eval-episodes", "4", "--jobs", "1", "--out", str(tmp_path / "o")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    seed_line, manager, summary = lines
    assert manager["what"] == "manager" and 0.0 <= manager["success"] <= 1.0 and manager["steps"] <= 60
    assert summary["success_random_goals_median"] == manager["success_random_goals"]
    assert seed_line["env_frames"] >= 1500 and -1.0 <= seed_line["goal_cosine_final"] <= 1.0
    assert summary["what"] == "summary" and abs(summary["goal_cosine_random_policy"]) < 0.05
    assert (tmp_path / "o" / "feudal_oracle.png").stat().st_size > 0
    assert (tmp_path / "o" / "feudal_oracle_manager.png").stat().st_size > 0
    # the Manager's run loaded that seed's Worker and left it exactly as it was
    from decoupled.runners.bench.feudal_checks import WORKER_PARTS
    from decoupled.runners.evaluation.evaluate import load_checkpoint

    worker = load_checkpoint(tmp_path / "o" / "s0")[1]["net"]
    above = load_checkpoint(tmp_path / "o" / "manager_s0")[1]["net"]
    parts = [k for k in worker if k.split(".")[0] in WORKER_PARTS]
    assert parts and all(torch.equal(worker[k], above[k]) for k in parts)
    assert any(k.startswith("manager.") for k in above) and not any(k.startswith("manager.") for k in worker)
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "training feudal_oracle" not in again.stdout + again.stderr
    assert json.loads(again.stdout.splitlines()[0]) == seed_line


def test_subgoal_steps_pick_the_future_state_most_in_the_goals_direction():
    from decoupled.runners.bench.feudal_checks import subgoal_shares, subgoal_steps

    s = np.array([(0, 0), (1, 0), (2, 0), (2, 1), (2, 2)], float)
    north = np.tile([0.0, 1.0], (5, 1))
    # from (0,0) the most northward change is to (2,2) (cos 0.71); from (2,0) both later states lie due north (the
    # norm's epsilon favours the farther one)
    assert subgoal_steps(s, north).tolist() == [4, 4, 4, 4]
    east = np.tile([1.0, 0.0], (5, 1))
    # east: the farthest eastward state (2,0) from steps 0 and 1; from (2,0) on no change points east (the first)
    assert subgoal_steps(s, east).tolist() == [2, 2, 3, 4]
    # the event at step 2, tolerance 0: steps 0 and 1 can have it ahead, and both take it as their sub-goal
    ep = {"s": s, "g": east, "events": {"key": 2}}
    shares = subgoal_shares([ep], tolerance=0)["key"]
    assert shares["steps"] == 2 and shares["share"] == 1.0
    assert subgoal_shares([{**ep, "g": north}], tolerance=0)["key"]["share"] == 0.0
    assert shares["chance"] == (1 / 4 + 1 / 3) / 2  # uniform over the steps after t: 4 for t=0, 3 for t=1


def test_bench_feudal_subgoals_plays_a_trained_minigrid_run(tmp_path):
    pytest.importorskip("minigrid")
    from decoupled.api import train

    run = tmp_path / "fun"
    train("configs/feudal/minigrid_doorkey.yaml", run_dir=run,
          overrides=["env.id=MiniGrid-DoorKey-5x5-v0", "runner.total_env_frames=3200", "env.num_envs=4",
                     "runner.unroll_length=20", "agent.manager_size=16", "agent.worker_size=16",
                     "agent.hidden_sizes=[16]", "wandb.mode=disabled"])  # fmt: skip
    cmd = [sys.executable, "-m", "decoupled", "bench", "feudal-subgoals", str(run), "--episodes", "2",
           "--out", str(tmp_path / "sub.png")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = json.loads(proc.stdout.splitlines()[0])
    assert line["episodes"] == 2 and 0.0 <= line["solved"] <= 1.0
    assert (tmp_path / "sub.png").stat().st_size > 0
    bad = subprocess.run([sys.executable, "-m", "decoupled", "bench", "feudal-subgoals", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode != 0 and "nope" in bad.stderr
