"""Evaluation, suites and reports as a user runs them.

Why: the numbers a paper compares must come from the evaluation form of the protocol whatever the training used
(unclipped score over all lives, the 108,000-frame cap, settings read back from the env), every game needs a
video a person can look at, and a suite of runs must survive one game crashing and continue where it stopped.
Env-level checks of the same semantics (per backend) are in tests/unit/test_env_atari.py: preset read-back
(test_preset_settings_are_read_back), the cap (test_frame_cap_truncates_not_terminates, 200 frames), life loss
and clipping (test_dqn_noop30_life_loss_is_a_training_terminal_only, test_dqn_noop30_training_score_is_unclipped).
Here the same properties are checked through the evaluator, at the real 108,000-frame cap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from decoupled.envs import make_vec_env
from decoupled.runners.evaluation.evaluate import (
    EvalTask,
    Policy,
    atari_game,
    atari_options,
    atari_task,
    check_eval_settings,
    eval_env_seeds,
    evaluate_task,
    evaluate_tasks,
    parse_seeds,
    play_episodes,
    write_scores,
)

ROOT = Path(__file__).resolve().parents[2]
CATCH = ROOT / "configs" / "impala" / "catch.yaml"
CARTPOLE = ROOT / "configs" / "impala" / "cartpole.yaml"
BREAKOUT = ROOT / "configs" / "impala" / "breakout.yaml"
NOOP, FIRE = 0, 1


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}


def _cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "decoupled", *map(str, args)],
        capture_output=True,
        text=True,
        env=_env(),
        **kw,
    )


def _needs_atari() -> None:
    pytest.importorskip("envpool")
    pytest.importorskip("ale_py")
    pytest.importorskip("cv2")


class ConstantPolicy(Policy):
    """Always the same action (NOOP never launches Breakout's ball: the game never ends by itself)."""

    def __init__(self, action: int):
        super().__init__(num_actions=4, seed=0)
        self.action = action

    def act(self, obs: np.ndarray) -> np.ndarray:
        return np.full(len(obs), self.action)


class TrackBall(Policy):
    """Scripted Breakout paddle from the RAM (as in test_env_atari.py) for `steps` steps, then FIRE only, which
    keeps the paddle still and loses every remaining life."""

    def __init__(self, env, steps: int):
        super().__init__(num_actions=4, seed=0)
        self.env, self.steps, self.t = env, steps, 0

    def act(self, obs: np.ndarray) -> np.ndarray:
        self.t += 1
        if self.t > self.steps:
            return np.full(len(obs), FIRE)
        ram = self.env.ram()
        ball_x, ball_y, paddle_x = ram[:, 99].astype(int), ram[:, 101].astype(int), ram[:, 72].astype(int)
        gap = ball_x - (paddle_x + 8)
        return np.where(ball_y == 0, FIRE, np.where(gap > 3, 2, np.where(gap < -3, 3, NOOP)))


class LivesSpy:
    """Records the lives after every step of the env it wraps (what play_episodes needs of a VecEnv)."""

    def __init__(self, env):
        self.env, self.num_envs, self.spec, self.lives, self.rewards = env, env.num_envs, env.spec, [], []

    def reset(self, seed=None):
        return self.env.reset(seed=seed)

    def step(self, action):
        out = self.env.step(action)
        self.lives.append(int(out[4]["lives"][0]))
        self.rewards.append(float(out[1][0]))
        return out


@pytest.mark.atari
def test_eval_episode_is_cut_at_108000_frames() -> None:
    # A policy that never ends the game, under the evaluator's default cap: exactly 108,000 frames, truncated.
    _needs_atari()
    options = atari_options("dqn_noop30", None)
    assert options["max_episode_frames"] == 108_000
    env = make_vec_env("atari", "Breakout", 1, 0, mode="eval", options=options)
    try:
        check_eval_settings(env.settings(), "dqn_noop30", 108_000)
        r = play_episodes(env, ConstantPolicy(NOOP), 1, seed=0)
    finally:
        env.close()
    assert r == {"episode_scores": [0.0], "episode_frames": [108_000], "episode_truncated": [True]}


@pytest.mark.atari
@pytest.mark.parametrize("backend", ["atari", "atari_gym"])
def test_eval_score_is_unclipped_over_all_lives_whatever_the_training_used(backend: str) -> None:
    # The run trained with life-loss terminals and clipped rewards (dqn_noop30, clip_rewards=True); evaluation
    # builds the eval form: the env's read-back settings say so, and the score counts every life, unclipped.
    _needs_atari()
    options = atari_options(None, None, {"protocol": "dqn_noop30", "clip_rewards": True, "frame_stack": 4})
    env = make_vec_env(backend, "Breakout", 1, 0, mode="eval", options=options)
    try:
        settings = env.settings()
        check_eval_settings(settings, "dqn_noop30", 108_000)
        assert settings["reward_clip"] is False and settings["life_loss_terminal"] is False
        spy = LivesSpy(env)
        r = play_episodes(spy, TrackBall(env, 1000), 1, seed=0)
    finally:
        env.close()
    assert r["episode_truncated"] == [False]
    assert r["episode_frames"] == [4 * len(spy.lives)]
    assert r["episode_scores"][0] == sum(spy.rewards)  # eval rewards are the raw ones
    assert r["episode_scores"][0] > sum(x > 0 for x in spy.rewards), "4- and 7-point bricks count in full"
    assert spy.lives[-2] == 1 and max(spy.lives) == 5, "one episode runs from 5 lives to game over"


@pytest.mark.atari
def test_eval_refuses_an_env_not_in_eval_form() -> None:
    _needs_atari()
    from decoupled.envs.atari import ProtocolMismatchError

    env = make_vec_env("atari", "Breakout", 1, 0, mode="train", options={"protocol": "dqn_noop30"})
    settings = env.settings()
    env.close()
    with pytest.raises(ProtocolMismatchError, match="mode: want 'eval'.*reward_clip.*life_loss_terminal"):
        check_eval_settings(settings, "dqn_noop30", 108_000)
    with pytest.raises(ProtocolMismatchError, match="repeat_action_probability: want 0.25"):
        check_eval_settings({**settings, "mode": "eval"}, "machado2018", 108_000)


@pytest.mark.atari
def test_eval_random_on_two_games_writes_scores_and_videos(tmp_path: Path) -> None:
    _needs_atari()
    out = tmp_path / "eval"
    r = _cli(
        "eval", "--policy", "random", "--games", "breakout,Pong", "--protocol", "dqn_noop30", "--episodes", 3,
        "--video-steps", 60, "--out", out, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "scores.json").read_text())
    assert list(doc["games"]) == ["Breakout", "Pong"]
    assert doc["table_id"] == "dqn_zoo_human_at30" and doc["checkpoint"] is None and doc["label"] == "random"
    p = doc["protocol"]
    assert (p["protocol"], p["mode"], p["reward_clip"], p["life_loss_terminal"]) == ("dqn_noop30", "eval", False, False)
    assert p["max_episode_frames"] == 108_000 and p["noop_max"] == 30 and p["repeat_action_probability"] == 0.0
    for game, g in doc["games"].items():
        assert len(g["episode_scores"]) == len(g["episode_frames"]) == 3, game
        assert g["settings"]["game"] == game and g["hns"] is not None
        gif = Path(g["video"]["path"])
        assert gif == out / "videos" / f"{game}.gif" and gif.read_bytes()[:6] == b"GIF89a"
        assert g["video"]["agent_steps"] <= 60
    pong = doc["games"]["Pong"]["episode_scores"]
    assert all(-21 <= s <= -15 for s in pong), pong  # random Pong: the table's random score is -20.7
    rows = (out / "scores.csv").read_text().splitlines()
    assert rows[0] == "game,seed,episode,score,frames,truncated,hns,table_id" and len(rows) == 7


