from __future__ import annotations

import gzip
import json
import os
import time

import pyarrow.fs as pafs
import pytest

from ray_cora import storage
from ray_cora.errors import ChecksumError, StorageError


def test_resolve_local_and_file_uri(tmp_path):
    plain = storage.resolve(str(tmp_path / "a"))
    file_uri = storage.resolve(f"file://{tmp_path}/a")
    assert isinstance(plain.fs, pafs.LocalFileSystem)
    assert plain.path == file_uri.path == str(tmp_path / "a")
    assert plain.join("b", "c.txt").path == str(tmp_path / "a" / "b" / "c.txt")


def test_resolve_s3_reads_standard_aws_variables(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    loc = storage.resolve("s3://bucket/some/prefix/")
    assert isinstance(loc.fs, pafs.S3FileSystem)
    assert loc.path == "bucket/some/prefix"
    assert loc.fs.region == "eu-west-3"
    assert loc.join("x").uri == "s3://bucket/some/prefix/x"


@pytest.mark.parametrize("uri, message", [
    ("", "empty storage URI"),
    ("gs://bucket/x", "unsupported URI scheme 'gs'"),
    ("s3:///nobucket", "needs a bucket"),
])
def test_resolve_rejects_bad_uris(uri, message):
    with pytest.raises(StorageError, match=message):
        storage.resolve(uri)


def test_roundtrip_bytes_and_gzip(storage_root):
    root = storage.resolve(storage_root)
    storage.write_bytes(root.join("plain.txt"), b"hello\nworld")
    storage.write_bytes(root.join("z.jsonl.gz"), gzip.compress(b'{"a": 1}\n'))
    assert storage.read_bytes(root.join("plain.txt")) == b"hello\nworld"
    assert storage.read_bytes(root.join("z.jsonl.gz")) == b'{"a": 1}\n'
    with storage.open_input(root.join("plain.txt")) as stream:
        assert list(storage.iter_lines(stream)) == [b"hello", b"world"]
    assert [l.uri.rsplit("/", 1)[1] for l in storage.list_files(root)] == ["plain.txt", "z.jsonl.gz"]


def test_missing_file_is_a_clear_error(storage_root):
    with pytest.raises(StorageError, match="no such file"):
        storage.read_bytes(storage.resolve(storage_root).join("missing.tsv"))


def test_failed_write_leaves_nothing_behind(storage_root):
    target = storage.resolve(storage_root).join("part.bin")
    with pytest.raises(RuntimeError):
        with storage.open_output(target) as out:
            out.write(b"x" * 1000)
            raise RuntimeError("writer killed")
    assert not target.exists()
    parent = storage.resolve(storage_root)
    leftovers = parent.fs.get_file_info(pafs.FileSelector(parent.path, allow_not_found=True, recursive=True))
    assert [i.path for i in leftovers if i.type == pafs.FileType.File] == []


def test_artifact_commit_and_verified_read(storage_root):
    writer = storage.ArtifactWriter(storage_root, kind="test", config={"k": 1})
    writer.write_bytes("data/a.bin", b"a" * 10)
    with writer.open("data/b.txt") as out:
        out.write(b"bbb")
        out.write(memoryview(b"cc"))
    # Before commit there is no artifact, only loose files.
    with pytest.raises(StorageError, match="never committed"):
        storage.Artifact(storage_root)
    manifest = writer.commit({"num_things": 2})
    assert manifest["files"]["data/b.txt"]["size"] == 5

    art = storage.Artifact(storage_root, kind="test")
    assert art.manifest["num_things"] == 2 and art.manifest["config"] == {"k": 1}
    assert art.read_bytes("data/b.txt") == b"bbbcc"
    art.verify_all()
    with pytest.raises(StorageError, match="expected 'index'"):
        storage.Artifact(storage_root, kind="index")


def test_corrupted_file_fails_checksum(storage_root):
    writer = storage.ArtifactWriter(storage_root, kind="test")
    writer.write_bytes("a.bin", b"original")
    writer.commit()
    storage.write_bytes(storage.resolve(storage_root).join("a.bin"), b"tampered")
    art = storage.Artifact(storage_root)
    with pytest.raises(ChecksumError, match="a.bin: checksum mismatch"):
        art.read_bytes("a.bin")
    with pytest.raises(ChecksumError):
        art.verify("a.bin")


def test_local_path_maps_local_files_and_copies_remote_ones_by_checksum(storage_root, tmp_path):
    cache = tmp_path / "cache"
    for content in (b"first version", b"rebuilt in place"):
        writer = storage.ArtifactWriter(storage_root, kind="test")
        writer.write_bytes("shards/a.faiss", content)
        writer.commit()
        path = storage.Artifact(storage_root).local_path("shards/a.faiss", cache_dir=str(cache))
        with open(path, "rb") as f:
            assert f.read() == content  # a rebuilt artifact never maps the old copy
    remote = storage.resolve(storage_root).is_s3
    assert (path.startswith(str(cache)) and path.endswith(".faiss")) == remote
    assert (len(os.listdir(cache)) if cache.exists() else 0) == (2 if remote else 0)

    storage.write_bytes(storage.resolve(storage_root).join("shards/a.faiss"), b"tampered!")
    with pytest.raises(StorageError, match="a.faiss"):
        storage.Artifact(storage_root).local_path("shards/a.faiss", cache_dir=str(tmp_path / "fresh"))
    assert not (tmp_path / "fresh").exists() or os.listdir(tmp_path / "fresh") == []  # no partial copy left


def test_compressed_artifact_file_is_checksummed_as_stored(storage_root):
    writer = storage.ArtifactWriter(storage_root, kind="test")
    payload = gzip.compress(b"line\n" * 100)
    writer.write_bytes("x.jsonl.gz", payload)
    writer.commit()
    art = storage.Artifact(storage_root)
    art.verify("x.jsonl.gz")
    assert art.read_bytes("x.jsonl.gz") == payload


def test_manifest_version_mismatch_is_reported(storage_root):
    root = storage.resolve(storage_root)
    storage.write_bytes(root.join("manifest.json"), json.dumps({"format_version": 99}).encode())
    with pytest.raises(StorageError, match="format_version 99"):
        storage.Artifact(storage_root)


def test_s3_server_rejects_wrong_credentials(s3_server, monkeypatch):
    """The fixture's server enforces auth, so the S3 tests really exercise the credential path."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "wrong")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server["endpoint"])
    with pytest.raises(StorageError):
        storage.read_bytes(f"s3://{s3_server['bucket']}/_ready")


def _commit(root: str, files: dict[str, bytes]) -> None:
    writer = storage.ArtifactWriter(root, kind="test")
    for relpath, data in files.items():
        writer.write_bytes(relpath, data)
    writer.commit()


def _edit_in_place(path: str, offset: int, data: bytes) -> None:
    """Overwrite bytes without changing the file's length (what `dd conv=notrunc` does)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_same_length_edit_of_a_local_file_is_caught_even_after_it_was_verified(tmp_path, monkeypatch):
    root = str(tmp_path / "art")
    _commit(root, {"shards/a.faiss": b"0123456789" * 100})
    monkeypatch.setattr(storage, "SETTLE_NS", 0)  # remember files however new (as old ones are)
    hashed = []
    real_digest = storage.hashlib.file_digest
    monkeypatch.setattr(storage.hashlib, "file_digest", lambda *a, **k: hashed.append(1) or real_digest(*a, **k))
    art = storage.Artifact(root)
    path = art.local_path("shards/a.faiss", cache_dir=str(tmp_path / "cache"))
    assert art.local_path("shards/a.faiss", cache_dir=str(tmp_path / "cache")) == path
    assert len(hashed) == 1  # hashed once per process while the file is unchanged
    time.sleep(0.05)  # past the coarse clock's tick, as any later edit is
    _edit_in_place(path, 500, b"X")
    assert os.path.getsize(path) == 1000
    with pytest.raises(ChecksumError, match=r"a.faiss: checksum mismatch"):
        art.local_path("shards/a.faiss", cache_dir=str(tmp_path / "cache"))


def test_recently_written_files_are_hashed_at_every_open(tmp_path):
    """A write in the same clock tick as the verification keeps the file's times: a file that new
    is never remembered as verified, so the edit is still caught."""
    root = str(tmp_path / "art")
    _commit(root, {"b.arrow": b"abcdefgh" * 64})
    art = storage.Artifact(root)
    path, signature = art.verified_local_path("b.arrow", cache_dir=str(tmp_path / "cache"))
    assert not storage.still_verified(path, signature)
    _edit_in_place(path, 0, b"Z")  # right away: possibly the same mtime/ctime
    with pytest.raises(ChecksumError):
        art.local_path("b.arrow", cache_dir=str(tmp_path / "cache"))


@pytest.mark.s3
@pytest.mark.parametrize("damage", ["replaced", "truncated"])
def test_damaged_cache_entry_is_detected_and_fetched_again(s3_env, tmp_path, damage, caplog):
    uri = f"s3://{s3_env['bucket']}/cache-heal-{damage}-{time.time_ns()}"
    original = bytes(range(256)) * 40
    _commit(uri, {"shards/s.faiss": original})
    cache = tmp_path / "cache"
    path = storage.Artifact(uri).local_path("shards/s.faiss", cache_dir=str(cache))
    assert path.startswith(str(cache)) and open(path, "rb").read() == original
    time.sleep(0.05)
    if damage == "replaced":  # same name, same length, other bytes
        with open(path + ".evil", "wb") as f:
            f.write(bytes(reversed(original)))
        os.replace(path + ".evil", path)
    else:
        with open(path, "r+b") as f:
            f.truncate(len(original) // 3)
    with caplog.at_level("WARNING", logger="ray_cora.storage"):
        again = storage.Artifact(uri).local_path("shards/s.faiss", cache_dir=str(cache))
    assert again == path and open(again, "rb").read() == original
    assert "fetching" in caplog.text and "s.faiss" in caplog.text
    assert sorted(os.listdir(cache)) == [os.path.basename(path)]  # no partial copy left


def test_cache_folder_is_private_to_the_user(tmp_path):
    root = str(tmp_path / "art")
    _commit(root, {"a.bin": b"x"})
    fresh = storage.private_dir(str(tmp_path / "made" / "cache"))
    assert os.stat(fresh).st_mode & 0o777 == 0o700 and os.stat(fresh).st_uid == os.getuid()
    default = storage.default_cache_dir("index_cache")
    parent = os.path.dirname(default)
    assert os.path.basename(parent) == f"ray_cora-{os.getuid()}" and os.stat(parent).st_mode & 0o777 == 0o700

    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)
    with pytest.raises(StorageError, match=r"shared: refused as a cache folder: it has mode 777.*chmod 700"):
        storage.private_dir(str(shared))
    link = tmp_path / "link"
    link.symlink_to(fresh)
    with pytest.raises(StorageError, match="is a symlink"):
        storage.private_dir(str(link))
    if os.geteuid() == 0:  # only root can give a folder away
        other = tmp_path / "other"
        other.mkdir(mode=0o700)
        os.chown(other, 12345, 12345)
        with pytest.raises(StorageError, match="owned by uid 12345"):
            storage.private_dir(str(other))


@pytest.mark.parametrize("bad_path, problem", [
    ("/etc/hostname", "absolute path"),
    ("../outside.bin", r"leaves the artifact's folder"),
    ("shards/../../outside.bin", r"leaves the artifact's folder"),
], ids=["absolute", "dotdot", "nested-dotdot"])
def test_manifest_paths_outside_the_artifact_are_refused(storage_root, bad_path, problem):
    _commit(storage_root, {"a.bin": b"inside"})
    root = storage.resolve(storage_root)
    manifest = json.loads(storage.read_bytes(root.join("manifest.json")))
    manifest["files"][bad_path] = {"size": 9, "sha256": "0" * 64}
    storage.write_bytes(root.join("manifest.json"), json.dumps(manifest).encode())
    with pytest.raises(StorageError, match=rf"manifest.json: field files\[.*\] (is an )?{problem}"):
        storage.Artifact(storage_root)


def test_symlink_out_of_a_local_artifact_is_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"not yours")
    root = tmp_path / "art"
    _commit(str(root), {"a.bin": b"not yours"})
    (root / "a.bin").unlink()
    (root / "a.bin").symlink_to(secret)
    art = storage.Artifact(str(root))
    for read in (lambda: art.read_bytes("a.bin"), lambda: art.verify("a.bin"),
                 lambda: art.local_path("a.bin", cache_dir=str(tmp_path / "cache"))):
        with pytest.raises(StorageError, match=r"a.bin: is a symlink to .*secret.txt, outside the artifact"):
            read()
