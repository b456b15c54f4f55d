"""Unit tests for envs.labyrinth (DMLab-style mazes on ViZDoom for the Nav agent, arXiv:1611.03673).

Why: the Nav agent's auxiliary losses are only as good as the env's labels, so besides the gymnasium contract these
tests tie the labels to the rendered world: depth shrinks as the agent walks at a wall, position moves along the
yaw, the agent-frame velocity integrates back to the position, the goal and apples pay out when a scripted driver
reaches them through the real maze, and the loop-closure and depth targets match hand-computed values. Fixed mazes
must be the same whatever the env seed (and on every machine), and nothing may land in the working directory.
"""

from __future__ import annotations

import gc
import hashlib
import math
import os
import warnings

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")

import decoupled.envs.labyrinth as lab  # noqa: E402  (pure-numpy parts work without the engine)

try:
    from tests.unit.labyrinth_helpers import A, drive, shortest_path, turn_towards, wrap
except ImportError:  # tests/unit is on sys.path when pytest runs it as a rootless directory
    from labyrinth_helpers import A, drive, shortest_path, turn_towards, wrap

CELL = lab.CELL_SIZE
TURN_PER_STEP = math.radians(3.5 * 4)  # default turn_degrees_per_frame x frame_skip


def _engine() -> None:
    pytest.importorskip("vizdoom")
    pytest.importorskip("labmaze")
    pytest.importorskip("omg")


@pytest.fixture
def static_env():
    _engine()
    env = lab.LabyrinthEnv("nav_maze_static_01")
    yield env
    env.close()


# ----------------------------------------------------------------------------------------------- gymnasium API


REGISTERED = sorted(k for k in gym.registry if k.startswith("decoupled/") and k[len("decoupled/") : -3] in lab.TASKS)


def test_every_task_is_registered() -> None:
    assert REGISTERED == sorted(f"decoupled/{task}-v0" for task in lab.TASKS)
    assert {t.family for t in lab.TASKS.values()} == {"static", "random_goal", "random_maze"}


@pytest.mark.parametrize("env_id", REGISTERED)
def test_check_env_on_every_registered_task(env_id: str) -> None:
    _engine()
    from gymnasium.utils.env_checker import check_env

    task = env_id[len("decoupled/") : -3]
    kwargs = {"maze_pool_size": 2} if lab.TASKS[task].family == "random_maze" else {}
    env = gym.make(env_id, **kwargs)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(env.unwrapped)
        assert not [str(w.message) for w in caught], "check_env warned"
        assert env.unwrapped.episode_steps == lab.TASKS[task].episode_frames // 4
    finally:
        env.close()


def test_bad_arguments_are_refused() -> None:
    _engine()
    with pytest.raises(ValueError, match="unknown labyrinth task"):
        lab.LabyrinthEnv("nav_maze_static_04")
    with pytest.raises(ValueError, match="only applies to random_maze"):
        lab.LabyrinthEnv("nav_maze_static_01", maze_pool_size=2)
    with pytest.raises(ValueError, match="odd"):
        lab.LabyrinthEnv("random_maze", maze_size=(10, 9))


def _stream(env, seed: int, actions: np.ndarray) -> list:
    obs, info = env.reset(seed=seed)
    out = [(obs, 0.0, info["cell"])]
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(int(a))
        out.append((obs, reward, info["cell"]))
        if terminated or truncated:
            obs, info = env.reset()
    return out


def _same(a: list, b: list) -> bool:
    for (oa, ra, ca), (ob, rb, cb) in zip(a, b, strict=True):
        if ra != rb or ca != cb or any(not np.array_equal(oa[k], ob[k]) for k in oa):
            return False
    return True


@pytest.mark.parametrize(
    ("task", "kwargs"),
    [("nav_maze_random_goal_01", {"episode_frames": 240}), ("random_maze", {"maze_pool_size": 2})],
)
def test_same_seed_same_stream(task: str, kwargs: dict) -> None:
    _engine()
    env = lab.LabyrinthEnv(task, **kwargs)
    try:
        actions = np.random.default_rng(0).integers(0, 8, size=150)
        first = _stream(env, 5, actions)
        second = _stream(env, 5, actions)
        other = _stream(env, 6, actions)
    finally:
        env.close()
    assert _same(first, second), "reset(seed=s) twice must replay the same observations and rewards"
    assert not _same(first, other), "another seed must give another stream"


# ----------------------------------------------------------------------------------------------- rewards


