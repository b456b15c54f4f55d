"""Run configs: typed, validated once at load, before any env or process starts.

A config is a YAML file with the sections `agent`, `env`, `optim`, `runner` and `wandb`, plus dotted overrides
from the command line (`runner.total_env_frames=200000`). Unknown keys, wrong types and out-of-range values are
all collected and reported together, each with its full dotted path, as a `ConfigError`.

Counts carry their unit in their name: `*_env_frames` count emulator frames (what papers report), `unroll_length`
counts agent steps. On Atari one agent step is `frame_skip` (4) emulator frames.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model, field_validator, model_validator

from decoupled.agents import agent_names, get_agent_config
from decoupled.agents.config import AgentConfigBase
from decoupled.envs import env_backends, get_env_backend
from decoupled.envs.config import EnvConfigBase
from decoupled.sections import KEY_MARK, ConfigSection


class ConfigError(ValueError):
    """A config that cannot run. `errors` lists (dotted_path, message) pairs."""

    def __init__(self, errors: list[tuple[str, str]], source: str = ""):
        self.errors = errors
        lines = [f"  {path}: {msg}" for path, msg in errors]
        where = f" in {source}" if source else ""
        super().__init__(f"invalid config{where}:\n" + "\n".join(lines))
        self.source = source

    def __reduce__(self):  # picklable, so that a worker process can report it
        return (type(self), (self.errors, self.source))


class _Section(ConfigSection):
    pass


# ----------------------------------------------------------------------------------------------- other sections
class OptimConfig(_Section):
    name: Literal["rmsprop", "rmsprop_tf", "adam"] = Field(
        "rmsprop",
        description="rmsprop: torch's (eps added outside the square root, mean square starts at 0); rmsprop_tf: "
        "TensorFlow's, as the IMPALA paper's code used it (eps inside the square root, mean square starts at 1)",
    )
    lr: float = Field(6e-4, gt=0.0, le=1.0, description="IMPALA Atari: 0.0006")
    lr_schedule: Literal["linear", "constant"] = Field("linear", description="linear: anneal to 0 over the run")
    alpha: float = Field(0.99, gt=0.0, lt=1.0, description="RMSProp decay")
    eps: float = Field(0.01, gt=0.0, description="RMSProp/Adam epsilon (rmsprop_tf: inside the square root)")
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    max_grad_norm: float | None = Field(
        40.0,
        gt=0.0,
        description="global gradient-norm clip, in summed-loss units (the IMPALA paper's and TorchBeast's 40) under "
        "either agent.loss_reduction: with 'mean' the learner clips at max_grad_norm / (transitions averaged over); "
        "null: none",
    )


class RayConfig(_Section):
    """`runner.ray`: where the Ray actors of `runner.mode: ray` run (runners/training/ray_actors.py)."""

    address: str = Field(
        "",
        description="'': start a local Ray inside the run (stopped at its end); 'auto', 'host:port' or "
        "'ray://host:port': join a running cluster (`ray start --head`), which the run never stops",
    )
    num_cpus_per_actor: float = Field(1.0, gt=0.0, le=64.0, description="CPUs Ray reserves for each actor")
    object_store_mb: int = Field(
        256, ge=80, le=1_000_000, description="object store of the local Ray the run starts (ignored when joining)"
    )
    temp_dir: str = Field(
        "",
        description="Ray's session files and logs of the local Ray the run starts; '': RUN_DIR/ray (reached through a "
        "short link under /tmp when that path is too long for Ray's Unix sockets)",
    )


class RunnerConfig(_Section):
    mode: Literal["serial", "async", "processes", "ray"] = Field(
        "serial",
        description="serial: actor and learner alternate in one thread (deterministic); async: actor threads fill a "
        "bounded queue of rollouts while the learner trains on them (V-trace corrects the lag); processes: the "
        "actors are processes on this machine handing rollouts and parameters over in shared memory, replaced when "
        "one dies; ray: the actors are Ray actors (other processes or machines, see runner.ray), restarted by Ray "
        "when one dies",
    )
    num_actors: int | Literal["auto"] = Field(
        "auto",
        description="async: actor threads; processes: actor processes; ray: Ray actors (env.num_envs split between "
        "them); auto: in processes mode one per CPU core beyond the learner's (the largest such count that splits "
        "the envs evenly), 1 in the other modes",
    )
    actor_threads: int = Field(
        1, ge=1, le=256, description="processes: torch intra-op threads of each actor process (Sample Factory: 1)"
    )
    ray: RayConfig = RayConfig()
    env_groups: int = Field(
        1,
        ge=1,
        le=16,
        description="an actor's envs in this many groups stepped in a pipeline: while one group steps (envpool "
        "threads), the net acts for the next; 2 overlaps env stepping with inference",
    )
    queue_size: int = Field(
        1,
        ge=1,
        le=64,
        description="async: rollouts waiting for the learner (bounds policy lag); processes: rollouts each actor may "
        "have waiting (its shared-memory slots: this + 2); ray: rollouts in flight per actor",
    )
    max_env_restarts: int = Field(
        10,
        ge=0,
        description="async: times an actor rebuilds its envs after an env crash before the run stops; processes and "
        "ray: also the times each actor process may die (and be replaced) before the run stops",
    )
    seed: int = Field(
        0,
        ge=0,
        le=2_000_000_000,
        description="env i gets seed + i (restarts add offsets): below 2^31 for every env library",
    )
    total_env_frames: int = Field(gt=0, description="training budget in emulator frames")
    unroll_length: int = Field(20, ge=1, le=10_000, description="agent steps per unroll (IMPALA: 20)")
    log_every_env_frames: int = Field(10_000, ge=1, description="a metrics.jsonl line at least this often")
    progress_every_seconds: float = Field(10.0, gt=0.0, description="the console progress line")
    max_wall_seconds: float | None = Field(
        None, gt=0.0, description="also stop (with a checkpoint) once the run has trained this long; null: no limit"
    )
    env_step_timeout_s: float | None = Field(
        60.0,
        gt=0.0,
        description="an env step (one call into an actor's env group) running this long is a hung env: the run "
        "writes the learner's checkpoint and exits non-zero with the command that resumes it (envs in worker "
        "processes, e.g. the labyrinth, restart the worker instead); null: no limit",
    )
    eval_every_env_frames: int | None = Field(
        None,
        ge=1,
        description="evaluate the policy this often during training (separate env copies, the evaluation form of the "
        "task, as `decoupled eval`): eval/ metrics, checkpoints/best by eval score, the final eval in the summary; "
        "null: no evaluation during training",
    )
    eval_episodes: int = Field(10, ge=1, le=10_000, description="episodes of each evaluation during training")
    eval_seed: int = Field(
        12345, ge=0, le=2_000_000_000, description="env seed of every evaluation during training (the same episodes)"
    )
    eval_video: bool = Field(
        True, description="each evaluation during training also films one episode (videos/eval_<frames>.gif, W&B)"
    )
    eval_video_steps: int = Field(1000, ge=1, description="agent steps of each evaluation video at most")
    checkpoint_every_env_frames: int = Field(1_000_000, ge=1)
    checkpoint_every_seconds: float | None = Field(600.0, gt=0.0)
    keep_checkpoints: int = Field(3, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="the learner's torch intra-op threads; null: torch's default (processes mode on a CPU: the cores "
        "the actor processes leave, at least 1)",
    )
    deterministic: bool = Field(True, description="serial mode on CPU: bit-identical runs and resumes")
    max_nonfinite_updates: int = Field(
        10, ge=1, description="consecutive updates with a non-finite loss or gradient (skipped) before the run stops"
    )

    @field_validator("num_actors", mode="before")
    @classmethod
    def _num_actors_word(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "auto":
            raise ValueError(f"must be 'auto' or a whole number in [1, 64], got {value!r}")
        return value

    @model_validator(mode="after")
    def _num_actors_in_range(self) -> RunnerConfig:
        if self.num_actors != "auto" and not 1 <= self.num_actors <= 64:
            why = "must be 'auto' or a whole number in [1, 64]"
            raise ValueError(f"{KEY_MARK}num_actors: {why}, got {self.num_actors}")
        return self

    @property
    def actor_count(self) -> int:
        """Actors that step envs: num_actors in async, processes and ray mode, the one serial actor otherwise
        (`auto` is resolved when the whole config is validated, where the env count is known)."""
        if self.mode == "serial" or self.num_actors == "auto":
            return 1
        return self.num_actors


class WandbConfig(_Section):
    mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="offline by default; the WANDB_MODE environment variable overrides it"
    )
    project: str = "decoupled"
    entity: str | None = None
    group: str | None = None
    tags: tuple[str, ...] = ()
    init_timeout_s: float = Field(30.0, gt=0.0, le=600.0)
    finish_timeout_s: float = Field(
        60.0,
        gt=0.0,
        le=3600.0,
        description="at the end, the longest wait for W&B to take the last records, to finish, and to have written "
        "them all to its local .wandb file (each); past it the run says that W&B did not finish",
    )


class LoggerConfig(_Section):
    tensorboard: bool = Field(
        True, description="also write TensorBoard event files into the run dir (tensorboard --logdir runs/)"
    )


def usable_cpus() -> int:
    """CPU cores this process may run on: its affinity mask (a container's or `taskset`'s limit), else all."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def default_actor_processes(cpus: int, envs_to_split: int) -> int:
    """`runner.num_actors: auto` in processes mode: one actor process per core beyond the learner's (at least one, at
    most 64), the largest such count that splits the envs evenly (`envs_to_split` = env.num_envs / env_groups)."""
    want = min(64, max(1, cpus - 1), envs_to_split)
    return max(n for n in range(1, want + 1) if envs_to_split % n == 0)


