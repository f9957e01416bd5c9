"""One frozen config model per job, loaded from YAML and overridden from the command line.

Precedence: field defaults < ``--config file.yaml`` < ``--field-name value`` on the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ray_cora.errors import ConfigError

C = TypeVar("C", bound="JobConfig")


class JobConfig(BaseModel):
    """Base of every job config: frozen, unknown keys rejected, saved beside what the job makes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def load(cls: type[C], yaml_path: str | None = None, overrides: dict[str, Any] | None = None) -> C:
        """Build the config from an optional YAML file and command-line overrides.

        >>> class Example(JobConfig):
        ...     k: int = 10
        >>> Example.load(overrides={"k": "5"}).k
        5
        """
        values: dict[str, Any] = {}
        source = "command line"
        if yaml_path:
            values.update(_read_yaml(yaml_path))
            source = f"{yaml_path} / command line"
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(f"invalid {cls.__name__} ({source}): {_describe(exc)}") from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class RayJobConfig(JobConfig):
    """A job that runs on Ray: joins a cluster, or starts a local Ray on 127.0.0.1."""

    num_cpus: int | None = Field(None, ge=1, description="CPUs for a locally started Ray (default: all)")
    ray_address: str | None = Field(None, description="Join this Ray cluster instead of starting a "
                                    "local one (RAY_ADDRESS also works)")


class TrainRunConfig(RayJobConfig):
    """A Ray Train job (train-mdpr, train-mgen): how wide it runs, checkpoints, failures, bad
    records; each job adds its own model and optimiser options."""

    checkpoint_every: int = Field(0, ge=0, description="Checkpoint every N steps (0: each epoch)")
    num_workers: int = Field(2, ge=1, description="Ray Train workers (DDP)")
    use_gpu: bool = Field(False, description="One GPU per worker (NCCL, bf16 autocast)")
    cpus_per_worker: float = Field(0.5, gt=0)
    max_failures: int = Field(2, ge=-1, description="Worker failures to recover from (from the last checkpoint)")
    on_bad_record: Literal["error", "skip"] = Field("error", description="error: stop at a bad record; skip: count it and go on")
    seed: int = 0


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


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(config)"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown option '{field}'")
        else:
            parts.append(f"option '{field}': {err['msg']} (got {err.get('input')!r})")
    return "; ".join(parts)


