"""Atari 2600 (ALE) behind the vectorised env contract, under named evaluation protocols.

Two backends share one protocol table and one semantics:

- `EnvpoolAtariVecEnv` (default, fast): envpool's C++ pool. Envpool autoresets on the *next* step (the step after
  a done ignores its action and returns the reset obs with reward 0); we convert that to the same-step autoreset of
  `envs.base` by stepping only the finished envs once more right away (a partial step, `step(actions, env_ids)`).
- `GymAtariVecEnv` (fallback, can render): gymnasium + ale-py, one `AtariPreprocessing` env per copy.

Both assert at construction that the built env really has the protocol's settings, reading them back from
envpool's `spec.config` or from the ALE interface (tests/unit/test_env_atari.py), and both report them in
`settings()`. Frame counts are emulator frames: `episode_frames = agent steps * frame_skip`; no-op start frames are
not counted (envpool does not count them either: its `elapsed_step` excludes them).

Known differences between the backends (measured with envpool 1.2.5 / ale-py 0.12.1):

- Frame cap: envpool caps `max_episode_frames / frame_skip` agent steps *after* the no-op starts; ALE's
  `max_num_frames_per_episode` counts the no-op frames too, so with `dqn_noop30` a capped gymnasium episode has up
  to 30 frames (7 agent steps) fewer.
- No no-op starts (`machado2018`): envpool crashes (segfault) with `noop_max=0` and always plays
  `uniform{1..noop_max}` no-op frames at reset, so the envpool backend uses `noop_max=1`: one no-op frame per reset.
  That frame matters: a random policy scores 1.88 on Breakout under `machado2018` on envpool and 1.29 on ale-py
  (800 episodes each; the same, 1.89 vs 1.87, when both play the frame), so `decoupled eval` runs `machado2018` on
  this module's gymnasium backend (`runners/evaluation/evaluate.py`, `eval_backend`). With the randomness pinned
  (one no-op frame, no sticky actions) the two backends play the same game frame for frame
  (tests/unit/test_env_atari.py); `decoupled bench backends` compares their score distributions.
- Life loss as terminal (`dqn_noop30` training): envpool's `episodic_life` "resets" after a lost life by playing
  `1..noop_max` no-op frames and continuing the game; the gymnasium backend emits `terminated` and keeps playing
  without any extra frames.
- Envpool cuts the last agent step of a game short when the game ends mid-skip; it still counts as `frame_skip`
  frames here (as envpool's `elapsed_step` does).
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from decoupled.envs.base import EnvCrashedError, EnvSpec, EnvStep, EpisodeTracker, PerEnvVecEnv, VecEnv

# Protocol presets. Keys are what the backends must build; `life_loss_terminal_in_training` only applies in
# mode="train". Reward clipping is not part of a preset: it is the training-only `clip_rewards` switch (DQN-style
# clipping to [-1, 1] is what both papers' agents were trained with). In mode="eval" there is never clipping and
# never a life-loss terminal.
PRESETS: dict[str, dict[str, Any]] = {
    # Machado, Bellemare, Talvitie, Veness, Hausknecht, Bowling 2018, "Revisiting the Arcade Learning Environment"
    # (JAIR 61; arXiv:1709.06009): sticky actions (p=0.25) as the only stochasticity, no no-op starts, episodes end
    # at game over only (no life-loss signal), 108,000-frame cap. This is ALE's `ALE/<Game>-v5` default, with
    # frameskip 4 as the ALE maintainers recommend (ALE #443) instead of the paper's 5.
    "machado2018": {
        "repeat_action_probability": 0.25,
        "noop_max": 0,
        "life_loss_terminal_in_training": False,
        "max_episode_frames": 108_000,
        "frame_skip": 4,
        "max_pool_frames": 2,
        "screen_size": 84,
        "grayscale": True,
        "frame_stack": 4,
        "full_action_space": False,
    },
    # Mnih et al. 2015 (Nature 518, "Human-level control through deep RL") as used by Espeholt et al. 2018
    # (IMPALA, arXiv:1802.01561): no sticky actions, up to 30 no-op starts, life loss as terminal in training only,
    # reward clipping in training only, 108,000-frame (30 min) cap; dqn_zoo `atari_data.py` header documents the cap
    # and the no-op starts.
    "dqn_noop30": {
        "repeat_action_probability": 0.0,
        "noop_max": 30,
        "life_loss_terminal_in_training": True,
        "max_episode_frames": 108_000,
        "frame_skip": 4,
        "max_pool_frames": 2,
        "screen_size": 84,
        "grayscale": True,
        "frame_stack": 4,
        "full_action_space": False,
    },
}

MODES = ("train", "eval")


class ProtocolMismatchError(RuntimeError):
    """The built env does not have the settings its protocol preset asked for."""


def resolve_protocol(
    protocol: str,
    mode: str,
    frame_stack: int = 4,
    clip_rewards: bool = True,
    max_episode_frames: int = 108_000,
) -> dict[str, Any]:
    """The settings an Atari env must have for `protocol` in `mode`; `mode="eval"` turns off clipping and life-loss
    terminals whatever the preset or the arguments say."""
    if protocol not in PRESETS:
        raise ValueError(f"unknown Atari protocol {protocol!r}; choose one of {', '.join(PRESETS)}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    preset = PRESETS[protocol]
    if frame_stack < 1:
        raise ValueError(f"frame_stack must be >= 1, got {frame_stack}")
    if max_episode_frames < preset["frame_skip"] or max_episode_frames % preset["frame_skip"]:
        raise ValueError(
            f"max_episode_frames must be a positive multiple of the frame skip {preset['frame_skip']} "
            f"(frames, not agent steps), got {max_episode_frames}"
        )
    train = mode == "train"
    resolved = {k: v for k, v in preset.items() if k != "life_loss_terminal_in_training"}
    resolved.update(
        protocol=protocol,
        mode=mode,
        frame_stack=int(frame_stack),
        max_episode_frames=int(max_episode_frames),
        life_loss_terminal=bool(train and preset["life_loss_terminal_in_training"]),
        reward_clip=bool(train and clip_rewards),
    )
    return resolved


def ale_rom_name(env_id: str) -> str:
    """ALE game name as in ids (`Breakout`, `SpaceInvaders`, `ALE/Pong-v5`) -> ale-py's ROM name (`space_invaders`)."""
    name = re.sub(r"-v\d+$", "", env_id.split("/")[-1])
    name = re.sub(r"NoFrameskip$|Deterministic$", "", name)
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()  # UpNDown: up_n_down


