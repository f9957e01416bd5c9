"""The hybrid retriever's warning about question languages fused by the fallback setting (untuned:
equal-weight RRF, worse than BM25 alone at @1 on XQuAD): which languages fall back, the rule they
get, and the way out (`ray-cora tune fusion`). The run that prints it is in test_lexical.py."""

from __future__ import annotations

from ray_cora.index.fusion import FusionSetting, FusionWeights, fallback_languages
from ray_cora.pipelines.retrieve import fusion_fallback_line

TUNED = FusionSetting("convex", 0.3, rule="tuned", dev_questions=120)


def test_fallback_languages_are_those_with_lexical_parts_and_no_setting_of_their_own():
    weights = FusionWeights({"es": TUNED, "ja": TUNED})
    assert fallback_languages(weights, ["en", "es", "fr", "ja", "en"]) == ["en", "fr"]
    # A language without lexical parts gets no_lexical or the dense list alone, not the fallback.
    assert fallback_languages(weights, ["en", "fr", "sw"], lexical_langs=["en", "es", "ja"]) == ["en"]
    assert fallback_languages(weights, ["es", "ja"]) == []
    assert fallback_languages(FusionWeights(), []) == []


def test_the_warning_names_the_languages_the_rule_and_the_way_out():
    untuned = fusion_fallback_line(FusionWeights(), ["fr", "en", "fr"], lexical_langs=None, source=None)
    assert untuned.startswith("retrieve: warning: hybrid fusion has no setting for en, fr (no --fusion, and no "
                              "fusion.json beside the lexical or dense index)")
    assert "equal-rrf (rrf k=60 w=0.50)" in untuned and "worse than BM25 alone at @1" in untuned
    assert "`ray-cora tune fusion`" in untuned and "\n" not in untuned

    # A fusion.json that has other languages: it is named; its fallback (here one tuned on all dev
    # questions pooled) is the rule given, without the equal-RRF remark.
    pooled = FusionSetting("convex", 0.4, rule="pooled", dev_questions=300)
    partial = FusionWeights({"en": TUNED}, fallback=pooled)
    line = fusion_fallback_line(partial, ["en", "ja", "sw"], lexical_langs=["en", "ja"], source="/idx/bm25")
    assert "no setting for ja (/idx/bm25 has none for them): they use the fallback, pooled (convex minmax w=0.40)" \
        in line
    assert "worse than BM25" not in line and "sw" not in line

    assert fusion_fallback_line(partial, ["en"], lexical_langs=None, source="/idx/bm25") is None
