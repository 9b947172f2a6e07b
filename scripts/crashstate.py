"""What the crash harness reads and builds: a repository's state read straight from disk (refs, files,
leftovers, ledger rows, commits checked out), and the small repositories its scenarios start from.

Nothing here runs an mlvc command that could repair what it reads: refs and files are read as files, and
the library is used only to read objects (commits, checkouts into a scratch folder, ledger parts) and to
build setups. scripts/crashlib.py is the harness itself.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from typing import Any


def scratch_root() -> str | None:
    """Where case folders go: /dev/shm when there is one (tmpfs: the many fsyncs of mlvc cost nothing
    there, and a SIGKILL loses nothing a file system holds, so what the harness checks is the same), else
    the default temp folder (None)."""
    shm = "/dev/shm"
    try:
        if os.path.isdir(shm) and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 1 << 30:
            return shm
    except OSError:
        pass
    return None


# -- reading a repository's state straight from disk ------------------------------------------------------


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree(folder: str) -> tuple[dict[str, str], list[str]]:
    """({relative path: sha256} of every file under `folder` outside .mlvc/, [temp files there])."""
    out, temps = {}, []
    for base, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d != ".mlvc")
        for name in files:
            full = os.path.join(base, name)
            rel = os.path.relpath(full, folder).replace(os.sep, "/")
            if name.startswith(".tmp-"):
                temps.append(rel)
            else:
                out[rel] = sha256_file(full)
    return out, sorted(temps)


def leftovers(repo_root: str) -> list[str]:
    """Lock files, temp files and journals under .mlvc/ (not damage: counted, reported)."""
    out = []
    base = os.path.join(repo_root, ".mlvc")
    for folder, _dirs, files in os.walk(base):
        for name in files:
            rel = os.path.relpath(os.path.join(folder, name), base).replace(os.sep, "/")
            if name.endswith(".lock") or name.startswith(".tmp-") or rel.startswith("txn/"):
                out.append(rel)
    return sorted(out)


def read_refs(repo_root: str) -> dict[str, str]:
    """{HEAD or refs/...: raw content}, lock and temp files skipped."""
    base = os.path.join(repo_root, ".mlvc")
    with open(os.path.join(base, "HEAD"), "rb") as f:
        out = {"HEAD": f.read().decode("utf-8", "replace").strip()}
    for kind in ("heads", "tags"):
        for folder, _dirs, files in os.walk(os.path.join(base, "refs", kind)):
            for name in files:
                if name.endswith(".lock") or name.startswith(".tmp-"):
                    continue
                full = os.path.join(folder, name)
                with open(full, "rb") as f:
                    out[os.path.relpath(full, base).replace(os.sep, "/")] = f.read().decode("utf-8", "replace").strip()
    return dict(sorted(out.items()))


ID = re.compile(r"^[0-9a-f]{32}$")


class Labeller:
    """Names commits independently of their ids: a setup commit by its name, one made by the command under
    test by what it holds (manifest, parents, message). So the commit a killed-then-rerun command made and
    the one the dry run made compare equal, although their times (and so their ids) differ."""

    def __init__(self, known: dict[str, str]):
        self.known = dict(known)  # commit id -> name

    def label(self, repo_root: str, cid: str) -> str:
        if cid in self.known:
            return self.known[cid]
        from mlvc.errors import MlvcError
        from mlvc.repo import Repo

        try:
            c = Repo(repo_root).read_commit(cid)
        except MlvcError as e:
            return f"UNREADABLE({cid[:12]}: {type(e).__name__})"
        parents = ",".join(self.label(repo_root, p) for p in c.parents)
        return f"new({c.manifest[:12]}<-{parents}:{c.message.splitlines()[0] if c.message else ''})"

    def refs_state(self, repo_root: str) -> dict[str, str]:
        out = {}
        for ref, raw in read_refs(repo_root).items():
            if raw.startswith("ref: refs/heads/") and ref == "HEAD":
                out[ref] = raw
            elif ID.match(raw):
                out[ref] = self.label(repo_root, raw)
            else:
                out[ref] = f"BAD({raw[:40]!r})"
        return out


def ledger_rows(repo_root: str) -> int:
    from mlvc.ledger import Ledger

    return len(Ledger(os.path.join(repo_root, ".mlvc", "ledger")).records())


def ledger_raw_row_ids(repo_root: str) -> list[str]:
    """Every row id in every part, repeats included (Ledger.records() drops repeats; this does not)."""
    import pyarrow.parquet as pq

    from mlvc.ledger import Ledger

    out = []
    for p in Ledger(os.path.join(repo_root, ".mlvc", "ledger")).parts():
        out += pq.read_table(p, columns=["row_id"]).column("row_id").to_pylist()
    return out


def checkout_bytes(repo_root: str, cid: str, scratch: str) -> dict[str, str] | str:
    """{path: sha256} of commit `cid` checked out into a fresh folder (through the library), or the error."""
    from mlvc.repo import Repo

    out = tempfile.mkdtemp(prefix="co-", dir=scratch)
    try:
        Repo(repo_root).checkout(cid, output=out)
        return tree(out)[0]
    except Exception as e:  # noqa: BLE001 - a commit that cannot be read back is what we count
        return f"{type(e).__name__}: {e}"
    finally:
        shutil.rmtree(out, ignore_errors=True)


# -- building setups --------------------------------------------------------------------------------------


def init_repo(root: str, chunk_size: int = 512):
    from mlvc.repo import Repo

    os.makedirs(root, exist_ok=True)
    repo = Repo.init(root)
    path = os.path.join(repo.dir, "config.toml")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    text = re.sub(r"(?m)^chunk_size = .*$", f"chunk_size = {chunk_size}", text)
    text = re.sub(r"(?m)^threads = .*$", "threads = 1", text)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Repo(root)


def weights(seed: int, n: int = 256) -> dict[str, Any]:
    """A tiny model: three float32 tensors, a few KB (several 512-byte chunks)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {"embed.weight": rng.standard_normal((n // 16, 16), dtype=np.float32),
            "layer.0.weight": rng.standard_normal((16, 16), dtype=np.float32),
            "layer.0.bias": rng.standard_normal((16,), dtype=np.float32)}


def write_st(path: str, tensors: dict[str, Any]) -> None:
    from safetensors.numpy import save_file

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(tensors, path)


def write_blob(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


class Setup:
    """A case folder being built: `case/repo` (the repository) and `case/out` (free). Commits made through
    `commit` are recorded with the sha256 of the files they hold, read from the working files."""

    def __init__(self, case: str, chunk_size: int = 512):
        self.case = case
        self.root = os.path.join(case, "repo")
        self.repo = init_repo(self.root, chunk_size)
        self.names: dict[str, str] = {}  # commit id -> name
        self.expected: dict[str, dict[str, str]] = {}  # name -> {path: sha256}
        self.ids: dict[str, str] = {}  # name -> commit id

    def path(self, rel: str) -> str:
        return os.path.join(self.root, *rel.split("/"))

    def commit(self, name: str, paths: list[str] | None = None) -> str:
        from mlvc.repo import Repo

        repo = Repo(self.root)
        r = repo.commit(message=name, paths=[self.path(p) for p in paths] if paths else None)
        manifest = repo.read_manifest(r.commit.manifest)
        self.expected[name] = {f.path: sha256_file(self.path(f.path)) for f in manifest.files}
        self.names[r.commit.id], self.ids[name] = name, r.commit.id
        return r.commit.id

    def forget(self, name: str) -> None:
        """A setup commit made unreachable on purpose (gc may delete it)."""
        cid = self.ids.pop(name)
        self.expected.pop(name)
        self.names.pop(cid)

    def run(self, fn: Callable[..., Any]):
        """A library call on the repository during the setup (switch, branch, ...)."""
        from mlvc.repo import Repo

        return fn(Repo(self.root))
