"""The ``ray-cora`` command: one subcommand per job, each a thin map from a config onto a library call."""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass

from ray_cora import __version__
from ray_cora.configs import (
    ConvertPredictionsConfig,
    DemoConfig,
    EmbedConfig,
    EvaluateAllConfig,
    EvaluateQAConfig,
    EvaluateRetrievalConfig,
    GenerateConfig,
    ImportEmbeddingsConfig,
    IterateConfig,
    JobConfig,
    LexicalIndexConfig,
    PassagesConfig,
    PivotBuildConfig,
    PivotCalibrateConfig,
    PivotRunConfig,
    PivotTrainRerankerConfig,
    RetrieveConfig,
    ServeConfig,
    TrainMDPRConfig,
    TrainMGENConfig,
    TuneFusionConfig,
    TuneIndexConfig,
    ValidateConfig,
    WikidataLabelsConfig,
)
from ray_cora.configs.arguments import add_config_arguments, config_from_args
from ray_cora.configs.pivot import PivotTrainEncoderConfig
from ray_cora.errors import RayCoraError, find_user_error


@dataclass(frozen=True)
class Job:
    config: type[JobConfig]
    # "module:function" taking the config. The drivers are imported only when their job runs:
    # importing all of them pulls in Ray Serve, FastAPI, torch and transformers, which takes
    # ~4 s here (ray_cora.serve.app alone 3.4 s), against 0.4 s for the configs, and every
    # `ray-cora --help` and every job would pay it.
    driver: str
    help: str