def test_eval_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    r = _cli("eval", "--policy", "random", "--games", "Breakot,Pong", timeout=120)
    assert r.returncode == 2 and "did you mean Breakout" in r.stderr
    r = _cli("eval", "--policy", "random", "--suite", "atari7", timeout=120)
    assert r.returncode == 2 and "unknown suite 'atari7'" in r.stderr
    r = _cli("report", tmp_path / "missing", "--out", tmp_path / "r", timeout=120)
    assert r.returncode == 2 and "no scores file" in r.stderr


def test_eval_task_builds_the_env_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A checkpoint is evaluated on one env build (the net is made from that env's spec).
    import decoupled.runners.evaluation.evaluate as ev

    built = []
    real = ev.make_vec_env

    def counting(*a, **k):
        built.append(a[:2])
        return real(*a, **k)

    monkeypatch.setattr(ev, "make_vec_env", counting)
    task = EvalTask("catch", "catch", "catch", {"rows": 10, "columns": 5})
    r = evaluate_task(task, 4, [1, 2], num_envs=2)
    assert built == [("catch", "catch")]
    assert r["episode_seeds"] == [1] * 4 + [2] * 4 and len(r["episode_scores"]) == 8


CATCH_TASK = {"game": "catch", "backend": "catch", "env_id": "catch", "options": {"rows": 10, "columns": 5}}


def test_eval_seeds_never_share_an_env_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    # Seed s plays env seeds s * num_envs + i: --seeds 0,1 on 4 envs use 0-3 and 4-7 (with seed + i they would share
    # 1-3, and a greedy policy under dqn_noop30 would replay the same episodes).
    import decoupled.runners.evaluation.evaluate as ev

    for n in (1, 3, 8):
        for a in range(6):
            for b in range(a + 1, 6):
                assert not set(eval_env_seeds(a, n)) & set(eval_env_seeds(b, n)), (a, b, n)
    resets: list[int | None] = []
    real = ev.make_vec_env

    def spying(*a, **k):
        env = real(*a, **k)
        reset = env.reset
        env.reset = lambda seed=None: resets.append(seed) or reset(seed=seed)
        return env

    monkeypatch.setattr(ev, "make_vec_env", spying)
    r = evaluate_task(EvalTask(**CATCH_TASK), 4, [0, 1], num_envs=4)
    assert resets == [0, 4]  # env i of a reset with seed b gets b + i (VecEnv.reset)
    assert r["env_seeds"] == {"0": [0, 1, 2, 3], "1": [4, 5, 6, 7]}
    assert r["episode_seeds"] == [0] * 4 + [1] * 4
    with pytest.raises(ValueError, match=">= 0"):
        evaluate_task(EvalTask(**CATCH_TASK), 1, [-1])
    with pytest.raises(ValueError, match="distinct integers >= 0"):
        parse_seeds("0,-8")


@pytest.mark.parametrize("env_id", ["ALE/Breakout-v5", "Breakout-v5", "breakout", "Breakout"])
def test_atari_runs_are_scored_under_the_table_game_name(env_id: str, tmp_path: Path) -> None:
    # The Atari envs accept these ids; evaluation names (and builds) the game as the score table does, so
    # scores.json has its HNS and table id and the report accepts it.
    assert atari_game(env_id) == "Breakout"
    task = atari_task(None, "atari", env_id, atari_options("dqn_noop30", None))
    assert (task.game, task.env_id) == ("Breakout", "Breakout")
    assert atari_game("ALE/space_invaders-v5") == "SpaceInvaders"
    result = {"episode_scores": [1.7], "episode_frames": [800], "episode_truncated": [False], "episode_seeds": [0]}
    doc = json.loads(
        write_scores(tmp_path, {task.game: {**result, "settings": {"backend": "envpool"}}}, {}).read_text()
    )
    assert doc["table_id"] == "dqn_zoo_human_at30" and doc["games"]["Breakout"]["hns"] == 0.0


@pytest.mark.atari
def test_eval_of_an_ale_id_is_scored_as_the_game(tmp_path: Path) -> None:
    # The same through a real (short, capped) evaluation of env id ALE/Breakout-v5. (The config's env.id pattern
    # takes ALE names only; this is the evaluator's own guard for runs and callers that pass other ids.)
    _needs_atari()
    task = atari_task(None, "atari", "ALE/Breakout-v5", atari_options("dqn_noop30", 400))
    r = evaluate_task(task, 1, [0], num_envs=1)
    assert r["settings"]["game"] == "Breakout" and r["episode_frames"][0] <= 400
    doc = json.loads(write_scores(tmp_path, {task.game: r}, {}).read_text())
    assert list(doc["games"]) == ["Breakout"] and doc["table_id"] == "dqn_zoo_human_at30"
    assert doc["games"]["Breakout"]["hns"] is not None


def test_eval_cache_depends_on_num_envs_and_keeps_only_checked_results(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import decoupled.runners.evaluation.evaluate as ev

    task = EvalTask(**CATCH_TASK, checkpoint="ckpt")
    cache = tmp_path / "games" / "catch.json"

    def run(episodes: int = 4, seeds: tuple = (1, 2), num_envs: int | None = 2) -> str:
        evaluate_tasks(
            [task], tmp_path / "eval", episodes, list(seeds), {}, num_envs, video_steps=0, keep_going=True,
            cache_dir=cache.parent,
        )  # fmt: skip
        return capsys.readouterr().out

    assert "evaluated before" not in run()
    assert "catch: evaluated before (ckpt), reused" in run()
    assert "evaluated before" not in run(num_envs=4)  # other envs, other env seeds: other episodes
    assert json.loads(cache.read_text())["key"]["num_envs"] == 4
    assert "evaluated before" in run(num_envs=4)
    # a bad request is refused before anything is played or cached (the suite used to cache 0 episodes)
    before = cache.read_text()
    for bad, match in (({"episodes": 0}, "at least 1"), ({"seeds": (1, 1)}, "distinct"), ({"seeds": ()}, "seed")):
        with pytest.raises(ValueError, match=match):
            run(**bad)
    assert cache.read_text() == before
    # an incomplete cached result is not reused, and an incomplete new one is neither written nor cached
    doc = json.loads(before)
    doc["result"]["episode_scores"] = []
    cache.write_text(json.dumps(doc))
    assert "evaluated before" not in run(num_envs=4)
    cache.unlink()
    real = ev.evaluate_task
    monkeypatch.setattr(ev, "evaluate_task", lambda *a, **k: {**real(*a, **k), "episode_scores": []})
    path, errors = evaluate_tasks(
        [task], tmp_path / "e2", 4, [1], {}, 2, video_steps=0, keep_going=True, cache_dir=cache.parent
    )
    assert path is None and "expected 4 episodes" in errors["catch"] and not cache.exists()


def test_suite_refuses_a_bad_eval_request_before_training(tmp_path: Path) -> None:
    out = tmp_path / "suite"
    r = _cli("suite", CATCH, "--games", "catch", "--out", out, "--eval-episodes", 0, timeout=120)
    assert r.returncode == 2 and "--eval-episodes must be at least 1" in r.stderr
    r = _cli("suite", CATCH, "--games", "catch", "--out", out, "--eval-seeds", "3,3", timeout=120)
    assert r.returncode == 2 and "--eval-seeds needs distinct integers" in r.stderr
    assert not out.exists()


def _suite(out: Path, *games: str, extra: tuple = (), config: Path = CATCH) -> subprocess.CompletedProcess:
    return _cli(
        "suite", config, "runner.total_env_frames=640", "--games", ",".join(games), "--out", out,
        "--eval-episodes", 4, *extra, timeout=300,
    )  # fmt: skip


def test_suite_survives_a_crashing_game_and_skips_finished_ones_on_rerun(tmp_path: Path) -> None:
    # Bogus-v0 passes the config's checks (any gymnasium id) and crashes its training, which cannot build it; a game
    # whose config is invalid stops the suite before it starts (tests/reliability/test_commands.py)
    out = tmp_path / "suite"
    good, bogus = "CartPole-v1", "Bogus-v0"
    r = _suite(out, good, bogus, extra=("--video-steps", 0), config=CARTPOLE)
    assert r.returncode == 1, r.stdout + r.stderr
    status = {g: json.loads((out / "status" / f"{g}.json").read_text()) for g in (good, bogus)}
    assert status[good]["status"] == "finished" and status[good]["env_frames"] == 640
    assert status[bogus]["status"] == "failed" and status[bogus]["returncode"] != 0
    assert bogus in (out / "logs" / f"{bogus}.log").read_text()  # the child's own error is in its log
    cfg = yaml.safe_load((out / "runs" / good / "config.yaml").read_text())
    assert cfg["wandb"]["group"] == "suite"  # one W&B group: the suite dir's name
    scores = json.loads((out / "eval" / "scores.json").read_text())
    assert list(scores["games"]) == [good] and len(scores["games"][good]["episode_scores"]) == 4
    assert scores["table_id"] is None  # CartPole has no human score

    again = _suite(out, good, bogus, extra=("--video-steps", 0), config=CARTPOLE)
    assert again.returncode == 1
    assert f"{good}: finished before, skipped" in again.stdout and f"{good}: evaluated before" in again.stdout
    assert json.loads((out / "status" / f"{good}.json").read_text())["attempts"] == 1
    assert json.loads((out / "status" / f"{bogus}.json").read_text())["attempts"] == 2


@pytest.mark.slow
def test_suite_resumes_an_unfinished_game(tmp_path: Path) -> None:
    out = tmp_path / "suite"
    assert _suite(out, "catch").returncode == 0
    # as if the run had been cut at 640 frames of 1,280: its own config asks for more than its last checkpoint
    cfg_path = out / "runs" / "catch" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["runner"]["total_env_frames"] = 1280
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = _suite(out, "catch")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "catch: training (resume, attempt 2" in r.stdout
    status = json.loads((out / "status" / "catch.json").read_text())
    assert status["status"] == "finished" and status["env_frames"] == 1280
    assert "resumed" in (out / "logs" / "catch.log").read_text()
    scores = json.loads((out / "eval" / "scores.json").read_text())
    assert scores["checkpoint"].endswith("ckpt-000000001280")  # re-evaluated: the checkpoint changed


@pytest.mark.slow
@pytest.mark.atari
def test_atari_suite_end_to_end(tmp_path: Path) -> None:
    # Two tiny Atari runs trained two at a time, then evaluation with videos, the report and its W&B run.
    _needs_atari()
    pytest.importorskip("rliable")
    out = tmp_path / "atari"
    r = _cli(
        "suite", BREAKOUT, "runner.total_env_frames=640", "env.num_envs=2", "runner.torch_threads=1",
        "--games", "Breakout,Pong", "--out", out, "--eval-episodes", 2, "--eval-max-episode-frames", 2000,
        "--video-steps", 40, "--report-reps", 200, "--parallel", 2, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("hns_per_game.png", "aggregate_intervals.png", "performance_profile.png", "score_matrix.csv"):
        assert (out / "report" / name).is_file(), name
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["games"] == ["Breakout", "Pong"] and summary["table_id"] == "dqn_zoo_human_at30"
    assert any("1 run(s)" in w for w in summary["warnings"]) and any("2000" in w for w in summary["warnings"])
    assert {p.name for p in (out / "eval" / "videos").iterdir()} == {"Breakout.gif", "Pong.gif"}
    assert list((out / "report").glob("wandb/offline-run-*/run-*.wandb"))


def test_machado2018_evaluation_runs_on_ale_py_unless_envpool_is_asked_for(tmp_path: Path, capsys) -> None:
    """Envpool starts every game with a no-op frame that machado2018 does not have (a random policy's Breakout score
    1.88 instead of ale-py's 1.29 in `decoupled bench backends`), so the protocol is evaluated on gymnasium +
    ale-py unless --backend atari is given; dqn_noop30 stays on envpool."""
    from decoupled.runners.evaluation.evaluate import eval_backend

    assert eval_backend("atari", "dqn_noop30", explicit=False) == "atari"
    assert eval_backend("atari", "machado2018", explicit=False) == "atari_gym"
    assert eval_backend("atari", "machado2018", explicit=True) == "atari"
    assert eval_backend("atari_gym", "machado2018", explicit=True) == "atari_gym"
    out = capsys.readouterr().out
    assert "runs on atari_gym" in out and "warning: envpool plays one no-op frame" in out
    task = atari_task(None, "atari", "Breakout", atari_options("machado2018", None))
    assert task.backend == "atari_gym"
    _needs_atari()
    r = _cli("eval", "--policy", "random", "--games", "Pong", "--protocol", "machado2018", "--episodes", 1,
             "--max-episode-frames", 400, "--video-steps", 0, "--out", tmp_path / "e", timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    pong = json.loads((tmp_path / "e" / "scores.json").read_text())["games"]["Pong"]
    assert pong["settings"]["backend"] == "gymnasium" and pong["settings"]["noop_max"] == 0
    r = _cli("eval", "--policy", "random", "--games", "Pong", "--protocol", "machado2018", "--episodes", 1,
             "--max-episode-frames", 400, "--video-steps", 0, "--backend", "atari", "--out", tmp_path / "f",
             timeout=300)  # fmt: skip
    assert r.returncode == 0 and "warning: envpool plays one no-op frame" in r.stdout
    assert json.loads((tmp_path / "f" / "scores.json").read_text())["games"]["Pong"]["settings"]["backend"] == "envpool"