def test_goal_pays_ten_then_respawns_far_away(static_env) -> None:
    env = static_env
    obs, info = env.reset(seed=0)
    goal = info["goal_cell"]
    path = shortest_path(env.top_down_map().walls, info["cell"], goal)
    obs, log = drive(env, obs, path, stop=lambda r, i: i["goal_found"])
    reward, info = log[-1]
    assert reward >= lab.GOAL_REWARD and reward == lab.GOAL_REWARD + info["apples"]
    assert sum(r for r, _ in log) == lab.GOAL_REWARD + info["episode_apples"]
    assert info["respawned"] and info["episode_goals"] == 1 and info["goal_cell"] == goal
    assert not any(i["respawned"] for _, i in log[:-1])
    m = env.top_down_map()
    assert info["cell"] in {tuple(c) for c in m.spawn_cells.tolist()}
    steps = lab.generate_maze("01", lab.task_seed("nav_maze_static_01")).bfs_steps(goal)
    assert steps[info["cell"]] > lab.MIN_SPAWN_GOAL_STEPS, "respawn must be more than 8 grid steps from the goal"
    assert np.hypot(*(obs["position"] - info["goal"])) > 2 * CELL
    assert np.all(obs["velocity"] == 0), "no velocity across a teleport"
    assert m.apples_present.all(), "apples come back on respawn"
    # The episode goes on from the new start.
    obs2, reward2, terminated, truncated, info2 = env.step(A["look_left"])
    assert not info2["respawned"] and not terminated and not truncated and reward2 == 0.0
    assert np.allclose(obs2["position"], obs["position"])


def test_apple_pays_one(static_env) -> None:
    env = static_env
    obs, info = env.reset(seed=1)
    m = env.top_down_map()
    apples = {tuple(c) for c in m.apple_cells.tolist()}
    # An apple whose shortest path crosses neither the goal nor another apple, so the first payout is that apple.
    for apple in sorted(apples):
        path = shortest_path(m.walls, info["cell"], apple)
        if m.goal_cell not in path and not (set(path[:-1]) & apples):
            break
    else:
        pytest.fail("no clean path to an apple for this seed")
    obs, log = drive(env, obs, path, stop=lambda r, i: r != 0)
    reward, info = log[-1]
    assert reward == lab.APPLE_REWARD and info["apples"] == 1 and info["episode_apples"] == 1
    assert not info["goal_found"] and not info["respawned"]
    after = env.top_down_map()
    taken = [tuple(c) for c, present in zip(after.apple_cells.tolist(), after.apples_present) if not present]
    assert taken == [apple]


def test_episode_ends_after_episode_frames() -> None:
    _engine()
    env = lab.LabyrinthEnv("nav_maze_random_goal_01", episode_frames=40, frame_skip=4)
    try:
        env.reset(seed=0)
        flags = []
        for _ in range(10):
            _, _, terminated, truncated, info = env.step(A["look_left"])
            flags.append((terminated, truncated))
        assert flags == [(False, False)] * 9 + [(False, True)]
        assert info["episode_frame"] == 40 and env.episode_steps == 10
        with pytest.raises(RuntimeError, match="before reset"):
            env.step(0)
        _, info = env.reset()
        assert info["episode_frame"] == 0 and info["episode_goals"] == 0
    finally:
        env.close()


# ----------------------------------------------------------------------------------------------- pose and depth


def _free_run(walls: np.ndarray, cell: tuple[int, int], dr: int, dc: int) -> int:
    n = 0
    r, c = cell
    while not walls[r + dr * (n + 1), c + dc * (n + 1)]:
        n += 1
    return n


def test_turning_changes_yaw_by_a_fixed_amount(static_env) -> None:
    env = static_env
    obs, _ = env.reset(seed=2)
    start = obs["position"].copy()
    for action, sign in ((A["look_left"], 1), (A["look_left"], 1), (A["look_right"], -1)):
        before = float(obs["yaw"][0])
        obs, _, _, _, _ = env.step(action)
        turned = wrap(float(obs["yaw"][0]) - before)
        assert turned == pytest.approx(sign * TURN_PER_STEP, abs=math.radians(0.1))
        assert obs["velocity"][2] == pytest.approx(turned, abs=1e-5)
        assert np.array_equal(obs["position"], start), "turning on the spot from rest does not move"
        assert np.all(obs["velocity"][:2] == 0)


