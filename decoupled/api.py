"""The Python API: train from a config, load a trained policy and act with it, build an env, evaluate.

    import decoupled

    result = decoupled.train("impala/catch", runner={"total_env_frames": 20_000})
    policy = decoupled.load_policy(result["run_dir"])
    env = decoupled.make_env(result["run_dir"], num_envs=4)
    obs, state = env.reset(seed=0), None
    action, state = policy.predict(obs, state)            # Stable-Baselines3's predict, recurrent state included
    print(decoupled.evaluate(policy, episodes=20)["mean_score"])

Everything here is a thin layer over the command line's own code (decoupled/runners): a run trained here is the
run `decoupled train` makes, and `decoupled eval` scores the same policy the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from decoupled.envs import VecEnv, make_vec_env, probe_spec
from decoupled.envs.base import EnvSpec
from decoupled.runners.training.config import ConfigBase, apply_overrides, read_config_file, validate_config
from decoupled.runners.training.train import resume_run, start_run

__all__ = ["Policy", "PolicyState", "evaluate", "load_config", "load_policy", "make_env", "train"]


# ----------------------------------------------------------------------------------------------- configs
def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out.get(k) or {}, v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def _sections(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """`runner={"seed": 3}` and `runner__seed=3` -> {"runner": {"seed": 3}}."""
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        parts = key.split("__")
        node = {parts[-1]: dict(value) if isinstance(value, Mapping) else value}
        for part in reversed(parts[:-1]):
            node = {part: node}
        out = _merge(out, node)
    return out


def load_config(config: str | Path | Mapping[str, Any] | ConfigBase, overrides: Iterable[str] = (), **sections: Any):
    """A validated run config from a YAML path, a packaged name (`impala/catch`), a dict or a config object, with
    dotted `overrides` (`"runner.seed=3"`, as on the command line) and section keywords (`runner={"seed": 3}` or
    `runner__seed=3`) applied in that order. Raises `ConfigError` naming every bad key."""
    if isinstance(config, ConfigBase):
        raw, source = config.to_dict(), "<config object>"
    elif isinstance(config, Mapping):
        raw, source = dict(config), "<dict>"
    else:
        path, raw = read_config_file(config)
        source = str(path)
    raw = apply_overrides(raw, list(overrides))
    return validate_config(_merge(raw, _sections(sections)), source)


def train(
    config: str | Path | Mapping[str, Any] | ConfigBase | None = None,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    overrides: Iterable[str] = (),
    **sections: Any,
) -> dict[str, Any]:
    """Train an agent as `decoupled train` does and return its final counters (`env_frames`, `updates`, `status`,
    `run_dir`, ...). `config` as for `load_config`; `run_dir` defaults to `runs/<agent>__<env>__<seed>__<time>`
    (under `$DECOUPLED_RUNS` if set). `resume=True` continues `run_dir` from its newest valid checkpoint
    (`config` then stays None; `overrides` still apply)."""
    from decoupled.runners.evaluation.evaluate import make_periodic_evaluator

    if resume:
        if run_dir is None or config is not None or sections:
            raise ValueError("resume=True continues run_dir with its own config: give run_dir (and overrides) only")
        return resume_run(Path(run_dir), list(overrides), make_periodic_evaluator)
    if config is None:
        raise ValueError("give a config: a YAML path, a packaged name such as 'impala/catch', a dict or a config")
    return start_run(load_config(config, overrides, **sections), run_dir, make_periodic_evaluator)


# ----------------------------------------------------------------------------------------------- policies
@dataclass
class PolicyState:
    """What a policy carries from one step to the next, per env: the core's recurrent state, the previous action,
    and whether the next observation starts an episode."""

    core: tuple[torch.Tensor, ...]
    prev_action: np.ndarray  # [B] int64
    first: np.ndarray  # [B] bool


class Policy:
    """A trained policy from a run dir or checkpoint (`load_policy`), for acting from one's own code.

    `predict(obs, state)` returns actions and the next state, like Stable-Baselines3's `predict`. Observations are
    what the run's env gives (`make_env(run_dir)` builds it): one observation, or a batch `[B, *obs_shape]`. The
    nets take the previous reward as an input: pass `reward` (what the previous actions earned) for that; without
    it the previous reward is 0. Pass `episode_start` (True where the observation begins a new episode) so that the
    recurrent state resets there; the first call (state None) starts every episode.
    """

    def __init__(self, config: ConfigBase, net: torch.nn.Module, spec: EnvSpec, checkpoint: str, seed: int | None):
        self.config, self.net, self.spec, self.checkpoint = config, net, spec, checkpoint
        self.device = next(net.parameters()).device
        self.generator = torch.Generator()  # its own: sampling never touches the global RNG
        if seed is not None:
            self.generator.manual_seed(int(seed))
        else:
            self.generator.seed()  # a non-deterministic seed for this generator alone

    @property
    def num_actions(self) -> int:
        return self.spec.num_actions

    def initial_state(self, batch: int) -> PolicyState:
        """The state before the first step of `batch` new episodes."""
        return PolicyState(
            core=self.net.initial_state(batch, self.device),
            prev_action=np.zeros(batch, np.int64),
            first=np.ones(batch, bool),
        )

    @torch.no_grad()
    def predict(
        self,
        obs: Any,
        state: PolicyState | None = None,
        deterministic: bool = False,
        *,
        reward: Any = None,
        episode_start: Any = None,
    ) -> tuple[np.ndarray | int, PolicyState]:
        """Actions for `obs` (sampled from the policy, or its argmax when `deterministic`) and the next state."""
        from decoupled.runners.evaluation.evaluate import act_with_net

        obs = np.asarray(obs)
        single = obs.shape == tuple(self.spec.obs_shape)
        if single:
            obs = obs[None]
        if obs.shape[1:] != tuple(self.spec.obs_shape):
            raise ValueError(f"observations of shape {obs.shape[1:]} given; this policy takes {self.spec.obs_shape}")
        B = len(obs)
        if state is None:
            state = self.initial_state(B)
        first = state.first if episode_start is None else np.asarray(episode_start, bool).reshape(B)
        prev_reward = np.zeros(B, np.float32) if reward is None else np.asarray(reward, np.float32).reshape(B)
        action, core = act_with_net(
            self.net, obs, first, state.prev_action, prev_reward, state.core, deterministic, self.generator
        )
        next_state = PolicyState(core=core, prev_action=action.astype(np.int64), first=np.zeros(B, bool))
        return (int(action[0]) if single else action), next_state


def load_policy(path: str | Path, *, device: str | torch.device = "cpu", seed: int | None = None) -> Policy:
    """The policy of a run dir (its newest checkpoint that verifies) or of one checkpoint dir, on `device`."""
    from decoupled.runners.evaluation.evaluate import load_checkpoint, make_policy_net

    cfg, state, ckpt = load_checkpoint(Path(path))
    spec = probe_spec(cfg.env.backend, cfg.env.id, cfg.env.options())
    with torch.random.fork_rng(devices=[]):  # building the net draws its (then overwritten) initial parameters
        net = make_policy_net(cfg, state, spec).to(device)
    return Policy(cfg, net, spec, ckpt, seed)


# ----------------------------------------------------------------------------------------------- envs
def _config_of(target: str | Path) -> ConfigBase | None:
    """The config of a run dir, a checkpoint dir, a YAML file or a packaged config name; None for anything else."""
    from decoupled.configs import resolve

    path = Path(target)
    if (path / "config.yaml").is_file():
        return load_config(path / "config.yaml")
    if (path / "manifest.json").is_file():
        return load_config(path.parent.parent / "config.yaml")
    return load_config(path) if resolve(path).is_file() else None


def make_env(
    config_or_id: str | Path | ConfigBase | Policy,
    num_envs: int = 1,
    seed: int = 0,
    *,
    mode: str = "eval",
    backend: str | None = None,
    **options: Any,
) -> VecEnv:
    """A vectorised env (`decoupled.envs.base.VecEnv`): the env of a run dir, a policy, a config (path, packaged name
    or object), or a registered env id (`backend` defaults to `gym`, any gymnasium id, `module:Env-v0` included).
    `mode="eval"` (the default) is the evaluation form (unclipped rewards, whole games); `options` override the
    backend's settings. Close it when done (or use it as a context manager)."""
    if isinstance(config_or_id, Policy):
        config_or_id = config_or_id.config
    cfg = config_or_id if isinstance(config_or_id, ConfigBase) else None
    if cfg is None and backend is None:
        cfg = _config_of(config_or_id)
    if cfg is not None:
        opts = {**cfg.env.options(), **options}
        return make_vec_env(cfg.env.backend, cfg.env.id, num_envs, seed, mode=mode, options=opts)
    return make_vec_env(backend or "gym", str(config_or_id), num_envs, seed, mode=mode, options=options)


