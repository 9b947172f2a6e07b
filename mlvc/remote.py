"""Remotes: a folder or S3-compatible object storage holding transfer packs, their indexes, refs and ledger parts.

The layout under the remote's root (a folder, or `s3://bucket/prefix`) is specified in docs/format.md
("Remotes"); in short:

- `mlvc-remote.json`: the marker, written once;
- `refs.json`: every branch and tag of the remote and its default branch, one document moved only by
  compare-and-swap (S3: a conditional PutObject, `If-Match` on its ETag or `If-None-Match: *` to create it;
  a folder: its lock file and a comparison of the content hash, under the lock);
- `packs/<id>.pack` + `packs/<id>.idx`: stored object files side by side, and an index of what each holds (id,
  offset, length, kind, delta depth, delta bases). A pack is visible only once its index exists, and is
  uploaded before it; a push uploads every pack before it moves `refs.json`;
- `ledger/<part>.parquet`: the ledger's parts, verified by the hash in their names;
- `leases/<uuid>.json`: one per push in flight, so that a pruning of the remote keeps what it uploaded.

This module holds what the verbs (mlvc/ops/sync.py) build on: the two storage backends, the remote's format
(indexes, packs, refs), the walk of commits to objects, verification of fetched objects, the remotes' settings
(`.mlvc/remotes.toml`) and the remote-tracking refs (`.mlvc/refs/remotes/NAME/BRANCH`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import zstandard

from . import codec, faults, lockfile
from .errors import ConfigError, CorruptObjectError, DependencyError, ObjectNotFoundError, RemoteError
from .objects import Commit, Manifest, Tag, object_type, parse_object
from .refs import REMOTES
from .util import TMP_PREFIX, atomic_write_bytes, canonical_json, hash_bytes, is_object_id

REMOTE_FORMAT = 1
MARKER = "mlvc-remote.json"
REFS = "refs.json"
PACKS = "packs/"
LEDGER = "ledger/"
LEASES = "leases/"
PRUNES = "prunes/"
PACK_MAGIC = b"MLVCTP1\n"
TRAILER = 16  # bytes: xxh3-128 of everything before it
PACK_TARGET = 32 << 20  # object bytes per transfer pack
LEASE_SECONDS = 6 * 3600.0  # a push's lease: a pruning keeps packs uploaded by a push younger than this
REMOTES_FILE = "remotes.toml"  # in .mlvc/
TRACKING = REMOTES
HEADS = "refs/heads/"
TAGS = "refs/tags/"
KIND_COMMIT, KIND_MANIFEST, KIND_TAG, KIND_DATA = "c", "m", "t", "d"
META_KINDS = (KIND_COMMIT, KIND_MANIFEST, KIND_TAG)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_S3_URL = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(.*))?$")


# -- settings -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteSpec:
    """A configured remote. Only where it is: credentials come from the environment (AWS_ACCESS_KEY_ID, ...,
    AWS_PROFILE, ~/.aws) and are never written into the repository."""

    name: str
    url: str
    endpoint: str | None = None  # an S3-compatible server's URL (else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)
    region: str | None = None  # else AWS_REGION / AWS_DEFAULT_REGION

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "endpoint": self.endpoint, "region": self.region}


def check_remote_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise RemoteError(f"{name!r} is not a valid remote name (letters, digits, '.', '_' and '-', starting with a "
                          "letter or digit, at most 64 characters)")
    return name


def normalize_url(url: str, cwd: str | None = None) -> str:
    """`s3://bucket/prefix` as given (trailing slashes dropped), or a folder as an absolute path."""
    url = url.strip()
    if url.startswith("s3://"):
        if not _S3_URL.match(url.rstrip("/") if url.count("/") > 2 else url):
            raise RemoteError(f"{url!r} is not an S3 URL mlvc can use; write s3://BUCKET or s3://BUCKET/PREFIX")
        return url.rstrip("/") if url.count("/") > 2 else url
    if url.startswith("file://"):
        url = url[len("file://"):]
    if "://" in url:
        raise RemoteError(f"{url!r}: mlvc remotes are folders or s3://BUCKET/PREFIX URLs")
    if not url:
        raise RemoteError("a remote needs a URL: a folder path or s3://BUCKET/PREFIX")
    return os.path.abspath(os.path.join(cwd or os.getcwd(), os.path.expanduser(url)))


def _remotes_path(mlvc_dir: str) -> str:
    return os.path.join(mlvc_dir, REMOTES_FILE)


def load_remotes(mlvc_dir: str) -> dict[str, RemoteSpec]:
    path = _remotes_path(mlvc_dir)
    try:
        with open(path, "rb") as f:
            raw = tomllib.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        return {}
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid TOML ({str(e)[:200]}); fix it or remove the remote again") from None
    out: dict[str, RemoteSpec] = {}
    table = raw.get("remote", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [remote] must hold tables [remote.NAME]")
    for name, d in table.items():
        if not isinstance(d, dict) or not isinstance(d.get("url"), str):
            raise ConfigError(f"{path}: [remote.{name}] needs url = \"...\"")
        for key in ("endpoint", "region"):
            if d.get(key) is not None and not isinstance(d[key], str):
                raise ConfigError(f"{path}: remote.{name}.{key} must be a string")
        out[name] = RemoteSpec(name, d["url"], d.get("endpoint"), d.get("region"))
    return out


def _toml_str(text: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's, and TOML also wants DEL escaped (as config.py writes)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def save_remotes(mlvc_dir: str, remotes: dict[str, RemoteSpec]) -> None:
    """Write the remotes (atomically)."""
    lines = ["# remotes of this repository (`mlvc remote add/remove`); credentials never go here", ""]
    for spec in sorted(remotes.values(), key=lambda s: s.name):
        lines.append(f"[remote.{_toml_str(spec.name)}]")
        lines.append(f"url = {_toml_str(spec.url)}")
        if spec.endpoint:
            lines.append(f"endpoint = {_toml_str(spec.endpoint)}")
        if spec.region:
            lines.append(f"region = {_toml_str(spec.region)}")
        lines.append("")
    with lockfile.locked(_remotes_path(mlvc_dir) + lockfile.LOCK_SUFFIX, "the remotes' settings"):
        atomic_write_bytes(_remotes_path(mlvc_dir), "\n".join(lines).encode("utf-8"))


# -- remote-tracking refs --------------------------------------------------------------------------------------


def _tracking_path(mlvc_dir: str, remote: str, branch: str) -> str:
    return os.path.join(mlvc_dir, "refs", "remotes", remote, *branch.split("/"))


def read_tracking(mlvc_dir: str, remote: str) -> dict[str, str]:
    """The remote-tracking refs of one remote: branch -> commit id (what the last fetch or push saw)."""
    base = os.path.join(mlvc_dir, "refs", "remotes", remote)
    out: dict[str, str] = {}
    for folder, _dirs, files in os.walk(base):
        for name in files:
            if name.endswith(lockfile.LOCK_SUFFIX) or name.startswith(TMP_PREFIX):
                continue
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                text = f.read(200).decode("utf-8", "replace").strip()
            if is_object_id(text):
                out[os.path.relpath(path, base).replace(os.sep, "/")] = text
    return out


def write_tracking(mlvc_dir: str, remote: str, branch: str, cid: str | None) -> None:
    """Point refs/remotes/REMOTE/BRANCH at `cid` (None: remove it), under its lock, with one durable write."""
    path = _tracking_path(mlvc_dir, remote, branch)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with lockfile.locked(path + lockfile.LOCK_SUFFIX, f"{TRACKING}{remote}/{branch}"):
        if cid is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        else:
            atomic_write_bytes(path, f"{cid}\n".encode())
    faults.point("remote.tracking.moved")


def remove_tracking(mlvc_dir: str, remote: str) -> None:
    for branch in read_tracking(mlvc_dir, remote):
        write_tracking(mlvc_dir, remote, branch, None)
    base = os.path.join(mlvc_dir, "refs", "remotes", remote)
    for folder, _dirs, _files in os.walk(base, topdown=False):  # the emptied folders, deepest first
        with contextlib.suppress(OSError):
            os.rmdir(folder)


# -- storage backends ------------------------------------------------------------------------------------------


@dataclass
class TransferStats:
    requests: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, sent: int = 0, received: int = 0) -> None:
        with self._lock:
            self.requests += 1
            self.bytes_sent += sent
            self.bytes_received += received

    def to_json(self) -> dict[str, int]:
        return {"requests": self.requests, "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received}


class Backend:
    """Keys ("packs/ab.pack") to bytes. Every write is whole or absent to a reader (S3 PutObject, a folder's
    temp file and rename); `put_if` is the one conditional write."""

    def __init__(self) -> None:
        self.stats = TransferStats()

    def describe(self) -> str:
        raise NotImplementedError

    def get(self, key: str) -> bytes | None:
        raise NotImplementedError

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of an object."""
        raise NotImplementedError

    def get_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        """The bytes and a token for `put_if` (None, None when absent)."""
        raise NotImplementedError

    def put(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def put_if(self, key: str, data: bytes, token: str | None) -> bool:
        """Write only if the object is still what `token` names (None: it must not exist); False if not."""
        raise NotImplementedError

    def list(self, prefix: str) -> list[tuple[str, int, float]]:
        """(key, size, modification time) of every object under prefix."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError


class FolderBackend(Backend):
    def __init__(self, root: str):
        super().__init__()
        self.root = root

    def describe(self) -> str:
        return self.root

    def _path(self, key: str) -> str:
        parts = key.split("/")
        if not all(p and p not in (".", "..") for p in parts):
            raise RemoteError(f"bad remote key {key!r}")
        return os.path.join(self.root, *parts)

    def get(self, key):
        try:
            with open(self._path(key), "rb") as f:
                data = f.read()
        except (FileNotFoundError, NotADirectoryError):
            self.stats.count()
            return None
        self.stats.count(received=len(data))
        return data

    def get_range(self, key, start, end):
        try:
            with open(self._path(key), "rb") as f:
                f.seek(start)
                data = f.read(end - start)
        except FileNotFoundError:
            raise RemoteError(f"{key} is gone from the remote {self.root} (pruned meanwhile?); try again") from None
        self.stats.count(received=len(data))
        return data

    def get_versioned(self, key):
        data = self.get(key)
        return data, (hash_bytes(data) if data is not None else None)

    def put(self, key, data):
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_bytes(path, data)
        self.stats.count(sent=len(data))

    def put_if(self, key, data, token):
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with lockfile.locked(path + lockfile.LOCK_SUFFIX, f"the remote's {key}", wait=10.0):
            try:
                with open(path, "rb") as f:
                    current: str | None = hash_bytes(f.read())
            except FileNotFoundError:
                current = None
            if current != token:
                self.stats.count()
                return False
            atomic_write_bytes(path, data)
        self.stats.count(sent=len(data))
        return True

    def list(self, prefix):
        base = self._path(prefix.rstrip("/"))
        out = []
        for folder, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(TMP_PREFIX) or name.endswith(lockfile.LOCK_SUFFIX):
                    continue
                path = os.path.join(folder, name)
                with contextlib.suppress(FileNotFoundError):
                    st = os.stat(path)
                    key = os.path.relpath(path, self.root).replace(os.sep, "/")
                    out.append((key, st.st_size, st.st_mtime))
        self.stats.count()
        return sorted(out)

    def delete(self, key):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(key))
        self.stats.count()


class S3Backend(Backend):
    """S3 or an S3-compatible server through boto3 (docs/design.md, "Remotes: the S3 client"). The refs'
    compare-and-swap is a conditional PutObject: a server that ignores If-Match / If-None-Match cannot hold a
    shared remote safely, and a server that refuses them gives a RemoteError saying so."""

    def __init__(self, bucket: str, prefix: str, endpoint: str | None = None, region: str | None = None):
        super().__init__()
        try:
            import boto3  # type: ignore[import-untyped]
            from botocore.config import Config  # type: ignore[import-untyped]
        except ImportError:
            raise DependencyError("boto3", "an s3:// remote", "s3") from None
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.endpoint = endpoint
        session = boto3.session.Session()
        self.client = session.client(
            "s3", endpoint_url=endpoint or None, region_name=region or None,
            config=Config(max_pool_connections=32, retries={"max_attempts": 5, "mode": "standard"},
                          # checksums only when an operation requires them: S3-compatible servers
                          # (and older ones) refuse the new default trailing checksums
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"))
        from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

        self._errors = (BotoCoreError, ClientError)

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, what: str, e: Exception) -> RemoteError:
        return RemoteError(f"{what} on {self.describe()} failed: {str(e)[:300]}; check the endpoint, the bucket "
                           "and the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or AWS_PROFILE)")

    @staticmethod
    def _code(e: Exception) -> str:
        return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))

    def get_versioned(self, key):
        try:
            r = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            data = r["Body"].read()
        except self._errors as e:
            self.stats.count()
            if self._code(e) in ("NoSuchKey", "404", "NotFound"):
                return None, None
            raise self._fail(f"reading {key}", e) from None
        self.stats.count(received=len(data))
        return data, r.get("ETag")

    def get(self, key):
        return self.get_versioned(key)[0]

    def get_range(self, key, start, end):
        try:
            r = self.client.get_object(Bucket=self.bucket, Key=self._key(key), Range=f"bytes={start}-{end - 1}")
            data = r["Body"].read()
        except self._errors as e:
            self.stats.count()
            raise self._fail(f"reading {key}", e) from None
        self.stats.count(received=len(data))
        return data

    def put(self, key, data):
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except self._errors as e:
            self.stats.count()
            raise self._fail(f"writing {key}", e) from None
        self.stats.count(sent=len(data))

    def put_if(self, key, data, token):
        cond = {"IfMatch": token} if token is not None else {"IfNoneMatch": "*"}
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **cond)
        except self._errors as e:
            self.stats.count()
            code = self._code(e)
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey"):
                return False
            if code in ("NotImplemented", "501"):
                raise RemoteError(f"{self.describe()} does not support conditional writes (If-Match on "
                                  "PutObject), which mlvc needs to move a shared remote's refs safely; use a "
                                  "server that does (AWS S3, MinIO, Cloudflare R2, ...)") from None
            raise self._fail(f"writing {key}", e) from None
        self.stats.count(sent=len(data))
        return True

    def list(self, prefix):
        out = []
        full = self._key(prefix)
        skip = len(self.prefix) + 1 if self.prefix else 0
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                self.stats.count()
                for o in page.get("Contents", []):
                    out.append((o["Key"][skip:], int(o["Size"]), o["LastModified"].timestamp()))
        except self._errors as e:
            raise self._fail(f"listing {prefix}", e) from None
        return sorted(out)

    def delete(self, key):
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except self._errors as e:
            raise self._fail(f"deleting {key}", e) from None
        finally:
            self.stats.count()


def open_backend(spec: RemoteSpec) -> Backend:
    if spec.url.startswith("s3://"):
        m = _S3_URL.match(spec.url)
        if not m:
            raise RemoteError(f"remote {spec.name}: {spec.url!r} is not an s3://BUCKET/PREFIX URL")
        return S3Backend(m.group(1), m.group(2) or "", spec.endpoint, spec.region)
    return FolderBackend(spec.url)


# -- the remote's format ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexEntry:
    pack: str
    offset: int
    length: int
    kind: str
    depth: int
    bases: tuple[str, ...]


@dataclass
class RemoteRefs:
    head: str | None = None  # the default branch (what a clone checks out)
    refs: dict[str, str] = field(default_factory=dict)  # "refs/heads/main" -> commit id, "refs/tags/v1" -> id

    def to_bytes(self) -> bytes:
        return canonical_json({"format": REMOTE_FORMAT, "head": self.head, "refs": dict(sorted(self.refs.items()))})

    @classmethod
    def parse(cls, data: bytes, where: str) -> RemoteRefs:
        try:
            d = json.loads(data)
            ok = (isinstance(d, dict) and d.get("format") == REMOTE_FORMAT and isinstance(d.get("refs"), dict)
                  and all(isinstance(k, str) and k.startswith((HEADS, TAGS)) and isinstance(v, str)
                          and is_object_id(v) for k, v in d["refs"].items())
                  and (d.get("head") is None or isinstance(d["head"], str)))
        except (ValueError, RecursionError):
            ok = False
        if not ok:
            raise RemoteError(f"{where}/{REFS} is not an mlvc remote's refs document (format {REMOTE_FORMAT}); "
                              "is this the right URL?")
        return cls(d.get("head"), dict(d["refs"]))

    def branches(self) -> dict[str, str]:
        return {k[len(HEADS):]: v for k, v in self.refs.items() if k.startswith(HEADS)}

    def tags(self) -> dict[str, str]:
        return {k[len(TAGS):]: v for k, v in self.refs.items() if k.startswith(TAGS)}


def _seal(body: bytes) -> bytes:
    return body + bytes.fromhex(hash_bytes(body))


def _unseal(blob: bytes, what: str) -> bytes:
    body, trailer = blob[:-TRAILER], blob[-TRAILER:]
    if len(blob) < TRAILER or bytes.fromhex(hash_bytes(body)) != trailer:
        raise CorruptObjectError("", f"{what} does not match its hash (damaged in storage or in transfer)", what)
    return body


def encode_index(pack: str, size: int, entries: list[tuple[str, int, int, str, int, list[str]]]) -> bytes:
    doc = {"format": REMOTE_FORMAT, "pack": pack, "size": size, "objects": [list(e) for e in entries]}
    return _seal(zstandard.ZstdCompressor(level=3).compress(canonical_json(doc)))


def decode_index(blob: bytes, pack: str) -> dict[str, IndexEntry]:
    what = f"the index of remote pack {pack}"
    body = _unseal(blob, what)
    try:
        doc = json.loads(zstandard.ZstdDecompressor().decompress(body, max_output_size=1 << 30))
        assert doc["format"] == REMOTE_FORMAT and doc["pack"] == pack
        out = {}
        for oid, offset, length, kind, depth, bases in doc["objects"]:
            assert is_object_id(oid) and kind in (*META_KINDS, KIND_DATA)
            assert offset >= len(PACK_MAGIC) and length > 0 and offset + length <= doc["size"] - TRAILER
            out[oid] = IndexEntry(pack, int(offset), int(length), kind, int(depth), tuple(bases))
        return out
    except (ValueError, KeyError, TypeError, AssertionError, zstandard.ZstdError) as e:
        raise CorruptObjectError("", f"{what} cannot be read ({type(e).__name__})", what) from None


def build_pack(objects: list[tuple[str, bytes, str, int, list[str]]]) -> tuple[str, bytes, bytes]:
    """(pack id, pack bytes, index bytes) for (id, stored object file, kind, depth, bases) items."""
    parts = [PACK_MAGIC]
    entries = []
    pos = len(PACK_MAGIC)
    for oid, data, kind, depth, bases in objects:
        entries.append((oid, pos, len(data), kind, depth, list(bases)))
        parts.append(data)
        pos += len(data)
    blob = _seal(b"".join(parts))
    pid = blob[-TRAILER:].hex()
    return pid, blob, encode_index(pid, len(blob), entries)


class Remote:
    """One remote's storage, read and written in its format (module docstring)."""

    def __init__(self, backend: Backend, cache_dir: str | None = None):
        self.backend = backend
        self.cache_dir = cache_dir  # verified indexes kept locally (an index never changes once written)
        self._index: dict[str, IndexEntry] | None = None

    @property
    def stats(self) -> TransferStats:
        return self.backend.stats

    def describe(self) -> str:
        return self.backend.describe()

    # refs
    def exists(self) -> bool:
        return self.backend.get(MARKER) is not None

    def ensure_marker(self) -> None:
        if not self.exists():
            self.backend.put_if(MARKER, canonical_json({"format": REMOTE_FORMAT, "type": "mlvc-remote"}), None)

    def read_refs(self) -> tuple[RemoteRefs, str | None]:
        data, token = self.backend.get_versioned(REFS)
        if data is None:
            return RemoteRefs(), None
        return RemoteRefs.parse(data, self.describe()), token

    def write_refs(self, refs: RemoteRefs, token: str | None) -> bool:
        return self.backend.put_if(REFS, refs.to_bytes(), token)

    # indexes
    def index(self, refresh: bool = False) -> dict[str, IndexEntry]:
        """Every object of the remote's visible packs: id -> where it is. Indexes are verified and cached."""
        if self._index is not None and not refresh:
            return self._index
        out: dict[str, IndexEntry] = {}
        names = [k[len(PACKS):-4] for k, _s, _t in self.backend.list(PACKS) if k.endswith(".idx")]
        for pid in names:
            for oid, e in self._load_index(pid).items():
                out.setdefault(oid, e)
        self._index = out
        return out

    def _load_index(self, pid: str) -> dict[str, IndexEntry]:
        cached = os.path.join(self.cache_dir, pid + ".idx") if self.cache_dir and is_object_id(pid) else None
        if cached and os.path.exists(cached):
            with open(cached, "rb") as f, contextlib.suppress(CorruptObjectError):
                return decode_index(f.read(), pid)
        blob = self.backend.get(f"{PACKS}{pid}.idx")
        if blob is None:
            return {}
        entries = decode_index(blob, pid)
        if cached:
            os.makedirs(os.path.dirname(cached), exist_ok=True)
            atomic_write_bytes(cached, blob, sync_dir=False)
        return entries

    def upload_pack(self, objects: list[tuple[str, bytes, str, int, list[str]]]) -> tuple[str, int]:
        """Upload a pack, then its index (which makes it visible); (pack id, bytes sent)."""
        pid, blob, idx = build_pack(objects)
        self.backend.put(f"{PACKS}{pid}.pack", blob)
        faults.point("remote.pack.uploaded")
        self.backend.put(f"{PACKS}{pid}.idx", idx)
        faults.point("remote.index.uploaded")
        return pid, len(blob) + len(idx)

    def read_objects(self, pid: str, start: int, end: int) -> bytes:
        return self.backend.get_range(f"{PACKS}{pid}.pack", start, end)

    # leases and prunes
    def _records(self, prefix: str) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for key, _size, _mtime in self.backend.list(prefix):
            data = self.backend.get(key)
            if data is None:
                continue
            try:
                d = json.loads(data)
            except ValueError:
                d = None
            if isinstance(d, dict) and isinstance(d.get("started"), (int, float)):
                out.append((key, d))
        return out

    def live_leases(self, now: float | None = None) -> list[dict[str, Any]]:
        """The leases of pushes in flight (not yet expired)."""
        now = time.time() if now is None else now
        return [d for _k, d in self._records(LEASES) if float(d.get("expires", 0)) > now]

    def prunes(self) -> list[tuple[str, dict[str, Any]]]:
        """The records of prunes: (key, {"started": t, "finished": t or None})."""
        return self._records(PRUNES)

    @contextlib.contextmanager
    def lease(self) -> Iterator[str]:
        """Held while a push uploads: `leases/<uuid>.json` names when it started and until when it holds."""
        key = f"{LEASES}{uuid.uuid4().hex}.json"
        now = time.time()
        self.backend.put(key, canonical_json({"started": now, "expires": now + LEASE_SECONDS}))
        try:
            yield key
        finally:
            with contextlib.suppress(RemoteError):
                self.backend.delete(key)


# -- walking commits to objects ----------------------------------------------------------------------------------


def walk(tips: Iterable[str], get_raw: Callable[[str], bytes | bytearray], stop: Callable[[str], bool],
         manifests: bool = True) -> tuple[dict[str, str], set[str]]:
    """From commits or tag objects, follow tags, parents and (with `manifests`) manifests to the objects their
    files name. Returns (commits, tags and manifests -> kind, data object ids). A commit or tag for which
    `stop` is true is not entered (the other side already holds it and all it needs)."""
    meta: dict[str, str] = {}
    data: set[str] = set()
    stack = list(tips)
    while stack:
        oid = stack.pop()
        if oid in meta or stop(oid):
            continue
        raw = get_raw(oid)
        kind = object_type(raw)
        if kind == "tag":
            meta[oid] = KIND_TAG
            stack.append(Tag.from_dict(parse_object(raw, oid, "tag"), oid).object)
            continue
        if kind != "commit":
            raise CorruptObjectError(oid, f"a ref or a commit names it as a commit, but it is a {kind or 'chunk'}")
        c = Commit.from_dict(parse_object(raw, oid, "commit"), oid)
        meta[oid] = KIND_COMMIT
        stack.extend(c.parents)
        if manifests and c.manifest not in meta:
            meta[c.manifest] = KIND_MANIFEST
            try:
                m = Manifest.from_dict(parse_object(get_raw(c.manifest), c.manifest, "manifest"))
            except (KeyError, TypeError, ValueError) as e:
                if isinstance(e, CorruptObjectError):
                    raise
                raise CorruptObjectError(c.manifest, f"malformed manifest ({e})") from None
            for f in m.files:
                data.update(f.object_ids())
    return meta, data


def commit_objects(raw_manifest: bytes | bytearray, manifest_id: str, keep: Callable[[str], bool] | None) -> set[str]:
    """The objects one manifest's files name; with `keep` (a tensor-name filter) only the tensors it keeps, and
    each file's header (the bytes around them are needed to load any tensor)."""
    m = Manifest.from_dict(parse_object(raw_manifest, manifest_id, "manifest"))
    out: set[str] = set()
    for f in m.files:
        if keep is None or not f.tensors:
            if keep is None:
                out.update(f.object_ids())
            continue
        out.update(f.header or [])
        for t in f.tensors:
            if keep(t.name):
                out.update(t.object_ids())
    return out


# -- verifying fetched objects ---------------------------------------------------------------------------------


def verify_object(local, oid: str, data: bytes, where: str) -> bytes:
    """Check a fetched object file decodes (through its delta bases, which the local store `local` holds) to content
    whose hash is its id; CorruptObjectError if not. Returns the object file to store: `data`, or the object
    encoded anew as a full object when its header's delta depth does not follow from the local copies of its
    bases (the same content may be stored with other encodings here and there, and the local store's reads check
    that depths fall along every chain). Nothing is written: a damaged object never reaches the store."""
    try:
        h = codec.ObjectHeader.parse(data[: codec.HEADER_SIZE])
        bases = codec.bases(data[: codec.HEADER_SIZE + 16])
        base_raw: dict[str, bytes | bytearray] = {}
        depths = []
        for b in bases:
            base_raw[b] = local.get(b, copies=False)  # decoded from its objects: the fetched delta will rest on them
            depths.append(local.header(b).depth)

        def get_base(bid: str) -> bytes | bytearray:
            if bid not in base_raw:
                raise codec.DecodeError(f"names a base {bid} its header does not")
            return base_raw[bid]

        raw = codec.decode(data, get_base)
    except codec.DecodeError as e:
        raise CorruptObjectError(oid, f"fetched from {where}: {e}", where) from None
    except ObjectNotFoundError as e:
        raise CorruptObjectError(oid, f"fetched from {where}, its delta base {e} is missing", where) from None
    if hash_bytes(raw) != oid:
        raise CorruptObjectError(oid, f"fetched from {where}, its content does not match its id", where)
    if h.depth != (1 + max(depths) if depths else 0) or h.depth >= codec.MAX_DEPTH:
        return codec.encode(raw, h.width, getattr(local, "level", 1))
    return data


def transfer_order(want: dict[str, tuple[str, ...]]) -> list[list[str]]:
    """Objects in levels such that each one's bases (among `want`: id -> its delta bases) are in an earlier
    level; RemoteError on a cycle (a damaged or hostile index)."""
    level: dict[str, int] = {}
    for start in want:
        stack = [(start, False)]
        on_path: set[str] = set()
        while stack:
            oid, done = stack.pop()
            if done:
                on_path.discard(oid)
                level[oid] = 1 + max((level[b] for b in want[oid] if b in want), default=-1)
                continue
            if oid in level:
                continue
            if oid in on_path:
                raise RemoteError(f"the remote's indexes name delta bases in a cycle at {oid}; the remote is damaged")
            on_path.add(oid)
            stack.append((oid, True))
            stack.extend((b, False) for b in want[oid] if b in want and b not in level)
    out: list[list[str]] = [[] for _ in range(1 + max(level.values(), default=-1))]
    for oid, n in level.items():
        out[n].append(oid)
    return out


def coalesce(entries: list[tuple[str, IndexEntry]], gap: int = 64 << 10,
             limit: int = 16 << 20) -> list[tuple[str, int, int, list[tuple[str, IndexEntry]]]]:
    """Group wanted objects into byte ranges of their packs: (pack, start, end, members), neighbours closer than
    `gap` bytes merged, each range at most `limit` bytes (unless one object is larger)."""
    by_pack: dict[str, list[tuple[str, IndexEntry]]] = {}
    for oid, e in entries:
        by_pack.setdefault(e.pack, []).append((oid, e))
    out = []
    for pid, items in sorted(by_pack.items()):
        items.sort(key=lambda x: x[1].offset)
        cur: list[tuple[str, IndexEntry]] = []
        start = end = 0
        for oid, e in items:
            if cur and (e.offset - end > gap or e.offset + e.length - start > limit):
                out.append((pid, start, end, cur))
                cur = []
            if not cur:
                start = e.offset
            cur.append((oid, e))
            end = max(end, e.offset + e.length)
        if cur:
            out.append((pid, start, end, cur))
    return out

