"""The ``ray-cora`` command: one subcommand per job, each a thin map from a config onto a library call."""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass

from ray_cora import __version__
from ray_cora.config import add_config_arguments, config_from_args
from ray_cora.errors import RayCoraError


@dataclass(frozen=True)
class Job:
    config: str  # "module:ConfigClass", imported lazily so --help stays fast
    run: str  # "module:function" taking the config
    help: str


JOBS: dict[str, Job] = {
    "demo": Job("ray_cora.demo:DemoConfig", "ray_cora.pipelines.demo:run_demo",
                "offline end-to-end demo: embed the bundled multilingual corpus with mUSE on Ray "
                "Data, index it with FAISS, retrieve for every demo question, print recall per language"),
    "embed": Job("ray_cora.embed_job:EmbedConfig", "ray_cora.embed_job:run_embed",
                 "embed a passage corpus on a Ray Data actor pool into a sharded FAISS index "
                 "(resumable; any storage URI)"),
    "import-embeddings": Job("ray_cora.import_job:ImportEmbeddingsConfig", "ray_cora.import_job:run_import",
                             "convert CORA/DPR released embedding pickles (safely) into a sharded index"),
    "validate": Job("ray_cora.validate:ValidateConfig", "ray_cora.validate:run_validate",
                    "check a passage corpus or QA file: counts per language, malformed records by file:line"),
    "passages": Job("ray_cora.passages_job:PassagesConfig", "ray_cora.passages_job:run_passages",
                    "split wikiextractor --json dumps into 100-token passages: Parquet shards per input "
                    "file plus manifest.json; reruns skip finished files"),
    "pivot build": Job("ray_cora.pivot_job:PivotBuildConfig", "ray_cora.pivot_job:run_pivot_build",
                       "English question→answer records → pivot database (sharded FAISS index of the "
                       "questions + Parquet answer table), encoded on a Ray Data actor pool"),
    "pivot run": Job("ray_cora.pivot_job:PivotRunConfig", "ray_cora.pivot_job:run_pivot",
                     "answer questions through the English pivot database (RM-MIPS: MIPS, cross-encoder "
                     "rerank, answer translation, abstention); writes predictions JSONL"),
    "pivot calibrate": Job("ray_cora.pivot_job:PivotCalibrateConfig", "ray_cora.pivot_job:run_pivot_calibrate",
                           "pick the abstention threshold reaching a target precision on a labelled dev set"),
    "pivot train-reranker": Job("ray_cora.pivot_job:PivotTrainRerankerConfig",
                                "ray_cora.pivot_job:run_train_reranker",
                                "fine-tune the pivot cross-encoder on PAWS-X/QQP-style pairs with Ray Train"),
    "wikidata labels": Job("ray_cora.wikidata_job:WikidataLabelsConfig", "ray_cora.wikidata_job:run_wikidata_labels",
                           "Wikidata JSON dump → Parquet labels/aliases per language + sitelinks, one pass "
                           "on Ray Data (resumable per part)"),
    "serve": Job("ray_cora.serve_job:ServeConfig", "ray_cora.serve_job:run_serve",
                 "serve the HTTP API on Ray Serve (127.0.0.1 by default): /v1/retrieve, /v1/answer, "
                 "/v1/pivot, /healthz, /docs; blocks until Ctrl-C"),
    "train-mdpr": Job("ray_cora.train_mdpr_job:TrainMDPRConfig", "ray_cora.train_mdpr_job:run_train_mdpr",
                      "train the mDPR bi-encoder with Ray Train (DDP, cross-worker in-batch negatives, "
                      "checkpoints/resume on any storage URI); export as an hf: encoder folder"),
    "train-mgen": Job("ray_cora.train_mgen_job:TrainMGENConfig", "ray_cora.train_mgen_job:run_train_mgen",
                      "train the mGEN seq2seq generator (mT5) with Ray Train on retrieval results; "
                      "checkpoints/resume on any storage URI"),
    "iterate": Job("ray_cora.iterate_job:IterateConfig", "ray_cora.iterate_job:run_iterate",
                   "CORA's iterative training (Algorithm 1): train mDPR → re-embed → retrieve → train mGEN → "
                   "mine cross-lingual pairs (retrieval + Wikidata language links, labelled by mGEN), T "
                   "rounds; resumable per stage"),
    "generate": Job("ray_cora.generate_job:GenerateConfig", "ray_cora.generate_job:run_generate",
                    "answer every question of a retrieval JSONL with an mGEN model on a Ray Data actor "
                    "pool → predictions JSONL {qid, lang, prediction}"),
    "retrieve": Job("ray_cora.retrieve_job:RetrieveConfig", "ray_cora.retrieve_job:run_retrieve",
                    "top-k passages of a sharded index for every question of a QA set on Ray Data "
                    "(query-encoder actors → shard-searcher actors) → JSONL parts; resumable"),
    "predictions convert": Job("ray_cora.evaluate_qa_job:ConvertPredictionsConfig",
                               "ray_cora.evaluate_qa_job:run_convert_predictions",
                               "convert predictions between our JSONL {qid, lang, prediction} and the official "
                               "formats (xor: {id: answer} JSON; mkqa: {lang}.jsonl files)"),
    "evaluate qa": Job("ray_cora.evaluate_qa_job:EvaluateQAConfig", "ray_cora.evaluate_qa_job:run_evaluate_qa",
                       "score QA predictions exactly like the official scorers (--mode xor: XOR-TyDi/CORA "
                       "F1/EM/BLEU; mkqa: MKQA F1/EM) → metrics.json, report.md, per_language.png"),
    "evaluate retrieval": Job("ray_cora.evaluate_job:EvaluateRetrievalConfig",
                              "ray_cora.evaluate_job:run_evaluate_retrieval",
                              "score a retrieval output: R^L@k, R^multi@k, gold-passage recall per language "
                              "+ macro → metrics.json, report.md (paper-style table), PNG plots"),
    "evaluate all": Job("ray_cora.evaluate_job:EvaluateAllConfig", "ray_cora.evaluate_job:run_evaluate_all",
                        "one Ray job: retrieve for every requested language in parallel, then score it "
                        "like `evaluate retrieval`; --generator adds mGEN answers scored like `evaluate qa`"),
}


