"""The command line of a job config: one ``--option`` per field, parsed back into the config."""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any

from ray_cora.configs.base import C, JobConfig
from ray_cora.errors import ConfigError


def _is_list(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_is_list(a) for a in typing.get_args(annotation) if a is not type(None))
    return False



def _is_bool(annotation: Any) -> bool:
    if annotation is bool:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_bool(a) for a in typing.get_args(annotation) if a is not type(None))
    return False



def short_flag(name: str, field: Any) -> str | None:
    """The short alias a field declares with ``json_schema_extra={"short": "-k"}``, checked.

    >>> from pydantic import Field
    >>> class Example(JobConfig):
    ...     k: int = Field(10, json_schema_extra={"short": "-k"})
    >>> short_flag("k", Example.model_fields["k"])
    '-k'
    """
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    short = extra.get("short")
    if short is None:
        return None
    if not (isinstance(short, str) and len(short) == 2 and short[0] == "-" and short[1].isalpha()):
        raise ConfigError(f"field {name!r}: short alias {short!r} must be one dash and one letter, e.g. '-k'")
    return short



def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type[JobConfig]) -> None:
    """One ``--option`` per config field (plus its short alias, when the field declares one with
    ``json_schema_extra={"short": "-k"}``), documented from the field's description and default."""
    parser.add_argument("--config", metavar="YAML", help="YAML file with any of the options below; "
                        "options given on the command line override it")
    for name, field in config_cls.model_fields.items():
        flag = "--" + name.replace("_", "-")
        short = short_flag(name, field)
        flags = (short, flag) if short else (flag,)
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        help_text = (field.description or "").rstrip(".")
        if field.is_required():
            help_text += " (required)"
        elif default is not None and default != "" and default != []:
            shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
            help_text += f" (default: {shown})"
        if _is_bool(field.annotation):
            parser.add_argument(*flags, dest=name, nargs="?", const="true", default=None,
                                metavar="true|false", help=help_text)
        else:
            metavar = "A,B,..." if _is_list(field.annotation) else name.split("_")[-1].upper()
            parser.add_argument(*flags, dest=name, default=None, metavar=metavar, help=help_text)



def config_from_args(config_cls: type[C], args: argparse.Namespace) -> C:
    overrides: dict[str, Any] = {}
    for name, field in config_cls.model_fields.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        if _is_list(field.annotation):
            value = [v.strip() for v in value.split(",") if v.strip()]
        overrides[name] = value
    return config_cls.load(getattr(args, "config", None), overrides)
