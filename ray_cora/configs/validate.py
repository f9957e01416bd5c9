"""Config of ``ray-cora validate``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ray_cora.configs.base import JobConfig
from ray_cora.data.qa import DATASETS


class ValidateConfig(JobConfig):
    """Check a passage corpus or QA set: counts per language, and every malformed record located."""

    input: str = Field(..., description="File or folder (passages) to check: path, file:// or s3://")
    kind: Literal["passages", "qa"] = Field("passages", description="What the input holds")
    format: Literal["tsv", "jsonl", "parquet"] | None = Field(
        None, description="Passage format (default: from the file name)")
    dataset: str = Field("jsonl", description=f"QA dataset layout: {', '.join(DATASETS)}")
    lang: str | None = Field(None, description="Language of a single-language file without a lang field")
    on_bad_record: Literal["error", "skip"] = Field(
        "error", description="error: stop at the first malformed record; skip: count it, quarantine it, go on")
    quarantine: str | None = Field(None, description="Where skipped records are written as JSONL "
                                   "(default: <input>.quarantine.jsonl beside a local input)")