def _game_id(env_id: str) -> str:
    """`ALE/Breakout-v5`, `Breakout-v5`, `Breakout` -> `Breakout` (the form envpool and ALE ids share)."""
    return re.sub(r"-v\d+$", "", env_id.split("/")[-1])


def _action_meanings_from_ale(env_id: str) -> list[str] | None:
    """Names of the minimal action set from ale-py's ROM, when ale-py is installed (envpool does not expose them)."""
    try:
        import ale_py

        ale = ale_py.ALEInterface()
        ale.setLoggerMode(ale_py.LoggerMode.Error)
        ale.loadROM(ale_py.roms.get_rom_path(ale_rom_name(env_id)))
        return [a.name for a in ale.getMinimalActionSet()]
    except Exception:
        return None


def _check_readback(backend: str, env_id: str, expected: dict[str, Any], actual: dict[str, Any]) -> None:
    """Raise `ProtocolMismatchError` listing every setting the built env does not have."""
    bad = []
    for key, want in expected.items():
        got = actual.get(key)
        if isinstance(want, float) or isinstance(got, float):
            same = got is not None and math.isclose(float(got), float(want), abs_tol=1e-6)
        else:
            same = got == want
        if not same:
            bad.append(f"{key}: asked {want!r}, built {got!r}")
    if bad:
        raise ProtocolMismatchError(f"{backend} {env_id}: the built env differs from its protocol: " + "; ".join(bad))


def _atari_spec(game: str, frame_stack: int, num_actions: int, meanings: list[str] | None) -> EnvSpec:
    # frame_stack: the channels are the newest frames, oldest first (pixel control reads the newest one only)
    extra: dict[str, Any] = {"obs_scale": 1.0 / 255.0, "frame_stack": int(frame_stack)}
    if meanings is not None:
        extra["action_meanings"] = meanings
    return EnvSpec(
        name=f"atari/{game}",
        obs_shape=(frame_stack, 84, 84),
        obs_dtype=np.dtype(np.uint8),
        num_actions=num_actions,
        frame_skip=4,
        extra=extra,
    )


