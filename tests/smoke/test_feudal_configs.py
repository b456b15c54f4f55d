"""The shipped FeUdal Networks configs as a user runs them: `decoupled train configs/feudal/<task>.yaml` trains,
checkpoints, resumes and evaluates with and without goal ablation, on a MiniGrid task, a 3D labyrinth and an Atari
game (small budgets and sizes through overrides; the configs' own settings otherwise)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

try:
    from tests.smoke.cli_helpers import cli as _cli
    from tests.smoke.cli_helpers import last_frames as _frames
except ImportError:  # tests/smoke is on sys.path when pytest runs it as a rootless directory
    from cli_helpers import cli as _cli
    from cli_helpers import last_frames as _frames
SMALL = ["agent.manager_size=32", "agent.worker_size=32", "agent.hidden_sizes=[32]", "runner.unroll_length=10",
         "runner.log_every_env_frames=1", "wandb.mode=disabled", "runner.torch_threads=1"]  # fmt: skip
CASES = {
    # config: (package to import, per-update env frames, overrides, eval flags)
    "minigrid_doorkey": ("minigrid", 40, ["env.num_envs=4", "env.id=MiniGrid-DoorKey-5x5-v0"], []),
    "nav_maze_small_sparse": ("vizdoom", 80, ["env.num_envs=2", "env.episode_frames=400"], []),
    "frostbite": ("envpool", 80, ["env.num_envs=2", "runner.mode=serial"], ["--max-episode-frames", "2000"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("task", list(CASES))
def test_a_feudal_config_trains_checkpoints_resumes_and_evaluates_with_goal_ablation(task: str, tmp_path: Path):
    package, per_update, overrides, eval_flags = CASES[task]
    pytest.importorskip(package)
    run = tmp_path / "run"
    first, total = 2 * per_update, 4 * per_update
    r = _cli("train", f"configs/feudal/{task}.yaml", *SMALL, *overrides, f"runner.total_env_frames={first}",
             f"runner.checkpoint_every_env_frames={per_update}", "--run-dir", str(run))  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert _frames(run) == first and any((run / "checkpoints").iterdir())
    r = _cli("train", "--resume", str(run), f"runner.total_env_frames={total}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert _frames(run) == total
    for ablation in ([], ["--ablate-goals", "random"], ["--ablate-goals", "zero"]):
        r = _cli("eval", str(run), "--episodes", "1", "--no-video", *eval_flags, *ablation)
        assert r.returncode == 0, r.stderr[-3000:]
    for sub in ("eval", "eval_ablate_goals_random", "eval_ablate_goals_zero"):
        scores = json.loads((run / sub / "scores.json").read_text())
        assert len(next(iter(scores["games"].values()))["episode_scores"]) == 1, sub