def _load(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ray-cora", description="Multilingual open-domain QA (CORA, RM-MIPS pivot) on Ray.")
    parser.add_argument("--version", action="version", version=f"ray-cora {__version__}")
    sub = parser.add_subparsers(dest="job", metavar="JOB")
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, job in JOBS.items():
        config_cls = _load(job.config)
        # "evaluate qa" is the subcommand "qa" of the group "evaluate".
        group, _, leaf = name.rpartition(" ")
        if group:
            if group not in groups:
                group_parser = sub.add_parser(group, help=f"{group} subcommands")
                group_parser.set_defaults(job_group_parser=group_parser)
                groups[group] = group_parser.add_subparsers(dest="subjob", metavar="SUBCOMMAND")
            job_parser = groups[group].add_parser(leaf, help=job.help,
                                                  description=(config_cls.__doc__ or job.help).strip())
        else:
            job_parser = sub.add_parser(name, help=job.help, description=(config_cls.__doc__ or job.help).strip())
        job_parser.set_defaults(job_name=name)
        add_config_arguments(job_parser, config_cls)
    return parser


def run_job(name: str, argv: list[str] | None = None) -> int:
    """Parse ``argv`` as the options of one job and run it (used by ``jobs/*.py``)."""
    return main([*name.split(" "), *(sys.argv[1:] if argv is None else argv)])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    name = getattr(args, "job_name", None)
    if not name:
        # No job, or a group without its subcommand ("ray-cora evaluate"): show what is there.
        getattr(args, "job_group_parser", parser).print_help()
        return 2
    job = JOBS[name]
    try:
        config = config_from_args(_load(job.config), args)
        _load(job.run)(config)
    except RayCoraError as exc:
        print(f"ray-cora {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ray-cora {name}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
