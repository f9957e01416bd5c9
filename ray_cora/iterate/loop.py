"""The driver of ``ray-cora iterate``: CORA's Algorithm 1 composed from the other jobs.

Each stage calls a job that exists on its own (``train-mdpr``, ``embed``, ``retrieve``,
``train-mgen``, ``evaluate all``, ``generate``) with a config built from the iterate config, so the
loop inherits their streaming, actor pools, checkpoints and resume. What is new here is only the
bookkeeping (:mod:`ray_cora.iterate.stages`) and the mining (:mod:`ray_cora.iterate.mining`).

Layout of ``<out>``::

    round-1/data/      train_questions.jsonl, dev_questions.jsonl, b1.jsonl, passage-store/, init/
    round-<t>/mdpr/    model/ (hf: bi-encoder), ray-train/ (checkpoints), summary.json
    round-<t>/index/   index/ (sharded FAISS index of the corpus, this round's passage encoder)
    round-<t>/retrieve/retrieval/ (top-k passages of every training question)
    round-<t>/mgen/    phase-1/model/ [, synthetic.jsonl, phase-2/model/]
    round-<t>/dev/     metrics.json, report.md, PNGs (R^L@k, R^multi@k, F1 per language)
    round-<t>/mine/    requests.jsonl, labels.jsonl, labelled.jsonl, mined.jsonl (B_t+1 - B_t), stats.json
    round-<t>/stats.json, summary.md;   summary.md, iterate.json (all rounds)
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any, Iterable, Iterator

from ray_cora import storage
from ray_cora.configs.evaluate import EvaluateAllConfig
from ray_cora.configs.iterate import TINY, IterateConfig
from ray_cora.data.passage_store import PassageStore, open_or_build_store
from ray_cora.data.qa import iter_qa
from ray_cora.data.records import BadRecords
from ray_cora.data.retrieval import iter_retrieval, question_files
from ray_cora.data.training import data_files, iter_raw_records
from ray_cora.data.wikidata import iter_entities, sitelinks_of_titles
from ray_cora.encoders.tiny import build_tiny_bert, build_tiny_t5
from ray_cora.errors import ConfigError
from ray_cora.evaluate.all import run_evaluate_all
from ray_cora.index.sharded import iter_index_langs
from ray_cora.iterate import mining
from ray_cora.iterate.report import overall_summary, round_summary
from ray_cora.iterate.stages import StageResult, StageRunner
from ray_cora.languages import LANGUAGES, parse_langs
from ray_cora.pipelines.embed_corpus import embed_corpus
from ray_cora.pipelines.generate import run_generate
from ray_cora.pipelines.retrieve import run_retrieval
from ray_cora.pivot.translate import LabelTable
from ray_cora.progress import JobProgress
from ray_cora.runtime import ray_session
from ray_cora.train.jobs import train_mdpr, train_mgen

# --- small I/O helpers ------------------------------------------------------------------------


def write_jsonl(loc: storage.Location, records: Iterable[dict[str, Any]]) -> int:
    count = 0
    with storage.open_output(loc) as stream:
        for record in records:
            stream.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
            count += 1
    return count


def read_jsonl(uri: str) -> Iterator[dict[str, Any]]:
    with storage.open_input(uri) as stream:
        for raw in storage.iter_lines(stream):
            if raw.strip():
                yield json.loads(raw)


def iter_dpr_records(files: Iterable[str], *, default_lang: str | None = None) -> Iterator[dict[str, Any]]:
    """Raw DPR records (with our extra ``qid``/``lang``/``source`` fields) of B_t's files.

    ``default_lang`` is the language of records without a ``lang`` field (DPR's NQ data, which
    CORA's initial mDPR data is, has none: the dataset is English); such records also get a
    stable ``qid`` from their question, so mining can key them."""
    bad = BadRecords("error")
    for uri in files:
        for file in data_files(uri):
            for _, obj in iter_raw_records(file, bad):
                yield mining.with_record_defaults(obj, lang=default_lang) if default_lang else obj


def _upload_dir(local: str, target: storage.Location) -> None:
    for dirpath, _, names in os.walk(local):
        for name in names:
            rel = os.path.relpath(os.path.join(dirpath, name), local).replace(os.sep, "/")
            with open(os.path.join(dirpath, name), "rb") as src:
                storage.write_bytes(target.join(rel), src.read())


def _build_tiny(kind: str, target: storage.Location, texts: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="ray-cora-tiny-") as tmp:
        if kind == "mdpr":
            build_tiny_bert(tmp, texts, vocab_size=2000)
        else:
            build_tiny_t5(tmp, texts)
        _upload_dir(tmp, target)


# --- the loop ---------------------------------------------------------------------------------


class IterativeTraining:
    """State of one ``iterate`` run: the config, the stage runner and the round-1 data."""

    def __init__(self, config: IterateConfig) -> None:
        self.config = config
        self.runner = StageRunner(config.out)
        self.root = storage.resolve(config.out)
        # A line per stage (n/total) over the lines of the jobs it runs; total set by prepare().
        self.progress = JobProgress("iterate", unit="stage", total=stage_count(config.rounds, with_dev=True),
                                    uniform=False)

    def stage(self, name: str, work: Any, **options: Any) -> StageResult:
        """Run (or skip) one stage with :class:`StageRunner` and report it as a unit of the job."""
        result = self.runner.run(name, work, **options)
        self.progress.add(skipped=result.skipped, note=name)
        return result

    # -- round 1: the data every round uses --

    def prepare(self) -> StageResult:
        self.data = self.runner.run("round-1/data", self._prepare,
                                    outputs=("train_questions.jsonl", "dev_questions.jsonl", "b1.jsonl",
                                             "passage-store/manifest.json"))
        # Only round 1's data says whether there is a dev stage per round: the exact total from here on.
        self.progress.total = stage_count(self.config.rounds, with_dev=bool(self.data.result["dev_questions"]))
        self.progress.add(skipped=self.data.skipped, note="round-1/data")
        return self.data

    def _prepare(self, folder: storage.Location) -> tuple[dict[str, Any], list[str]]:
        c = self.config
        train_q, dev_q = [], []
        for uri in question_files(c.questions, c.dataset):
            for record in iter_qa(uri, dataset=c.dataset):
                held_out = c.dev_questions is None and mining.in_dev_split(record["qid"], c.dev_fraction)
                (dev_q if held_out else train_q).append(record)
        if c.dev_questions:
            for uri in question_files(c.dev_questions, c.dev_dataset or c.dataset):
                dev_q.extend(iter_qa(uri, dataset=c.dev_dataset or c.dataset))
        if not train_q:
            raise ConfigError(f"{c.questions}: no answerable training questions")
        write_jsonl(folder.join("train_questions.jsonl"), train_q)
        write_jsonl(folder.join("dev_questions.jsonl"), dev_q)
        store = folder.join("passage-store")
        open_or_build_store(c.corpus, store.uri, format=c.corpus_format, lang=c.corpus_lang,
                            known_langs=(lambda: iter_index_langs(c.corpus_langs)) if c.corpus_langs else None)
        if c.train:
            b1_source, b1 = "given", list(iter_dpr_records(c.train, default_lang=c.train_lang))
        else:
            pids = {str(p) for q in train_q for p in q.get("gold_pids") or []}
            if not pids:
                raise ConfigError(f"{c.questions}: no gold_pids to build B_1 from; pass --train with DPR "
                                  "training files (CORA's mDPR training data)")
            passages = PassageStore(store.uri).lookup(pids)
            b1_source = "gold_pids"
            b1 = list(mining.initial_examples(train_q, passages,
                                              same_language_only=c.initial_positives == "same-language"))
        if not b1:
            raise ConfigError("B_1 is empty: no training question has a gold passage "
                              f"{'in its own language' if c.initial_positives == 'same-language' else ''}; "
                              "try --initial-positives any-language or pass --train")
        write_jsonl(folder.join("b1.jsonl"), b1)
        extra = []
        # mDPR's dev file (CORA keeps the checkpoint with the best dev NLL / average rank): the dev
        # questions' gold passages, chosen as B_1's are; none without gold_pids.
        dev_pids = {str(p) for q in dev_q for p in q.get("gold_pids") or []}
        dev_dpr = list(mining.initial_examples(dev_q, PassageStore(store.uri).lookup(dev_pids),
                                               same_language_only=c.initial_positives == "same-language")
                       ) if dev_pids else []
        if dev_dpr:
            write_jsonl(folder.join("dev_dpr.jsonl"), dev_dpr)
            extra.append("dev_dpr.jsonl")
        for kind, spec in (("mdpr", c.mdpr_init), ("mgen", c.mgen_init)):
            if spec == TINY:
                texts = [q["question"] for q in train_q] + [a for q in train_q for a in q["answers"]]
                texts += [f"{ctx['title']} {ctx['text']}" for r in b1 for ctx in r["positive_ctxs"]]
                _build_tiny(kind, folder.join("init", kind), texts)
                extra.append(f"init/{kind}/config.json")
        langs = sorted({q["lang"] for q in train_q} | {"en"})
        result = {"train_questions": len(train_q), "dev_questions": len(dev_q), "b1_records": len(b1),
                  "b1_source": b1_source, "train_languages": langs, "dev_dpr_records": len(dev_dpr),
                  "b1_positive_pairs": _pair_list(mining.positive_language_pairs(b1))}
        return result, extra

    def b1_files(self) -> list[str]:
        return list(self.config.train) or [self.root.join("round-1/data/b1.jsonl").uri]

    def init_spec(self, kind: str) -> str:
        spec = self.config.mdpr_init if kind == "mdpr" else self.config.mgen_init
        if spec != TINY:
            return spec
        path = self.root.join("round-1/data/init", kind).uri
        return f"hf:{path}" if kind == "mdpr" else path

    # -- one round --

    def run_round(self, t: int, data: StageResult, state: dict[str, Any]) -> dict[str, Any]:
        c = self.config
        name = f"round-{t}"
        train_files = self.b1_files() + state["mined_files"]
        upstream = state["upstream"] or data

        mdpr = self.stage(f"{name}/mdpr", lambda f: self._train_mdpr(f, train_files, state),
                          upstream=upstream, outputs=("model/manifest.json", "summary.json"))
        spec = mdpr.result["encoder_spec"]
        question_spec = state["first_question_spec"] if c.keep_first_question_encoder and t > 1 else spec
        state.setdefault("first_question_spec", spec)

        index = self.stage(f"{name}/index", lambda f: self._embed(f, spec), upstream=mdpr,
                           outputs=("index/manifest.json",))
        questions = self.root.join("round-1/data/train_questions.jsonl").uri
        has_dev = bool(data.result["dev_questions"])
        retrieve = self.stage(f"{name}/retrieve",
                              lambda f: self._retrieve(f, index, questions, question_spec, with_dev=has_dev),
                              upstream=index, outputs=("retrieval/manifest.json",)
                              + (("dev-retrieval/manifest.json",) if has_dev else ()))
        retrieval = self.runner.folder(f"{name}/retrieve").join("retrieval")
        mgen = self.stage(f"{name}/mgen", lambda f: self._train_mgen(
            f, retrieval, state, first_round=t == 1, dev_retrieval=retrieve.result.get("dev_retrieval")),
            upstream=retrieve)
        dev = None
        if data.result["dev_questions"]:
            dev = self.stage(f"{name}/dev", lambda f: self._dev(f, index, question_spec, mgen),
                             upstream=mgen, outputs=("metrics.json",))
        best_mgen = best_generator(state.get("best_mgen"), {"round": t, "model": mgen.result["model"],
                                                            "kept": mgen.result.get("kept")})
        state["best_mgen"] = best_mgen
        mine = None
        if t < c.rounds:
            mine = self.stage(f"{name}/mine",
                              lambda f: self._mine(f, train_files, retrieval, best_mgen["model"], state),
                              upstream=dev or mgen, outputs=("mined.jsonl", "stats.json"))
            state["mined_files"] = state["mined_files"] + [self.runner.folder(f"{name}/mine").join("mined.jsonl").uri]
        # CORA trains each round from the previous best checkpoint (mGEN/README.md: --model_name_or_path
        # /path/to/previous_best_checkpoint); mining labels with it too
        state["mdpr_spec"], state["mgen_model"] = spec, best_mgen["model"]
        state["upstream"] = mine or dev or mgen
        stats = self._round_stats(t, train_files, mdpr, retrieve, mgen, dev, mine, data)
        return stats

    def _train_mdpr(self, folder: storage.Location, train_files: list[str], state: dict[str, Any]):
        c = self.config
        init = state.get("mdpr_spec") or self.init_spec("mdpr")
        options: dict[str, Any] = {"lang": c.train_lang}  # DPR records without lang: the dataset's language
        dev = self.root.join("round-1/data/dev_dpr.jsonl")
        if "dev" not in c.mdpr and self.data.result.get("dev_dpr_records"):
            options["dev"] = [dev.uri]  # the best dev checkpoint is the round's encoder (CORA)
        manifest = train_mdpr(c.stage_config("mdpr", train=train_files, out=folder.uri, init=init, **options))
        summary = manifest["summary"]
        return {"encoder_spec": summary["encoder_spec"], "init": init, "examples": manifest["examples"],
                "steps": summary["steps"], "loss": summary["loss"], "kept": summary.get("kept"),
                "dev_history": summary.get("dev_history")}, []

    def _embed(self, folder: storage.Location, spec: str):
        c = self.config
        summary = embed_corpus(c.stage_config("embed", passages=c.corpus, out=folder.join("index").uri,
                                              encoder=spec, format=c.corpus_format, lang=c.corpus_lang))
        return {"index": folder.join("index").uri, "encoder": spec, "passages": summary["passages"],
                "shards": summary["shards"]}, []

    def _retrieve(self, folder: storage.Location, index: StageResult, questions: str, question_spec: str, *,
                  with_dev: bool):
        """The training questions' top-k (mGEN's training data and the mining candidates) and, with a
        dev set, the dev questions' (what mGEN's best-checkpoint choice is scored on)."""
        c = self.config
        runs = [("retrieval", questions)]
        if with_dev:
            runs.append(("dev-retrieval", self.root.join("round-1/data/dev_questions.jsonl").uri))
        result: dict[str, Any] = {"encoder": question_spec}
        for name, source in runs:
            out = folder.join(name)
            summary = run_retrieval(c.stage_config(
                "retrieve", index=index.result["index"], questions=source, dataset="jsonl", out=out.uri,
                encoder=question_spec, k=c.k, passage_store=self.root.join("round-1/data/passage-store").uri,
                # Round 1's question encoder over a later round's passages (B.5) is a deliberate mix.
                check_encoder=question_spec == index.result["encoder"]))
            result[name.replace("-", "_")] = out.uri
            result["questions" if name == "retrieval" else "dev_questions"] = summary.get("questions")
        return result, []

    def _train_mgen(self, folder: storage.Location, retrieval: storage.Location, state: dict[str, Any], *,
                    first_round: bool, dev_retrieval: str | None):
        c = self.config
        init = state.get("mgen_model") or self.init_spec("mgen")
        epochs = int(c.mgen.get("epochs", 1))
        switch = c.answer_translation_after_epoch
        synthetic, synthetic_stats = None, None
        # CORA A.2: the synthetic examples join the *initial* mGEN training after its third epoch;
        # later rounds continue from that model on B_t's retrieval alone.
        if first_round and self.config.wikidata and switch < epochs:
            synthetic = folder.join("synthetic.jsonl")
            synthetic_stats = self._write_synthetic(retrieval, synthetic)
            storage.write_bytes(folder.join("synthetic_stats.json"),
                                json.dumps(synthetic_stats, indent=2, ensure_ascii=False).encode("utf-8"))
            if not synthetic_stats["kept"]:
                synthetic = None
        parts = [retrieval.uri]  # train-mgen reads a retrieval output's parts
        # The best dev-EM checkpoint is the phase's model (CORA's callbacks_rag.get_checkpoint_callback).
        options = {"dev": [dev_retrieval]} if dev_retrieval and "dev" not in c.mgen else {}
        phases = [(n + 1, [*parts, synthetic.uri] if with_synthetic else parts, phase_epochs)
                  for n, (with_synthetic, phase_epochs) in enumerate(
                      mining.mgen_phases(epochs, switch, synthetic is not None))]
        outputs, steps, model, kept, history = [], 0, init, None, []
        for number, files, phase_epochs in phases:
            out = folder.join(f"phase-{number}")
            manifest = train_mgen(c.stage_config("mgen", train=files, out=out.uri, init=model,
                                                 tokenizer=c.mgen_tokenizer, top_k=c.top_k, epochs=phase_epochs,
                                                 **options))
            model = out.join("model").uri
            steps += manifest["steps"]
            outputs.append(f"phase-{number}/model/manifest.json")
            # each phase continues from the previous phase's kept model; the last phase's is the round's
            kept = manifest.get("kept")
            history += [{**entry, "phase": number} for entry in manifest.get("dev_history") or []]
        result = {"model": model, "init": init, "phases": len(phases), "steps": steps, "kept": kept,
                  "dev_history": history,
                  "synthetic_examples": synthetic_stats["kept"] if synthetic_stats else 0,
                  "synthetic": synthetic_stats}
        extra = ["synthetic_stats.json"] if synthetic_stats else []
        return result, outputs + extra + (["synthetic.jsonl"] if synthetic else [])

    def _write_synthetic(self, retrieval: storage.Location, target: storage.Location) -> dict[str, Any]:
        """Synthetic mGEN examples (q^En, a^L, P^En) of CORA A.2, drawn as :class:`mining.SyntheticPlan`
        says, written to ``target``; returns the draw's counts (per language)."""
        c = self.config

        def rows() -> Iterator[dict[str, Any]]:
            return (record for _, _, record in iter_retrieval(retrieval.uri))

        plan = mining.SyntheticPlan.from_rows(rows(), self._translator(), parse_langs(c.synthetic_langs),
                                              max_langs=c.synthetic_max_langs, keep_fraction=c.synthetic_fraction,
                                              seed=c.seed)
        written = write_jsonl(target, plan.examples(rows()))
        return {**plan.stats, "written": written}

    def _translator(self, records: Iterable[dict[str, Any]] = ()) -> Any:
        """``translate(english_answer, lang)`` → the answer entity's label in ``lang``, or None
        (Wikidata labels of the training questions' and ``records``' English answers)."""
        labels = self.labels(records)
        if labels is None:
            return None

        def translate(answer: str, lang: str) -> str | None:
            qid = labels.match_english(answer)
            return labels.label(qid, lang) if qid else None

        return translate

    def _dev(self, folder: storage.Location, index: StageResult, question_spec: str, mgen: StageResult):
        c = self.config
        questions = self.root.join("round-1/data/dev_questions.jsonl").uri
        evaluation = EvaluateAllConfig(**c.retrieve, index=index.result["index"], questions=questions,
                                       dataset="jsonl", out=folder.uri, encoder=question_spec, k=c.k,
                                       passage_store=self.root.join("round-1/data/passage-store").uri,
                                       check_encoder=question_spec == index.result["encoder"],
                                       **self._generator_options(mgen))
        metrics = run_evaluate_all(evaluation)
        return {"per_language": _dev_summary(metrics), "macro": _dev_macro(metrics)}, []

    def _generator_options(self, mgen: StageResult) -> dict[str, Any]:
        """`evaluate all`'s generation options, from the iterate config's generate: mapping."""
        c = self.config
        renamed = {"batch_size": "generate_batch_size", "actors": "generate_actors",
                   "actor_cpus": "generate_actor_cpus", "actor_gpus": "generate_actor_gpus"}
        options = {renamed.get(k, k): v for k, v in c.generate.items()
                   if k in ("decoding", "max_source_length", "max_target_length", "num_beams", *renamed)}
        return {**options, "generator": mgen.result["model"], "generator_tokenizer": c.mgen_tokenizer,
                "top_k": c.top_k, "mode": c.dev_mode, "sacrebleu": False}

    def _mine(self, folder: storage.Location, train_files: list[str], retrieval: storage.Location,
              label_model: str, state: dict[str, Any]):
        c = self.config
        records = list(iter_dpr_records(train_files, default_lang=c.train_lang))
        known = mining.known_pairs(records)
        rows = (record for _, _, record in iter_retrieval(retrieval.uri))
        candidates = list(mining.retrieval_candidates(rows, mine_k=c.mine_k, known=known))
        links = self.language_links(mining.english_positive_titles(records))
        link_candidates: list[dict[str, Any]] = []
        stats = mining.MiningStats()
        if links is not None:
            requests = list(mining.language_link_requests(records, links, self.link_langs()))
            wanted = {(lang, title) for _, titles in requests for lang, title in titles.items()}
            link_candidates = list(mining.language_link_candidates(
                requests, self._passages_by_title(wanted), known=known, translate=self._translator(records),
                dropped=stats.dropped_no_translation))
        seen: set[tuple[str, str, str]] = set()
        unique = []
        for cand in candidates + link_candidates:
            key = (cand["qid"], cand["lang"], str(cand["passage"]["pid"]))
            if key not in seen:
                seen.add(key)
                unique.append(cand)
        ids = [f"c{n:07d}" for n in range(len(unique))]
        requests_loc = folder.join("requests.jsonl")
        write_jsonl(requests_loc, (mining.candidate_request(cid, cand) for cid, cand in zip(ids, unique)))
        predictions: dict[str, str] = {}
        if unique:
            labels_loc = folder.join("labels.jsonl")
            run_generate(c.stage_config("generate", model=label_model, retrieval=[requests_loc.uri],
                                        out=labels_loc.uri, tokenizer=c.mgen_tokenizer, top_k=1))
            predictions = {row["qid"]: row["prediction"] for row in read_jsonl(labels_loc.uri)}
        labelled = []
        for cid, cand in zip(ids, unique):
            prediction = predictions.get(cid, "")
            positive = mining.label_is_positive(prediction, cand["answers"], cand.get("target_lang", cand["lang"]))
            stats.add(cand, positive)
            labelled.append((cand, positive, prediction))
        write_jsonl(folder.join("labelled.jsonl"), (
            {"qid": cand["qid"], "lang": cand["lang"], "target_lang": cand.get("target_lang", cand["lang"]),
             "pid": cand["passage"]["pid"],
             "passage_lang": cand["passage"].get("lang"), "source": cand["source"], "prediction": prediction,
             "answers": cand["answers"], "positive": positive} for cand, positive, prediction in labelled))
        new_records, record_counts = mining.dpr_records(((cand, positive) for cand, positive, _ in labelled),
                                                        mining.positives_by_question(records))
        write_jsonl(folder.join("mined.jsonl"), new_records)
        initial_pairs = [(q, p) for q, p, _ in self.data.result["b1_positive_pairs"]]
        summary = stats.to_dict(initial_pairs=initial_pairs)
        summary["new_records"] = len(new_records)
        summary["labelled_with"] = label_model
        summary.update(record_counts)
        storage.write_bytes(folder.join("stats.json"),
                            json.dumps(summary, indent=2, ensure_ascii=False).encode("utf-8"))
        return summary, ["labelled.jsonl"]

    # -- language links and labels --

    def labels(self, records: Iterable[dict[str, Any]] = ()) -> Any:
        """Wikidata labels for the English answers of the training questions and of ``records``
        (all answer translation needs; a full Wikidata table would not fit in memory); loaded again
        only when ``records`` bring answers not loaded yet."""
        if not self.config.wikidata:
            return None
        questions = read_jsonl(self.root.join("round-1/data/train_questions.jsonl").uri)
        answers = {a: None for q in [*questions, *records] if q.get("lang") == "en" for a in q.get("answers") or ()}
        if getattr(self, "_label_answers", None) is None or not set(answers) <= self._label_answers:
            self._labels = LabelTable.load(self.config.wikidata, answers=list(answers), qids=())
            self._label_answers = set(answers)
        return self._labels

    def language_links(self, english_titles: set[str]) -> mining.LanguageLinks | None:
        """Sitelinks of the entities behind these English articles (one pass over the sitelinks)."""
        if not self.config.wikidata:
            return None
        uri = self.config.wikidata
        if storage.resolve(uri).join(storage.MANIFEST_NAME).is_file():
            return mining.LanguageLinks.from_sitelinks(sitelinks_of_titles(uri, "enwiki", english_titles))
        return mining.LanguageLinks.from_sitelinks(_jsonl_sitelinks(uri))

    def link_langs(self) -> list[str]:
        return list(parse_langs(self.config.link_langs))

    def _passages_by_title(self, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """One streaming pass over the passages, keeping only the linked articles' passages."""
        found: dict[tuple[str, str], list[dict[str, Any]]] = {}
        if not wanted:
            return found
        # The passage store of round 1, not the corpus file: it holds the languages filled in from
        # --corpus-lang/--corpus-langs, which a corpus without a lang column (CORA's) lacks.
        for passage in PassageStore(self.root.join("round-1/data/passage-store").uri).iter_passages():
            key = (passage["lang"], passage["title"])
            if key in wanted:
                found.setdefault(key, []).append(passage)
        return found

    # -- reporting --

    def _round_stats(self, t: int, train_files: list[str], mdpr: StageResult, retrieve: StageResult,
                     mgen: StageResult, dev: StageResult | None, mine: StageResult | None,
                     data: StageResult) -> dict[str, Any]:
        stats = {
            "round": t,
            "train_records": sum(1 for _ in iter_dpr_records(train_files)),
            "train_files": train_files,
            "mdpr": mdpr.result,
            "retrieve": retrieve.result,
            "mgen": mgen.result,
            "dev": dev.result if dev else None,
            "mining": mine.result if mine else None,
            "initial_positive_pairs": data.result["b1_positive_pairs"],
        }
        folder = self.root.join(f"round-{t}")
        storage.write_bytes(folder.join("stats.json"), json.dumps(stats, indent=2, ensure_ascii=False).encode("utf-8"))
        storage.write_bytes(folder.join("summary.md"), round_summary(stats).encode("utf-8"))
        return stats


def best_generator(best: dict[str, Any] | None, candidate: dict[str, Any]) -> dict[str, Any]:
    """The better of the best mGEN so far and this round's, by the dev score each kept (``kept``:
    ``{"metric", "value", ...}``, higher is better: CORA's dev EM); without comparable scores the
    newer one.

    >>> old = {"round": 1, "model": "m1", "kept": {"metric": "em", "value": 40.0}}
    >>> best_generator(old, {"round": 2, "model": "m2", "kept": {"metric": "em", "value": 35.0}})["model"]
    'm1'
    >>> best_generator(old, {"round": 2, "model": "m2", "kept": None})["model"]
    'm2'
    """
    if best is None or not best.get("kept") or not candidate.get("kept"):
        return candidate
    if best["kept"]["metric"] != candidate["kept"]["metric"]:
        return candidate
    return best if best["kept"]["value"] > candidate["kept"]["value"] else candidate


def _jsonl_sitelinks(uri: str) -> Iterator[tuple[str, str, str]]:
    with storage.open_input(uri) as stream:
        lines = enumerate(storage.iter_lines(stream), start=1)
        for entity in iter_entities(lines, source=uri, langs=list(LANGUAGES)):
            for site, title in entity.sitelinks.items():
                yield entity.qid, site, title


def _pair_list(pairs: dict[tuple[str, str], int]) -> list[list[Any]]:
    return [[q, p, n] for (q, p), n in sorted(pairs.items())]


def _dev_summary(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    keep = ("count", "R^L@10", "R^multi@10", "R^gold@10", "f1", "em", "bleu")
    return {lang: {k: row[k] for k in keep if k in row} for lang, row in metrics["per_language"].items()}


def _dev_macro(metrics: dict[str, Any]) -> dict[str, Any]:
    keep = ("R^L@10", "R^multi@10", "R^gold@10", "f1", "em", "bleu")
    macro = metrics.get("macro") or {}
    return {k: macro[k] for k in keep if k in macro}


def stage_count(rounds: int, *, with_dev: bool) -> int:
    """Stages of a run: round 1's data, then per round mdpr, index, retrieve, mgen [, dev], and
    mine in every round but the last.

    >>> stage_count(2, with_dev=True), stage_count(1, with_dev=False)
    (12, 5)
    """
    return 1 + rounds * (4 + int(with_dev)) + (rounds - 1)


def iterate(config: IterateConfig) -> dict[str, Any]:
    """Run (or resume) all rounds; returns ``{"rounds": [round stats...], "ran", "skipped"}``."""
    started = time.perf_counter()
    job = IterativeTraining(config)
    storage.write_bytes(job.root.join("config.json"), json.dumps(config.to_dict(), indent=2).encode("utf-8"))
    rounds = []
    with ray_session(address=config.ray_address, num_cpus=config.num_cpus):
        job.progress.start()
        data = job.prepare()
        state: dict[str, Any] = {"mined_files": [], "upstream": None}
        for t in range(1, config.rounds + 1):
            rounds.append(job.run_round(t, data, state))
    result = {"rounds": rounds, "ran": job.runner.ran, "skipped": job.runner.skipped,
              "seconds": round(time.perf_counter() - started, 1)}
    storage.write_bytes(job.root.join("iterate.json"), json.dumps(result, indent=2, ensure_ascii=False).encode("utf-8"))
    summary = overall_summary(rounds)
    storage.write_bytes(job.root.join("summary.md"), summary.encode("utf-8"))
    print(summary)
    print(f"iterate: {len(job.runner.ran)} stage(s) run, {len(job.runner.skipped)} skipped; "
          f"wrote {job.root.uri}/summary.md, iterate.json, round-*/stats.json")
    job.progress.finish()
    return result