class ConfigBase(_Section):
    env: EnvConfigBase  # each run's model replaces it with the union of the registered backends' sections
    optim: OptimConfig = OptimConfig()
    runner: RunnerConfig
    wandb: WandbConfig = WandbConfig()
    logger: LoggerConfig = LoggerConfig()

    @model_validator(mode="after")
    def _torso_fits_env(self) -> ConfigBase:
        torso = getattr(self.agent, "torso", None)  # type: ignore[attr-defined]
        if torso is not None and torso != "mlp" and get_env_backend(self.env.backend).observations == "vector":
            raise ValueError(
                f"agent.torso={torso} needs image observations; env backend {self.env.backend} gives vectors"
            )
        return self

    @model_validator(mode="after")
    def _envs_split_evenly(self) -> ConfigBase:
        r = self.runner
        if r.num_actors == "auto":  # resolved here, where the env count is known; the run's config.yaml keeps the count
            count = 1
            if r.mode == "processes" and self.env.num_envs % r.env_groups == 0:
                count = default_actor_processes(usable_cpus(), self.env.num_envs // r.env_groups)
            # sections are frozen: this config gets a runner section of its own with the count
            object.__setattr__(self, "runner", r.model_copy(update={"num_actors": count}))
            r = self.runner
        actors = r.actor_count
        if r.mode == "serial" and r.num_actors != 1:
            raise ValueError("runner.num_actors > 1 needs runner.mode=async, processes or ray")
        if self.env.num_envs % (actors * r.env_groups):
            raise ValueError(
                f"env.num_envs={self.env.num_envs} must split evenly into runner.num_actors={actors} x "
                f"runner.env_groups={r.env_groups} groups"
            )
        return self

    @model_validator(mode="after")
    def _agent_fits_run(self) -> ConfigBase:
        self.agent.check_run(self)  # type: ignore[attr-defined]
        return self

    @property
    def agent_name(self) -> str:
        return self.agent.name  # type: ignore[attr-defined]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


_MODELS: dict[tuple[str, tuple[str, ...]], type[ConfigBase]] = {}


def env_section_union() -> Any:
    """The `env` section's type: one class per registered backend, told apart by `backend`."""
    classes = tuple(dict.fromkeys(b.config_class for b in env_backends().values()))
    if len(classes) == 1:
        return classes[0]
    return Annotated[Union[classes], Field(discriminator="backend")]  # noqa: UP007 - a runtime tuple of classes


def config_model(agent: str) -> type[ConfigBase]:
    """The full config class for one agent: the shared sections, that agent's own `agent` section and the `env`
    section of every registered backend (plug-ins included)."""
    key = (agent, tuple(env_backends()))
    if key not in _MODELS:
        agent_cfg: type[AgentConfigBase] = get_agent_config(agent)
        _MODELS[key] = create_model(
            f"{agent.title()}RunConfig", __base__=ConfigBase, agent=(agent_cfg, ...), env=(env_section_union(), ...)
        )
    return _MODELS[key]


# ----------------------------------------------------------------------------------------------- loading
# A config, written out with every alias expanded, has a few hundred values; anything past this is an alias bomb
# ("billion laughs": a few lines of nested aliases that expand to gigabytes), refused before it is built.
MAX_YAML_NODES = 100_000


def safe_yaml(text: str, what: str = "config") -> Any:
    """`yaml.safe_load` that refuses, fast, a document whose aliases expand past `MAX_YAML_NODES` values or refer
    to themselves, and a mapping that gives one key twice. Raises `yaml.YAMLError`."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        sizes: dict[int, int] = {}
        open_nodes: set[int] = set()

        def expanded(n: yaml.Node) -> int:  # values of `n` with every alias written out; children before parents
            stack = [(n, False)]
            while stack:
                cur, children_done = stack.pop()
                key = id(cur)
                if key in sizes:
                    continue
                if isinstance(cur, yaml.ScalarNode):
                    sizes[key] = 1
                    continue
                kids = [c for pair in cur.value for c in pair] if isinstance(cur, yaml.MappingNode) else cur.value
                if children_done:
                    open_nodes.discard(key)
                    sizes[key] = 1 + sum(sizes[id(c)] for c in kids)
                    if sizes[key] > MAX_YAML_NODES:
                        raise yaml.YAMLError(
                            f"the {what} expands to more than {MAX_YAML_NODES:,} values through its aliases (&name / "
                            "*name); write the values out, or use fewer nested aliases"
                        )
                    continue
                if key in open_nodes:
                    raise yaml.YAMLError(f"the {what} has an alias that refers to itself (a recursive &name / *name)")
                if isinstance(cur, yaml.MappingNode):  # YAML says keys are unique; PyYAML keeps the last silently
                    seen: dict[str, yaml.Node] = {}
                    for k, _ in cur.value:
                        if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                            if k.value in seen:
                                first = seen[k.value].start_mark.line + 1
                                raise yaml.YAMLError(
                                    f"key {k.value!r} appears twice in one mapping (lines {first} and "
                                    f"{k.start_mark.line + 1}); the second would silently replace the first"
                                )
                            seen[k.value] = k
                open_nodes.add(key)
                stack.append((cur, True))
                stack.extend((c, False) for c in kids if id(c) not in sizes)
            return sizes[id(n)]

        expanded(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a nested dict, returning a new dict."""
    out = json.loads(json.dumps(raw))  # deep copy of plain data
    errors: list[tuple[str, str]] = []
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            errors.append((item, "overrides look like section.key=value, e.g. runner.total_env_frames=200000"))
            continue
        try:
            value = safe_yaml(text, "override") if text.strip() else ""
        except yaml.YAMLError as e:
            errors.append((key, f"cannot parse value {text!r}: {e}"))
            continue
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                errors.append((key, f"{'.'.join(parts[: i + 1])} is a value, not a section"))
                break
            node = child
        else:
            node[parts[-1]] = value
    if errors:
        raise ConfigError(errors, "overrides")
    return out


def _path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    # a discriminated union adds its tag to the location (env.catch.rows): drop it so the path is the YAML's
    if len(parts) > 1 and parts[0] == "env" and parts[1] in env_backends():
        parts.pop(1)
    return ".".join(parts) if parts else "<root>"


# `1e7`, `2.5E6`, `1_000e3`: YAML 1.1 (PyYAML) reads a number in exponent form without a dot and a signed exponent
# as a string, and pydantic will not read such a string as an integer; `10_000_000` is already an int in YAML.
_EXPONENT_NUMBER = re.compile(r"^[+-]?(\d[\d_]*(\.[\d_]*)?|\.\d[\d_]*)[eE][+-]?\d+$")


def _numbers(node: Any) -> Any:
    """Strings written as numbers in exponent form (`1e7`) -> int where whole, else float, anywhere in the tree."""
    if isinstance(node, dict):
        return {k: _numbers(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_numbers(v) for v in node]
    if isinstance(node, str) and _EXPONENT_NUMBER.match(node.strip()):
        value = float(node.replace("_", ""))
        return int(value) if value.is_integer() and abs(value) < 2**63 else value
    return node


def validate_config(raw: dict[str, Any], source: str = "") -> ConfigBase:
    if not isinstance(raw, dict):
        raise ConfigError([("<root>", "a config is a mapping with sections agent, env, optim, runner, wandb")], source)
    raw = _numbers(raw)
    agent = raw.get("agent")
    name = agent.get("name") if isinstance(agent, dict) else None
    if name not in agent_names():
        msg = f"must name an agent: one of {', '.join(agent_names())} (got {name!r})"
        raise ConfigError([("agent.name", msg)], source)
    try:
        return config_model(name).model_validate(raw)
    except ValidationError as e:
        errors = []
        for err in e.errors():
            msg = err["msg"]
            loc = tuple(err["loc"])
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling; see the config reference in the README)"
            elif KEY_MARK in msg:  # a section's check of one of its keys (decoupled.sections)
                key, _, msg = msg.partition(KEY_MARK)[2].partition(": ")
                loc = (*loc, key)
            errors.append((_path(loc), msg))
        raise ConfigError(errors, source) from None


def read_config_file(path: str | Path) -> tuple[Path, Any]:
    """The parsed YAML of a config file, or of a packaged config by name (`impala/catch`; `decoupled configs`
    lists them), with the file it came from."""
    from decoupled.configs import resolve

    path = resolve(path)
    if not path.is_file():
        raise ConfigError(
            [("<file>", f"no config file at {path} (and no packaged config of that name; see `decoupled configs`)")],
            str(path),
        )
    try:
        raw = safe_yaml(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        msg = f"not UTF-8 text ({e.reason} at byte {e.start}); a config is a YAML text file"
        raise ConfigError([("<file>", msg)], str(path)) from None
    except yaml.YAMLError as e:
        raise ConfigError([("<file>", f"not valid YAML: {e}")], str(path)) from None
    return path, raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> ConfigBase:
    """Read a YAML config (a path or a packaged config's name), apply dotted overrides and validate everything."""
    path, raw = read_config_file(path)
    return validate_config(apply_overrides(raw, overrides or []), str(path))


def dump_config(cfg: ConfigBase, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# ----------------------------------------------------------------------------------------------- reference
SECTIONS = ("agent", "env", "optim", "runner", "wandb", "logger")


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation).replace("typing.", "")
    return re.sub(r"<class '([\w.]+)'>", r"\1", text).replace("NoneType", "None")


def _field_lines(prefix: str, model: type[BaseModel]) -> list[str]:
    lines = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):  # a nested section, e.g. agent.dni
            lines += _field_lines(f"{prefix}.{name}", annotation)
            continue
        default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
        about = f"  {field.description}" if field.description else ""
        lines.append(f"{prefix}.{name}: {_type_name(annotation)} = {default}{about}")
    return lines


def config_reference(section: str | None = None, agent: str | None = None) -> list[str]:
    """Every config key as `section.key: type = default  description`, for one section or all (`decoupled config
    --keys [SECTION]`): the `agent` section of every agent (or of `agent`), the `env` section of every backend."""
    if section is not None and section not in SECTIONS:
        raise ValueError(f"unknown config section {section!r}; choose one of {', '.join(SECTIONS)}")
    lines: list[str] = []
    for sec in [section] if section else SECTIONS:
        if sec == "agent":
            for name in [agent] if agent else agent_names():
                lines += [f"# agent.name: {name}", *_field_lines("agent", get_agent_config(name))]
        elif sec == "env":
            for name, backend in env_backends().items():
                lines += [f"# env.backend: {name}", *_field_lines("env", backend.config_class)]
        else:
            models = {"optim": OptimConfig, "runner": RunnerConfig, "wandb": WandbConfig, "logger": LoggerConfig}
            lines += _field_lines(sec, models[sec])
    return lines
