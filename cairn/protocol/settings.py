"""Command-line options generated from the configuration dataclasses: one default, one range, one help each.

A config field declares its own command-line face in its metadata (`setting(...)`): help text, a numeric
range or a list of choices. `config_option(Config, "field")` turns it into a click option whose default is
the dataclass default, so `cairn train`, `cairn coordinator init` and `cairn swarm` cannot drift apart from
`TrainingConfig` (they did: `--lr` defaulted to 1e-3 in the CLIs while the config said 2e-3).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import click


def setting(
    default: Any,
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    min_open: bool = False,
    choices: Sequence[str] | None = None,
) -> Any:
    """A dataclass field with its command-line help and valid range (or choices)."""
    metadata = {"help": help, "min": min, "max": max, "min_open": min_open, "choices": tuple(choices) if choices else None}
    return dataclasses.field(default=default, metadata=metadata)


def field_default(config_class: type, name: str) -> Any:
    field = _field(config_class, name)
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise KeyError(f"{config_class.__name__}.{name} has no default")


def click_type(config_class: type, name: str) -> click.ParamType:
    """The click type of a field: Choice for choices, Int/FloatRange from its range, else from its default's type."""
    field, default = _field(config_class, name), field_default(config_class, name)
    meta = field.metadata
    if meta.get("choices"):
        return click.Choice(meta["choices"])
    if isinstance(default, bool):
        return click.BOOL
    if isinstance(default, int):
        return click.IntRange(min=meta.get("min"), max=meta.get("max"))
    if isinstance(default, float):
        return click.FloatRange(min=meta.get("min"), max=meta.get("max"), min_open=meta.get("min_open", False))
    return click.STRING


def check_value(config_class: type, name: str, value: Any) -> None:
    """Raise ValueError when `value` is outside the field's declared range or choices (for configs built from JSON)."""
    meta = _field(config_class, name).metadata
    if meta.get("choices") and value not in meta["choices"]:
        raise ValueError(f"{name} must be one of {', '.join(meta['choices'])}, not {value!r}")
    low, high = meta.get("min"), meta.get("max")
    if low is not None and (value < low or (meta.get("min_open") and value == low)):
        raise ValueError(f"{name} must be {'>' if meta.get('min_open') else '>='} {low}, not {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, not {value!r}")


def check_ranges(config: Any) -> None:
    """Check every declared range of a config instance (called from __post_init__)."""
    for field in dataclasses.fields(config):
        if field.metadata.get("help") is not None:
            check_value(type(config), field.name, getattr(config, field.name))


def config_option(config_class: type, name: str, *param_decls: str, help: str | None = None, **kwargs: Any) -> Callable:
    """A click option for `config_class.name`: `--name-with-dashes` unless `param_decls` are given."""
    field = _field(config_class, name)
    decls = param_decls or (f"--{name.replace('_', '-')}",)
    return click.option(
        *decls,
        name,
        type=kwargs.pop("type", click_type(config_class, name)),
        default=kwargs.pop("default", field_default(config_class, name)),
        show_default=True,
        help=help or field.metadata.get("help"),
        **kwargs,
    )


def split_settings(settings: dict, *config_classes: type) -> list[dict]:
    """Split a command's keyword arguments by the config class whose field each one is (first match wins)."""
    parts: list[dict] = [{} for _ in config_classes]
    for name, value in settings.items():
        for part, config_class in zip(parts, config_classes):
            if name in {field.name for field in dataclasses.fields(config_class)}:
                part[name] = value
                break
        else:
            raise KeyError(f"{name!r} is no field of {', '.join(c.__name__ for c in config_classes)}")
    return parts


def _field(config_class: type, name: str) -> dataclasses.Field:
    for field in dataclasses.fields(config_class):
        if field.name == name:
            return field
    raise KeyError(f"{config_class.__name__} has no field {name!r}")


DEVICES = ("auto", "cpu", "cuda")


def device_option() -> Callable:
    """--device, the same for every command that runs the encoder."""
    return click.option(
        "--device",
        default="auto",
        show_default=True,
        type=click.Choice(DEVICES),
        help="where the encoder runs: auto takes CUDA when torch sees a GPU",
    )
