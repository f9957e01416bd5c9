"""One frozen config model per job, loaded from YAML and overridden from the command line.

Precedence: field defaults < ``--config file.yaml`` < ``--field-name value`` on the command line.
An option renamed keeps its old names as aliases (:func:`aliases`): YAML, ``model_validate`` and
the command line accept either name; giving two names of one option is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, TypeVar

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from ray_cora.errors import ConfigError

C = TypeVar("C", bound="JobConfig")


def aliases(name: str, *old_names: str) -> dict[str, Any]:
    """``Field`` keywords that keep ``old_names`` as aliases of the option ``name``: accepted in YAML
    and ``model_validate``, and as ``--old-name`` flags (listed in --help as "alias of --name").
    Saved config dicts (:meth:`JobConfig.to_dict`) use ``name``.

    >>> class Example(JobConfig):
    ...     actors: int = Field(1, description="Actors", **aliases("actors", "concurrency"))
    >>> Example.load(overrides={"concurrency": "3"}).to_dict()
    {'actors': 3}
    """
    return {"validation_alias": AliasChoices(name, *old_names), "json_schema_extra": {"aliases": list(old_names)}}


@dataclass(frozen=True)
class OptionForms:
    """What ``--help`` lists as the values an option of a free-text type takes, put in the type's
    ``Annotated[...]`` (validation ignores it): ``Annotated[str, AfterValidator(check), OptionForms("a | b:<x>")]``."""

    text: str


def option_forms(field: FieldInfo) -> str | None:
    """The :class:`OptionForms` text a field's type declares, else None."""
    return next((m.text for m in field.metadata if isinstance(m, OptionForms)), None)


