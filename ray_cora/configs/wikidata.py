"""``ray-cora wikidata labels``: its config and entry point."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ray_cora.configs.base import RayJobConfig
from ray_cora.configs.options import TaskOptions
from ray_cora.data.wikidata import check_langs


class WikidataLabelsConfig(TaskOptions, RayJobConfig):
    """Stream a Wikidata JSON dump (one entity per line, .json/.gz/.bz2, any storage URI) into
    Parquet: labels + aliases per language, and sitelinks (language links), in one pass. A unit
    of work (--tasks, --task-cpus) is one dump part (--part-lines)."""

    dump: str = Field(..., description="Wikidata JSON dump (latest-all.json[.gz|.bz2]) path or URI")
    langs: list[str] = Field(..., description="Label languages to keep, e.g. en,es,ja,zh_cn")
    out: str = Field(..., description="Output folder or URI (labels/, sitelinks/, manifest.json)")
    part_lines: int = Field(1_000_000, ge=1, description="Dump lines per parallel part (uncompressed "
                            "dumps only; a compressed dump is read by one task)")
    on_bad_record: Literal["error", "skip"] = Field(
        "error", description="error: stop at the first malformed line with file:line; skip: count it, "
        "quarantine it under bad/ and go on")
    tasks: int | None = TaskOptions.option("tasks", 2)
    task_cpus: float = TaskOptions.option("task_cpus", 0.5)

    @field_validator("langs")
    @classmethod
    def _known_langs(cls, value: list[str]) -> list[str]:
        return list(check_langs(value))
