"""The base of every config section (the run config's `agent`, `env`, `optim`, `runner`, ... and their sub-sections).

A section refuses what a YAML file can say but a run cannot use, at load, with the key's dotted path: unknown keys,
`true`/`false` where a number belongs (YAML reads `total_env_frames: true` as a boolean, which Python would take
as 1), and infinite or NaN numbers (`.inf`, `.nan`). This module imports neither torch nor any env, so that a
config validates in well under a second.
"""

from __future__ import annotations

import types
import typing
import warnings
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


def _accepts_bool(annotation: Any) -> bool:
    """Whether a field's type takes a boolean as itself (bool, Any, or a union or container holding one)."""
    if annotation is bool or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _accepts_bool(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_accepts_bool(a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return any(isinstance(a, bool) for a in typing.get_args(annotation))
    return False


def _holds_numbers(annotation: Any) -> bool:
    """Whether a field's type is (or contains) a number type, so that a boolean in its place is a mistake."""
    if annotation in (int, float):
        return True
    return any(_holds_numbers(a) for a in typing.get_args(annotation) if a is not Ellipsis)


def _bool_in(value: Any) -> bool:
    return isinstance(value, bool) or (isinstance(value, list | tuple) and any(isinstance(v, bool) for v in value))


class ConfigWarning(UserWarning):
    """A setting that is valid but does nothing in this config (e.g. an LSTM size without an LSTM)."""


def config_warning(message: str) -> None:
    """Warn once per message about a setting that cannot apply (the CLI prints it as `warning: ...`)."""
    warnings.warn(message, ConfigWarning, stacklevel=2)


# A section-level error about one of its keys: `validate_config` moves the key into the error's dotted path.
KEY_MARK = "@key "


class ConfigSection(BaseModel):
    """Unknown keys are errors, values are frozen, numbers are finite and booleans are not numbers."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name, value in data.items():
            field = cls.model_fields.get(name)
            if field is None or not _bool_in(value) or not _holds_numbers(field.annotation):
                continue
            if not _accepts_bool(field.annotation):
                raise ValueError(
                    f"{KEY_MARK}{name}: takes numbers, got {value!r} (YAML reads true/false/yes/no/on/off as booleans)"
                )
        return data
