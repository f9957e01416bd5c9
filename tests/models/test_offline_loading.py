"""Models load from local files only: the docs promise that nothing is downloaded at run time, so
every ``from_pretrained`` the package makes passes ``local_files_only=True`` (a model name that is not
in the local Hugging Face cache is one clear error, not a network attempt)."""

from __future__ import annotations

import pytest
import transformers

from ray_cora.encoders import load_encoder
from ray_cora.errors import ConfigError
from ray_cora.models.mgen import Generator


@pytest.fixture
def from_pretrained_calls(monkeypatch):
    """Every from_pretrained of the Auto classes, recorded as (class, local_files_only)."""
    calls = []
    for name in ("AutoTokenizer", "AutoConfig", "AutoModel", "AutoModelForSeq2SeqLM"):
        cls = getattr(transformers, name)
        original = cls.from_pretrained.__func__

        def recording(klass, *args, _original=original, _name=name, **kwargs):
            calls.append((_name, kwargs.get("local_files_only")))
            return _original(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(recording))
    return calls


def test_encoders_and_generators_load_with_local_files_only(from_pretrained_calls, tiny_bert, tiny_t5):
    load_encoder(f"hf:{tiny_bert}")
    Generator.load(tiny_t5)
    names = {name for name, _ in from_pretrained_calls}
    assert {"AutoTokenizer", "AutoConfig", "AutoModel", "AutoModelForSeq2SeqLM"} <= names
    assert all(local is True for _, local in from_pretrained_calls), from_pretrained_calls


def test_a_model_name_not_in_the_cache_is_one_error_naming_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(ConfigError, match=r"never downloads.*'some-org/not-a-cached-model'"):
        load_encoder("hf:some-org/not-a-cached-model")