def test_walking_at_a_wall_shrinks_centre_depth_along_the_yaw(static_env) -> None:
    env = static_env
    h, w = env.obs_size
    for seed in range(40):
        obs, info = env.reset(seed=seed)
        walls = env.top_down_map().walls
        # An axis direction with a wall 2-3 cells ahead: close enough to be below depth saturation (432 units).
        options = [
            (dr, dc)
            for dr, dc in ((0, 1), (-1, 0), (0, -1), (1, 0))
            if 2 <= _free_run(walls, info["cell"], dr, dc) <= 3
        ]
        if options:
            break
    else:
        pytest.fail("no start faces a wall 2-3 cells away")
    dr, dc = options[0]
    obs = turn_towards(env, obs, math.atan2(-dr, dc), tolerance=math.radians(7.5))
    run = _free_run(walls, info["cell"], dr, dc)

    def centre_depth(o: dict) -> float:
        return float(o["depth"][h // 2 - 1 : h // 2 + 1, w // 2 - 1 : w // 2 + 1].mean())

    depth0 = centre_depth(obs)
    assert depth0 == pytest.approx((run + 0.5) * CELL, abs=20), "centre depth is the distance to the wall ahead"
    for _ in range(3):
        before, yaw = obs, float(obs["yaw"][0])
        obs, _, _, _, info = env.step(A["forward"])
        step = (obs["position"] - before["position"]).astype(np.float64)
        assert np.hypot(*step) > 1.0
        assert wrap(math.atan2(step[1], step[0]) - yaw) == pytest.approx(0.0, abs=math.radians(1.0))
        forward, lateral, dyaw = obs["velocity"]
        assert forward == pytest.approx(np.hypot(*step), rel=1e-4) and abs(lateral) < 1e-3 * forward and dyaw == 0
        drop = centre_depth(before) - centre_depth(obs)
        assert drop == pytest.approx(forward / math.cos(wrap(yaw - math.atan2(-dr, dc))), abs=12.0)
    assert centre_depth(obs) < depth0 - 30


def test_velocity_integrates_to_position(static_env) -> None:
    env = static_env
    obs, _ = env.reset(seed=4)
    rng = np.random.default_rng(4)
    start, total = obs["position"].astype(np.float64), np.zeros(2)
    for _ in range(120):
        obs, _, _, _, info = env.step(int(rng.integers(8)))
        if info["respawned"]:
            pytest.skip("the random walk found the goal")
        yaw = float(obs["yaw"][0])
        rot = np.array([[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]])
        total += rot @ obs["velocity"][:2].astype(np.float64)
    assert np.allclose(start + total, obs["position"], atol=0.05)
    assert np.hypot(*total) > CELL / 2, "the walk must have gone somewhere for this to mean anything"


def test_position_cell_and_render_agree(static_env) -> None:
    env = static_env
    env.render_mode = "rgb_array"
    obs, info = env.reset(seed=3)
    m = env.top_down_map()
    assert info["cell"] == lab.world_to_cell(obs["position"]) and not m.walls[info["cell"]]
    assert np.array_equal(m.goal_position, lab.cell_center(m.goal_cell)) and np.allclose(info["goal"], m.goal_position)
    assert not m.walls[tuple(m.apple_cells.T)].any() and not m.walls[tuple(m.spawn_cells.T)].any()
    assert m.goal_cell not in {tuple(c) for c in m.apple_cells.tolist()}
    frame = env.render()
    assert frame.shape == (*env.screen_shape, 3) and frame.dtype == np.uint8
    rows = np.arange(84) * frame.shape[0] // 84
    cols = np.arange(84) * frame.shape[1] // 84
    assert np.array_equal(frame[rows][:, cols], obs["rgb"])
    assert 0 <= obs["depth"].min() and obs["depth"].max() <= env.max_depth


# ----------------------------------------------------------------------------------------------- mazes


def _fingerprint(walls: np.ndarray) -> str:
    return hashlib.sha1(np.packbits(walls).tobytes() + str(walls.shape).encode()).hexdigest()[:16]


def test_static_maze_is_fixed_by_the_task_id() -> None:
    _engine()
    a, b = lab.LabyrinthEnv("nav_maze_static_01"), lab.LabyrinthEnv("nav_maze_static_01")
    try:
        _, info_a = a.reset(seed=1)
        _, info_b = b.reset(seed=2)
        ma, mb = a.top_down_map(), b.top_down_map()
        assert np.array_equal(ma.walls, mb.walls) and ma.goal_cell == mb.goal_cell
        assert np.array_equal(ma.apple_cells, mb.apple_cells)
        starts = {info_a["cell"], info_b["cell"]}
        for _ in range(5):  # starts come from the env seed: they move across episodes
            starts.add(a.reset()[1]["cell"])
        assert len(starts) > 1
        _, info = a.reset()
        assert a.top_down_map().goal_cell == ma.goal_cell
    finally:
        a.close()
        b.close()
    # Same on every machine: the seed is a stable hash of the task id, and labmaze is deterministic.
    assert lab.task_seed("nav_maze_static_01") == 2088008801
    assert _fingerprint(ma.walls) == _fingerprint(lab.generate_maze("01", lab.task_seed("nav_maze_static_01")).walls)
    assert _fingerprint(ma.walls) == STATIC_01_FINGERPRINT


STATIC_01_FINGERPRINT = "5baefa34202b71c0"  # walls of nav_maze_static_01 with labmaze 1.0.6


def test_static_task_at_a_smaller_maze_size() -> None:
    """`maze_size` on a static task: one smaller fixed maze per (task id, size), goal fixed, starts far from it, and
    the goal pays +10 when a scripted driver walks there (configs/unreal/nav_maze_small_sparse.yaml's task)."""
    _engine()
    kwargs = dict(maze_size=(7, 9), apple_density=0.0, episode_frames=1800)
    a, b = lab.LabyrinthEnv("nav_maze_static_01", **kwargs), lab.LabyrinthEnv("nav_maze_static_01", **kwargs)
    try:
        assert a.maze_shape == (7, 9) and a.episode_steps == 450
        _, info_a = a.reset(seed=1)
        _, info_b = b.reset(seed=2)
        ma, mb = a.top_down_map(), b.top_down_map()
        assert ma.walls.shape == (7, 9) and np.array_equal(ma.walls, mb.walls) and ma.goal_cell == mb.goal_cell
        assert len(ma.apple_cells) == 0
        expected = lab.generate_maze((7, 9), lab.task_seed("nav_maze_static_01"))
        assert np.array_equal(ma.walls, expected.walls)
        steps = expected.bfs_steps(ma.goal_cell)
        assert all(steps[tuple(c)] > lab.MIN_SPAWN_GOAL_STEPS for c in ma.spawn_cells.tolist())
        obs, info = a.reset(seed=3)
        obs, log = drive(a, obs, shortest_path(ma.walls, info["cell"], ma.goal_cell), stop=lambda r, i: i["goal_found"])
        assert [r for r, _ in log].count(lab.GOAL_REWARD) == 1 and sum(r for r, _ in log) == lab.GOAL_REWARD
        assert log[-1][1]["respawned"]
    finally:
        a.close()
        b.close()


def test_random_goal_moves_the_goal_but_not_the_maze() -> None:
    _engine()
    env = lab.LabyrinthEnv("nav_maze_random_goal_01")
    try:
        env.reset(seed=0)
        first = env.top_down_map()
        goals = {first.goal_cell}
        for _ in range(4):
            env.reset()
            m = env.top_down_map()
            assert np.array_equal(m.walls, first.walls)
            goals.add(m.goal_cell)
        assert len(goals) > 1
    finally:
        env.close()


def test_random_maze_changes_every_episode_and_refills_its_pool() -> None:
    _engine()
    env = lab.LabyrinthEnv("random_maze", maze_pool_size=2, maze_size=(9, 13))
    try:
        seeds, mazes = [], []
        for i in range(5):
            obs, info = env.reset(seed=0) if i == 0 else env.reset()
            mazes.append(env.top_down_map().walls)
            seeds.append(info["maze_seed"])
            obs, _, _, _, _ = env.step(A["forward"])  # the engine works after a pool refill (episodes 3 and 5)
            assert not env.top_down_map().walls[lab.world_to_cell(obs["position"])]
        assert all(m.shape == (9, 13) for m in mazes)
        assert all(not np.array_equal(x, y) for x, y in zip(mazes, mazes[1:])), "consecutive episodes share a maze"
        assert len(set(seeds)) == 5
    finally:
        env.close()


@pytest.mark.parametrize("size", ["01", "02", "03"])
def test_generate_maze(size: str) -> None:
    pytest.importorskip("labmaze")
    a, b, c = lab.generate_maze(size, 7), lab.generate_maze(size, 7), lab.generate_maze(size, 8)
    assert a.walls.shape == lab.MAZE_SHAPES[size]
    assert np.array_equal(a.walls, b.walls) and not np.array_equal(a.walls, c.walls)
    assert not a.walls[a.lattice[:, 0], a.lattice[:, 1]].any()
    assert a.walls[0].all() and a.walls[-1].all() and a.walls[:, 0].all() and a.walls[:, -1].all()
    steps = a.bfs_steps(tuple(a.lattice[0]))
    assert (steps[~a.walls] >= 0).all(), "every floor cell is reachable"
    assert (a.regions[~a.walls] >= 0).all() and (a.regions[a.walls] == -1).all()


def test_placement_follows_dmlab() -> None:
    pytest.importorskip("labmaze")
    maze = lab.generate_maze("02", 3)
    p = lab.place_objects(maze, np.random.default_rng(0))
    lattice = {tuple(c) for c in maze.lattice.tolist()}
    assert p.goal in lattice and {tuple(c) for c in p.apples.tolist()} <= lattice - {p.goal}
    assert len(p.apples) == int(math.floor(0.1 * (len(lattice) - 1) + 0.5))
    steps = maze.bfs_steps(p.goal)
    assert all(steps[tuple(s)] > lab.MIN_SPAWN_GOAL_STEPS for s in p.spawns.tolist())
    assert not ({tuple(s) for s in p.spawns.tolist()} & {tuple(c) for c in p.apples.tolist()})


# ----------------------------------------------------------------------------------------------- hygiene


def test_nothing_is_written_to_the_working_directory(tmp_path, monkeypatch) -> None:
    _engine()
    monkeypatch.chdir(tmp_path)
    env = lab.LabyrinthEnv("random_maze", maze_pool_size=1)
    env.reset(seed=0)
    for a in range(8):
        env.step(a)
    env.reset()  # pool of 1: this restarts the engine
    env.step(0)
    tmp = env._tmp
    env.close()
    assert os.listdir(tmp_path) == [] and os.getcwd() == str(tmp_path)
    assert not os.path.exists(tmp), "the env's temp dir is removed on close"


def _gone(psutil, pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_engine_pid_is_found_next_to_a_zombie_child() -> None:
    """A finished, not yet reaped child of this process (psutil raises on its cmdline) must not hide the engine."""
    import subprocess
    import sys
    import time

    _engine()
    psutil = pytest.importorskip("psutil")
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 10
    while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE and time.time() < deadline:
        time.sleep(0.05)
    env = lab.LabyrinthEnv("nav_maze_static_01")
    try:
        assert psutil.Process(zombie.pid).status() == psutil.STATUS_ZOMBIE
        assert env.engine_pid is not None and "vizdoom" in psutil.Process(env.engine_pid).name()
    finally:
        env.close()
        zombie.wait()


def test_engine_and_temp_dir_are_released_with_or_without_close() -> None:
    _engine()
    psutil = pytest.importorskip("psutil")
    for explicit_close in (True, False):
        env = lab.LabyrinthEnv("nav_maze_static_01")
        env.reset(seed=0)
        pid, work_dir = env.engine_pid, env.work_dir
        assert pid is not None and "vizdoom" in psutil.Process(pid).name() and os.path.isdir(work_dir)
        if explicit_close:
            env.close()
            assert env.engine_pid is None
        del env
        gc.collect()
        assert not os.path.exists(work_dir) and _gone(psutil, pid)


def test_close_survives_an_engine_error(static_env) -> None:
    env = static_env
    env.reset(seed=0)
    game = env._engine.game

    def boom() -> None:
        game.__class__.close(game)
        raise RuntimeError("engine crashed on close")

    env._engine.game = type("Crashing", (), {"close": staticmethod(boom)})()
    with pytest.warns(RuntimeWarning, match="engine crashed on close"):
        env.close()
    env.close()  # twice is fine
    with pytest.raises(RuntimeError, match="after close"):
        env.reset()


# ----------------------------------------------------------------------------------------------- loop closure


def test_loop_closure_straight_line_is_never_a_loop() -> None:
    positions = np.stack([np.arange(50) * 30.0, np.zeros(50)], axis=1)
    assert not lab.loop_closure_labels(positions).any()


def test_loop_closure_out_and_back() -> None:
    out = np.arange(0, 501, 20.0)
    xs = np.concatenate([out, out[::-1][1:]])
    positions = np.stack([xs, np.zeros_like(xs)], axis=1)
    labels = lab.loop_closure_labels(positions, eta1=96.0, eta2=192.0)
    # Coming back to x, the farthest point since the first visit is 500: a loop iff 500 - x > eta2.
    expected = np.concatenate([np.zeros(len(out)), (out[::-1][1:] < 500 - 192).astype(float)])
    assert np.array_equal(labels, expected)
    # A respawn at the turnaround forgets the way out.
    resets = np.zeros(len(xs), bool)
    resets[len(out)] = True
    assert not lab.loop_closure_labels(positions, 96.0, 192.0, resets=resets).any()


def test_loop_closure_needs_the_far_point_between() -> None:
    far, home = [500.0, 0.0], [0.0, 0.0]
    assert lab.loop_closure_labels(np.array([home, far, home]), 96.0, 192.0).tolist() == [0, 0, 1]
    # The far point before the earlier visit does not count: t' < t'' < t.
    assert lab.loop_closure_labels(np.array([far, home, home]), 96.0, 192.0).tolist() == [0, 0, 0]
    # Within eta1 is inclusive, farther than eta2 is strict.
    assert lab.loop_closure_labels(np.array([[96.0, 0], [192.0, 0], [0, 0]]), 96.0, 192.0).tolist() == [0, 0, 0]
    assert lab.loop_closure_labels(np.array([[96.0, 0], [193.0, 0], [0, 0]]), 96.0, 192.0).tolist() == [0, 0, 1]


def test_loop_closure_tracker_matches_the_pure_function() -> None:
    rng = np.random.default_rng(0)
    positions = np.cumsum(rng.normal(0, 40, size=(600, 2)), axis=0)
    resets = rng.random(600) < 0.01
    resets[0] = True
    tracker = lab.LoopClosureTracker(capacity=16)  # small capacity: exercises the buffer growth
    online = [tracker.update(p, respawned=bool(r)) for p, r in zip(positions, resets)]
    offline = lab.loop_closure_labels(positions, resets=resets)
    assert np.array_equal(np.array(online, np.float32), offline) and offline.sum() > 20


# ----------------------------------------------------------------------------------------------- depth targets


def test_depth_crop_is_the_papers_4x16() -> None:
    rows, cols = lab.nav_depth_crop_indices(84, 84)
    assert rows.tolist() == [16, 29, 42, 55] and cols.tolist() == list(range(2, 78, 5))
    depth = np.full((84, 84), 1.0)  # class 0 everywhere ...
    depth[np.ix_(rows, cols)] = 1000.0  # ... except at the sampled pixels
    assert (lab.nav_depth_targets(depth) == 7).all()
    depth = np.full((84, 84), 1000.0)
    depth[np.ix_(rows, cols)] = 1.0
    assert (lab.nav_depth_targets(depth) == 0).all()


def test_depth_classes_by_hand() -> None:
    # near = 4: z = 1 - 4 / distance, d = z^10; edges 0.05 0.175 0.3 0.425 0.55 0.675 0.8.
    # 10 -> d 0.006, 20 -> 0.107, 30 -> 0.239, 40 -> 0.349, 60 -> 0.502, 80 -> 0.599, 150 -> 0.763, 400 -> 0.904.
    distances = [10.0, 20.0, 30.0, 40.0, 60.0, 80.0, 150.0, 400.0]
    cols = lab.nav_depth_crop_indices(84, 84)[1]
    depth = np.full((2, 3, 84, 84), 2.0)  # batch dims pass through; below the near plane -> class 0
    for j, col in enumerate(cols):
        depth[..., :, col] = distances[j // 2]
    targets = lab.nav_depth_targets(depth, near=4.0)
    assert targets.shape == (2, 3, 4, 16) and targets.dtype == np.int64
    assert (targets == np.repeat(np.arange(8), 2)[None, None, None, :]).all()
    assert (lab.nav_depth_targets(np.full((84, 84), 2.0)) == 0).all()


def test_depth_targets_are_monotone_in_distance() -> None:
    depth = np.tile(np.linspace(1.0, 500.0, 84), (84, 1))
    targets = lab.nav_depth_targets(depth)
    assert (np.diff(targets, axis=1) >= 0).all() and targets.min() == 0 and targets.max() == 7
    rows, cols = lab.nav_depth_crop_indices(120, 160)  # other sizes: same fractions of the frame
    assert rows.tolist() == [22, 41, 60, 78] and len(cols) == 16 and cols[0] == 3 and cols[-1] == 146
