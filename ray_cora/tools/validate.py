"""``ray-cora validate``: stream an input file through its reader and report what it holds.

Passages are checked as ``ray-cora embed`` reads them: the same malformed records, the same
length cap (texts over :data:`~ray_cora.data.passages.MAX_PASSAGE_CHARS` characters are counted as
truncated), and a repeated passage id refused with both its lines."""

from __future__ import annotations

from collections import Counter

from ray_cora import storage
from ray_cora.configs.validate import ValidateConfig
from ray_cora.data.passages import MAX_PASSAGE_CHARS, DuplicatePids, numbered_passages, passage_files
from ray_cora.data.qa import iter_qa
from ray_cora.data.records import BadRecords


def validate(config: ValidateConfig) -> dict:
    """Read ``config.input`` through its reader; print and return counts per language and the
    malformed records skipped (written to the quarantine file)."""
    bad = BadRecords(config.on_bad_record)
    langs: Counter[str] = Counter()
    stats: dict[str, int] = {}
    if config.kind == "passages":
        files = passage_files(config.input, format=config.format)
        pids = DuplicatePids()
        for file in files:
            batch: list[str] = []
            for _, passage in numbered_passages(file, format=config.format, lang=config.lang, bad_records=bad,
                                                stats=stats):
                langs[passage["lang"]] += 1
                batch.append(passage["pid"])
                if len(batch) >= 65536:
                    pids.add_many(batch)
                    batch = []
            pids.add_many(batch)

        def reread():
            for file in files:
                for line, passage in numbered_passages(file, format=config.format, lang=config.lang,
                                                       bad_records=BadRecords("skip")):
                    yield file.uri, line, passage["pid"]

        pids.check(reread)
    else:
        for record in iter_qa(config.input, dataset=config.dataset, lang=config.lang, bad_records=bad,
                              keep_unanswerable=True):
            langs[record["lang"]] += 1
    summary = {"input": config.input, "kind": config.kind, "records": sum(langs.values()),
               "per_language": dict(sorted(langs.items())), "skipped_bad_records": bad.count}
    print(f"{config.input}: {summary['records']} {config.kind} records in {len(langs)} languages")
    for lang, count in summary["per_language"].items():
        print(f"  {lang:>6}  {count}")
    if stats.get("truncated"):
        summary["truncated_passages"] = stats["truncated"]
        print(f"{stats['truncated']} passages are longer than {MAX_PASSAGE_CHARS:,} characters; embed cuts "
              "them to that length (--max-passage-chars)")
    if bad.count:
        target = config.quarantine or config.input.rstrip("/") + ".quarantine.jsonl"
        storage.write_bytes(target, bad.to_jsonl())
        summary["quarantine"] = target
        print(f"skipped {bad.count} malformed records; they are in {target}")
    return summary
