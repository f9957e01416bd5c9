"""The command line of a job config: one ``--option`` per field, parsed back into the config.
A field's aliases (its old names, :func:`~ray_cora.configs.base.aliases`) get a flag each, listed
as "alias of --option"; the options an option group declares get their own --help section."""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any

from ray_cora.configs.base import C, JobConfig, both_names_message, option_aliases, option_forms
from ray_cora.errors import ConfigError


def _is_list(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_is_list(a) for a in typing.get_args(annotation) if a is not type(None))
    return False



def literal_choices(annotation: Any) -> tuple[Any, ...]:
    """The values a ``Literal[...]`` option takes (also inside ``Optional``/``Annotated``), else ().

    >>> literal_choices(typing.Optional[typing.Literal["error", "skip"]])
    ('error', 'skip')
    """
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        return tuple(v for a in typing.get_args(annotation) if a is not type(None) for v in literal_choices(a))
    return ()


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



def flag_aliases(config_cls: type[JobConfig], name: str) -> tuple[str, ...]:
    """The aliases field ``name`` keeps (see :func:`~ray_cora.configs.base.aliases`), checked: each
    a lower-case identifier that names no other option of the config.

    >>> from ray_cora.configs.embed import EmbedConfig
    >>> flag_aliases(EmbedConfig, "actors")
    ('concurrency', 'num_actors')
    """
    found = option_aliases(config_cls.model_fields[name])
    for alias in found:
        if not (isinstance(alias, str) and alias.isidentifier() and alias == alias.lower()):
            raise ConfigError(f"field {name!r}: alias {alias!r} must be a lower-case option name, e.g. 'concurrency'")
        if alias in config_cls.model_fields or alias == "config":
            raise ConfigError(f"field {name!r}: alias {alias!r} is the name of another option of {config_cls.__name__}")
        if any(alias in option_aliases(f) for n, f in config_cls.model_fields.items() if n != name):
            raise ConfigError(f"field {name!r}: alias {alias!r} is an alias of another option of {config_cls.__name__} too")
    return found


def option_sections(config_cls: type[JobConfig]) -> dict[str, str | None]:
    """The --help section of each field: the ``options_title`` of the most basic class that declares
    the field and has a title of its own (an option group, the Ray options), else None (the job's own).

    >>> from ray_cora.configs.embed import EmbedConfig
    >>> option_sections(EmbedConfig)["actors"], option_sections(EmbedConfig)["out"]
    ('actor pool', None)
    """
    titled = [cls for cls in reversed(config_cls.__mro__) if cls.__dict__.get("options_title")]
    return {name: next((cls.__dict__["options_title"] for cls in titled if name in cls.model_fields), None)
            for name in config_cls.model_fields}


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type[JobConfig]) -> None:
    """One ``--option`` per config field (plus its short alias, when the field declares one with
    ``json_schema_extra={"short": "-k"}``, and a ``--old-name`` flag per alias it keeps),
    documented from the field's description and default."""
    parser.add_argument("--config", metavar="YAML", help="YAML file with any of the options below; "
                        "options given on the command line override it")
    titles = option_sections(config_cls)
    used = {t for t in titles.values() if t}
    # The job's own options first, then one section per group, the most specific first (Ray last).
    sections: dict[str | None, Any] = {None: parser}
    for cls in config_cls.__mro__:
        title = cls.__dict__.get("options_title")
        if title in used and title not in sections:
            sections[title] = parser.add_argument_group(f"{title} options")
    for name, field in config_cls.model_fields.items():
        group = sections[titles[name]]
        flag = "--" + name.replace("_", "-")
        short = short_flag(name, field)
        flags = (short, flag) if short else (flag,)
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        help_text = (field.description or "").rstrip(".")
        forms = option_forms(field)
        if forms:
            help_text += f" (forms: {forms})"
        if field.is_required():
            help_text += " (required)"
        elif default is not None and default != "" and default != []:
            shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
            help_text += f" (default: {shown})"
        if _is_bool(field.annotation):
            kind: dict[str, Any] = {"nargs": "?", "const": "true", "metavar": "true|false"}
        elif choices := literal_choices(field.annotation):
            kind = {"metavar": "{" + ",".join(map(str, choices)) + "}"}
        else:
            kind = {"metavar": "A,B,..." if _is_list(field.annotation) else name.split("_")[-1].upper()}
        group.add_argument(*flags, dest=name, default=None, help=help_text, **kind)
        for alias in flag_aliases(config_cls, name):
            group.add_argument("--" + alias.replace("_", "-"), dest=alias, default=None, help=f"alias of {flag}",
                               **kind)



def config_from_args(config_cls: type[C], args: argparse.Namespace) -> C:
    overrides: dict[str, Any] = {}
    for name, field in config_cls.model_fields.items():
        given = [n for n in (name, *option_aliases(field)) if getattr(args, n, None) is not None]
        if len(given) > 1:
            raise ConfigError(both_names_message(name, given, flags=True))
        if not given:
            continue
        value = getattr(args, given[0])
        if _is_list(field.annotation):
            value = [v.strip() for v in value.split(",") if v.strip()]
        overrides[name] = value
    return config_cls.load(getattr(args, "config", None), overrides)