def option_aliases(field: FieldInfo) -> tuple[str, ...]:
    """The old names a field keeps (``json_schema_extra={"aliases": [...]}``, see :func:`aliases`)."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return tuple(extra.get("aliases") or ())


def both_names_message(name: str, given: list[str], *, flags: bool = False) -> str:
    """The refusal of the option ``name`` given under several of its names (``flags``: as ``--flags``).

    >>> both_names_message("actors", ["actors", "concurrency"], flags=True)
    '--actors and --concurrency name one option (--concurrency is an alias of --actors): give only one of them'
    """
    def show(n: str) -> str:
        return "--" + n.replace("_", "-") if flags else f"'{n}'"

    others = [n for n in given if n != name]
    return (f"{' and '.join(map(show, given))} name one option ({', '.join(map(show, others))} "
            f"{'is an alias' if len(others) == 1 else 'are aliases'} of {show(name)}): give only one of them")


class ConfigModel(BaseModel):
    """Base of the job configs and of the option groups they inherit (:mod:`.options`): frozen,
    unknown keys rejected, an option accepted under its name or one of its aliases (not both).
    ``options_title``, set on a class itself, heads the --help section of the options it declares."""

    # allow_inf_nan=False: no option means anything with nan or inf (`--threshold nan` would answer
    # nothing and say nothing), so every float option refuses them, naming the option.
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, allow_inf_nan=False)
    options_title: ClassVar[str | None] = None

    @classmethod
    def canonical(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """``values`` with every option under its own name (aliases renamed); an option given under
        two of its names is a ``ValueError`` naming both.

        >>> from ray_cora.configs.embed import EmbedConfig
        >>> EmbedConfig.canonical({"concurrency": 2, "out": "o"})
        {'out': 'o', 'actors': 2}
        """
        result = dict(values)
        for name, field in cls.model_fields.items():
            given = [n for n in (name, *option_aliases(field)) if n in result]
            if len(given) > 1:
                raise ValueError(both_names_message(name, given))
            if given and given[0] != name:
                result[name] = result.pop(given[0])
        return result

    @model_validator(mode="before")
    @classmethod
    def _one_name_per_option(cls, data: Any) -> Any:
        return cls.canonical(data) if isinstance(data, Mapping) else data


class JobConfig(ConfigModel):
    """Base of every job config: frozen, unknown keys rejected, saved beside what the job makes."""

    @classmethod
    def load(cls: type[C], yaml_path: str | None = None, overrides: dict[str, Any] | None = None) -> C:
        """Build the config from an optional YAML file and command-line overrides.

        >>> class Example(JobConfig):
        ...     k: int = 10
        >>> Example.load(overrides={"k": "5"}).k
        5
        """
        # Each source under the options' own names, so that `--actors` overrides `concurrency:` in YAML.
        values: dict[str, Any] = {}
        source = "command line"
        if yaml_path:
            values.update(_canonical(cls, _read_yaml(yaml_path), yaml_path))
            source = f"{yaml_path} / command line"
        given = _canonical(cls, {k: v for k, v in (overrides or {}).items() if v is not None}, "command line")
        for name, value in given.items():
            # A mapping option (iterate's `mdpr:` ...) given on the command line adds to the YAML's
            # mapping instead of replacing it: `--mdpr '{"epochs": 1}'` keeps `use_gpu: true`.
            if isinstance(values.get(name), Mapping):
                value = deep_merge(values[name], _mapping_or_value(value))
            values[name] = value
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(f"invalid {cls.__name__} ({source}): {_describe(exc)}") from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class RayJobConfig(JobConfig):
    """A job that runs on Ray: joins a cluster, or starts a local Ray on 127.0.0.1."""

    options_title: ClassVar[str | None] = "Ray"
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a locally started Ray (default: all)")
    ray_address: str | None = Field(None, description="Join this Ray cluster instead of starting a "
                                    "local one (RAY_ADDRESS also works)")

    @model_validator(mode="after")
    def _reservations_fit_local_ray(self) -> "RayJobConfig":
        # A local Ray of --num-cpus N can never start an actor or task that reserves more than N:
        # Ray would wait for it forever without a word. (A cluster is checked once joined:
        # ray_cora.runtime.check_resources_fit.)
        if self.num_cpus is None or self.ray_address:
            return self
        for name in type(self).model_fields:
            if name.endswith("actor_cpus") or name in ("task_cpus", "cpus_per_worker"):
                wanted = getattr(self, name)
                if wanted is not None and wanted > self.num_cpus:
                    option = "--" + name.replace("_", "-")
                    raise ValueError(f"{option} {wanted:g} is more than the {self.num_cpus} CPUs of --num-cpus: "
                                     f"Ray would wait forever for them; lower {option} or raise --num-cpus")
        return self


class TrainRunConfig(RayJobConfig):
    """A Ray Train job (train-mdpr, train-mgen, pivot train-reranker): how wide it runs,
    checkpoints, failures, bad records, the seed; each job adds its own model and optimiser
    options. ``cpus_per_worker`` is Ray Train's own term (a worker is not a Ray Data actor)."""

    options_title: ClassVar[str | None] = "Ray Train run"
    checkpoint_every: int = Field(0, ge=0, description="Checkpoint every N steps (0: each epoch)")
    num_workers: int = Field(2, ge=1, description="Ray Train workers (DDP: gloo on CPU, NCCL on GPU)")
    use_gpu: bool = Field(False, description="One GPU per worker (train-mdpr/train-mgen add bf16 autocast)")
    cpus_per_worker: float = Field(0.5, gt=0, description="CPUs reserved per Ray Train worker")
    max_failures: int = Field(2, ge=-1, description="Worker failures to recover from (from the last checkpoint)")
    on_bad_record: Literal["error", "skip"] = Field("error", description="error: stop at a bad record; skip: count it and go on")
    seed: int = Field(0, description="Seed of initialisation, shuffling and sampling")


def deep_merge(base: Mapping[str, Any], override: Any) -> Any:
    """``override`` laid over ``base``: mappings merge key by key (at any depth), anything else
    replaces. A key given as ``None`` in ``override`` keeps its ``None`` (a way to unset).

    >>> deep_merge({"epochs": 3, "use_gpu": True, "opt": {"lr": 1, "eps": 2}}, {"epochs": 1, "opt": {"lr": 5}})
    {'epochs': 1, 'use_gpu': True, 'opt': {'lr': 5, 'eps': 2}}
    >>> deep_merge({"a": 1}, "not a mapping")
    'not a mapping'
    """
    if not isinstance(override, Mapping):
        return override
    merged = dict(base)
    for key, value in override.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(merged.get(key), Mapping) else value
    return merged


def _mapping_or_value(value: Any) -> Any:
    """A command-line value for a mapping option: the JSON object it spells (so it can merge), or
    the value unchanged (the field's validator then says what is wrong with it)."""
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _read_yaml(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _canonical(cls: type[JobConfig], values: dict[str, Any], source: str) -> dict[str, Any]:
    try:
        return cls.canonical(values)
    except ValueError as exc:
        raise ConfigError(f"invalid {cls.__name__} ({source}): {exc}") from None


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        if not field:  # a check of the whole config (a model validator): its message says it all
            parts.append(str(err["msg"]).removeprefix("Value error, "))
        elif err["type"] == "extra_forbidden":
            parts.append(f"unknown option '{field}'")
        else:
            parts.append(f"option '{field}': {err['msg']} (got {err.get('input')!r})")
    return "; ".join(parts)


