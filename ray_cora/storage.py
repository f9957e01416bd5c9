"""Storage URIs (local path, ``file://``, ``s3://``) as ``pyarrow.fs`` filesystems, and artifacts
published atomically with a manifest written last.

S3 settings come from the standard AWS variables, so the same code talks to AWS and to a local
S3 server: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_REGION`` (or ``AWS_DEFAULT_REGION``), ``AWS_ENDPOINT_URL_S3`` (or ``AWS_ENDPOINT_URL``).

An artifact is a folder of files plus ``manifest.json``. Writers put every data file first and the
manifest last; the manifest lists each file with its size and sha256, so a reader that starts from
the manifest never sees a half-written artifact, and :class:`Artifact` verifies checksums. Every
path a manifest names stays inside its artifact: absolute paths, ``..`` and (locally) symlinks that
lead out of the folder are refused, so a crafted manifest cannot make a reader open another file.

Local copies of remote files (for memory-mapping) live in a cache folder private to the user
(mode 0700, owned by them, refused otherwise: :func:`private_dir`), named by sha256; a copy that no
longer matches its name (replaced, truncated) is deleted and fetched again.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import json
import logging
import os
import posixpath
import re
import stat
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, Any, Iterator
from urllib.parse import urlparse

import pyarrow.fs as pafs

from ray_cora.errors import ChecksumError, StorageError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT_VERSION = 1
_CHUNK = 1 << 20
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Location:
    """A filesystem and a path on it; ``uri`` is how the user wrote it (for messages)."""

    fs: pafs.FileSystem
    path: str
    uri: str

    def join(self, *parts: str) -> "Location":
        path = posixpath.join(self.path, *parts) if self.path else posixpath.join(*parts)
        uri = self.uri.rstrip("/") + "/" + "/".join(p.strip("/") for p in parts)
        return Location(self.fs, path, uri)

    @property
    def is_s3(self) -> bool:
        return isinstance(self.fs, pafs.S3FileSystem)

    def info(self) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(self.path)
        except OSError as exc:
            raise StorageError(f"{self.uri}: {exc} (for s3:// check the AWS_* credential, region "
                               "and endpoint variables)") from exc

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File


def resolve(uri: str | os.PathLike) -> Location:
    """Turn a local path, ``file://`` URI or ``s3://bucket/prefix`` into a :class:`Location`.

    >>> resolve("/tmp/x").path
    '/tmp/x'
    """
    uri = os.fspath(uri)
    if not uri:
        raise StorageError("empty storage URI: give a local path, file:///path or s3://bucket/prefix")
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
        path = parsed.path if scheme == "file" else uri
        return Location(pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path)), uri)
    if scheme in ("s3", "s3a"):
        if not parsed.netloc:
            raise StorageError(f"{uri}: an s3 URI needs a bucket, as in s3://bucket/prefix")
        path = parsed.netloc + "/" + parsed.path.lstrip("/")
        return Location(s3_filesystem(), path.rstrip("/"), uri)
    raise StorageError(f"{uri}: unsupported URI scheme {scheme!r}; use a local path, file:// or s3://")


def s3_filesystem() -> pafs.S3FileSystem:
    """An S3 filesystem configured from the standard AWS environment variables.

    Without ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` the AWS SDK's own chain picks the region (the
    profile in ``~/.aws/config``, then instance metadata), as boto3 and the AWS CLI do; credentials
    not given as ``AWS_ACCESS_KEY_ID`` + ``AWS_SECRET_ACCESS_KEY`` come from the same chain (profile,
    instance role, IRSA, EKS Pod Identity).
    """
    env = os.environ
    kwargs: dict[str, Any] = {}
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        kwargs["access_key"] = env["AWS_ACCESS_KEY_ID"]
        kwargs["secret_key"] = env["AWS_SECRET_ACCESS_KEY"]
        if env.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = env["AWS_SESSION_TOKEN"]
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else "https://" + endpoint)
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme or "https"
    return pafs.S3FileSystem(**kwargs)


def _not_found(loc: Location, what: str = "file") -> StorageError:
    return StorageError(f"{loc.uri}: no such {what}; check the path (and for s3:// the bucket and "
                        "the AWS_* credentials/endpoint variables)")


@contextlib.contextmanager
def open_input(uri: str | Location, *, decompress: bool = True) -> Iterator[IO[bytes]]:
    """Open a file for streaming binary reads; ``.gz``/``.bz2``/``.zst`` are decompressed."""
    loc = uri if isinstance(uri, Location) else resolve(uri)
    info = loc.info()
    if info.type == pafs.FileType.NotFound:
        raise _not_found(loc)
    if info.type == pafs.FileType.Directory:
        raise StorageError(f"{loc.uri}: is a directory, expected a file")
    try:
        stream = loc.fs.open_input_stream(loc.path, compression="detect" if decompress else None)
    except OSError as exc:
        raise StorageError(f"{loc.uri}: cannot open: {exc}") from exc
    with stream:
        yield stream


def iter_lines(stream: IO[bytes]) -> Iterator[bytes]:
    """Split a binary stream into lines (without the newline), reading it in chunks."""
    # Not ``for line in stream``: pyarrow input streams do not implement readline.
    pending: list[bytes] = []  # pieces of the unfinished line; joined once, not per chunk
    while chunk := stream.read(_CHUNK):
        parts = chunk.split(b"\n")
        if len(parts) == 1:
            pending.append(chunk)
            continue
        if pending:
            parts[0] = b"".join(pending) + parts[0]
        pending = [parts.pop()]
        yield from parts
    tail = b"".join(pending)
    if tail:
        yield tail


def read_bytes(uri: str | Location, *, decompress: bool = True) -> bytes:
    with open_input(uri, decompress=decompress) as stream:
        return stream.read()


@contextlib.contextmanager
def open_output(uri: str | Location) -> Iterator[IO[bytes]]:
    """Open a file for writing so that readers never see it half-written.

    Locally the data goes to a temporary name in the same folder and is renamed into place on
    success. On S3 an object becomes visible only when its upload completes; if the writer fails,
    the key is deleted so no partial object is left behind.
    """
    loc = uri if isinstance(uri, Location) else resolve(uri)
    parent = posixpath.dirname(loc.path)
    try:
        if parent:
            loc.fs.create_dir(parent, recursive=True)
    except OSError as exc:
        raise StorageError(f"{loc.uri}: cannot create parent folder: {exc}") from exc
    if loc.is_s3:
        try:
            stream = loc.fs.open_output_stream(loc.path, compression=None)
        except OSError as exc:
            raise StorageError(f"{loc.uri}: cannot write: {exc}") from exc
        try:
            yield stream
            stream.close()
        except BaseException:
            with contextlib.suppress(Exception):
                stream.close()
            with contextlib.suppress(Exception):
                loc.fs.delete_file(loc.path)
            raise
        return
    tmp = posixpath.join(parent, f".{posixpath.basename(loc.path)}.{uuid.uuid4().hex}.tmp")
    stream = loc.fs.open_output_stream(tmp, compression=None)
    try:
        yield stream
        stream.close()
        os.replace(tmp, loc.path)
    except BaseException:
        with contextlib.suppress(Exception):
            stream.close()
        with contextlib.suppress(Exception):
            os.remove(tmp)
        raise


def write_bytes(uri: str | Location, data: bytes) -> None:
    with open_output(uri) as stream:
        stream.write(data)


class _HashingWriter(io.RawIOBase):
    """Passes writes through to a stream while counting bytes and computing sha256."""

    def __init__(self, inner: IO[bytes]) -> None:
        self.inner = inner
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        self.inner.write(view)
        self.sha256.update(view)
        self.size += view.nbytes
        return view.nbytes


def sha256_of(uri: str | Location) -> tuple[str, int]:
    """The sha256 hex digest and size in bytes of a file, read as stored (not decompressed)."""
    digest, size = hashlib.sha256(), 0
    with open_input(uri, decompress=False) as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class ArtifactWriter:
    """Writes the files of one artifact, then commits by writing ``manifest.json`` last.

    >>> import tempfile
    >>> w = ArtifactWriter(tempfile.mkdtemp(), kind="example")
    >>> w.write_bytes("data/a.txt", b"hello")
    >>> w.commit({"note": "anything JSON"})["files"]["data/a.txt"]["size"]
    5
    """

    def __init__(self, uri: str | Location, *, kind: str, config: dict | None = None) -> None:
        self.root = uri if isinstance(uri, Location) else resolve(uri)
        self.kind = kind
        self.config = config or {}
        self.files: dict[str, dict[str, Any]] = {}

    @contextlib.contextmanager
    def open(self, relpath: str) -> Iterator[IO[bytes]]:
        _check_relpath(relpath)
        with open_output(self.root.join(relpath)) as stream:
            hashing = _HashingWriter(stream)
            yield hashing  # type: ignore[misc]
        self.files[relpath] = {"size": hashing.size, "sha256": hashing.sha256.hexdigest()}

    def write_bytes(self, relpath: str, data: bytes) -> None:
        with self.open(relpath) as stream:
            stream.write(data)

    def add_existing(self, relpath: str, *, size: int, sha256: str) -> None:
        """Record a file written earlier (e.g. by a resumed job) without rewriting it."""
        _check_relpath(relpath)
        self.files[relpath] = {"size": size, "sha256": sha256}

    def commit(self, extra: dict | None = None) -> dict:
        manifest = {
            "format_version": MANIFEST_FORMAT_VERSION,
            "kind": self.kind,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": self.config,
            "files": dict(sorted(self.files.items())),
            **(extra or {}),
        }
        write_bytes(self.root.join(MANIFEST_NAME),
                    json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8"))
        return manifest


class Artifact:
    """A committed artifact, opened from its manifest; reads verify sha256.

    Raises :class:`StorageError` when there is no manifest (never committed) and
    :class:`ChecksumError` when a file differs from what the manifest recorded.
    """

    def __init__(self, uri: str | Location, *, kind: str | None = None) -> None:
        self.root = uri if isinstance(uri, Location) else resolve(uri)
        manifest_loc = self.root.join(MANIFEST_NAME)
        if not manifest_loc.is_file():
            raise StorageError(f"{manifest_loc.uri}: not found; the artifact at {self.root.uri} is missing "
                               "or was never committed (its writer may have been interrupted): rerun the "
                               "job that makes it")
        try:
            self.manifest = json.loads(read_bytes(manifest_loc))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StorageError(f"{manifest_loc.uri}: not valid JSON: {exc}") from exc
        version = self.manifest.get("format_version")
        if version != MANIFEST_FORMAT_VERSION:
            raise StorageError(f"{manifest_loc.uri}: format_version {version!r}, this ray_cora reads "
                               f"{MANIFEST_FORMAT_VERSION}: rebuild the artifact or upgrade ray_cora")
        if kind is not None and self.manifest.get("kind") != kind:
            raise StorageError(f"{manifest_loc.uri}: is a {self.manifest.get('kind')!r} artifact, "
                               f"expected {kind!r}")
        files = self.manifest.get("files", {})
        if not isinstance(files, dict):
            raise StorageError(f"{manifest_loc.uri}: field 'files' is a {type(files).__name__}, expected an "
                               "object of path -> {size, sha256}: rebuild the artifact")
        for relpath, entry in files.items():
            problem = member_path_problem(relpath)
            if problem is None and not (isinstance(entry, dict) and isinstance(entry.get("size"), int)
                                        and isinstance(entry.get("sha256"), str)):
                problem = "has no integer 'size' and string 'sha256'"
            if problem is not None:
                raise StorageError(f"{manifest_loc.uri}: field files[{relpath!r}] {problem}: a manifest may only "
                                   "name files inside its own folder, each with its size and sha256; rebuild "
                                   "the artifact (or restore its manifest)")

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        return self.manifest.get("files", {})

    def _entry(self, relpath: str) -> dict[str, Any]:
        if not isinstance(relpath, str) or relpath not in self.files:
            raise StorageError(f"{self.root.join(MANIFEST_NAME).uri}: {relpath!r} is not listed in its 'files'; "
                               "the manifest is inconsistent: rebuild the artifact")
        return self.files[relpath]

    def _member(self, relpath: str) -> tuple[dict[str, Any], Location]:
        """The manifest entry and location of a listed file, checked to lie inside the artifact."""
        entry = self._entry(relpath)
        loc = self.root.join(relpath)
        if not loc.is_s3:
            # Listed paths are relative without '..' (checked at open); a symlink may still lead out.
            root = os.path.realpath(self.root.path)
            real = os.path.realpath(loc.path)
            if os.path.commonpath([root, real]) != root:
                raise StorageError(f"{loc.uri}: is a symlink to {real}, outside the artifact {self.root.uri}: "
                                   "an artifact's files must lie inside its folder; replace the link by the file")
        return entry, loc

    def read_bytes(self, relpath: str, *, verify: bool = True) -> bytes:
        """A listed file's bytes, checked against its sha256 (the bytes returned are the bytes hashed)."""
        entry, loc = self._member(relpath)
        data = read_bytes(loc, decompress=False)
        if verify:
            _check_digest(loc, hashlib.sha256(data).hexdigest(), len(data), entry)
        return data

    def verify(self, relpath: str) -> None:
        """Stream one file and compare its size and sha256 with the manifest."""
        entry, loc = self._member(relpath)
        _check_digest(loc, *sha256_of(loc), entry)

    def verify_all(self) -> None:
        for relpath in self.files:
            self.verify(relpath)

    def amend(self, files: dict[str, bytes], fields: dict[str, Any]) -> dict:
        """Add (or replace) ``files`` in this committed artifact and rewrite its manifest with
        ``fields`` updated, everything else kept: the files first, the manifest last (one PUT), so
        a reader sees the old artifact or the new one, never a manifest naming a missing file."""
        for relpath, data in files.items():
            _check_relpath(relpath)
            write_bytes(self.root.join(relpath), data)
            self.manifest.setdefault("files", {})[relpath] = {
                "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        self.manifest["files"] = dict(sorted(self.manifest["files"].items()))
        self.manifest.update(fields)
        write_bytes(self.root.join(MANIFEST_NAME),
                    json.dumps(self.manifest, indent=2, ensure_ascii=False).encode("utf-8"))
        return self.manifest

    def location(self, relpath: str) -> Location:
        """Where a listed file is (checked to lie inside the artifact)."""
        return self._member(relpath)[1]

    def local_path(self, relpath: str, *, cache_dir: str) -> str:
        """A local file with ``relpath``'s bytes, verified against its sha256, for memory-mapping:
        the file itself when the artifact is local, else a copy in ``cache_dir`` (a folder private
        to the user, :func:`private_dir`) named by its sha256, so a rebuilt artifact never maps a
        stale copy and each machine copies a file once. A cached copy that no longer matches
        (replaced, truncated) is deleted and fetched again."""
        return self.verified_local_path(relpath, cache_dir=cache_dir)[0]

    def verified_local_path(self, relpath: str, *, cache_dir: str) -> tuple[str, tuple[int, ...]]:
        """:meth:`local_path` and the :func:`file_signature` the file had when it was verified: a
        caller that keeps the file mapped compares it later to notice an edit in place."""
        entry, loc = self._member(relpath)
        if not loc.is_s3:
            return loc.path, verify_local_file(loc.path, entry, uri=loc.uri)
        folder = private_dir(cache_dir)
        target = os.path.join(folder, f"{entry['sha256']}{posixpath.splitext(relpath)[1]}")
        if os.path.lexists(target):
            try:
                return target, verify_local_file(target, entry, uri=f"{target} (cached copy of {loc.uri})")
            except StorageError as exc:
                _log.warning("%s; deleting it and fetching %s again", exc, loc.uri)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(target)
        partial = f"{target}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial"
        digest, size = hashlib.sha256(), 0
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open_input(loc, decompress=False) as source, os.fdopen(fd, "wb") as copy:
                while chunk := source.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    copy.write(chunk)
            _check_digest(loc, digest.hexdigest(), size, entry)
            signature = file_signature(partial)  # a rename keeps inode and times
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(partial)
            raise
        os.replace(partial, target)  # several processes on one machine may copy at once
        return target, signature


# Local files are hashed once per process per (device, inode, size, mtime, ctime) and the result
# remembered, rather than at every open: hashing a multi-GB shard costs seconds per GB, and one
# process opens the same bucket or shard many times (passage-store LRU, reopened indexes). Any write
# to a file changes its mtime and ctime, and ctime cannot be set back by its owner (only by changing
# the clock), so a same-length edit in place changes the key and is hashed again before it is
# served. File times come from a coarse clock (one kernel tick, a few ms), so a write in the same
# tick as the last one keeps the times: a file whose ctime is less than SETTLE_NS old is therefore
# hashed again at every open rather than remembered. Readers that keep a file mapped ask
# :func:`still_verified` before reading it again (PassageStore on each lookup).
SETTLE_NS = 2_000_000_000
_VERIFIED: dict[str, tuple[tuple[int, ...], str]] = {}


def file_signature(path: str) -> tuple[int, ...]:
    """(device, inode, size, mtime ns, ctime ns) of a local file: changes whenever its bytes do."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def still_verified(path: str, signature: tuple[int, ...]) -> bool:
    """Whether the local file at ``path`` is unchanged since :func:`verify_local_file` returned
    ``signature`` (False for a file too recently written to be remembered, see ``SETTLE_NS``)."""
    try:
        current = file_signature(path)
    except OSError:
        return False
    remembered = _VERIFIED.get(path)
    return current == signature and remembered is not None and remembered[0] == signature


def verify_local_file(path: str, entry: dict[str, Any], *, uri: str | None = None) -> tuple[int, ...]:
    """Check a local file against a manifest entry's size and sha256 (hashed once per process while
    its :func:`file_signature` stays the same); returns that signature. Raises :class:`ChecksumError`."""
    uri = uri or path
    try:
        before = file_signature(path)
    except FileNotFoundError:
        raise ChecksumError(f"{uri}: missing, {MANIFEST_NAME} lists it with {entry.get('size')} bytes; it was "
                            "deleted after the artifact was written: rebuild it") from None
    if _VERIFIED.get(path) == (before, entry.get("sha256")):
        return before
    _VERIFIED.pop(path, None)
    if before[2] != entry.get("size"):
        raise ChecksumError(f"{uri}: {before[2]} bytes, {MANIFEST_NAME} says {entry.get('size')} bytes: the "
                            "file was changed or truncated after the artifact was written; rebuild it")
    started = time.time_ns()
    with open(path, "rb") as f:
        sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    after = file_signature(path)
    if after != before:
        raise ChecksumError(f"{uri}: changed while its checksum was computed; something is writing to it: "
                            "stop that writer, then rebuild the artifact")
    _check_digest(Location(pafs.LocalFileSystem(), path, uri), sha256, after[2], entry)
    if started - max(after[3], after[4]) > SETTLE_NS:
        _VERIFIED[path] = (after, entry["sha256"])
    return after


def default_cache_dir(name: str) -> str:
    """``<tmp>/ray_cora-<uid>/<name>``: a cache folder under a per-user parent that
    :func:`private_dir` creates (and checks) with mode 0700, so no other user can place or swap a
    cached file."""
    parent = private_dir(os.path.join(tempfile.gettempdir(), f"ray_cora-{os.getuid()}"))
    return os.path.join(parent, name)


def private_dir(path: str) -> str:
    """``path`` as a folder only this user can enter: created with mode 0700, or, when it exists,
    refused unless it is a real folder (not a symlink) owned by this user and closed to others.

    >>> import tempfile, os
    >>> oct(os.stat(private_dir(os.path.join(tempfile.mkdtemp(), "c"))).st_mode & 0o777)
    '0o700'
    """
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise StorageError(f"{path}: cannot create the cache folder: {exc}; pass another cache folder") from exc
    problem = ("is a symlink" if stat.S_ISLNK(st.st_mode) else
               "is not a folder" if not stat.S_ISDIR(st.st_mode) else
               f"is owned by uid {st.st_uid}, not by you (uid {os.getuid()})" if st.st_uid != os.getuid() else
               f"has mode {stat.S_IMODE(st.st_mode):o}, open to other users" if st.st_mode & 0o077 else None)
    if problem:
        raise StorageError(f"{path}: refused as a cache folder: it {problem}; cached files are memory-mapped "
                           f"and trusted by name, so the folder must be yours alone: `chmod 700 {path}` if it "
                           "is yours, else remove it or use another cache folder")
    return path


def _check_digest(loc: Location, sha256: str, size: int, entry: dict[str, Any]) -> None:
    if size != entry.get("size") or sha256 != entry.get("sha256"):
        raise ChecksumError(f"{loc.uri}: checksum mismatch (manifest: {entry.get('size')} bytes, "
                            f"sha256 {str(entry.get('sha256'))[:12]}…; found: {size} bytes, sha256 "
                            f"{sha256[:12]}…): the file was changed or corrupted; rerun the job that "
                            "wrote it")


def member_path_problem(relpath: Any) -> str | None:
    """Why ``relpath`` cannot name a file inside an artifact (absolute, ``..``, empty parts,
    backslashes, the manifest itself), or None when it can.

    >>> [member_path_problem(p) for p in ("shards/a.faiss", "/etc/hostname", "../x")]
    [None, 'is an absolute path', "leaves the artifact's folder ('..')"]
    """
    if not isinstance(relpath, str) or not relpath:
        return "is not a non-empty path"
    if relpath.startswith("/") or posixpath.isabs(relpath) or re.match(r"^[A-Za-z]:/", relpath):
        return "is an absolute path"
    parts = relpath.split("/")
    if ".." in parts:
        return "leaves the artifact's folder ('..')"
    if "\\" in relpath or "\0" in relpath or any(p in ("", ".") for p in parts):
        return "is not a plain relative path (backslash, NUL, empty or '.' part)"
    if relpath == MANIFEST_NAME:
        return f"is the {MANIFEST_NAME} itself"
    return None


def _check_relpath(relpath: str) -> None:
    problem = member_path_problem(relpath)
    if problem is not None:
        raise ValueError(f"artifact file path {relpath!r} {problem}: use a path relative to the artifact")


def list_files(uri: str | Location, *, suffix: str = "") -> list[Location]:
    """Files under a folder (recursively), sorted by path, skipping names and folders that start
    with ``.`` or ``_`` (temporary files, job bookkeeping such as ``_progress/``)."""
    loc = uri if isinstance(uri, Location) else resolve(uri)
    info = loc.info()
    if info.type == pafs.FileType.File:
        return [loc]
    if info.type == pafs.FileType.NotFound:
        raise _not_found(loc, "file or folder")
    selector = pafs.FileSelector(loc.path, recursive=True)
    found = []
    for item in loc.fs.get_file_info(selector):
        rel = posixpath.relpath(item.path, loc.path)
        hidden = any(part.startswith((".", "_")) for part in rel.split("/"))
        if item.type != pafs.FileType.File or hidden or not item.path.endswith(suffix):
            continue
        found.append(loc.join(rel))
    return sorted(found, key=lambda l: l.path)


def expand_pattern(uri: str) -> list[str]:
    """``uri`` itself, or — when its last part has ``*``, ``?`` or ``[`` — the files in its folder
    whose names match, in natural order (``wiki_emb_en_2`` before ``wiki_emb_en_10``): the shell
    glob CORA's ``dense_retriever.py --encoded_ctx_file "wiki_emb_*"`` takes, for s3:// as well.

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> for n in ("wiki_emb_en_10", "wiki_emb_en_2", "other"): _ = open(os.path.join(d, n), "w").write("x")
    >>> [os.path.basename(u) for u in expand_pattern(os.path.join(d, "wiki_emb_*"))]
    ['wiki_emb_en_2', 'wiki_emb_en_10']
    """
    head, _, pattern = uri.rstrip("/").rpartition("/")
    if not any(c in pattern for c in "*?["):
        return [uri]
    folder = resolve(head or ".")
    names = [posixpath.relpath(f.path, folder.path) for f in list_files(folder)]
    matched = [n for n in names if "/" not in n and fnmatch.fnmatchcase(n, pattern)]
    if not matched:
        raise StorageError(f"{uri}: no file in {folder.uri} matches {pattern!r}")
    return [f"{head}/{name}" if head else name for name in sorted(matched, key=_natural_key)]


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
