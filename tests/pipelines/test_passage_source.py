"""Ray Data layers against the pure readers: same records, same errors, same quarantine."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ray_cora.data.passages import iter_passages
from ray_cora.errors import BadRecordError
from ray_cora.runtime import user_errors_from_ray

pytestmark = pytest.mark.slow


def _write_corpus(folder, n_files=3, per_file=7):
    folder.mkdir()
    for f in range(n_files):
        rows = [json.dumps({"pid": f"{f}-{i}", "lang": ["en", "ja", "ar"][f % 3], "title": f"T{f}",
                            "text": f"passage {i} of file {f}"}) for i in range(per_file)]
        (folder / f"part-{f}.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def test_datasource_reads_every_passage_once(ray_local, tmp_path):
    from ray_cora.pipelines.passage_source import PassageDatasource

    folder = _write_corpus(tmp_path / "corpus")
    ds = ray_local.data.read_datasource(PassageDatasource(str(folder), batch_size=3))
    got = sorted((r["pid"], r["lang"], r["text"]) for r in ds.iter_rows())
    expected = sorted((p["pid"], p["lang"], p["text"]) for f in sorted(folder.iterdir())
                      for p in iter_passages(str(f)))
    assert got == expected and len(got) == 21


def test_bad_record_inside_a_read_task_reaches_the_user_as_itself(ray_local, tmp_path):
    from ray_cora.pipelines.passage_source import PassageDatasource

    folder = _write_corpus(tmp_path / "corpus", n_files=2)
    with open(folder / "part-1.jsonl", "a") as f:
        f.write("{broken\n")
    ds = ray_local.data.read_datasource(PassageDatasource(str(folder)))
    with pytest.raises(BadRecordError, match=r"part-1.jsonl:8: invalid JSON"):
        with user_errors_from_ray():
            ds.materialize()


def test_skip_policy_quarantines_per_file(ray_local, tmp_path):
    from ray_cora.pipelines.passage_source import PassageDatasource

    folder = _write_corpus(tmp_path / "corpus", n_files=2)
    with open(folder / "part-1.jsonl", "a") as f:
        f.write('{"pid": "x", "lang": "en"}\n')
    quarantine = tmp_path / "quarantine"
    ds = ray_local.data.read_datasource(PassageDatasource(
        str(folder), on_bad_record="skip", quarantine=str(quarantine)))
    assert ds.count() == 14
    [file] = list(quarantine.iterdir())
    record = json.loads(file.read_text())
    assert file.name == "00001-part-1.jsonl.jsonl" and record["line"] == 8
    assert "missing or empty field 'text'" in record["reason"]


def test_encoder_actor_pool_matches_direct_encoding(ray_local, muse, tmp_path):
    from ray.data import ActorPoolStrategy

    from ray_cora.pipelines.encode import EncodeQueries

    questions = [{"qid": str(i), "lang": "en", "question": q} for i, q in
                 enumerate(["How tall is Mount Fuji?", "富士山の高さは？", "Wer schrieb Faust?"])]
    ds = ray_local.data.from_items(questions).map_batches(
        EncodeQueries, fn_constructor_kwargs={"spec": "muse"}, batch_size=2, batch_format="numpy",
        compute=ActorPoolStrategy(size=1), num_cpus=0.5)
    rows = sorted(ds.iter_rows(), key=lambda r: r["qid"])
    direct = muse.encode_queries([q["question"] for q in questions])
    np.testing.assert_allclose(np.stack([r["embedding"] for r in rows]), direct, atol=1e-5)
