"""The shipped configs, `<agent>/<task>.yaml`, installed with the package (so `decoupled train impala/catch` works
from any directory). `resolve` turns a packaged name or a path into a file; `names` lists the packaged configs."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def _root() -> Path:
    return Path(str(files(__name__)))


def names() -> list[str]:
    """Every packaged config as `<agent>/<task>` (the YAML files beside this module)."""
    root = _root()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.glob("*/*.yaml"))


def resolve(name_or_path: str | Path) -> Path:
    """A config file: `name_or_path` itself when that file exists, else the packaged config of that name
    (`impala/catch`, `impala/catch.yaml`, or `configs/impala/catch.yaml` as written in the README)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = path.as_posix()
    name = name.removeprefix("configs/").removesuffix(".yaml")
    packaged = _root() / f"{name}.yaml"
    if packaged.is_file():
        return packaged
    return path  # not found anywhere: the caller reports the path as given