def _derived_seed(seed: int, n: int) -> int:
    """A fresh deterministic pool seed for the n-th re-creation without an explicit seed."""
    return int(np.random.SeedSequence([seed, n]).generate_state(1)[0] & 0x3FFFFFFF)


class EnvpoolAtariVecEnv(VecEnv):
    """Atari on envpool (sync mode), converted to same-step autoreset. See the module docstring."""

    backend = "envpool"

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        seed: int,
        mode: str = "train",
        protocol: str = "dqn_noop30",
        frame_stack: int = 4,
        clip_rewards: bool = True,
        max_episode_frames: int = 108_000,
    ):
        try:
            import envpool  # noqa: F401
        except ImportError as exc:
            raise ImportError("the 'atari' backend needs envpool: pip install 'decoupled[atari]'") from exc
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.game = _game_id(env_id)
        self.env_id = env_id
        self.num_envs = num_envs
        self._seed = int(seed)
        self.resolved = resolve_protocol(protocol, mode, frame_stack, clip_rewards, max_episode_frames)
        r = self.resolved
        # envpool's config keys for the resolved protocol (noop_max >= 1: see the module docstring).
        self._config = {
            "repeat_action_probability": float(r["repeat_action_probability"]),
            "noop_max": max(1, int(r["noop_max"])),
            "episodic_life": r["life_loss_terminal"],
            "reward_clip": r["reward_clip"],
            "max_episode_steps": r["max_episode_frames"] // r["frame_skip"],
            "frame_skip": r["frame_skip"],
            "stack_num": r["frame_stack"],
            "gray_scale": r["grayscale"],
            "img_height": r["screen_size"],
            "img_width": r["screen_size"],
            "full_action_space": r["full_action_space"],
            "use_fire_reset": False,  # neither protocol presses FIRE at reset (baselines' FireResetEnv is not DQN's)
            "use_inter_area_resize": True,  # cv2.INTER_AREA, as gymnasium's AtariPreprocessing
        }
        self._pool = self._make_pool(self._seed)
        self._resets = 0
        self._fresh = True  # the pool has been neither reset nor stepped since it was built
        n_actions = int(self._pool.action_space.n)
        self.spec = _atari_spec(self.game, r["frame_stack"], n_actions, _action_meanings_from_ale(self.game))
        self._tracker = EpisodeTracker(num_envs, frame_skip=r["frame_skip"])
        self._lives = np.zeros(num_envs, np.int64)
        self._ram: np.ndarray | None = None
        self._obs_ready = False
        self._in_flight = False  # a step_async whose step_wait has not come yet

    def _make_pool(self, seed: int) -> Any:
        import envpool

        try:
            pool = envpool.make(
                f"{self.game}-v5",
                env_type="gymnasium",
                num_envs=self.num_envs,
                batch_size=self.num_envs,
                seed=int(seed),  # envpool seeds env i with seed + i (verified against single-env pools)
                **self._config,
            )
        except Exception as exc:
            raise ValueError(f"envpool cannot build {self.game}-v5 ({self.env_id!r}): {exc}") from exc
        _check_readback("envpool", self.env_id, self._config, self._read_config(pool))
        self._pool_seed = int(seed)
        return pool

    @staticmethod
    def _read_config(pool: Any) -> dict[str, Any]:
        cfg = pool.spec.config
        return {k: getattr(cfg, k) for k in cfg._fields} if hasattr(cfg, "_fields") else dict(vars(cfg))

    def _crash(self, what: str, exc: BaseException, ids: np.ndarray | None = None) -> EnvCrashedError:
        where = "env indices " + (f"0..{self.num_envs - 1}" if ids is None else ",".join(str(int(i)) for i in ids))
        return EnvCrashedError(
            f"envpool backend: {self.game} ({where}, seeds {self._pool_seed}+index) raised in {what}: {exc!r}"
        )

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Reset all envs; env i is seeded with `seed + i`.

        Envpool cannot be re-seeded in place, and with `episodic_life` its reset continues a game that is not over,
        so every reset but the first one of a freshly built pool rebuilds the pool (about 0.2 s): with `seed`, or
        without one with a seed derived from the current seed and the number of such resets."""
        if self._in_flight:  # a step is still running in envpool's threads: collect and drop it
            self._in_flight = False
            try:
                self._pool.recv()
            except Exception as exc:
                raise self._crash("reset", exc) from exc
        if seed is not None and (int(seed) != self._seed or not self._fresh):
            self._seed = int(seed)
            self._rebuild(self._seed)
        elif seed is None and not self._fresh:
            self._resets += 1
            self._rebuild(_derived_seed(self._seed, self._resets))
        self._fresh = False
        try:
            obs, info = self._pool.reset()
        except Exception as exc:
            raise self._crash("reset", exc) from exc
        obs, info = self._in_env_order(obs, info)
        self._lives[:] = info["lives"]
        self._ram = info.get("ram")
        self._tracker.reset()
        self._obs_ready = True
        return obs

    def _rebuild(self, seed: int) -> None:
        self._pool.close()
        self._pool = self._make_pool(seed)
        self._fresh = True

    @staticmethod
    def _in_env_order(obs: np.ndarray, info: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        """Sync-mode envpool returns envs in id order; reorder defensively if a version does not."""
        ids = np.asarray(info["env_id"])
        if np.array_equal(ids, np.arange(len(ids))):
            return obs, info
        order = np.argsort(ids)
        return obs[order], {
            k: (np.asarray(v)[order] if k in ("lives", "reward", "terminated", "ram", "elapsed_step", "env_id") else v)
            for k, v in info.items()
        }

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions: np.ndarray) -> None:
        """Hand the actions to envpool's threads and return at once (envpool's `send`)."""
        if not self._obs_ready:
            raise RuntimeError("EnvpoolAtariVecEnv.step called before reset()")
        if self._in_flight:
            raise RuntimeError("EnvpoolAtariVecEnv.step_async called twice without a step_wait between")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,):
            raise ValueError(f"actions must have shape ({self.num_envs},), got {actions.shape}")
        try:
            self._pool.send(actions.astype(np.int32))
        except Exception as exc:
            raise self._crash("step", exc) from exc
        self._in_flight = True

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Wait for the step `step_async` started (envpool's `recv`) and autoreset the finished envs."""
        if not self._in_flight:
            raise RuntimeError("EnvpoolAtariVecEnv.step_wait called without a step_async before it")
        self._in_flight = False
        try:
            obs, reward, terminated, truncated, info = self._pool.recv()
        except Exception as exc:
            raise self._crash("step", exc) from exc
        obs, info = self._in_env_order(obs, info)
        terminated = np.asarray(terminated, bool)
        truncated = np.asarray(truncated, bool)
        raw_reward = np.asarray(info["reward"], np.float64)  # unclipped: envpool writes it before clipping
        game_over = np.asarray(info["terminated"], bool) | truncated  # `info["terminated"]` is ALE's game_over()
        lives = np.asarray(info["lives"], np.int64).copy()
        ram = info.get("ram")
        final_obs = obs
        done = terminated | truncated
        if done.any():
            ids = np.flatnonzero(done).astype(np.int32)
            try:
                # envpool's next-step autoreset: this step ignores the action and returns the reset obs (a new
                # game, or with episodic_life the continuing game after a lost life).
                r_obs, _, r_te, r_tr, r_info = self._pool.step(np.zeros(len(ids), np.int32), ids)
            except Exception as exc:
                raise self._crash("autoreset step", exc, ids) from exc
            r_ids = np.asarray(r_info["env_id"])
            if np.any(np.asarray(r_te, bool) | np.asarray(r_tr, bool)):
                raise self._crash("autoreset step", RuntimeError("the reset step reported done"), r_ids)
            obs = obs.copy()
            obs[r_ids] = r_obs
            lives[r_ids] = r_info["lives"]
            if ram is not None and "ram" in r_info:
                ram = np.array(ram)
                ram[r_ids] = r_info["ram"]
        self._lives = lives
        self._ram = ram
        out: dict[str, Any] = {"final_obs": final_obs, "lives": lives.copy()}
        out.update(self._tracker.update(raw_reward, game_over))
        return obs, np.asarray(reward, np.float32), terminated, truncated, out

    def ram(self) -> np.ndarray:
        """The 128-byte console RAM of every env after the last reset/step [B, 128] (for scripted test policies)."""
        if self._ram is None:
            raise RuntimeError("no RAM yet: call reset() first")
        return np.array(self._ram, np.uint8)

    def settings(self) -> dict[str, Any]:
        """The preset, the mode and the values read back from envpool's `spec.config`."""
        import envpool

        cfg = self._read_config(self._pool)
        built = {k: cfg[k] for k in self._config}
        return {
            "backend": self.backend,
            "name": self.spec.name,
            "game": self.game,
            "num_envs": self.num_envs,
            "seed": self._seed,
            "protocol": self.resolved["protocol"],
            "mode": self.resolved["mode"],
            "frame_skip": int(cfg["frame_skip"]),
            "repeat_action_probability": float(cfg["repeat_action_probability"]),
            "noop_max": int(cfg["noop_max"]),
            "life_loss_terminal": bool(cfg["episodic_life"]),
            "reward_clip": bool(cfg["reward_clip"]),
            "max_episode_frames": int(cfg["max_episode_steps"]) * int(cfg["frame_skip"]),
            "frame_stack": int(cfg["stack_num"]),
            "screen_size": [int(cfg["img_height"]), int(cfg["img_width"])],
            "grayscale": bool(cfg["gray_scale"]),
            "max_pool_frames": 2,  # envpool always max-pools the last two frames of a skip (atari_env.h)
            "full_action_space": bool(cfg["full_action_space"]),
            "num_actions": self.spec.num_actions,
            "obs_scale": self.spec.extra["obs_scale"],
            "protocol_settings": dict(self.resolved),
            "envpool_config": {k: (v.item() if isinstance(v, np.generic) else v) for k, v in built.items()},
            "envpool_version": envpool.__version__,
        }

    def close(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.close()


class GymAtariVecEnv(PerEnvVecEnv):
    """Atari on gymnasium + ale-py, one env per copy; same protocol semantics as `EnvpoolAtariVecEnv`.

    Each copy is `ALE/<Game>-v5` with `frameskip=1` wrapped in gymnasium's `AtariPreprocessing` (no-op starts,
    frame skip 4 with a max over the last two frames, 84x84 grayscale via cv2.INTER_AREA) and
    `FrameStackObservation` (padding repeats the reset frame). Life loss as a training terminal is done here without
    resetting the game, so `terminated` marks the lost life while the episode statistics run to game over.
    """

    backend = "gymnasium"
    _label = "gymnasium/ale-py"

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        seed: int,
        mode: str = "train",
        protocol: str = "dqn_noop30",
        frame_stack: int = 4,
        clip_rewards: bool = True,
        max_episode_frames: int = 108_000,
    ):
        try:
            import ale_py
            import cv2  # noqa: F401  (AtariPreprocessing resizes with cv2)
            import gymnasium as gym
        except ImportError as exc:
            raise ImportError(
                "the 'atari_gym' backend needs ale-py and opencv (gymnasium's AtariPreprocessing imports cv2): "
                "pip install ale-py opencv-python-headless"
            ) from exc
        super().__init__(num_envs, seed)
        gym.register_envs(ale_py)
        self.game = self._task = _game_id(env_id)
        self.env_id = env_id
        self.resolved = resolve_protocol(protocol, mode, frame_stack, clip_rewards, max_episode_frames)
        r = self.resolved
        self._envs = []
        try:
            for _ in range(num_envs):
                base = gym.make(
                    f"ALE/{self.game}-v5",
                    frameskip=1,  # AtariPreprocessing does the skip and the max-pool
                    repeat_action_probability=r["repeat_action_probability"],
                    full_action_space=r["full_action_space"],
                    max_num_frames_per_episode=r["max_episode_frames"],
                )
                env = gym.wrappers.AtariPreprocessing(
                    base,
                    noop_max=r["noop_max"],
                    frame_skip=r["frame_skip"],
                    screen_size=r["screen_size"],
                    terminal_on_life_loss=False,  # life loss is signalled by us, without a reset
                    grayscale_obs=r["grayscale"],
                )
                self._envs.append(gym.wrappers.FrameStackObservation(env, r["frame_stack"], padding_type="reset"))
        except gym.error.Error as exc:
            self.close()
            raise ValueError(f"gymnasium/ale-py cannot build ALE/{self.game}-v5 ({env_id!r}): {exc}") from exc
        _check_readback("gymnasium", env_id, self._expected(), self._read_back())
        u = self._envs[0].unwrapped
        self.spec = _atari_spec(self.game, r["frame_stack"], int(u.action_space.n), list(u.get_action_meanings()))
        # Episode lengths count emulator frames (the base class built its tracker before the protocol was known).
        self._tracker = EpisodeTracker(num_envs, frame_skip=r["frame_skip"])
        self._lives = np.zeros(num_envs, np.int64)

    def _expected(self) -> dict[str, Any]:
        r = self.resolved
        return {
            k: r[k]
            for k in (
                "repeat_action_probability",
                "noop_max",
                "max_episode_frames",
                "frame_skip",
                "screen_size",
                "grayscale",
                "frame_stack",
                "full_action_space",
            )
        } | {"ale_frameskip": 1, "terminal_on_life_loss": False}

    def _read_back(self, i: int = 0) -> dict[str, Any]:
        """Settings as the ALE interface and the wrappers hold them."""
        stack = self._envs[i]
        pre = stack.env
        u = stack.unwrapped
        ale = u.ale
        size = pre.screen_size
        return {
            "repeat_action_probability": float(ale.getFloat("repeat_action_probability")),
            "noop_max": int(pre.noop_max),
            "max_episode_frames": int(ale.getInt("max_num_frames_per_episode")),
            "frame_skip": int(pre.frame_skip),
            "ale_frameskip": int(ale.getInt("frame_skip")) * int(u._frameskip),
            "screen_size": int(size[0]) if size[0] == size[1] else list(size),
            "grayscale": bool(pre.grayscale_obs),
            "frame_stack": int(stack.stack_size),
            "full_action_space": len(u._action_set) != len(ale.getMinimalActionSet()),
            "terminal_on_life_loss": bool(pre.terminal_on_life_loss),
        }

    def _reset_one(self, i: int, seed: int | None) -> np.ndarray:
        obs, info = self._envs[i].reset(seed=seed)
        self._lives[i] = info["lives"]
        return obs

    def _step_one(self, i: int, action: int) -> EnvStep:
        env = self._envs[i]
        obs, raw, te, tr, info = env.step(action)
        final_obs = obs
        lives = int(info["lives"])
        life_lost = lives < self._lives[i]
        game_over = te or tr
        if game_over:
            obs, info = env.reset()  # same-step autoreset
            lives = int(info["lives"])
        self._lives[i] = lives
        # sign() == clip to [-1, 1] for Atari's integer rewards, and is what envpool's reward_clip computes.
        reward = np.sign(raw) if self.resolved["reward_clip"] else raw
        terminated = te or (self.resolved["life_loss_terminal"] and life_lost)
        return EnvStep(obs, final_obs, reward, raw, terminated, tr, game_over)

    def _step_info(self) -> dict[str, Any]:
        return {"lives": self._lives.copy()}

    def render_rgb(self, i: int) -> np.ndarray:
        """The current RGB screen [210, 160, 3] uint8 of env i (for eval videos)."""
        return self._envs[i].unwrapped.ale.getScreenRGB()

    def ram(self) -> np.ndarray:
        """The 128-byte console RAM of every env [B, 128] (for scripted test policies)."""
        return np.stack([env.unwrapped.ale.getRAM() for env in self._envs]).astype(np.uint8)

    def settings(self) -> dict[str, Any]:
        """The preset, the mode and the values read back from the ALE interface and the wrappers."""
        from importlib.metadata import version

        back = self._read_back()
        return {
            "backend": self.backend,
            "name": self.spec.name,
            "game": self.game,
            "num_envs": self.num_envs,
            "seed": self._seed,
            "protocol": self.resolved["protocol"],
            "mode": self.resolved["mode"],
            "frame_skip": back["frame_skip"],
            "repeat_action_probability": back["repeat_action_probability"],
            "noop_max": back["noop_max"],
            "life_loss_terminal": self.resolved["life_loss_terminal"],  # done by this class, not by a wrapper
            "reward_clip": self.resolved["reward_clip"],  # done by this class
            "max_episode_frames": back["max_episode_frames"],
            "frame_stack": back["frame_stack"],
            "screen_size": [back["screen_size"]] * 2 if isinstance(back["screen_size"], int) else back["screen_size"],
            "grayscale": back["grayscale"],
            "max_pool_frames": 2,  # AtariPreprocessing max-pools the last two frames of a skip
            "full_action_space": back["full_action_space"],
            "num_actions": self.spec.num_actions,
            "obs_scale": self.spec.extra["obs_scale"],
            "ale_frameskip": back["ale_frameskip"],
            "protocol_settings": dict(self.resolved),
            "ale_py_version": version("ale-py"),
            "gymnasium_version": version("gymnasium"),
        }
