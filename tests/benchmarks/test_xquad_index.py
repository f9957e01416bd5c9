"""Done-when checks of the index issue on real data: all 2,160 XQuAD paragraphs (9 languages)
embedded with mUSE into a real S3 bucket through `ray-cora embed`, and `ray job submit` of
jobs/embed_corpus.py to a token-authenticated head node on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ray_cora import storage
from ray_cora.data.qa import iter_squad_paragraphs
from ray_cora.index.sharded import ShardedIndex
from tests.support import REPO_ROOT, shared_data

pytestmark = pytest.mark.slow

XQUAD_LANGS = ("ar", "de", "en", "es", "ru", "th", "tr", "vi", "zh")


def _xquad_paragraphs() -> list[dict]:
    folder = shared_data("xquad")
    return [p for lang in XQUAD_LANGS for p in iter_squad_paragraphs(str(folder / f"xquad.{lang}.json"))]


def test_all_xquad_paragraphs_into_s3_equal_brute_force(s3_env, muse, monkeypatch):
    paragraphs = _xquad_paragraphs()
    assert len(paragraphs) == 2160
    prefix = f"s3://{s3_env['bucket']}/xquad"
    storage.write_bytes(f"{prefix}/passages/xquad.jsonl",
                        "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in paragraphs).encode())
    env = {k: v for k, v in __import__("os").environ.items()}
    result = subprocess.run(
        [sys.executable, "-m", "ray_cora", "embed", "--passages", f"{prefix}/passages", "--out",
         f"{prefix}/index", "--shard-size", "500", "--batch-size", "64", "--actor-cpus", "0.5",
         "--num-cpus", "2"], capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "index: 2160 passages in 5 shards" in result.stdout
    index = ShardedIndex.open(f"{prefix}/index")
    encoder = muse
    sample = paragraphs[::97]
    queries = encoder.encode_queries([p["text"][:200] for p in sample])
    vectors = encoder.encode_passages([p["title"] for p in paragraphs], [p["text"] for p in paragraphs])
    scores, got = index.search(queries, 5)
    brute = queries @ vectors.T
    expected = np.sort(brute, axis=1)[:, ::-1][:, :5]
    np.testing.assert_allclose(scores, expected, atol=1e-4)
    # A paragraph's opening finds that paragraph, in its own language or a translation of it.
    paragraph_key = lambda pid: pid.split("-", 2)[2]  # noqa: E731  xquad-<lang>-<article>-<para>
    assert [paragraph_key(row[0]) for row in got] == [paragraph_key(p["pid"]) for p in sample]


def test_ray_job_submit_to_a_local_head(ray_head, tmp_path):
    paragraphs = [p for p in _xquad_paragraphs() if p["lang"] in ("th", "zh_cn")]
    passages = tmp_path / "passages.jsonl"
    passages.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in paragraphs), encoding="utf-8")
    out = tmp_path / "index"
    ray_bin = str(Path(sys.executable).with_name("ray"))
    result = subprocess.run(
        [ray_bin, "job", "submit", "--address", ray_head["address"], "--",
         sys.executable, str(REPO_ROOT / "jobs" / "embed_corpus.py"), "--passages", str(passages),
         "--out", str(out), "--shard-size", "200", "--actor-cpus", "0.5"],
        capture_output=True, text=True, timeout=600, env=ray_head["env"], cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "succeeded" in result.stdout + result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_vectors"] == 480 and len(manifest["shards"]) == 3
    ShardedIndex.open(str(out))


def test_job_submit_without_the_token_is_refused(ray_head):
    env = {k: v for k, v in ray_head["env"].items() if k != "RAY_AUTH_TOKEN"}
    env["RAY_AUTH_TOKEN"] = "not-the-token"
    ray_bin = str(Path(sys.executable).with_name("ray"))
    result = subprocess.run([ray_bin, "job", "list", "--address", ray_head["address"]],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode != 0 and "token" in (result.stdout + result.stderr).lower()
