"""CORA's released files as they are, end to end, on tiny stand-ins in CORA's exact formats:
``all_w100.tsv`` (id, text, title; integer ids; no language column), ``wiki_emb_<lang>_<n>`` pickles
of (id, vector), and ``mDPR_biencoder_best.cpt`` as CORA's trainer saves it. ``import-embeddings``
then ``retrieve`` with nothing but the paths gives CORA's top-k (brute force over the vectors with
CORA's tagged queries) and every passage's language; Serve's retriever core gives the same."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from ray_cora.demo import DEMO_PASSAGES, DEMO_QUESTIONS
from tests.support import read_jsonl

pytestmark = pytest.mark.slow

K = 5


@pytest.fixture(scope="module")
def cora_release(tmp_path_factory, tiny_bert):
    """The four artefacts a CORA user downloads, written in CORA's formats from the demo corpus."""
    from ray_cora.encoders import load_encoder
    from ray_cora.encoders.tiny import build_tiny_dpr_checkpoint

    root = tmp_path_factory.mktemp("cora-release")
    cpt = build_tiny_dpr_checkpoint(root / "mDPR_biencoder_best.cpt", tiny_bert, cora_format=True)
    passages = read_jsonl(DEMO_PASSAGES)
    # build_dpr_w100_data.py write_para_data_to_tsv: [id, text, title], integer ids counted over
    # every language's DB in turn, no header, no language.
    passages.sort(key=lambda p: p["lang"])
    rows = [{"id": i, **p} for i, p in enumerate(passages)]
    with open(root / "all_w100.tsv", "w", encoding="utf-8", newline="") as tsv:
        tsv.writelines(f"{r['id']}\t{r['text']}\t{r['title']}\n" for r in rows)
    # generate_dense_embeddings.py: one pickle of [(id, vector), ...] per shard, ids as read from the
    # TSV (strings), per language (wiki_emb_<lang>_<n>), vectors from the checkpoint's ctx tower.
    encoder = load_encoder(f"dpr:{cpt}", device="cpu")
    langs = sorted({r["lang"] for r in rows})
    vectors = {}
    for lang in langs:
        mine = [r for r in rows if r["lang"] == lang]
        embedded = encoder.encode_passages([r["title"] for r in mine], [r["text"] for r in mine])
        items = [(str(r["id"]), vec) for r, vec in zip(mine, embedded)]
        half = (len(items) + 1) // 2
        for shard, chunk in enumerate((items[:half], items[half:])):
            if chunk:
                (root / f"wiki_emb_{lang}_{shard}").write_bytes(pickle.dumps(chunk, protocol=4))
        vectors.update({pid: vec for pid, vec in items})
    # XOR-TyDi's jsonl as CORA's dense_retriever.py reads it: id, question, answers, lang.
    questions = [q for q in read_jsonl(DEMO_QUESTIONS) if q["lang"] in ("en", "ja", "zh_cn")]
    with open(root / "xor_dev_full_v1_1.jsonl", "w", encoding="utf-8") as qa:
        qa.writelines(json.dumps({"id": f"{q['qid']}-{q['lang']}", "question": q["question"],
                                  "answers": q["answers"], "lang": q["lang"]}, ensure_ascii=False) + "\n"
                      for q in questions)
    return {"root": root, "cpt": cpt, "rows": {str(r["id"]): r for r in rows}, "vectors": vectors,
            "questions": questions, "encoder": encoder}


def _cora_top_k(release, question: str, lang: str) -> tuple[list[str], np.ndarray]:
    """CORA's dense_retriever.py: the question tower reads "{question} [{lang}]" (--add_lang), a flat
    inner-product index over every wiki_emb_* vector, top-k."""
    pids = list(release["vectors"])
    matrix = np.stack([release["vectors"][p] for p in pids])
    query = release["encoder"].encode_queries([f"{question} [{lang}]"])[0]
    scores = matrix @ query
    order = np.argsort(-scores, kind="stable")[:K]
    return [pids[i] for i in order], scores[order]


def test_cora_release_imports_and_retrieves_with_nothing_but_the_paths(ray_local, cora_release, tmp_path):
    from ray_cora.cli import main
    from ray_cora.data.retrieval import iter_retrieval
    from ray_cora.serve.core import RetrieverCore

    root = cora_release["root"]
    index, out = tmp_path / "index", tmp_path / "retrieval"
    assert main(["import-embeddings", "--inputs", str(root / "wiki_emb_*"), "--out", str(index),
                 "--encoder", f"dpr:{cora_release['cpt']}", "--passages", str(root / "all_w100.tsv")]) == 0
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["encoder"]["query_format"] == "{question} [{lang}]"  # CORA's --add_lang, recorded
    assert manifest["encoder"]["identity"]["checkpoint_sha256"]
    assert main(["retrieve", "--index", str(index), "--questions", str(root / "xor_dev_full_v1_1.jsonl"),
                 "--dataset", "xor", "--k", str(K), "--out", str(out)]) == 0

    records = [record for _, _, record in iter_retrieval(str(out))]
    assert len(records) == len(cora_release["questions"])
    rows = cora_release["rows"]
    for record in records:
        pids, scores = _cora_top_k(cora_release, record["question"], record["lang"])
        assert [c["pid"] for c in record["ctxs"]] == pids, record["qid"]
        np.testing.assert_allclose([c["score"] for c in record["ctxs"]], scores, atol=1e-4)
        assert record["query"] == f"{record['question']} [{record['lang']}]"
        # The TSV has no language: each comes back from the wiki_emb_<lang>_<n> file it was in.
        assert [c["lang"] for c in record["ctxs"]] == [rows[p]["lang"] for p in pids]
        assert [c["text"] for c in record["ctxs"]] == [rows[p]["text"] for p in pids]
    retrieval_manifest = json.loads((out / "manifest.json").read_text())
    assert retrieval_manifest["query_format"] == "{question} [{lang}]"
    assert retrieval_manifest["passage_languages"]["known_langs"] == len(rows)
    assert retrieval_manifest["passage_languages"]["unknown"] == 0

    # Serve's retriever core, given only the index: the checkpoint, the corpus and the query
    # format all come from the manifest, and it finds what the batch job found.
    core = RetrieverCore.load(index=str(index))
    assert core.needs_lang
    served = core.retrieve([r["question"] for r in records], [K] * len(records), [r["lang"] for r in records])
    assert [[p["pid"] for p in ctxs] for ctxs in served] == [[c["pid"] for c in r["ctxs"]] for r in records]
    assert [[p["lang"] for p in ctxs] for ctxs in served] == [[c["lang"] for c in r["ctxs"]] for r in records]
