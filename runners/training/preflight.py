"""Checks of a run before it starts, beyond what the config alone says: the device, the env (it exists, its actions are
discrete, its observations fit the net), the net (it builds and acts on one observation) and the memory it needs.

`decoupled train` runs them before the run dir exists, so that a run that cannot work exits 2 with the key to fix
instead of crashing after start. The env checks come first and import no torch: a wrong env id fails fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from decoupled.agents import get_agent
from decoupled.envs import probe_spec
from decoupled.runners.training.config import ConfigBase, ConfigError


def _cuda_available() -> bool:
    """torch's answer; without NVIDIA device nodes there is no CUDA device, known without importing torch."""
    if not any(Path(p).exists() for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg")):
        return False
    import torch

    return torch.cuda.is_available()


def machine_memory_bytes() -> int | None:
    """The memory this process may use: the machine's, or its cgroup's limit where that is lower."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def memory_estimate(cfg: ConfigBase, spec: Any, num_params: int) -> dict[str, int]:
    """Bytes a run holds at least, by part: the learner's parameters with their gradients and optimiser state, each
    actor's copy, the rollouts in flight, and replay (observations as float32, what the learner sees)."""
    r = cfg.runner
    obs_bytes = 4 * int(np.prod(spec.obs_shape))
    steps_in_flight = (r.unroll_length + 1) * cfg.env.num_envs * (r.queue_size + 2)
    parts = {
        "parameters, gradients and optimiser state": 4 * num_params * 4,
        "actor copies of the net": 4 * num_params * (r.actor_count if r.mode != "serial" else 0),
        "rollouts in flight": obs_bytes * steps_in_flight,
    }
    replay_steps = getattr(cfg.agent, "replay_capacity_steps", 0)
    uses_replay = getattr(cfg.agent, "uses_replay", False) or getattr(cfg.agent, "replay_ratio", 0) > 0
    if uses_replay and replay_steps:
        parts["replay"] = obs_bytes * replay_steps
    return parts


def ray_address_endpoint(address: str) -> tuple[str, int] | None:
    """The (host, port) a cluster address names: `host:port`, `ray://host:port` (Ray Client), or a bare host
    (Ray's default port, 6379; 10001 for `ray://`); None for `auto` and `local`, which Ray resolves itself."""
    if address in ("auto", "local"):
        return None
    client = address.startswith("ray://")
    rest = address[len("ray://") :] if client else address
    host, sep, port = rest.rpartition(":")
    if not sep:
        return rest, 10001 if client else 6379
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise ValueError(f"{address!r}: the port {port!r} is not a number") from None


def probe_ray_address(address: str, timeout_s: float = 5.0) -> str | None:
    """None when something accepts a connection at the cluster address (or Ray resolves it itself, `auto`); else
    why not, in words. Ray's own connect retries for about a minute and a half before it gives up on an address
    where nothing listens; this answers in `timeout_s`."""
    import socket

    try:
        endpoint = ray_address_endpoint(address)
    except ValueError as e:
        return str(e)
    if endpoint is None:
        return None
    try:
        socket.create_connection(endpoint, timeout=timeout_s).close()
    except OSError as e:
        return (
            f"nothing accepts connections at {endpoint[0]}:{endpoint[1]} ({e.strerror or e}): start the cluster "
            "there first (`ray start --head --port PORT`, docs/cluster.md), or use `auto` for a cluster started on "
            'this machine, or "" for a Ray of the run\'s own'
        )
    return None


def preflight(cfg: ConfigBase) -> None:
    """Everything that can be known about a run before it starts and was not known at config load: the device, the
    env (it exists, its actions are discrete, its observations fit the net), the net (it builds and runs one step on
    one observation), the memory the run needs against this machine's, and that a Ray cluster it joins answers. Raises
    `ConfigError` naming the key."""
    r, e = cfg.runner, cfg.env
    if r.device == "cuda" and not _cuda_available():
        raise ConfigError([("runner.device", "cuda, but no CUDA device is visible here: use auto or cpu")])
    if r.mode == "ray" and r.ray.address:  # a cluster where nothing listens: Ray itself waits 1.5 minutes to say so
        why = probe_ray_address(r.ray.address)
        if why is not None:
            raise ConfigError([("runner.ray.address", f"cannot join a Ray cluster at {r.ray.address}: {why}")])
    try:
        spec = probe_spec(e.backend, e.id, e.options())
    except Exception as exc:  # noqa: BLE001 - whatever the env library raises, say which key and why
        why = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ConfigError([("env.id", f"cannot build {e.id!r} on env.backend={e.backend}: {why}")]) from None
    import torch  # the env is known to work: now the net

    agent = get_agent(cfg.agent_name)

    def unbuildable(exc: BaseException) -> ConfigError:
        msg = f"the {cfg.agent_name} net cannot be built for {e.id}'s observations {spec.obs_shape}: {exc}"
        return ConfigError([("agent", msg)])

    num_params: int | None = None
    with torch.device("meta"):  # shapes only: a net too big for memory is counted, not allocated
        try:
            num_params = sum(p.numel() for p in agent.make_net(spec, cfg.agent).parameters())
        except Exception as exc:  # noqa: BLE001
            # a net that computes values while it is built (a plug-in's, say) cannot be built on the meta device:
            # no estimate then, the build below still checks it; anything else is a real error
            if not (isinstance(exc, NotImplementedError | RuntimeError) and "meta" in str(exc).lower()):
                raise unbuildable(exc) from None
    parts = memory_estimate(cfg, spec, num_params) if num_params is not None else {}
    limit = machine_memory_bytes()
    if limit is not None and num_params is not None and sum(parts.values()) > 0.8 * limit:
        gib = 2.0**30
        detail = ", ".join(f"{k} {v / gib:.1f} GiB" for k, v in parts.items() if v)
        msg = (
            f"the run needs at least {sum(parts.values()) / gib:.1f} GiB ({num_params:,} parameters; {detail}) and "
            f"this machine has {limit / gib:.1f} GiB: make agent.hidden_sizes / agent.lstm_size, env.num_envs or "
            "runner.unroll_length (or agent.replay_capacity_steps) smaller"
        )
        raise ConfigError([("agent", msg)])
    try:
        net = agent.make_net(spec, cfg.agent).eval()
    except Exception as exc:  # noqa: BLE001
        raise unbuildable(exc) from None
    try:  # one step on one observation: a torso the observations are too small for fails here, not after start
        with torch.no_grad():
            inputs = {
                "obs": torch.zeros((1, 1, *spec.obs_shape), dtype=torch.float32),
                "first": torch.ones((1, 1), dtype=torch.bool),
                "prev_action": torch.zeros((1, 1), dtype=torch.long),
                "prev_reward": torch.zeros((1, 1)),
            }
            for key, size in getattr(net, "extra_inputs", {}).items():  # inputs from the env's extras (velocity)
                inputs[key] = torch.zeros((1, 1, size))
            net(inputs, net.initial_state(1))
    except Exception as exc:  # noqa: BLE001
        torso = getattr(cfg.agent, "torso", None)
        key = "agent.torso" if torso else "agent"
        msg = f"the {cfg.agent_name} net cannot act on {e.id}'s observations {spec.obs_shape}" + (
            f" with agent.torso={torso}" if torso else ""
        )
        raise ConfigError([(key, f"{msg}: {str(exc).strip().splitlines()[0]}")]) from None