JOBS: dict[str, Job] = {
    "demo": Job(DemoConfig, "ray_cora.pipelines.demo:run_demo",
                "offline end-to-end demo: embed the bundled multilingual corpus with mUSE on Ray "
                "Data, index it with FAISS, retrieve for every demo question, print recall per language"),
    "embed": Job(EmbedConfig, "ray_cora.pipelines.embed_corpus:embed_corpus",
                 "embed a passage corpus on a Ray Data actor pool into a sharded FAISS index "
                 "(resumable; any storage URI)"),
    "index-bm25": Job(LexicalIndexConfig, "ray_cora.pipelines.lexical:build_lexical_index",
                      "index a passage corpus for BM25 on Ray Data: per-language, per-shard parts with "
                      "corpus-wide statistics (resumable; any storage URI)"),
    "import-embeddings": Job(ImportEmbeddingsConfig, "ray_cora.tools.import_embeddings:import_embeddings",
                             "convert CORA/DPR released embedding pickles (safely) into a sharded index"),
    "tune-index": Job(TuneIndexConfig, "ray_cora.tools.tune_index:tune_index",
                      "choose an IVF/HNSW index's default nprobe/efSearch: the cheapest reaching a recall "
                      "target on held-out questions (within a latency budget); recorded in the index"),
    "tune fusion": Job(TuneFusionConfig, "ray_cora.tools.tune_fusion:tune_fusion",
                       "learn the hybrid retriever's dense/BM25 fusion per question language (RRF or "
                       "normalised convex combination, weights on a grid) from dev retrieval outputs with "
                       "gold passages; writes fusion.json into the index"),
    "validate": Job(ValidateConfig, "ray_cora.tools.validate:validate",
                    "check a passage corpus or QA file: counts per language, malformed records by file:line"),
    "passages": Job(PassagesConfig, "ray_cora.pipelines.build_passages:build_passages",
                    "split wikiextractor --json dumps into 100-token passages: Parquet shards per input "
                    "file plus manifest.json; reruns skip finished files"),
    "pivot build": Job(PivotBuildConfig, "ray_cora.pipelines.pivot:build_pivot_database",
                       "English question→answer records → pivot database (sharded FAISS index of the "
                       "questions + Parquet answer table), encoded on a Ray Data actor pool"),
    "pivot run": Job(PivotRunConfig, "ray_cora.pipelines.pivot:run_predictions",
                     "answer questions through the English pivot database (RM-MIPS: MIPS, cross-encoder "
                     "rerank, answer translation, abstention); writes predictions JSONL"),
    "pivot calibrate": Job(PivotCalibrateConfig, "ray_cora.pipelines.pivot:calibrate",
                           "pick the abstention threshold reaching a target precision on a labelled dev set"),
    "pivot train-reranker": Job(PivotTrainRerankerConfig, "ray_cora.train.reranker:train_reranker",
                                "fine-tune the pivot cross-encoder on PAWS-X/QQP-style pairs with Ray Train"),
    "pivot train-encoder": Job(PivotTrainEncoderConfig, "ray_cora.train.pivot_encoder:train_pivot_encoder",
                               "fine-tune a multilingual sentence encoder for MIPS on the same pairs (the "
                               "paper's single-encoder baseline) with Ray Train; exports an hf: encoder"),
    "wikidata labels": Job(WikidataLabelsConfig, "ray_cora.pipelines.wikidata_labels:build_label_tables",
                           "Wikidata JSON dump → Parquet labels/aliases per language + sitelinks, one pass "
                           "on Ray Data (resumable per part)"),
    "serve": Job(ServeConfig, "ray_cora.serve.run:run_serve",
                 "serve the HTTP API on Ray Serve (127.0.0.1 by default): /v1/retrieve, /v1/answer, "
                 "/v1/pivot, /healthz, /docs; blocks until Ctrl-C"),
    "train-mdpr": Job(TrainMDPRConfig, "ray_cora.train.jobs:train_mdpr",
                      "train the mDPR bi-encoder with Ray Train (DDP, cross-worker in-batch negatives, "
                      "checkpoints/resume on any storage URI); export as an hf: encoder folder"),
    "train-mgen": Job(TrainMGENConfig, "ray_cora.train.jobs:train_mgen",
                      "train the mGEN seq2seq generator (mT5) with Ray Train on retrieval results; "
                      "checkpoints/resume on any storage URI"),
    "iterate": Job(IterateConfig, "ray_cora.iterate.loop:iterate",
                   "CORA's iterative training (Algorithm 1): train mDPR → re-embed → retrieve → train mGEN → "
                   "mine cross-lingual pairs (retrieval + Wikidata language links, labelled by mGEN), T "
                   "rounds; resumable per stage"),
    "generate": Job(GenerateConfig, "ray_cora.pipelines.generate:run_generate",
                    "answer every question of a retrieval JSONL with an mGEN model on a Ray Data actor "
                    "pool → predictions JSONL {qid, lang, prediction}"),
    "retrieve": Job(RetrieveConfig, "ray_cora.pipelines.retrieve:run_retrieval",
                    "top-k passages of a sharded index for every question of a QA set on Ray Data "
                    "(query-encoder actors → shard-searcher actors) → JSONL parts; resumable"),
    "predictions convert": Job(ConvertPredictionsConfig, "ray_cora.evaluate.qa:run_convert_predictions",
                               "convert predictions between our JSONL {qid, lang, prediction} and the official "
                               "formats (xor: {id: answer} JSON; mkqa: {lang}.jsonl files)"),
    "evaluate qa": Job(EvaluateQAConfig, "ray_cora.evaluate.qa:run_evaluate_qa",
                       "score QA predictions exactly like the official scorers (--mode xor: XOR-TyDi/CORA "
                       "F1/EM/BLEU; mkqa: MKQA F1/EM) → metrics.json, report.md, per_language.png"),
    "evaluate retrieval": Job(EvaluateRetrievalConfig, "ray_cora.evaluate.retrieval:run_evaluate_retrieval",
                              "score a retrieval output: R^L@k, R^multi@k, gold-passage recall per language "
                              "+ macro → metrics.json, report.md (paper-style table), PNG plots"),
    "evaluate all": Job(EvaluateAllConfig, "ray_cora.evaluate.all:run_evaluate_all",
                        "one Ray job: retrieve for every requested language in parallel, then score it "
                        "like `evaluate retrieval`; --generator adds mGEN answers scored like `evaluate qa`"),
}


def load_driver(job: Job):
    """The job's driver function (imports its module)."""
    module, name = job.driver.split(":")
    return getattr(importlib.import_module(module), name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ray-cora", description="Multilingual open-domain QA (CORA, RM-MIPS pivot) on Ray.")
    parser.add_argument("--version", action="version", version=f"ray-cora {__version__}")
    sub = parser.add_subparsers(dest="job", metavar="JOB")
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, job in JOBS.items():
        config_cls = job.config
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
        config = config_from_args(job.config, args)
        load_driver(job)(config)
    except RayCoraError as exc:
        print(f"ray-cora {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ray-cora {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # Last resort: a user's error that reached here still wrapped by Ray (a Ray Train worker's,
        # or one raised outside a job's ray_session) is still one line. Anything else is a bug and
        # keeps its traceback.
        user_error = find_user_error(exc)
        if user_error is None:
            raise
        print(f"ray-cora {name}: error: {user_error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