def evaluate(
    policy: Policy | str | Path,
    env: VecEnv | None = None,
    *,
    episodes: int = 10,
    seed: int = 0,
    deterministic: bool = False,
) -> dict[str, Any]:
    """Play `episodes` whole episodes with `policy` (a `Policy`, or a run dir / checkpoint to load) and return
    `episode_scores` (unclipped game scores), `episode_frames`, `mean_score` and `std_score`. Without `env` the
    policy's own env is built in evaluation form with up to 8 copies (closed afterwards)."""
    from decoupled.runners.evaluation.evaluate import Policy as EvalPolicy
    from decoupled.runners.evaluation.evaluate import check_eval_request, eval_num_envs, play_episodes

    if not isinstance(policy, Policy):
        policy = load_policy(policy, seed=seed)
    check_eval_request(episodes, [seed])
    own = env is None
    if env is None:
        env = make_env(policy.config, eval_num_envs(episodes, None), seed)
    try:
        if env.spec.obs_shape != policy.spec.obs_shape or env.spec.num_actions != policy.spec.num_actions:
            raise ValueError(f"the env ({env.spec.name}) does not match the policy's ({policy.spec.name})")
        net_policy = EvalPolicy(env.spec.num_actions, seed, policy.net, greedy=deterministic)
        result = play_episodes(env, net_policy, episodes, seed)
    finally:
        if own:
            env.close()
    scores = np.asarray(result["episode_scores"], float)
    return {**result, "mean_score": float(scores.mean()), "std_score": float(scores.std())}
