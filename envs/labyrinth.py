"""Labyrinth: DeepMind-Lab-style 3D maze navigation for the Nav agent (Mirowski et al. 2016, arXiv:1611.03673).

DeepMind Lab itself does not install from PyPI (it is a bazel build), so the mazes are rebuilt on ViZDoom
(the README's "3D labyrinths" section): `labmaze`, DeepMind Lab's own maze generator, draws the layout, this
module writes it into a Doom map (WAD) with `omgifol`, and ViZDoom's ZDoom engine renders it headless. Goal and
apples are summoned into the running map, so a goal or apple layout costs no WAD rebuild.

Tasks (gymnasium ids `decoupled/<task>-v0`, registered on `import decoupled.envs.labyrinth`):

| task                       | maze (text-grid cells) | episode_frames | agent steps at skip 4 | what changes         |
|----------------------------|------------------------|----------------|-----------------------|----------------------|
| nav_maze_static_01         | 11 x 21                | 3600           | 900                   | start positions      |
| nav_maze_static_02         | 19 x 31                | 10800          | 2700                  | start positions      |
| nav_maze_static_03         | 27 x 41                | 18000          | 4500                  | start positions      |
| nav_maze_random_goal_0{k}  | as static_0{k}         | as static_0{k} | as static_0{k}        | + goal, apples       |
| random_maze_0{k}           | as static_0{k}         | as static_0{k} | as static_0{k}        | + the maze itself    |
| random_maze                | 11 x 21 (`maze_size`)  | 3600           | 900                   | + the maze itself    |

`maze_size` (an odd rows x cols) replaces any task's maze size: a static or random-goal task then has one smaller
fixed maze, drawn from the same task seed (configs/unreal/nav_maze_small_sparse.yaml: static_03 at 7 x 9, no apples,
1800-frame episodes, a sparse task sized for a CPU).

- Maze sizes are DeepMind Lab's: its nav_maze_*_01/02/03 level scripts use 11x21, 19x31 and 27x41 text mazes (the
  paper's "5x10" and "9x15" count the 2-cell lattice squares). One text cell is `CELL_SIZE` = 96 map units here
  (100 in DMLab); the player is 32 units wide, so corridors have DMLab's proportions.
- Episode lengths are in engine frames (Doom tics), with DMLab's 60-fps frame counts: the paper gives 3600 frames
  for Static/Random Goal 1 and 10800 for 2; 03 uses the 300 s of DMLab's nav_maze_*_03 scripts (18000 frames). Note
  that DMLab's shipped nav_maze_*_02 scripts say 150 s (9000 frames); we follow the paper. Doom runs at 35 tics/s,
  so an episode is longer in game seconds than in DMLab, but has the same number of frames and agent steps.
- Static: the maze, the goal and the apples are fixed per task id (the paper: "goal and fruit locations are fixed
  and only the agent's start location changes"). Random goal: fixed maze, new goal and apples every episode.
  Random maze: a new maze every episode too. Fixed things derive from the task id (`zlib.crc32`), so they are the
  same in every process and on every machine; starts, respawns and per-episode draws come from the env's seed.
- Rewards as in the paper: +10 for reaching the goal (then the agent respawns at a random start, and the apples
  come back, as DMLab's `nextMap` does), +1 per apple. Episodes only end on time: `terminated` is always False
  and `truncated` is True on the step that reaches `episode_frames`.
- Placement follows DMLab's `random_goal_factory.lua`: the goal on a lattice cell (odd row, odd column), apples
  on `apple_density` = 10 % of the other lattice cells, starts on lattice cells more than 8 grid steps (BFS) from
  the goal, and never on an apple. The goal is a red torch (solid: the agent stops against it, and reaching within
  `GOAL_RADIUS` of its centre counts), apples are Doom health bonuses (counted by the engine's ITEMCOUNT).
- Random maze: writing a WAD and restarting the engine costs ~0.2-0.5 s, so each env writes a pool of
  `maze_pool_size` layouts into one WAD, plays them in a shuffled order, and only then writes a new pool.

Actions (the Nav paper's 8): look left, look right, forward, backward, strafe left, strafe right, forward + look
left, forward + look right. Moves use Doom's walking thrust with its momentum and friction (like DMLab's
acceleration): top speed ~8.3 map units per frame (33 per agent step at skip 4), one cell from rest in 5 agent
steps, about DMLab's pace (320 units/s at 60 fps over 100-unit cells, our estimate). Turns use a fixed
`turn_degrees_per_frame` (3.5 deg/frame = 14 deg per agent step at skip 4, our choice: Doom's own keyboard turn
rate; DMLab's look action of 20 px/frame was not converted to degrees, so this is a guess). Doom's TURN buttons
are not used because they ramp up over the first 6 tics of a turn, which would make a turn depend on the previous
actions.

Observation (`gymnasium.spaces.Dict`):

- `rgb`: uint8 [H, W, 3] (84x84 by default), nearest-neighbour resize of the `resolution` frame (160x120).
- `depth`: float32 [H, W], aligned with `rgb`: linear distance from the camera plane in map units, read from
  ViZDoom's depth buffer (uint8, 100/14 map units per level, measured) and clipped at the level where walls
  saturate, about H_screen/2: `max_depth` = 432 units = 4.5 cells at 160x120, 861 units = 9 cells at 320x240.
- `position`: float32 [2], (x, y) in map units. Cell (row, col) spans x in [col, col + 1) * CELL_SIZE and
  y in (-(row + 1), -row] * CELL_SIZE: x grows with the column, y shrinks with the row (north is up).
- `yaw`: float32 [1], radians in [-pi, pi), 0 = east (+x, growing column), counter-clockwise (pi/2 = north).
- `velocity`: float32 [3], in the agent's frame: (forward, lateral to the left) displacement over the last agent
  step in map units, rotated by the current yaw, and the yaw change over the step in radians. Zero after a reset or
  a respawn. So `position_t = position_{t-1} + R(yaw_t) @ velocity_t[:2]` exactly (path integration).

`info` (reset and step): `cell` (row, col), `goal` (x, y), `goal_cell`, `respawned` (the agent was teleported
this step: reset the loop-closure history), `goal_found`, `apples` (picked up this step), `episode_apples`,
`episode_goals`, `episode_frame` (frames since the episode began; the hidden respawn frames are not counted),
`maze_seed` (the layout's generation seed).

Nav auxiliary targets, pure numpy: `loop_closure_labels` / `LoopClosureTracker` (the paper's loop-closure label)
and `nav_depth_targets` (the 4x16, 8-class depth map of the arXiv v3 paper). `top_down_map()` gives a renderer the
layout, goal, apples and cell size.

Measured on the 2 shared CPU cores of the dev machine (160x120 rendered, 84x84 obs, RGB + depth + pose, frame skip
4, random actions): 1400-2000 agent steps/s per env in most runs, up to ~3700 on a quiet machine; the engine is ~80 %
of a step. A reset or respawn takes ~5-7 ms. `generate_maze` takes 0.4 / 0.7 / 1.3 ms for 01 / 02 / 03, and writing
the maze as a Doom map 2 / 4 / 8 ms more.

ViZDoom writes `_vizdoom/`, `_vizdoom.ini` and, on a crash, `vizdoom-crash.log` into its working directory: the
engine is started with a per-env temp dir as its working directory (a process-wide chdir around `init()`, under a
lock), and the temp dir is removed on `close()`. Nothing is written to the caller's working directory.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import threading
import warnings
import weakref
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

CELL_SIZE = 96.0  # map units per maze text cell (DMLab: 100)
DEPTH_UNITS_PER_LEVEL = 100.0 / 14.0  # ViZDoom depth buffer: 14 levels per 100 map units (measured; ViZDoom #192)
DOOM_TICS_PER_SECOND = 35

#: Size id -> (rows, cols) of the text maze, as DMLab's nav_maze_*_01/02/03 level scripts.
MAZE_SHAPES: dict[str, tuple[int, int]] = {"01": (11, 21), "02": (19, 31), "03": (27, 41)}
#: Size id -> episode length in frames (the paper for 01/02; DMLab's 300 s level script for 03).
EPISODE_FRAMES: dict[str, int] = {"01": 3600, "02": 10800, "03": 18000}
#: Size id -> labmaze room count. DMLab's mazes mix corridors with a few rooms; ours scale the rooms with the area.
_MAX_ROOMS: dict[str, int] = {"01": 2, "02": 4, "03": 6}

GOAL_REWARD = 10.0
APPLE_REWARD = 1.0
APPLE_DENSITY = 0.1  # DMLab random_goal_factory's `scatteredRewardDensity`
MIN_SPAWN_GOAL_STEPS = 8  # DMLab: starts lie more than 8 grid steps (BFS) from the goal
GOAL_RADIUS = 40.0  # goal found when the player's centre is this close: torch radius 16 + player radius 16 + slack

ACTION_NAMES: tuple[str, ...] = (
    "look_left",
    "look_right",
    "forward",
    "backward",
    "strafe_left",
    "strafe_right",
    "forward_look_left",
    "forward_look_right",
)
# Per action: MOVE_FORWARD, MOVE_BACKWARD, MOVE_LEFT, MOVE_RIGHT, then the turn direction (+1 = left, CCW).
_ACTION_TABLE: tuple[tuple[int, int, int, int, int], ...] = (
    (0, 0, 0, 0, 1),
    (0, 0, 0, 0, -1),
    (1, 0, 0, 0, 0),
    (0, 1, 0, 0, 0),
    (0, 0, 1, 0, 0),
    (0, 0, 0, 1, 0),
    (1, 0, 0, 0, 1),
    (1, 0, 0, 0, -1),
)

# Nav depth targets (arXiv:1611.03673 v3; spec section 3.2): 8 classes with these non-uniform edges on d = z^10.
NAV_DEPTH_BIN_EDGES: tuple[float, ...] = (0.0, 0.05, 0.175, 0.3, 0.425, 0.55, 0.675, 0.8, 1.0)
#: Near plane (map units) of the emulated z-buffer the power-10 transform was designed for. A guess: Quake 3 /
#: DMLab's default r_znear is 4 units. It puts the class edges at 15, 25, 35, 49, 69, 104 and 181 map units.
DEPTH_NEAR_PLANE = 4.0

# Freedoom textures for walls (all checked to exist in freedoom2.wad). Regions of the maze get different ones so
# that the agent has landmarks to localise and close loops with, as DMLab's per-room wall textures do.
WALL_TEXTURES: tuple[str, ...] = (
    "STARTAN3",
    "BRICK7",
    "STONE2",
    "GRAY1",
    "BROWN1",
    "METAL2",
    "CEMENT1",
    "TEKWALL4",
    "MARBLE1",
    "WOOD1",
    "BIGBRIK1",
    "PIPE2",
    "ROCK2",
    "SILVER1",
    "COMPTALL",
    "ZZWOLF1",
    "BRICK10",
    "SKIN2",
    "BRONZE1",
    "GSTONE1",
    "ASHWALL2",
    "REDWALL",
    "MODWALL1",
    "TANROCK2",
)
_CORRIDOR_BLOCK = 6  # corridors get a texture per 6x6-cell block of the text maze
_FLOOR_FLAT, _CEILING_FLAT = "FLOOR0_1", "CEIL3_5"
_PLAYER_START, _GOAL_CLASS, _APPLE_CLASS = 1, "RedTorch", "HealthBonus"
# ZDoom's `summon` puts the actor 2 * its radius + the player's radius (16) in front of the player.
_SUMMON_OFFSET = {_GOAL_CLASS: 2 * 16 + 16, _APPLE_CLASS: 2 * 20 + 16}
# Input is ignored during the first ~8 tics of a Doom episode; starting the episode 10 tics in hides that.
_EPISODE_START_TICS = 10

_CHDIR_LOCK = threading.Lock()


# ----------------------------------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class TaskSpec:
    """One registered task: its family, size id, maze shape and episode length in frames."""

    name: str
    family: str  # "static" | "random_goal" | "random_maze"
    size: str  # "01" | "02" | "03"
    maze_shape: tuple[int, int]
    episode_frames: int


def _build_tasks() -> dict[str, TaskSpec]:
    tasks: dict[str, TaskSpec] = {}
    for size, shape in MAZE_SHAPES.items():
        for family, prefix in (
            ("static", "nav_maze_static"),
            ("random_goal", "nav_maze_random_goal"),
            ("random_maze", "random_maze"),
        ):
            name = f"{prefix}_{size}"
            tasks[name] = TaskSpec(name, family, size, shape, EPISODE_FRAMES[size])
    tasks["random_maze"] = TaskSpec("random_maze", "random_maze", "01", MAZE_SHAPES["01"], EPISODE_FRAMES["01"])
    return tasks


TASKS: dict[str, TaskSpec] = _build_tasks()


def task_seed(task: str) -> int:
    """The generation seed of a task's fixed maze (and fixed goal/apples): a stable hash of the task id.

    `zlib.crc32` rather than `hash()`, which is salted per process, so every worker and machine builds the same maze.
    """
    return zlib.crc32(task.encode("utf-8")) & 0x7FFFFFFF


# ----------------------------------------------------------------------------------------------------- mazes


@dataclass(frozen=True)
class MazeLayout:
    """A maze on the text grid: `walls[r, c]` is True for a wall cell; `regions` gives each floor cell the index
    of its wall texture (-1 on walls). `lattice` lists the (odd row, odd col) cells, where DMLab puts goals,
    apples and starts; labmaze keeps them all floor."""

    walls: np.ndarray  # bool [H, W]
    regions: np.ndarray  # int32 [H, W]
    seed: int
    lattice: np.ndarray = field(repr=False)  # int64 [N, 2]

    @property
    def shape(self) -> tuple[int, int]:
        return self.walls.shape  # type: ignore[return-value]

    def bfs_steps(self, start: tuple[int, int]) -> np.ndarray:
        """Grid steps (4-connected, over floor cells) from `start` to every cell; -1 where unreachable."""
        h, w = self.walls.shape
        dist = np.full((h, w), -1, np.int64)
        dist[start] = 0
        queue = deque([start])
        while queue:
            r, c = queue.popleft()
            for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if 0 <= nr < h and 0 <= nc < w and not self.walls[nr, nc] and dist[nr, nc] < 0:
                    dist[nr, nc] = dist[r, c] + 1
                    queue.append((nr, nc))
        return dist


def _resolve_shape(size: str | tuple[int, int]) -> tuple[tuple[int, int], int]:
    """(rows, cols) and labmaze's room count for a size id or an explicit shape."""
    if isinstance(size, str):
        if size not in MAZE_SHAPES:
            raise ValueError(f"unknown maze size {size!r}; choose one of {sorted(MAZE_SHAPES)} or give (rows, cols)")
        return MAZE_SHAPES[size], _MAX_ROOMS[size]
    rows, cols = (int(v) for v in size)
    if rows < 5 or cols < 5 or rows % 2 == 0 or cols % 2 == 0:
        raise ValueError(f"maze shape must be odd and at least 5x5 (labmaze's lattice), got {rows}x{cols}")
    return (rows, cols), max(1, (rows * cols) // 180)


def generate_maze(size: str | tuple[int, int], seed: int) -> MazeLayout:
    """Draw a DMLab-style maze with labmaze (DeepMind Lab's generator): corridors, a few rooms, some loops.

    `size` is a size id ("01", "02", "03") or an odd (rows, cols). Takes about 0.1-0.3 ms (27x41 included);
    writing the maze into a Doom map is timed separately (`doom_map_lumps`).
    """
    import labmaze

    (rows, cols), rooms = _resolve_shape(size)
    maze = labmaze.RandomMaze(
        height=rows,
        width=cols,
        max_rooms=rooms,
        room_min_size=3,
        room_max_size=7,
        # simplify=True (labmaze's default) fills dead ends and leaves most of the grid solid; DMLab's nav mazes
        # cover the whole grid, which simplify=False reproduces.
        simplify=False,
        extra_connection_probability=0.05,
        random_seed=int(seed) & 0x7FFFFFFF,
    )
    entity = np.array(maze.entity_layer)
    variations = np.array(maze.variations_layer)
    walls = entity == "*"
    regions = _texture_regions(walls, variations, int(seed))
    rr, cc = np.meshgrid(np.arange(1, rows, 2), np.arange(1, cols, 2), indexing="ij")
    lattice = np.stack([rr.ravel(), cc.ravel()], axis=1)
    lattice = lattice[~walls[lattice[:, 0], lattice[:, 1]]]
    return MazeLayout(walls=walls, regions=regions, seed=int(seed), lattice=lattice)


def maze_from_text(text: str, seed: int = 0) -> MazeLayout:
    """A layout from a text maze ('*' = wall, anything else = floor), e.g. for tests or hand-made mazes."""
    lines = [line for line in text.strip("\n").splitlines()]
    width = max(len(line) for line in lines)
    grid = np.array([list(line.ljust(width, "*")) for line in lines])
    walls = grid == "*"
    regions = _texture_regions(walls, np.full(walls.shape, "."), seed)
    floor = np.argwhere(~walls)
    lattice = floor[(floor[:, 0] % 2 == 1) & (floor[:, 1] % 2 == 1)]
    if len(lattice) == 0:
        lattice = floor
    return MazeLayout(walls=walls, regions=regions, seed=int(seed), lattice=lattice)


def _texture_regions(walls: np.ndarray, variations: np.ndarray, seed: int) -> np.ndarray:
    """A wall-texture index per floor cell: one per labmaze room (its variation letter), one per 6x6 block of
    corridor; the region -> texture draw is seeded by the maze so a maze always looks the same."""
    h, w = walls.shape
    keys = np.empty((h, w), dtype=object)
    for r in range(h):
        for c in range(w):
            v = variations[r, c]
            keys[r, c] = ("room", v) if v not in (".", " ") else ("block", r // _CORRIDOR_BLOCK, c // _CORRIDOR_BLOCK)
    distinct = sorted({keys[r, c] for r in range(h) for c in range(w) if not walls[r, c]}, key=repr)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(WALL_TEXTURES))
    index = {key: int(order[i % len(order)]) for i, key in enumerate(distinct)}
    regions = np.full((h, w), -1, np.int32)
    for r in range(h):
        for c in range(w):
            if not walls[r, c]:
                regions[r, c] = index[keys[r, c]]
    return regions


def cell_center(cell: tuple[int, int] | np.ndarray) -> np.ndarray:
    """Map coordinates (x, y) of the centre of text cell (row, col)."""
    r, c = int(cell[0]), int(cell[1])
    return np.array([(c + 0.5) * CELL_SIZE, -(r + 0.5) * CELL_SIZE], np.float64)


def world_to_cell(position: np.ndarray) -> tuple[int, int]:
    """Text cell (row, col) containing map position (x, y)."""
    x, y = float(position[0]), float(position[1])
    return int(math.floor(-y / CELL_SIZE)), int(math.floor(x / CELL_SIZE))


def doom_map_lumps(layout: MazeLayout) -> Any:
    """The Doom map of a layout, as omgifol lumps: one sector over all floor cells, and one one-sided,
    impassable linedef per straight run of wall edge with one texture (merging runs cuts the linedef count about
    3x, which speeds up both ZDoom's node build at load and rendering). The only Thing is the player start; goal
    and apples are summoned at run time. ZDoom builds the BSP nodes itself when it loads the map."""
    from omg.mapedit import Linedef, MapEditor, Sector, Sidedef, Thing, Vertex

    walls, regions = layout.walls, layout.regions
    h, w = walls.shape
    cell = int(CELL_SIZE)
    editor = MapEditor()
    editor.sectors = [Sector(z_floor=0, z_ceil=128, tx_floor=_FLOOR_FLAT, tx_ceil=_CEILING_FLAT, light=192)]
    vertex_ids: dict[tuple[int, int], int] = {}

    def vertex(p: tuple[int, int]) -> int:
        if p not in vertex_ids:
            vertex_ids[p] = len(editor.vertexes)
            editor.vertexes.append(Vertex(x=p[0], y=p[1]))
        return vertex_ids[p]

    def line(a: tuple[int, int], b: tuple[int, int], region: int) -> None:
        # Doom draws a one-sided line's front (right-hand) side: each caller orders a -> b so the right faces floor.
        editor.sidedefs.append(Sidedef(tx_mid=WALL_TEXTURES[region], sector=0))
        linedef = Linedef(vx_a=vertex(a), vx_b=vertex(b), front=len(editor.sidedefs) - 1)
        linedef.impassable = True
        editor.linedefs.append(linedef)

    padded = np.pad(walls, 1, constant_values=True)
    floor = ~walls
    # Edge masks per floor cell: a wall on that side.
    north = floor & padded[:-2, 1:-1]
    south = floor & padded[2:, 1:-1]
    west = floor & padded[1:-1, :-2]
    east = floor & padded[1:-1, 2:]
    for r in range(h):
        for mask, y, reverse in ((north[r], -r * cell, False), (south[r], -(r + 1) * cell, True)):
            for c0, c1, region in _runs(mask, regions[r]):
                a, b = (c0 * cell, y), ((c1 + 1) * cell, y)
                if reverse:
                    a, b = b, a
                line(a, b, region)
    for c in range(w):
        for mask, x, reverse in ((west[:, c], c * cell, True), (east[:, c], (c + 1) * cell, False)):
            for r0, r1, region in _runs(mask, regions[:, c]):
                a, b = (x, -r0 * cell), (x, -(r1 + 1) * cell)
                if reverse:
                    a, b = b, a
                line(a, b, region)
    start = cell_center(layout.lattice[0])
    editor.things = [
        Thing(x=int(start[0]), y=int(start[1]), angle=0, type=_PLAYER_START, easy=1, medium=1, hard=1),
    ]
    return editor.to_lumps()


def _runs(mask: np.ndarray, regions: np.ndarray) -> list[tuple[int, int, int]]:
    """Maximal runs [i0, i1] of True in `mask` with one region each, as (i0, i1, region)."""
    runs: list[tuple[int, int, int]] = []
    start = -1
    for i in range(len(mask) + 1):
        open_run = start >= 0
        continues = i < len(mask) and mask[i] and open_run and regions[i] == regions[start]
        if open_run and not continues:
            runs.append((start, i - 1, int(regions[start])))
            start = -1
        if i < len(mask) and mask[i] and start < 0:
            start = i
    return runs


def write_wad(layouts: list[MazeLayout], path: str) -> list[str]:
    """Write the layouts as maps of one WAD file; returns their map names (any 8-character lump name works)."""
    import omg

    wad = omg.WAD()
    names = []
    for i, layout in enumerate(layouts):
        name = f"M{i:04d}"
        wad.maps[name] = doom_map_lumps(layout)
        names.append(name)
    wad.to_file(path)
    return names


@dataclass(frozen=True)
class Placement:
    """Where the goal, the apples and the possible starts of an episode are (text cells)."""

    goal: tuple[int, int]
    apples: np.ndarray  # int64 [K, 2]
    spawns: np.ndarray  # int64 [M, 2]


def place_objects(layout: MazeLayout, rng: np.random.Generator, apple_density: float = APPLE_DENSITY) -> Placement:
    """DMLab's random_goal_factory placement: goal on a random lattice cell; apples on `apple_density` of the
    other reachable lattice cells; starts on lattice cells more than 8 BFS steps from the goal and not on an apple
    (falling back to any other lattice cell, then any floor cell, in mazes too small for that)."""
    lattice = layout.lattice
    goal = tuple(int(v) for v in lattice[rng.integers(len(lattice))])
    steps = layout.bfs_steps(goal)  # type: ignore[arg-type]
    lattice_steps = steps[lattice[:, 0], lattice[:, 1]]
    fruit = lattice[lattice_steps > 0]
    fruit = fruit[rng.permutation(len(fruit))]
    apples = fruit[: int(math.floor(apple_density * len(fruit) + 0.5))]
    taken = {tuple(a) for a in apples.tolist()} | {goal}
    far = [tuple(p) for p in lattice[lattice_steps > MIN_SPAWN_GOAL_STEPS].tolist() if tuple(p) not in taken]
    if not far:
        far = [tuple(p) for p in lattice.tolist() if tuple(p) not in taken]
    if not far:
        far = [tuple(p) for p in np.argwhere(steps > 0).tolist() if tuple(p) not in taken]
    return Placement(goal=goal, apples=apples.astype(np.int64).reshape(-1, 2), spawns=np.array(far, np.int64))


# --------------------------------------------------------------------------------------- Nav auxiliary targets


def loop_closure_labels(
    positions: np.ndarray,
    eta1: float = CELL_SIZE,
    eta2: float = 2 * CELL_SIZE,
    resets: np.ndarray | None = None,
) -> np.ndarray:
    """The Nav paper's loop-closure label for each step of a trajectory (arXiv:1611.03673, section 3).

    l_t = 1 when p_t is within `eta1` of an earlier position p_t' (t' < t) of the same history and the agent was
    farther than `eta2` from p_t at some t'' with t' < t'' < t; the second condition rules out trivial closures on
    consecutive steps. `positions` is [T, 2]; `resets` [T] bool marks the steps that start a new history (episode
    start, respawn: a teleport is no loop). Defaults: eta1 = 1 cell, eta2 = 2 cells. Returns float32 [T].
    """
    positions = np.asarray(positions, np.float64)
    assert positions.ndim == 2 and positions.shape[1] == 2, positions.shape
    t_len = len(positions)
    resets = np.zeros(t_len, bool) if resets is None else np.asarray(resets, bool)
    assert resets.shape == (t_len,), resets.shape
    labels = np.zeros(t_len, np.float32)
    start = 0
    for t in range(t_len):
        if resets[t]:
            start = t
        history = positions[start:t]
        labels[t] = _closes_loop(history, positions[t], eta1, eta2)
    return labels


def _closes_loop(history: np.ndarray, p: np.ndarray, eta1: float, eta2: float) -> bool:
    """Whether `p` closes a loop over `history` (earlier positions of the same life, oldest first).

    The latest step farther than eta2 is the best t'': every t' before it qualifies when within eta1.
    """
    if len(history) < 2:
        return False
    dist = np.sqrt(((history - p) ** 2).sum(axis=1))
    far = np.flatnonzero(dist > eta2)
    if far.size == 0:
        return False
    return bool((dist[: far[-1]] <= eta1).any())


class LoopClosureTracker:
    """Online form of `loop_closure_labels` for one env: call `reset()` at an episode start and
    `update(position, respawned)` on every observation (the first one included); it returns l_t.

    Costs O(t) per step (one distance per stored position): at 4500 steps, tens of microseconds.
    """

    def __init__(self, eta1: float = CELL_SIZE, eta2: float = 2 * CELL_SIZE, capacity: int = 4096):
        self.eta1, self.eta2 = float(eta1), float(eta2)
        self._buf = np.zeros((capacity, 2), np.float64)
        self._n = 0

    def reset(self) -> None:
        self._n = 0

    def update(self, position: np.ndarray, respawned: bool = False) -> bool:
        if respawned:
            self.reset()
        p = np.asarray(position, np.float64)[:2]
        label = _closes_loop(self._buf[: self._n], p, self.eta1, self.eta2)
        if self._n == len(self._buf):
            self._buf = np.concatenate([self._buf, np.zeros_like(self._buf)])
        self._buf[self._n] = p
        self._n += 1
        return label


def nav_depth_crop_indices(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the 4x16 depth target: for 84x84, rows 16, 29, 42, 55 and columns 2, 7, ..., 77 (the
    GA3C-DeepNavigation crop `[16:-16, 2:-2]` taking every 13th row and 5th column); other sizes scale it."""
    rows = (16 + 13 * np.arange(4)) * height // 84
    cols = (2 + 5 * np.arange(16)) * width // 84
    return rows, cols


def nav_depth_targets(
    depth: np.ndarray,
    near: float = DEPTH_NEAR_PLANE,
    edges: tuple[float, ...] = NAV_DEPTH_BIN_EDGES,
) -> np.ndarray:
    """The Nav paper's depth classes (arXiv:1611.03673 v3): int64 [..., 4, 16] in 0..7 from depth [..., H, W].

    DMLab's depth observation is a z-buffer value z in [0, 1], which is strongly non-linear in distance; the paper
    spreads it with d = z^10 and cuts d at the non-uniform `edges` so the 8 classes come out roughly balanced. Our
    depth is linear (map units), so we first emulate the z-buffer of a perspective camera with near plane `near`
    and a far plane at infinity, z = 1 - near / distance, then apply the paper's transform. With near = 4 the class
    edges fall at 15, 25, 35, 49, 69, 104 and 181 map units (1 cell = 96): the targets resolve the space right
    around the agent, and everything past ~2 cells is class 7, which also makes them insensitive to where the
    depth buffer saturates (432 units at 160x120).
    """
    depth = np.asarray(depth, np.float64)
    rows, cols = nav_depth_crop_indices(depth.shape[-2], depth.shape[-1])
    crop = depth[..., rows[:, None], cols[None, :]]
    z = np.clip(1.0 - near / np.maximum(crop, 1e-6), 0.0, 1.0)
    d = z**10
    return np.digitize(d, np.asarray(edges[1:-1])).astype(np.int64)


# ------------------------------------------------------------------------------------------------ top-down map


@dataclass(frozen=True)
class TopDownMap:
    """What a renderer needs to draw the maze from above with a trajectory on it.

    `walls[r, c]` (True = wall) is the text grid; row 0 is the top (north). A position (x, y) lies in cell
    (floor(-y / cell_size), floor(x / cell_size)); `world_to_cell` does it. Cells are (row, col) int pairs.
    """

    walls: np.ndarray  # bool [H, W]
    goal_cell: tuple[int, int]
    goal_position: np.ndarray  # float [2], map units
    apple_cells: np.ndarray  # int64 [K, 2]
    apples_present: np.ndarray  # bool [K], False once picked up (apples come back on respawn)
    spawn_cells: np.ndarray  # int64 [M, 2], where the agent can (re)start
    cell_size: float
    maze_seed: int


# ------------------------------------------------------------------------------------------------ the env


class LabyrinthEnv(gym.Env):
    """One DMLab-style navigation maze on ViZDoom (see the module docstring for tasks, spaces and units).

    Args:
        task: a key of `TASKS`, e.g. "nav_maze_static_01", "nav_maze_random_goal_02", "random_maze_03".
        frame_skip: engine frames (Doom tics) per agent step; the action is held for all of them and only the last
            one is rendered.
        obs_size: (height, width) of `rgb` and `depth`.
        resolution: the ViZDoom `ScreenResolution` name the engine renders at. Higher resolutions see depth
            further (walls saturate at about half the screen height in depth levels) and cost speed.
        episode_frames: episode length in frames; default the task's (`TASKS[task].episode_frames`). Rounded up
            to whole agent steps.
        maze_size: an odd (rows, cols) instead of the task's size. Random maze: the size of every drawn maze. Static
            and random goal: the task's one fixed maze is drawn at this size instead (from the same task seed, so
            it is the same everywhere for a given task id and size; a static task keeps fixed goal and starts) —
            smaller, cheaper sparse-reward mazes than DMLab's, e.g. for a CPU-sized UNREAL comparison.
        maze_pool_size: random_maze only: how many layouts one WAD holds (default 32). Each episode takes the next
            layout of a shuffled pool; when the pool is used up, a new one is generated and the engine restarted
            (about 0.2-0.5 s per pool, i.e. per `maze_pool_size` episodes), because a WAD cannot be swapped into a
            running engine. A seeded `reset` regenerates the pool from that seed (cached when unchanged).
        apple_density: fraction of the free lattice cells holding an apple (DMLab: 0.1).
        turn_degrees_per_frame: yaw change per frame of the look actions.
        render_mode: None or "rgb_array" (`render()` returns the full-resolution RGB frame).

    Attributes a wrapper may read: `task_spec` (`TaskSpec`), `frame_skip`, `episode_frames`, `episode_steps`
    (agent steps per episode), `obs_size`, `screen_shape`, `max_depth` (map units), `maze_shape`.
    Seeding: `reset(seed=s)` seeds everything per-episode (starts, headings, random goals and mazes, the engine's
    RNG); a fixed maze never depends on it. One engine process per env (~20 MB); call `close()`.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": DOOM_TICS_PER_SECOND // 4}

    def __init__(
        self,
        task: str = "nav_maze_static_01",
        *,
        frame_skip: int = 4,
        obs_size: tuple[int, int] = (84, 84),
        resolution: str = "RES_160X120",
        episode_frames: int | None = None,
        maze_size: tuple[int, int] | None = None,
        maze_pool_size: int | None = None,
        apple_density: float = APPLE_DENSITY,
        turn_degrees_per_frame: float = 3.5,
        render_mode: str | None = None,
    ):
        import vizdoom as vzd

        if task not in TASKS:
            raise ValueError(f"unknown labyrinth task {task!r}; choose one of {', '.join(TASKS)}")
        spec = TASKS[task]
        if spec.family != "random_maze" and maze_pool_size is not None:
            raise ValueError(f"maze_pool_size only applies to random_maze tasks, not {task}")
        if frame_skip < 1:
            raise ValueError(f"frame_skip must be >= 1, got {frame_skip}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if not hasattr(vzd.ScreenResolution, resolution):
            raise ValueError(f"unknown ViZDoom resolution {resolution!r}, e.g. RES_160X120 or RES_320X240")
        self.task_spec = spec
        self.frame_skip = int(frame_skip)
        self.obs_size = (int(obs_size[0]), int(obs_size[1]))
        self.resolution = resolution
        self.episode_frames = int(episode_frames if episode_frames is not None else spec.episode_frames)
        self.episode_steps = -(-self.episode_frames // self.frame_skip)
        # What generate_maze gets: the size id (its room count included) unless an explicit shape was asked for.
        self._maze_size: str | tuple[int, int] = spec.size if maze_size is None else _resolve_shape(maze_size)[0]
        self.maze_shape = spec.maze_shape if maze_size is None else self._maze_size
        self.maze_pool_size = int(maze_pool_size if maze_pool_size is not None else 32)
        if self.maze_pool_size < 1:
            raise ValueError(f"maze_pool_size must be >= 1, got {self.maze_pool_size}")
        self.apple_density = float(apple_density)
        self.turn_degrees_per_frame = float(turn_degrees_per_frame)
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": max(1, round(DOOM_TICS_PER_SECOND / self.frame_skip))}

        screen_w, screen_h = (int(v) for v in resolution.removeprefix("RES_").split("X"))
        self.screen_shape = (screen_h, screen_w)
        # Walls saturate the depth buffer at about H/2 (+ a few levels, measured: 63 at 120 px, 127 at 240 px);
        # clipping there keeps walls, floors and ceilings on one scale.
        self._depth_levels = min(255, screen_h // 2)
        self.max_depth = float((self._depth_levels + 0.5) * DEPTH_UNITS_PER_LEVEL)
        self._depth_lut = np.minimum((np.arange(256) + 0.5) * DEPTH_UNITS_PER_LEVEL, self.max_depth).astype(np.float32)
        h, w = self.obs_size
        # Nearest-neighbour resize as one gather of flat pixel indices (one contiguous copy, no intermediate).
        rows = np.arange(h) * screen_h // h
        cols = np.arange(w) * screen_w // w
        self._pixels = (rows[:, None] * screen_w + cols[None, :]).astype(np.intp)

        rows, cols = self.maze_shape
        step_bound = np.float32(8 * CELL_SIZE)  # far above Doom's walking speed (~33 units per 4-frame step)
        self.action_space = gym.spaces.Discrete(len(ACTION_NAMES))
        self.observation_space = gym.spaces.Dict(
            {
                "rgb": gym.spaces.Box(0, 255, (h, w, 3), np.uint8),
                "depth": gym.spaces.Box(0.0, self.max_depth, (h, w), np.float32),
                "position": gym.spaces.Box(
                    np.array([0.0, -rows * CELL_SIZE], np.float32),
                    np.array([cols * CELL_SIZE, 0.0], np.float32),
                    dtype=np.float32,
                ),
                "yaw": gym.spaces.Box(-np.pi, np.pi, (1,), np.float32),
                "velocity": gym.spaces.Box(
                    np.array([-step_bound, -step_bound, -np.pi], np.float32),
                    np.array([step_bound, step_bound, np.pi], np.float32),
                    dtype=np.float32,
                ),
            }
        )

        self._closed = False
        self._engine = _Engine(tempfile.mkdtemp(prefix="decoupled-labyrinth-"))
        self._tmp = self._engine.work_dir
        # Releases engine and temp dir at close(), at garbage collection or at interpreter exit, whichever is first.
        self._release = weakref.finalize(self, self._engine.release)
        #: pid of the engine process (None before it starts or when psutil is missing). The engine survives a
        #: SIGKILL of this process and ignores SIGTERM, so whoever kills the process hosting the env should
        #: SIGKILL this pid too (and remove `work_dir`).
        self.engine_pid: int | None = None
        self._wad_index = 0
        self._layouts: list[MazeLayout] = []
        self._map_names: list[str] = []
        self._pool_key: tuple[int, ...] | None = None
        self._pool_order: list[int] = []
        self._fixed: Placement | None = None
        if spec.family != "random_maze":
            # One maze per task id, the same everywhere: its seed is the task's, not the env's.
            layout = generate_maze(self._maze_size, task_seed(spec.name))
            self._install_pool([layout], key=(layout.seed,))
            if spec.family == "static":
                self._fixed = place_objects(layout, np.random.default_rng(task_seed(spec.name)), self.apple_density)
        self._layout: MazeLayout | None = None
        self._map_name = ""
        self._placement: Placement | None = None
        self._apples_present = np.zeros(0, bool)
        self._goal_xy = np.zeros(2)
        self._frame = 0
        self._items = 0
        self._episode_apples = 0
        self._episode_goals = 0
        self._pos = np.zeros(2)
        self._yaw = 0.0
        self._screen: np.ndarray | None = None
        self._depth_raw: np.ndarray | None = None
        self._needs_reset = True

    # ------------------------------------------------------------------ engine management
    def _install_pool(self, layouts: list[MazeLayout], key: tuple[int, ...]) -> None:
        """Write `layouts` into a fresh WAD and (re)start the engine on it."""
        self._engine.close_game()
        self.engine_pid = None
        self._wad_index += 1
        wad_path = os.path.join(self._tmp, f"mazes{self._wad_index}.wad")
        names = write_wad(layouts, wad_path)
        old = os.path.join(self._tmp, f"mazes{self._wad_index - 1}.wad")
        if os.path.exists(old):
            os.remove(old)
        self._layouts, self._map_names, self._pool_key = layouts, names, key
        self._engine.game = self._start_game(wad_path, names[0])

    def _start_game(self, wad_path: str, first_map: str) -> Any:
        import vizdoom as vzd

        game = vzd.DoomGame()
        game.set_doom_scenario_path(wad_path)
        game.set_doom_map(first_map)
        game.set_doom_config_path(os.path.join(self._tmp, "_vizdoom.ini"))
        game.set_window_visible(False)
        game.set_sound_enabled(False)
        game.set_screen_resolution(getattr(vzd.ScreenResolution, self.resolution))
        game.set_screen_format(vzd.ScreenFormat.RGB24)
        game.set_depth_buffer_enabled(True)
        game.set_render_hud(False)
        game.set_render_weapon(False)  # the weapon sprite would show in the depth buffer too
        game.set_render_crosshair(False)
        game.set_render_decals(False)
        game.set_render_particles(False)
        game.set_render_messages(False)
        game.set_render_screen_flashes(False)  # no palette flash on an apple pickup: DMLab has none
        game.set_available_buttons(
            [
                vzd.Button.MOVE_FORWARD,
                vzd.Button.MOVE_BACKWARD,
                vzd.Button.MOVE_LEFT,
                vzd.Button.MOVE_RIGHT,
                vzd.Button.TURN_LEFT_RIGHT_DELTA,
            ]
        )
        game.set_available_game_variables(
            [
                vzd.GameVariable.POSITION_X,
                vzd.GameVariable.POSITION_Y,
                vzd.GameVariable.ANGLE,
                vzd.GameVariable.ITEMCOUNT,
            ]
        )
        # sv_cheats enables the `warp` and `summon` console commands (respawns, goal and apples); movebob 0
        # removes Doom's walking camera bob, which DMLab does not have and which would shake the depth targets.
        game.add_game_args("+sv_cheats 1 +movebob 0")
        game.set_episode_start_time(_EPISODE_START_TICS)
        game.set_episode_timeout(0)
        game.set_mode(vzd.Mode.PLAYER)
        # The engine process writes _vizdoom/ (and vizdoom-crash.log) into its working directory, which it
        # inherits when init() spawns it: start it from our temp dir. chdir is process-wide, hence the lock.
        with _CHDIR_LOCK:
            cwd = os.getcwd()
            os.chdir(self._tmp)
            try:
                game.init()
            finally:
                os.chdir(cwd)
        self.engine_pid = self._find_engine_pid()
        return game

    def _find_engine_pid(self) -> int | None:
        """The child process running our WAD (its command line names our temp dir)."""
        try:
            import psutil

            children = psutil.Process().children()
        except Exception:  # noqa: BLE001 - diagnostics only: no psutil
            return None
        for child in children:
            try:
                if any(self._tmp in part for part in child.cmdline()):
                    return child.pid
            except Exception:  # noqa: BLE001 - another child that vanished or is a zombie: look at the next one
                continue
        return None

    def close(self) -> None:
        """Close the engine (errors while closing become warnings) and remove the temp dir; idempotent."""
        self._closed = True
        self.engine_pid = None
        crash_log = os.path.join(self._tmp, "vizdoom-crash.log")
        if os.path.exists(crash_log):
            warnings.warn(f"ViZDoom left a crash log (deleted with the env's temp dir): {crash_log}", stacklevel=2)
        self._release()

    @property
    def work_dir(self) -> str:
        """The env's temp dir: the engine's working directory and its WADs; removed by close()."""
        return self._tmp

    # ------------------------------------------------------------------ episodes
    def _next_layout(self) -> int:
        """Index of the layout for a new episode; random_maze refills (and restarts the engine) when used up."""
        if self.task_spec.family != "random_maze":
            return 0
        if not self._pool_order:
            self._refill_pool()
            self._pool_order = [int(i) for i in self.np_random.permutation(len(self._layouts))]
        return self._pool_order.pop(0)

    def _refill_pool(self) -> None:
        seeds = tuple(int(s) for s in self.np_random.integers(0, 2**31 - 1, size=self.maze_pool_size))
        if seeds != self._pool_key:
            layouts = [generate_maze(self._maze_size, s) for s in seeds]
            self._install_pool(layouts, key=seeds)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        if self._closed:
            raise RuntimeError("LabyrinthEnv.reset after close()")
        if seed is not None and self.task_spec.family == "random_maze":
            # The maze sequence must be a function of the seed: redraw the pool from it (cached when unchanged).
            self._pool_order = []
        index = self._next_layout()
        self._layout = self._layouts[index]
        self._map_name = self._map_names[index]
        if self._fixed is not None:
            self._placement = self._fixed
        else:
            self._placement = place_objects(self._layout, self.np_random, self.apple_density)
        self._goal_xy = cell_center(self._placement.goal)
        self._frame = 0
        self._episode_apples = 0
        self._episode_goals = 0
        self._begin_life()
        self._needs_reset = False
        zero = np.zeros(3, np.float32)
        return self._observation(zero), self._info(respawned=False, goal_found=False, apples=0)

    def _begin_life(self) -> None:
        """Start the map afresh (all apples back, no momentum), summon goal and apples, and put the agent on a
        random start cell with a random heading. Takes two hidden frames: `warp` leaves the camera at floor height
        for the frame it happens in."""
        assert self._placement is not None
        game = self._engine.game
        game.set_seed(int(self.np_random.integers(0, 2**31 - 1)))
        game.set_doom_map(self._map_name)
        game.new_episode()
        # Summoned actors appear _SUMMON_OFFSET in front of the player (who faces east after new_episode), so the
        # player is warped that far west of each target first; warping into a wall is fine for this.
        commands = []
        goal = cell_center(self._placement.goal)
        commands.append(f"warp {goal[0] - _SUMMON_OFFSET[_GOAL_CLASS]:.0f} {goal[1]:.0f}")
        commands.append(f"summon {_GOAL_CLASS}")
        for cell in self._placement.apples:
            xy = cell_center(cell)
            commands.append(f"warp {xy[0] - _SUMMON_OFFSET[_APPLE_CLASS]:.0f} {xy[1]:.0f}")
            commands.append(f"summon {_APPLE_CLASS}")
        spawns = self._placement.spawns
        start = cell_center(spawns[self.np_random.integers(len(spawns))])
        heading = float(self.np_random.uniform(-180.0, 180.0))
        commands.append(f"warp {start[0]:.0f} {start[1]:.0f}")
        for command in commands:
            game.send_game_command(command)
        game.make_action([0, 0, 0, 0, -heading], 1)  # negative delta turns left (counter-clockwise)
        game.make_action([0, 0, 0, 0, 0], 1)
        self._apples_present = np.ones(len(self._placement.apples), bool)
        state = self._read_state()
        self._items = state[3]

    def _read_state(self) -> tuple[np.ndarray, float, np.ndarray, int]:
        """Position, yaw (radians in [-pi, pi)), screen and item count, from the engine."""
        state = self._engine.game.get_state()
        if state is None:
            raise RuntimeError("ViZDoom returned no state (the engine episode ended unexpectedly)")
        variables = state.game_variables
        pos = np.array([variables[0], variables[1]], np.float64)
        yaw = (math.radians(float(variables[2])) + math.pi) % (2 * math.pi) - math.pi
        self._screen = state.screen_buffer
        self._depth_raw = state.depth_buffer
        self._pos, self._yaw = pos, yaw
        return pos, yaw, state.screen_buffer, int(variables[3])

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        if self._needs_reset:
            raise RuntimeError("LabyrinthEnv.step called before reset() or after the episode was truncated")
        if not self.action_space.contains(action):
            raise ValueError(f"invalid action {action!r} for {self.action_space}")
        fwd, back, left, right, turn = _ACTION_TABLE[int(action)]
        prev_pos, prev_yaw = self._pos, self._yaw
        # TURN_LEFT_RIGHT_DELTA is applied on each held frame; negative turns left.
        self._engine.game.make_action([fwd, back, left, right, -turn * self.turn_degrees_per_frame], self.frame_skip)
        self._frame += self.frame_skip
        pos, yaw, _, items = self._read_state()
        apples = items - self._items
        self._items = items
        if apples > 0:
            self._mark_apples_taken(pos, apples)
        self._episode_apples += apples
        reward = APPLE_REWARD * apples
        goal_found = bool(np.hypot(*(pos - self._goal_xy)) < GOAL_RADIUS)
        if goal_found:
            reward += GOAL_REWARD
            self._episode_goals += 1
            self._begin_life()
            velocity = np.zeros(3, np.float32)
        else:
            velocity = _agent_frame_velocity(pos - prev_pos, yaw, yaw - prev_yaw)
        truncated = self._frame >= self.episode_frames
        self._needs_reset = truncated
        obs = self._observation(velocity)
        info = self._info(respawned=goal_found, goal_found=goal_found, apples=apples)
        return obs, float(reward), False, truncated, info

    def _mark_apples_taken(self, pos: np.ndarray, count: int) -> None:
        """The engine only counts pickups; for the map, mark the `count` present apples nearest the agent."""
        present = np.flatnonzero(self._apples_present)
        if present.size == 0:
            return
        centres = (self._placement.apples[present] + 0.5) * CELL_SIZE  # (row, col) -> (x, -y) of the centre
        xy = np.stack([centres[:, 1], -centres[:, 0]], axis=1)
        nearest = present[np.argsort(np.hypot(*(xy - pos).T))[:count]]
        self._apples_present[nearest] = False

    def _observation(self, velocity: np.ndarray) -> dict[str, np.ndarray]:
        screen, depth = self._screen, self._depth_raw
        # np.take is ~5x faster than fancy indexing here (20 vs 100 us for the RGB frame).
        rgb = np.take(screen.reshape(-1, 3), self._pixels, axis=0)
        depth_units = np.take(self._depth_lut, np.take(depth.reshape(-1), self._pixels))
        return {
            "rgb": rgb,
            "depth": depth_units,
            "position": self._pos.astype(np.float32),
            "yaw": np.array([self._yaw], np.float32),
            "velocity": velocity.astype(np.float32),
        }

    def _info(self, respawned: bool, goal_found: bool, apples: int) -> dict[str, Any]:
        return {
            "cell": world_to_cell(self._pos),
            "goal": self._goal_xy.astype(np.float32),
            "goal_cell": self._placement.goal,
            "respawned": respawned,
            "goal_found": goal_found,
            "apples": int(apples),
            "episode_apples": self._episode_apples,
            "episode_goals": self._episode_goals,
            "episode_frame": self._frame,
            "maze_seed": self._layout.seed,
        }

    # ------------------------------------------------------------------ rendering and maps
    def render(self) -> np.ndarray | None:
        """The full-resolution RGB frame (`screen_shape` + (3,)) when render_mode is "rgb_array"."""
        if self.render_mode != "rgb_array" or self._screen is None:
            return None
        return np.array(self._screen, copy=True)

    def top_down_map(self) -> TopDownMap:
        """The current episode's layout, goal and apples (see `TopDownMap`); call after reset()."""
        if self._layout is None or self._placement is None:
            raise RuntimeError("top_down_map() needs a reset() first")
        return TopDownMap(
            walls=self._layout.walls.copy(),
            goal_cell=self._placement.goal,
            goal_position=self._goal_xy.copy(),
            apple_cells=self._placement.apples.copy(),
            apples_present=self._apples_present.copy(),
            spawn_cells=self._placement.spawns.copy(),
            cell_size=CELL_SIZE,
            maze_seed=self._layout.seed,
        )


class _Engine:
    """The env's ViZDoom game and temp dir, held apart from the env so that a `weakref.finalize` can release them
    when the env is dropped without `close()`: the engine first (it saves its ini into the dir on close), the dir
    second."""

    def __init__(self, work_dir: str):
        self.work_dir = work_dir
        self.game: Any = None

    def close_game(self) -> None:
        """Close the engine; a crash while closing (seen once with ViZDoom) must not fail the caller."""
        game, self.game = self.game, None
        if game is None:
            return
        try:
            game.close()
        except Exception as exc:  # noqa: BLE001 - the engine is going away either way
            warnings.warn(f"ViZDoom raised on close (ignored): {exc!r}", RuntimeWarning, stacklevel=3)

    def release(self) -> None:
        self.close_game()
        shutil.rmtree(self.work_dir, ignore_errors=True)


def _agent_frame_velocity(displacement: np.ndarray, yaw: float, dyaw: float) -> np.ndarray:
    """World displacement over a step -> (forward, left) in the frame of the current yaw, plus the wrapped dyaw."""
    c, s = math.cos(yaw), math.sin(yaw)
    dx, dy = float(displacement[0]), float(displacement[1])
    dyaw = (dyaw + math.pi) % (2 * math.pi) - math.pi
    return np.array([dx * c + dy * s, -dx * s + dy * c, dyaw], np.float32)


def _register() -> None:
    for name in TASKS:
        env_id = f"decoupled/{name}-v0"
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="decoupled.envs.labyrinth:LabyrinthEnv", kwargs={"task": name})


_register()
