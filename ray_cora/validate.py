"""``ray-cora validate``: stream an input file through its reader and report what it holds."""

from __future__ import annotations

from collections import Counter
from typing import Literal

from pydantic import Field

from ray_cora import storage
from ray_cora.config import JobConfig
from ray_cora.data.passages import iter_passages, passage_files
from ray_cora.data.qa import DATASETS, iter_qa
from ray_cora.data.records import BadRecords


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


def run_validate(config: ValidateConfig) -> dict:
    bad = BadRecords(config.on_bad_record)
    langs: Counter[str] = Counter()
    if config.kind == "passages":
        for file in passage_files(config.input, format=config.format):
            for passage in iter_passages(file, format=config.format, lang=config.lang, bad_records=bad):
                langs[passage["lang"]] += 1
    else:
        for record in iter_qa(config.input, dataset=config.dataset, lang=config.lang, bad_records=bad,
                              keep_unanswerable=True):
            langs[record["lang"]] += 1
    summary = {"input": config.input, "kind": config.kind, "records": sum(langs.values()),
               "per_language": dict(sorted(langs.items())), "skipped_bad_records": bad.count}
    print(f"{config.input}: {summary['records']} {config.kind} records in {len(langs)} languages")
    for lang, count in summary["per_language"].items():
        print(f"  {lang:>6}  {count}")
    if bad.count:
        target = config.quarantine or config.input.rstrip("/") + ".quarantine.jsonl"
        storage.write_bytes(target, bad.to_jsonl())
        summary["quarantine"] = target
        print(f"skipped {bad.count} malformed records; they are in {target}")
    return summary
