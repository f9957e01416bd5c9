"""Loading Wikidata labels for a pivot database: the whole table vs only the rows its answers use.

    python jobs/benchmarks/label_subset.py --entities 300000 --answers 10000

Writes a synthetic `ray-cora wikidata labels` output (labels in en, ja, es and one English alias
per entity, in parts of 50,000 entities), then loads it in a fresh process each way and reports
time and peak memory growth: ``LabelTable.load(uri)`` (everything) and
``LabelTable.load(uri, answers=…, qids=…)`` (what ``PivotPipeline.load`` does). Prints a table
and writes docs/results/label_subset.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"
LANGS = ("en", "ja", "es")

_LOAD = """
import json, sys, time
def hwm_mb():
    return int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) / 1024
from ray_cora.pivot.translate import LabelTable
uri, answers_file = sys.argv[1], sys.argv[2]
answers = json.load(open(answers_file)) if answers_file != "-" else None
before, started = hwm_mb(), time.perf_counter()
table = LabelTable.load(uri) if answers is None else LabelTable.load(uri, answers=answers, qids=())
print(json.dumps({"labels": len(table.labels), "seconds": round(time.perf_counter() - started, 2),
                  "peak_growth_mb": round(hwm_mb() - before, 1)}))
"""


def write_labels(folder: Path, entities: int, seed: int) -> None:
    from ray_cora import storage
    from ray_cora.pipelines.wikidata_labels import commit_tables, plan_parts, write_part

    rng = random.Random(seed)
    dump = folder / "dump.json"
    with open(dump, "w", encoding="utf-8") as f:
        f.write("[\n")
        for i in range(entities):
            entity = {"type": "item", "id": f"Q{i}",
                      "labels": {lang: {"language": lang, "value": f"name {i} {lang} " + "x" * rng.randint(3, 20)}
                                 for lang in LANGS},
                      "aliases": {"en": [{"language": "en", "value": f"alias {i}"}]}, "sitelinks": {}}
            f.write(json.dumps(entity) + (",\n" if i < entities - 1 else "\n"))
        f.write("]\n")
    out = folder / "labels"
    markers = [write_part(dump=str(dump), out=str(out), part=part, langs=LANGS, on_bad_record="error")
               for part in plan_parts(str(dump), 50_000)]
    commit_tables(storage.resolve(str(out)), markers, config={}, langs=LANGS)


def load(uri: Path, answers_file: str) -> dict:
    result = subprocess.run([sys.executable, "-c", _LOAD, str(uri), answers_file], capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entities", type=int, default=300_000)
    parser.add_argument("--answers", type=int, default=10_000, help="English answers of the database")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="ray_cora_labels_bench_") as tmp:
        folder = Path(tmp)
        write_labels(folder, args.entities, args.seed)
        step = max(1, args.entities // args.answers)
        answers = [f"alias {i}" for i in range(0, args.entities, step)][:args.answers]
        (folder / "answers.json").write_text(json.dumps(answers))
        whole = load(folder / "labels", "-")
        subset = load(folder / "labels", str(folder / "answers.json"))
    result = {"entities": args.entities, "label_rows": args.entities * len(LANGS), "answers": len(answers),
              "cpu_count": os.cpu_count(), "whole": whole, "subset": subset}
    lines = [
        "# Wikidata labels for a pivot database",
        "",
        f"{args.entities:,} synthetic entities with labels in {', '.join(LANGS)} and one English alias; "
        f"{len(answers):,} English answers matching aliases. Each load in a fresh process; "
        f"`python jobs/benchmarks/label_subset.py --entities {args.entities} --answers {args.answers}`.",
        "",
        "| load | labels kept | seconds | peak memory growth |",
        "|---|---:|---:|---:|",
        f"| whole table (`LabelTable.load(uri)`) | {whole['labels']:,} | {whole['seconds']} | "
        f"{whole['peak_growth_mb']} MB |",
        f"| the answers' rows (`answers=`, as `PivotPipeline.load`) | {subset['labels']:,} | {subset['seconds']} | "
        f"{subset['peak_growth_mb']} MB |",
    ]
    print("\n".join(lines))
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "label_subset.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / "label_subset.md").write_text("\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    main()
