"""``ray-cora generate``: batch mGEN answers over retrieval results on a Ray Data actor pool."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import ray.data

from ray_cora import storage
from ray_cora.configs.generate import GENERATION_SETTINGS, GenerateConfig
from ray_cora.data.records import BadRecords
from ray_cora.data.training import data_files, iter_examples, iter_raw_records, retrieval_example
from ray_cora.errors import ConfigError
from ray_cora.models.mgen import DEFAULT_DECODING, Generator, recorded_decoding
from ray_cora.progress import JobProgress
from ray_cora.runtime import check_resources_fit, ray_session

# torch / transformers are imported inside the functions that use them (3.4 s + 2.0 s cold here):
# they are needed in the generator actors (Ray workers), not on the driver.


class GeneratorActor:
    """Ray Data batch UDF: loads the model once, answers one batch per call."""

    def __init__(self, settings: dict[str, Any]) -> None:
        import torch


        torch.set_num_threads(max(1, int(settings.pop("threads"))))
        source, tokenizer = settings.pop("model"), settings.pop("tokenizer")
        self.generator = Generator.load(source, tokenizer=tokenizer, **settings)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        examples = [json.loads(s) for s in batch["example"].tolist()]
        answers = self.generator.answer([e["question"] for e in examples], [e["lang"] for e in examples],
                                        [e["ctxs"] for e in examples], queries=[e.get("query") for e in examples])
        return {"qid": [e["qid"] for e in examples], "lang": [e["lang"] for e in examples], "prediction": answers}


def _read_rows(row: dict[str, Any]) -> list[dict[str, str]]:
    """The valid retrieval records of one file (the driver's count reports the bad ones), each with
    its ``query`` (what the retriever encoded): the ``cora`` decoding's question, as in CORA."""
    rows = []
    for _, obj in iter_raw_records(row["uri"], BadRecords("skip")):
        try:
            example = retrieval_example(obj, require_answer=False)
        except (ValueError, KeyError):
            continue
        if isinstance(obj.get("query"), str):
            example["query"] = obj["query"]
        rows.append({"example": json.dumps(example, ensure_ascii=False)})
    return rows


def run_generate(config: GenerateConfig) -> dict[str, Any]:

    out = storage.resolve(config.out)
    marker = storage.resolve(config.out + ".done.json")
    decoding = config.decoding or recorded_decoding(config.model) or DEFAULT_DECODING
    wanted = {**config.to_dict(), "decoding": decoding}  # the preset the answers are made with
    if marker.is_file() and out.is_file():
        done = json.loads(storage.read_bytes(marker))
        saved = done.get("config", {})
        changed = [k for k in GENERATION_SETTINGS if saved.get(k) != wanted.get(k)]
        if changed:
            raise ConfigError(f"{config.out} holds answers generated with other settings ({', '.join(changed)} "
                              "differ): use another --out, or delete it and its .done.json to regenerate")
        if storage.sha256_of(out)[0] == done.get("sha256"):
            print(f"generate: {config.out} is complete ({done['predictions']} predictions); nothing to do")
            return done
    bad = BadRecords(config.on_bad_record)
    count = sum(1 for _ in iter_examples(config.retrieval, "retrieval", bad, require_answer=False))
    files = [f for uri in config.retrieval for f in data_files(uri)]
    settings = {"model": config.model, "tokenizer": config.tokenizer, "top_k": config.top_k,
                "max_source_length": config.max_source_length, "max_target_length": config.max_target_length,
                "num_beams": config.num_beams, "decoding": decoding, "threads": max(1, int(config.actor_cpus))}
    written = 0
    digest = hashlib.sha256()
    # Not resumable (one output file): every prediction is made by this run.
    progress = JobProgress("generate", unit="prediction", total=count)
    progress.start()
    with ray_session(address=config.ray_address, num_cpus=config.num_cpus):
        check_resources_fit({"--actor-cpus/--actor-gpus": (config.actor_cpus, config.actor_gpus)})
        ds = (ray.data.from_items([{"uri": f} for f in files], override_num_blocks=max(1, len(files)))
              .flat_map(_read_rows)
              .map_batches(GeneratorActor, fn_constructor_args=(settings,), batch_size=config.batch_size,
                           concurrency=config.actors, num_cpus=config.actor_cpus,
                           num_gpus=config.actor_gpus or None))
        with storage.open_output(out) as stream:
            for row in ds.iter_rows():
                line = (json.dumps({"qid": row["qid"], "lang": row["lang"], "prediction": row["prediction"]},
                                   ensure_ascii=False) + "\n").encode("utf-8")
                stream.write(line)
                digest.update(line)
                written += 1
                progress.add(bytes=len(line))
    if written != count:
        raise RuntimeError(f"generate: {count} questions read but {written} predictions written")
    done = {"predictions": written, "sha256": digest.hexdigest(), "skipped_records": bad.count,
            "config": wanted}
    storage.write_bytes(marker, json.dumps(done, indent=2, ensure_ascii=False).encode("utf-8"))
    print(f"generate: {written} predictions → {config.out} (decoding {decoding})"
          + (f" ({bad.count} bad records skipped)" if bad.count else ""))
    progress.finish()
    return done
