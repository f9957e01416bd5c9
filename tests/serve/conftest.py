"""The serve tests' own setting: every ``RetrieverCore.load`` of mUSE gets the session's encoder."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module", autouse=True)
def _retriever_cores_share_the_session_muse(muse):
    """``RetrieverCore.load`` builds its encoder with ``load_encoder``; for ``"muse"`` with one BLAS
    thread (its default) hand it the session's loaded encoder (tests/conftest.py) instead of a fresh
    one that loads the model again (about 2 s a core). Every other spec loads as before. Module
    scope, so the patch is on before this folder's module fixtures (demo_core) and off after it."""
    import ray_cora.serve.core as core

    load_encoder = core.load_encoder

    def load(spec, *, threads=1, **options):
        if spec.strip() == "muse" and threads == 1:
            return muse
        return load_encoder(spec, threads=threads, **options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(core, "load_encoder", load)
        yield


@pytest.fixture(scope="module", autouse=True)
def _serve_in_throughput_optimized_mode():
    """The Serve tests run Ray as ``ray-cora serve`` starts it by default: with Ray Serve's
    throughput-optimized mode (``serve_environment``). Module scope and autouse, so it is set before
    the module's Ray (tests/conftest.py ray_local) starts and is read by its Serve processes."""
    from ray_cora.configs.serve import ServeConfig
    from ray_cora.serve.run import serve_environment

    with pytest.MonkeyPatch.context() as patch:
        for name, value in serve_environment(ServeConfig(), ray_running=False).items():
            patch.setenv(name, value)
        yield


def build_demo_lexical(root) -> str:
    """The demo corpus (176 passages, 10 languages) as a sharded BM25 index under ``root``: shards of 37
    passages in corpus order, each split per language (as ``ray-cora index-bm25`` cuts it), built
    in-process with the lexical index's own functions (no Ray)."""
    import json

    from ray_cora.demo import DEMO_PASSAGES
    from ray_cora.index.lexical import build_part, commit_lexical_index, part_prefix, passage_terms, write_part

    passages = [json.loads(line) for line in DEMO_PASSAGES.read_text(encoding="utf-8").splitlines() if line.strip()]
    parts = []
    for number, start in enumerate(range(0, len(passages), 37)):
        shard = passages[start:start + 37]
        for lang in sorted({p["lang"] for p in shard}):
            group = [p for p in shard if p["lang"] == lang]
            part = build_part([p["pid"] for p in group], [passage_terms(p, lang) for p in group])
            prefix = part_prefix(number, lang)
            parts.append({"number": number, "lang": lang, "prefix": prefix, "count": part.count,
                          "total_len": part.total_len, "files": write_part(str(root), prefix, part)})
    commit_lexical_index(str(root), parts, tokenizer="language", k1=0.9, b=0.4,
                         extra={"passages": str(DEMO_PASSAGES)})
    return str(root)


@pytest.fixture(scope="session")
def demo_lexical(tmp_path_factory) -> str:
    """The demo corpus's sharded BM25 index (:func:`build_demo_lexical`), built once a session; read-only."""
    return build_demo_lexical(tmp_path_factory.mktemp("demo-lexical") / "bm25")
