"""Scripted driving for the labyrinth tests: BFS on the layout, then a waypoint controller that uses the env's own
actions. Reaching the goal or an apple this way also checks that the Doom map matches the layout (walls where the
grid has walls, open corridors where it has floor)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from decoupled.envs.labyrinth import ACTION_NAMES, CELL_SIZE, cell_center

A = {name: i for i, name in enumerate(ACTION_NAMES)}


def shortest_path(walls: np.ndarray, start: tuple[int, int], goal: tuple[int, int]) -> list[tuple[int, int]]:
    """Cells from `start` to `goal` (both included) on a 4-connected grid of floor cells."""
    h, w = walls.shape
    parent: dict[tuple[int, int], tuple[int, int] | None] = {start: None}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        if cell == goal:
            break
        r, c = cell
        for nxt in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if 0 <= nxt[0] < h and 0 <= nxt[1] < w and not walls[nxt] and nxt not in parent:
                parent[nxt] = cell
                queue.append(nxt)
    if goal not in parent:
        raise ValueError(f"no path from {start} to {goal}")
    path = [goal]
    while parent[path[-1]] is not None:
        path.append(parent[path[-1]])  # type: ignore[arg-type]
    return path[::-1]


def wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


def turn_towards(env: Any, obs: dict, heading: float, tolerance: float, max_steps: int = 40) -> dict:
    """Look left/right until the yaw is within `tolerance` radians of `heading`; returns the last obs."""
    for _ in range(max_steps):
        err = wrap(heading - float(obs["yaw"][0]))
        if abs(err) <= tolerance:
            return obs
        obs, _, _, _, _ = env.step(A["look_left"] if err > 0 else A["look_right"])
    raise AssertionError(f"could not turn to {heading:.3f} rad")


def drive(
    env: Any,
    obs: dict,
    path: list[tuple[int, int]],
    stop: Callable[[float, dict], bool],
    max_steps: int = 800,
) -> tuple[dict, list[tuple[float, dict]]]:
    """Follow the cell centres of `path` until `stop(reward, info)`; returns the last obs and (reward, info) pairs.

    Turns on the spot when the heading error is above 20 degrees, turns while moving between 7 and 20, and goes
    straight below. Doom's momentum carries the agent into the wall at a corner; it then turns and goes on.
    """
    waypoints = [cell_center(c) for c in path[1:]] or [cell_center(path[0])]
    i = 0
    log: list[tuple[float, dict]] = []
    for _ in range(max_steps):
        pos = obs["position"].astype(np.float64)
        while i < len(waypoints) - 1 and np.hypot(*(waypoints[i] - pos)) < 0.25 * CELL_SIZE:
            i += 1
        target = waypoints[i]
        err = wrap(math.atan2(target[1] - pos[1], target[0] - pos[0]) - float(obs["yaw"][0]))
        if abs(err) > math.radians(20):
            action = A["look_left"] if err > 0 else A["look_right"]
        elif abs(err) > math.radians(7):
            action = A["forward_look_left"] if err > 0 else A["forward_look_right"]
        else:
            action = A["forward"]
        obs, reward, terminated, truncated, info = env.step(action)
        log.append((reward, info))
        if stop(reward, info):
            return obs, log
        assert not (terminated or truncated), "episode ended before the target was reached"
    raise AssertionError(f"did not reach {path[-1]} in {max_steps} steps (at {obs['position']}, waypoint {i})")
