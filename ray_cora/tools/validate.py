"""``ray-cora validate``: stream an input file through its reader and report what it holds."""

from __future__ import annotations

from collections import Counter

from ray_cora import storage
from ray_cora.configs.validate import ValidateConfig
from ray_cora.data.passages import iter_passages, passage_files
from ray_cora.data.qa import iter_qa
from ray_cora.data.records import BadRecords


def validate(config: ValidateConfig) -> dict:
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
