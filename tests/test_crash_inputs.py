"""Crashes instead of errors: every input below once ended in a traceback, a signal or a misleading error.

Each must now be one clean mlvc error (the right class and exit code, a message saying what to do) or the
real underlying error (a full disk, Ctrl-C), with nothing committed. The fuzz tests (tests/test_fuzz_*.py)
cover the same parsers with generated inputs; these are the named cases, one per class of crash.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_repo, set_config, write_safetensors_np
from mlvc import codec
from mlvc.cli import cli
from mlvc.config import Config
from mlvc.errors import (
    EXIT_CODES,
    ConfigError,
    CorruptObjectError,
    FileChangedError,
    FormatError,
    MlvcError,
    PathError,
    RefError,
)
from mlvc.formats import safetensors as st
from mlvc.objects import Manifest, check_rel_path
from mlvc.repo import Repo
from mlvc.store import LooseObjectStore, MemoryObjectStore
from mlvc.util import canonical_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(root, *args, env=None):
    """`mlvc ARGS` in `root` through click's runner, exceptions caught (a crash shows as the exception)."""
    old = os.getcwd()
    os.chdir(root)
    try:
        return CliRunner().invoke(cli, list(args), env={"MLVC_DEBUG": None, **(env or {})})
    finally:
        os.chdir(old)


def _one_error_line(result) -> str:
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def _no_temp_files(repo: Repo) -> None:
    for folder, _dirs, files in os.walk(os.path.join(repo.dir, "objects")):
        assert not [f for f in files if f.startswith(".tmp-")], folder


def _store_intact(repo: Repo) -> None:
    """No half-written object is visible: every object file there decodes to its id."""
    for oid in repo.store.ids():
        repo.store.verify(oid)


def _model(repo: Repo, name="model.safetensors", mib: int = 4, seed: int = 0) -> str:
    path = os.path.join(repo.root, name)
    rng = np.random.default_rng(seed)
    if name.endswith(".safetensors"):
        write_safetensors_np(path, {"w": rng.standard_normal(mib << 18, dtype=np.float32)})
    else:
        with open(path, "wb") as f:
            f.write(rng.bytes(mib << 20))
    return path


# -- a checkpoint that changes while it is committed ------------------------------------------------------

_TRUNCATE_SCRIPT = textwrap.dedent("""
    import os, sys
    from mlvc.repo import Repo
    from mlvc.store import LooseObjectStore
    from mlvc.errors import FileChangedError

    root, path = sys.argv[1], sys.argv[2]
    real = LooseObjectStore.write_file
    calls = [0]

    def write_file(self, oid, data):
        calls[0] += 1
        if calls[0] == 2:  # another process cuts the file while mlvc reads it
            os.truncate(path, 4096)
        return real(self, oid, data)

    LooseObjectStore.write_file = write_file
    try:
        Repo(root).commit(path, message="x")
    except FileChangedError as e:
        print("FileChangedError:", e)
        sys.exit(0)
    print("committed")
    sys.exit(1)
""")


@pytest.mark.parametrize("name", ["model.safetensors", "model.dat"])
def test_checkpoint_truncated_while_committed_is_file_changed_not_sigbus(tmp_path, name):
    """With the file mapped, a truncation killed mlvc with SIGBUS (uncatchable); a read just comes back
    short. Run in a child process so that a SIGBUS shows as a failure, not as the test run dying."""
    repo = make_repo(tmp_path / "repo", chunk_size=64 << 10)
    path = _model(repo, name, mib=8)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", _TRUNCATE_SCRIPT, repo.root, path], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, f"exit {r.returncode} (SIGBUS is {-7}): {r.stdout}{r.stderr}"
    assert "FileChangedError" in r.stdout and "nothing was committed" in r.stdout
    assert Repo(repo.root).head() is None


@pytest.mark.parametrize("how", ["shrink", "grow", "rewrite"])
def test_checkpoint_changed_while_committed_commits_nothing(tmp_path, monkeypatch, how):
    repo = make_repo(tmp_path / "repo", chunk_size=64 << 10)
    path = _model(repo, "model.safetensors", mib=2)
    real = LooseObjectStore.write_file
    calls = [0]

    def write_file(self, oid, data):
        calls[0] += 1
        if calls[0] == 2:
            if how == "shrink":
                os.truncate(path, os.path.getsize(path) - 100)
            else:
                time.sleep(0.05)  # a same-size rewrite shows only in mtime/ctime: let the clock tick first
                with open(path, "r+b" if how == "rewrite" else "ab") as f:
                    f.seek(0, os.SEEK_END if how == "grow" else os.SEEK_SET)
                    f.write(b"\x01" * 16 if how == "grow" else f.read(8))
        return real(self, oid, data)

    monkeypatch.setattr(LooseObjectStore, "write_file", write_file)
    with pytest.raises(FileChangedError) as e:
        repo.commit(path, message="x")
    assert "model.safetensors" in str(e.value)
    assert repo.head() is None


# -- a full disk, and Ctrl-C, in the middle of a commit ---------------------------------------------------


class _Disk:
    """os.fdopen for writing, as on a disk with `free` bytes left: past them a write fails with ENOSPC.
    With `only`, just the files whose path holds that text are on the full disk."""

    def __init__(self, free: int, only: str | None = None):
        self.free = free
        self.only = only
        self.real = os.fdopen

    def __call__(self, fd, mode="r", *args, **kwargs):
        f = self.real(fd, mode, *args, **kwargs)
        if self.only is not None and self.only not in os.readlink(f"/proc/self/fd/{fd}"):
            return f
        return _FullFile(f, self) if "w" in mode or "a" in mode else f


class _FullFile:
    def __init__(self, f, disk: _Disk):
        self._f, self._disk = f, disk

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        if n > self._disk.free:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._disk.free -= n
        return self._f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


@pytest.mark.parametrize("when", ["first-object", "mid-commit", "branch"])
def test_disk_full_during_commit_surfaces_enospc(tmp_path, monkeypatch, when):
    """It used to end in `BufferError: cannot close exported pointers exist` (the map could not be closed
    while the error unwound), hiding the real error. "branch": the disk fills up when the branch is written,
    after every object: the branch must not move."""
    repo = make_repo(tmp_path / "repo", chunk_size=64 << 10)
    path = _model(repo, mib=2)
    disk = {"first-object": _Disk(0), "mid-commit": _Disk(200 << 10),
            "branch": _Disk(0, only=os.path.join("refs", "heads"))}[when]
    monkeypatch.setattr(os, "fdopen", disk)
    with pytest.raises(OSError) as e:
        repo.commit(path, message="x")
    assert e.value.errno == errno.ENOSPC, repr(e.value)
    folder = os.path.join(repo.dir, "refs", "heads") if when == "branch" else os.path.join(repo.dir, "objects")
    assert (e.value.filename or "").startswith(folder), e.value.filename
    monkeypatch.undo()
    assert repo.head() is None
    _no_temp_files(repo)
    _store_intact(repo)


def test_disk_full_during_commit_cli_exit_17(tmp_path, monkeypatch):
    repo = make_repo(tmp_path / "repo", chunk_size=64 << 10)
    _model(repo, mib=2)
    monkeypatch.setattr(os, "fdopen", _Disk(200 << 10))
    r = _cli(repo.root, "commit", "model.safetensors", "-m", "x")
    monkeypatch.undo()
    assert r.exit_code == 17 == EXIT_CODES[OSError], r.output
    line = _one_error_line(r)
    assert "No space left on device" in line and os.path.join(".mlvc", "objects") in line, line
    assert Repo(repo.root).head() is None
    _no_temp_files(repo)


class _InterruptAt:
    """A progress reporter that raises KeyboardInterrupt on its n-th step, as Ctrl-C would in the main thread."""

    def __init__(self, n: int):
        self.n = n

    def start(self, *a, **k):
        pass

    def advance(self, n: int) -> None:
        self.n -= 1
        if self.n == 0:
            raise KeyboardInterrupt

    def finish(self, *a, **k):
        pass

    def __getattr__(self, name):
        return lambda *a, **k: None


def test_ctrl_c_during_commit_is_keyboard_interrupt(tmp_path):
    repo = make_repo(tmp_path / "repo", chunk_size=64 << 10)
    path = _model(repo, mib=2)
    with pytest.raises(KeyboardInterrupt):
        repo.commit(path, message="x", progress=_InterruptAt(3))
    assert repo.head() is None
    _no_temp_files(repo)
    _store_intact(repo)


def test_ctrl_c_during_commit_cli_prints_interrupted_and_exits_130(tmp_path, monkeypatch):
    repo = make_repo(tmp_path / "repo", chunk_size=64 << 10)
    _model(repo, mib=2)
    real = LooseObjectStore.write_file
    calls = [0]

    def write_file(self, oid, data):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return real(self, oid, data)

    monkeypatch.setattr(LooseObjectStore, "write_file", write_file)
    r = _cli(repo.root, "commit", "model.safetensors", "-m", "x")
    assert r.exit_code == 130, (r.exit_code, r.output, r.exception)
    assert _one_error_line(r) == "interrupted"
    assert Repo(repo.root).head() is None


_SIGINT_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from mlvc.store import LooseObjectStore
    from mlvc.cli import main

    real = LooseObjectStore.write_file
    calls = [0]

    def write_file(self, oid, data):
        calls[0] += 1
        if calls[0] == 3:  # a real Ctrl-C: the signal, delivered to the main thread while workers run
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, oid, data)

    LooseObjectStore.write_file = write_file
    sys.argv = ["mlvc", "commit", sys.argv[1], "-m", "x"]
    main()
""")


def test_real_sigint_during_commit_exits_130_with_one_line(tmp_path):
    """With the file mapped, Ctrl-C ended in `BufferError: cannot close exported pointers exist` (exit 1)."""
    repo = make_repo(tmp_path / "repo", chunk_size=64 << 10)
    path = _model(repo, "model.dat", mib=4)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("MLVC_DEBUG", None)
    r = subprocess.run([sys.executable, "-c", _SIGINT_SCRIPT, path], cwd=repo.root, capture_output=True, text=True,
                       env=env, timeout=120)
    assert (r.returncode, r.stderr) == (130, "interrupted\n"), (r.returncode, r.stderr)
    assert Repo(repo.root).head() is None
    _no_temp_files(repo)


# -- safetensors headers ----------------------------------------------------------------------------------


def _file(header, data: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _entry(dtype="U8", shape=(4,), offsets=(0, 4)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


BAD_HEADERS = {
    "nested-arrays": _file(b"[" * 100_000 + b"]" * 100_000),
    "nested-objects": _file(b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
    "nested-in-entry": _file(b'{"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4], "x": '
                             + b"[" * 50_000 + b"]" * 50_000 + b"}}", b"abcd"),
    "lone-surrogate-name": _file(b'{"\\ud800": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}', b"abcd"),
    "lone-surrogate-metadata": _file(b'{"__metadata__": {"k": "\\udfff"}}'),
    "not-utf8": _file(b'{"\xff": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}', b"abcd"),
    "int-too-long": _file(b'{"a": {"dtype": "U8", "shape": [' + b"4" * 5000 + b'], "data_offsets": [0, 4]}}',
                          b"abcd"),
    "offset-too-long": _file(b'{"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, ' + b"9" * 5000 + b"]}}",
                             b"abcd"),
    "bool-shape": _file({"a": _entry("U8", [True], (0, 1))}, b"a"),
    "bool-offsets": _file({"a": _entry("U8", [1], (False, True))}, b"a"),
    "float-shape": _file({"a": _entry("U8", [4.0])}, b"abcd"),
    "negative-offset": _file({"a": _entry("U8", [4], (-4, 0))}, b"abcd"),
    "negative-dim": _file({"a": _entry("U8", [-4], (0, 4))}, b"abcd"),
    "reversed-offsets": _file({"a": _entry("U8", [0], (4, 0))}, b"abcd"),
    "overlapping": _file({"a": _entry("U8", [4], (0, 4)), "b": _entry("U8", [2], (2, 4))}, b"abcd"),
    "gap": _file({"a": _entry("U8", [2], (0, 2)), "b": _entry("U8", [1], (3, 4))}, b"abcd"),
    "offset-past-end": _file({"a": _entry("U8", [8], (0, 8))}, b"abcd"),
    "duplicate-key": _file(b'{"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}, '
                           b'"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}', b"abcd"),
    "duplicate-field": _file(b'{"a": {"dtype": "U8", "dtype": "F32", "shape": [4], "data_offsets": [0, 4]}}',
                             b"abcd"),
    "entry-is-int": _file({"a": 5}),
    "entry-is-list": _file({"a": ["U8", [4], [0, 4]]}, b"abcd"),
    "entry-is-string": _file({"a": "dtype"}),
    "offsets-is-string": _file({"a": {"dtype": "U8", "shape": [2], "data_offsets": "ab"}}, b"ab"),
    "offsets-is-dict": _file({"a": {"dtype": "U8", "shape": [2], "data_offsets": {"0": 0, "2": 2}}}, b"ab"),
    "three-offsets": _file({"a": _entry("U8", [4], (0, 2, 4))}, b"abcd"),
    "dtype-not-a-string": _file({"a": _entry(7)}, b"abcd"),
    "dtype-not-a-name": _file({"a": _entry("f32; rm -rf /")}, b"abcd"),
    "dtype-huge": _file({"a": _entry("F" * 100_000)}, b"abcd"),
    "huge-rank": _file({"a": _entry("U8", [1] * 100_000, (0, 1))}, b"a"),
    "numel-overflow": _file({"a": _entry("F32", [2 ** 62, 2 ** 62, 0, 2 ** 62], (0, 0))}),
    "metadata-not-strings": _file({"__metadata__": {"k": 1}}),
    "header-not-object": _file(b"[1, 2, 3]"),
    "header-length-past-end": struct.pack("<Q", 1000) + b"{}",
    "header-length-huge": struct.pack("<Q", 2 ** 63) + b"{}",
    "too-short": b"\x02\x00\x00",
    "empty": b"",
    "nan": _file(b'{"a": {"dtype": "U8", "shape": [NaN], "data_offsets": [0, 4]}}', b"abcd"),
}


@pytest.mark.parametrize("kind", sorted(BAD_HEADERS))
def test_bad_safetensors_header_is_a_format_error(kind):
    data = BAD_HEADERS[kind]
    with pytest.raises(FormatError) as e:
        st.parse_layout(data, len(data), "bad.safetensors")
    assert str(e.value).startswith("bad.safetensors: ")
    assert len(str(e.value)) < 400  # a huge name or shape is not copied into the message


@pytest.mark.parametrize("kind", ["nested-arrays", "lone-surrogate-name", "int-too-long", "bool-shape",
                                  "duplicate-key", "huge-rank", "offset-past-end"])
def test_bad_safetensors_header_refused_by_commit_cli_exit_8(tmp_path, kind):
    repo = make_repo(tmp_path / "repo")
    with open(os.path.join(repo.root, "bad.safetensors"), "wb") as f:
        f.write(BAD_HEADERS[kind])
    r = _cli(repo.root, "commit", "bad.safetensors", "-m", "x")
    assert r.exit_code == 8 == EXIT_CODES[FormatError], (r.output, r.exception)
    assert _one_error_line(r).startswith("error: bad.safetensors: ")
    assert Repo(repo.root).head() is None and not list(repo.store.ids())


def test_unknown_dtype_is_stored_as_bytes_and_refused_as_a_torch_tensor(tmp_path):
    """A well-formed name mlvc does not know (a newer safetensors dtype) is kept as bytes, byte for byte;
    only turning it into a torch tensor is refused, with a FormatError rather than a KeyError."""
    pytest.importorskip("torch")
    repo = make_repo(tmp_path / "repo")
    path = os.path.join(repo.root, "m.safetensors")
    with open(path, "wb") as f:
        f.write(_file({"a": _entry("F4", [8], (0, 4))}, b"\x01\x02\x03\x04"))
    repo.commit(path, message="f4")
    assert bytes(repo.load(framework="numpy")["a"]) == b"\x01\x02\x03\x04"
    with pytest.raises(FormatError, match="F4"):
        repo.load(framework="torch")


def test_surrogate_tensor_name_from_python_is_a_format_error(tmp_path):
    repo = make_repo(tmp_path / "repo")
    with pytest.raises(FormatError, match="UTF-8"):
        repo.commit({"bad\ud800name": np.zeros(3, np.float32)}, message="x")
    assert repo.head() is None


def test_surrogate_in_commit_message_is_an_mlvc_error(tmp_path):
    repo = make_repo(tmp_path / "repo")
    with pytest.raises(MlvcError, match="UTF-8"):
        repo.commit({"a": np.zeros(3, np.float32)}, message="bad \udcff byte")
    assert repo.head() is None


# -- config.toml ------------------------------------------------------------------------------------------

BAD_CONFIGS = {
    "not-utf8": (b"[core]\nthreads = 1 # caf\xe9\n", "UTF-8"),
    "not-toml": (b"[core\n", "TOML"),
    "int-too-long": (b"[core]\nthreads = " + b"1" * 5000 + b"\n", "TOML"),
    "nested-too-deep": (b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nests"),
    "threads-negative": (b"[core]\nthreads = -1\n", "core.threads"),
    "threads-huge": (b"[core]\nthreads = 100000\n", "core.threads"),
    "threads-bool": (b"[core]\nthreads = true\n", "core.threads"),
    "threads-float": (b"[core]\nthreads = 2.0\n", "core.threads"),
    "threads-string": (b'[core]\nthreads = "2"\n', "core.threads"),
    "chunk-size-bool": (b"[core]\nchunk_size = false\n", "core.chunk_size"),
    "chunk-size-odd": (b"[core]\nchunk_size = 65537\n", "core.chunk_size"),
    "chunk-size-float": (b"[core]\nchunk_size = 65536.0\n", "core.chunk_size"),
    "chunk-size-huge": (b"[core]\nchunk_size = 99999999999999999999\n", "core.chunk_size"),
    "zstd-level-high": (b"[core]\nzstd_level = 23\n", "core.zstd_level"),
    "keyframe-zero": (b"[core]\nkeyframe_interval = 0\n", "core.keyframe_interval"),
    "cache-negative": (b"[core]\ncache_mb = -1\n", "core.cache_mb"),
    "cache-huge": (b"[core]\ncache_mb = 9223372036854775807\n", "core.cache_mb"),
    "cache-list": (b"[core]\ncache_mb = [1]\n", "core.cache_mb"),
    "core-not-a-table": (b"core = 5\n", "[core]"),
    "user-not-a-table": (b"user = 5\n", "[user]"),
    "user-name-not-a-string": (b"[user]\nname = 5\n", "user.name"),
}


@pytest.mark.parametrize("kind", sorted(BAD_CONFIGS))
def test_bad_config_is_a_config_error_naming_the_key(tmp_path, kind):
    text, key = BAD_CONFIGS[kind]
    path = tmp_path / "config.toml"
    path.write_bytes(text)
    with pytest.raises(ConfigError) as e:
        Config.load(str(path))
    assert key in str(e.value) and str(path) in str(e.value)


def test_bad_config_cli_exit_11(tmp_path):
    repo = make_repo(tmp_path / "repo")
    with open(os.path.join(repo.dir, "config.toml"), "ab") as f:
        f.write(b"# \xff\xfe not UTF-8\n")
    r = _cli(repo.root, "status")
    assert r.exit_code == 11 == EXIT_CODES[ConfigError], (r.output, r.exception)
    assert "config.toml" in _one_error_line(r)


def test_threads_out_of_range_cli_exit_11(tmp_path):
    repo = make_repo(tmp_path / "repo")
    path = os.path.join(repo.dir, "config.toml")
    with open(path, encoding="utf-8") as f:
        text = f.read().replace("threads = 0", "threads = -1")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    r = _cli(repo.root, "log")
    assert r.exit_code == 11, (r.output, r.exception)
    line = _one_error_line(r)
    assert "core.threads" in line and "0" in line and "256" in line


def test_valid_config_values_still_load(tmp_path):
    repo = make_repo(tmp_path / "repo")
    for key, value in [("threads", 3), ("chunk_size", 4096), ("zstd_level", -7), ("cache_mb", 0),
                       ("keyframe_interval", 1)]:
        repo = set_config(repo, key, value)


# -- paths ------------------------------------------------------------------------------------------------


def _put_json(repo: Repo, d: dict) -> str:
    return repo.store.put(canonical_json(d)).id


def _file_entry(path: str) -> dict:
    return {"path": path, "kind": "blob", "size": 0, "hash": "0" * 32, "chunks": []}


def _manifest(repo: Repo, paths: list[str], roots=(".",)) -> str:
    return _put_json(repo, {"type": "manifest", "format": 1, "roots": list(roots), "chunk_size": 4096,
                            "files": [_file_entry(p) for p in paths]})


def _commit(repo: Repo, manifest_id: str, **over) -> str:
    d = {"type": "commit", "format": 1, "manifest": manifest_id, "parents": [], "author": "a",
         "time": "2024-01-01T00:00:00.000000Z", "message": "m", "metadata": {}}
    d.update(over)
    return _put_json(repo, d)


@pytest.mark.parametrize("path", ["a/" * 3000 + "f", "a/" * 300 + "f", "x" * 300, "d/" + "y" * 5000,
                                  "bad\udcffname", "lone\ud800", 7, None, ""])
def test_crafted_manifest_paths_are_refused_when_parsed(tmp_path, path):
    repo = make_repo(tmp_path / "repo")
    mid = repo.store.put(json.dumps({"type": "manifest", "format": 1, "roots": ["."], "chunk_size": 4096,
                                     "files": [_file_entry(path)]}).encode()).id
    with pytest.raises(CorruptObjectError, match="malformed manifest|not a manifest"):
        repo.read_manifest(mid)


def test_checkout_of_a_deep_manifest_path_exit_5(tmp_path):
    repo = make_repo(tmp_path / "repo")
    cid = _commit(repo, _manifest(repo, ["a/" * 3000 + "f"]))
    out = tmp_path / "out"
    r = _cli(repo.root, "checkout", cid, "--output", str(out))
    assert r.exit_code == 5, (r.output, r.exception)
    assert "malformed manifest" in _one_error_line(r)
    assert not out.exists() or not os.listdir(out)


def test_check_rel_path_limits():
    check_rel_path("/".join(["d"] * 254) + "/f")
    check_rel_path("x" * 255)
    check_rel_path("/".join(["é" * 127] * 15))
    for bad in ["/".join(["d"] * 255) + "/f", "x" * 256, ("abcdefg/" * 600)[:-1], "é" * 128]:
        with pytest.raises(PathError):
            check_rel_path(bad)


@pytest.fixture
def deep_tree():
    """Makes a folder chain `depth` deep under `top`; removes it afterwards with `rm -rf` (pytest's own
    cleanup, shutil.rmtree, recurses per folder and would fail on it in a later run)."""
    made = []

    def make(top: str, depth: int) -> None:
        made.append(top)
        _deep_tree(top, depth)

    yield make
    for top in made:
        subprocess.run(["rm", "-rf", top], check=False)


def _deep_tree(top: str, depth: int) -> None:
    os.makedirs(top)
    fd = os.open(top, os.O_RDONLY)
    try:
        for _ in range(depth):  # relative to a folder descriptor: no path ever gets long
            os.mkdir("a", dir_fd=fd)
            nfd = os.open("a", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        with open(os.open("f.bin", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
            f.write(b"deep")
    finally:
        os.close(fd)


def test_commit_of_a_folder_too_deep_for_a_manifest_is_a_path_error(tmp_path, deep_tree):
    repo = make_repo(tmp_path / "repo")
    deep_tree(os.path.join(repo.root, "model"), 300)
    with pytest.raises(PathError):
        repo.commit(os.path.join(repo.root, "model"), message="deep")
    assert repo.head() is None


def test_commit_of_a_folder_thousands_deep_is_a_path_error(tmp_path, deep_tree):
    repo = make_repo(tmp_path / "repo")
    deep_tree(os.path.join(repo.root, "model"), 3000)
    with pytest.raises(PathError):
        repo.commit(os.path.join(repo.root, "model"), message="deep")
    assert repo.head() is None


def test_file_name_that_is_not_utf8_is_a_path_error(tmp_path):
    repo = make_repo(tmp_path / "repo")
    os.makedirs(os.path.join(repo.root, "model"))
    with open(os.path.join(os.fsencode(repo.root), b"model", b"caf\xe9.bin"), "wb") as f:
        f.write(b"x")
    r = _cli(repo.root, "commit", "model", "-m", "x")
    assert r.exit_code == 10 == EXIT_CODES[PathError], (r.output, r.exception)
    assert "UTF-8" in _one_error_line(r)
    assert Repo(repo.root).head() is None


# -- manifests and commits --------------------------------------------------------------------------------


@pytest.mark.parametrize("paths", [["a", "a"], ["a", "a/b"], ["m/x", "m/x/y/z"], ["b/c", "a", "b/c"]])
def test_manifest_listing_a_path_twice_or_under_a_file_is_malformed(tmp_path, paths):
    repo = make_repo(tmp_path / "repo")
    with pytest.raises(CorruptObjectError, match="malformed manifest"):
        repo.read_manifest(_manifest(repo, paths))
    cid = _commit(repo, _manifest(repo, paths))
    r = _cli(repo.root, "checkout", cid, "--output", str(tmp_path / "out"))
    assert r.exit_code == 5, (r.output, r.exception)


def test_commit_never_writes_a_manifest_with_a_path_twice(tmp_path):
    repo = make_repo(tmp_path / "repo")
    repo.commit({"w": np.zeros(4, np.float32)}, message="one")
    entry = repo.read_manifest(repo.read_commit(repo.head()).manifest).files[0]
    bad = Manifest(["."], [entry, entry], 4096)
    before = set(repo.store.ids())
    with pytest.raises(ValueError):
        repo.write_manifest(bad)
    assert set(repo.store.ids()) == before


def test_valid_manifest_paths_still_parse(tmp_path):
    repo = make_repo(tmp_path / "repo")
    m = repo.read_manifest(_manifest(repo, ["a/b", "a/c", "ab", "a.b/c", "é/ü"]))
    assert [f.path for f in m.files] == ["a/b", "a/c", "ab", "a.b/c", "é/ü"]


GOOD_ID = "0" * 32
BAD_COMMITS = {
    "manifest-not-an-id": {"manifest": 7},
    "manifest-short": {"manifest": "abc"},
    "parents-not-a-list": {"parents": "0" * 32},
    "parent-not-an-id": {"parents": [True]},
    "author-not-a-string": {"author": ["a"]},
    "time-not-a-string": {"time": 0},
    "message-not-a-string": {"message": None},
    "metadata-not-a-dict": {"metadata": [1]},
    "format-newer": {"format": 2},
    "format-bool": {"format": True},
}


@pytest.mark.parametrize("kind", sorted(BAD_COMMITS))
def test_malformed_commit_is_a_corrupt_object(tmp_path, kind):
    repo = make_repo(tmp_path / "repo")
    cid = _commit(repo, GOOD_ID, **BAD_COMMITS[kind])
    with pytest.raises(CorruptObjectError, match="commit"):
        repo.read_commit(cid)
    r = _cli(repo.root, "show", cid)
    assert r.exit_code == 5, (r.output, r.exception)
    _one_error_line(r)


@pytest.mark.parametrize("raw", [b"[" * 100_000 + b"]" * 100_000,
                                 b'{"type": "commit", "message": ' + b"1" * 5000 + b"}",
                                 b'{"type": "commit", "message": "\\ud800"}',
                                 b'{"type": "commit", "message": "\xff"}'])
def test_commit_object_that_is_not_json_text_is_corrupt(tmp_path, raw):
    repo = make_repo(tmp_path / "repo")
    oid = repo.store.put(raw).id
    with pytest.raises(CorruptObjectError):
        repo.read_commit(oid)
    with pytest.raises(CorruptObjectError):
        repo.read_manifest(oid)


# -- object files -----------------------------------------------------------------------------------------


def _zstd_frame_declaring(size: int) -> bytes:
    """A tiny zstd frame whose header declares `size` bytes of content (one 128 KiB RLE block follows)."""
    header = struct.pack("<I", 0xFD2FB528) + bytes([0xE0]) + struct.pack("<Q", size)
    block = 1 | (1 << 1) | ((128 << 10) << 3)
    return header + struct.pack("<I", block)[:3] + b"\x00"


@pytest.mark.parametrize("size", [1 << 36, 1 << 44, (1 << 64) - 1])
def test_object_declaring_a_huge_size_is_corrupt_not_memory_error(size):
    frame = _zstd_frame_declaring(size)
    for data in [codec._pack_header(codec.ENC_ZSTD, 1, size) + frame,
                 codec._pack_header(codec.ENC_PLANES, 1, size) + struct.pack("<BI", 1, len(frame)) + frame]:
        with pytest.raises(codec.DecodeError):
            codec.decode(data)


def test_delta_objects_naming_each_other_are_corrupt_not_recursion(tmp_path):
    store = MemoryObjectStore(cache_bytes=0)
    a = np.random.default_rng(0).standard_normal(4096).astype(np.float32)
    x0 = store.put(a.tobytes(), 4).id
    x1 = store.put((a + np.float32(1e-3)).tobytes(), 4, base=x0).id
    assert store.header(x1).base == x0
    # x1 (depth 2) names x0, whose file now names x1 back (depth 1): decoding would never end.
    d1 = bytearray(store.read_file(x1))
    d1[7] = 2
    store._objects[x1] = bytes(d1)
    store._objects[x0] = codec._pack_header(codec.ENC_XOR, 4, a.nbytes, x1, 1) + bytes(d1[32:])
    with pytest.raises(CorruptObjectError):
        store.get(x1)
    with pytest.raises(CorruptObjectError):
        store.get(x0)


# -- the command line's last line of defence --------------------------------------------------------------


@pytest.mark.parametrize("exc", [RuntimeError("boom\nsecond line"), RecursionError("maximum recursion depth"),
                                 MemoryError(), UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
                                 KeyError("x"), BufferError("cannot close exported pointers exist")])
def test_unexpected_exception_is_one_internal_error_line(tmp_path, monkeypatch, exc):
    repo = make_repo(tmp_path / "repo")

    def broken(*a, **k):
        raise exc

    monkeypatch.setattr(Repo, "status", broken)
    r = _cli(repo.root, "status")
    assert r.exit_code == 70 == EXIT_CODES[Exception], (r.output, r.exception)
    line = _one_error_line(r)
    assert line.startswith("internal error: " + type(exc).__name__), line
    assert line.endswith("(run with MLVC_DEBUG=1 for the traceback and report it)"), line
    assert "second line" not in line
    debug = _cli(repo.root, "status", env={"MLVC_DEBUG": "1"})
    assert debug.exception is exc


def test_mlvc_errors_and_usage_errors_keep_their_codes(tmp_path):
    repo = make_repo(tmp_path / "repo")
    assert _cli(repo.root, "show", "nosuch").exit_code == 4
    assert _cli(repo.root, "log", "--no-such-option").exit_code == 2
    assert _cli(repo.root, "--help").exit_code == 0


# --- found by a bug hunt (2026-12-07): each was an internal error, a misleading message or a wrong exit code ---


def _evaluated_repo(tmp_path, command: list[str], extra: str = "") -> Repo:
    repo = make_repo(tmp_path / "repo")
    path = os.path.join(repo.root, "m.safetensors")
    write_safetensors_np(path, {"w": np.arange(4, dtype=np.float32)})
    repo.commit(path, message="one")
    with open(os.path.join(repo.root, "mlvc.toml"), "w") as f:
        f.write(f"[tasks.a]\ncommand = {json.dumps(command)}\nmetrics = {{ m = \"higher\" }}\n{extra}")
    return repo


@pytest.mark.parametrize(("printed", "says"), [
    ('{"m": 1' + "0" * 400 + "}", "not a finite number"),  # an integer past a float's range
    ("[" * 100_000, "nested too deeply"),
    ('{"m": -1' + "0" * 400 + "}", "not a finite number"),
])
def test_an_evaluators_unusable_output_is_a_failed_evaluation(tmp_path, printed, says):
    """Output no metric can be made of is recorded as a failed evaluation (exit 15), never an internal error
    (OverflowError, RecursionError: exit 70, no ledger row)."""
    script = os.path.join(str(tmp_path), "say.py")
    with open(script, "w") as f:
        f.write(f"import sys\nsys.stdout.write({printed!r})\n")
    repo = _evaluated_repo(tmp_path, [sys.executable, script, "{checkpoint}"])
    r = _cli(repo.root, "eval", "run", "HEAD")
    assert r.exit_code == 15, r.output  # failed evaluations
    assert says in r.output and "Traceback" not in r.output
    (outcome,) = Repo(repo.root).eval_run().outcomes
    assert outcome.status == "failed" and says in (outcome.error or "")


@pytest.mark.parametrize(("env", "command"), [
    ('env = { "A=B" = "x" }', None),
    ('env = { "" = "x" }', None),
    ('env = { "A" = "x\\u0000y" }', None),
    ("", ["echo", "{checkpoint}\u0000"]),
    ('cwd = "a\\u0000b"', None),
])
def test_a_task_the_operating_system_cannot_run_is_a_configuration_error(tmp_path, env, command):
    """An env name with '=' or NUL, a NUL in a value, an argument or the folder: refused when the task is read,
    naming it (exit 11), not a ValueError from the process launch (exit 70)."""
    repo = _evaluated_repo(tmp_path, command or ["echo", "{checkpoint}"], env)
    r = _cli(repo.root, "eval", "run", "HEAD")
    assert r.exit_code == EXIT_CODES[ConfigError] and "[tasks.a]" in _one_error_line(r), r.output


def test_a_task_whose_folder_is_missing_says_so(tmp_path):
    repo = _evaluated_repo(tmp_path, ["true", "{checkpoint}"], 'cwd = "nonexistent"')
    (outcome,) = repo.eval_run().outcomes
    assert outcome.status == "failed" and "folder (cwd)" in (outcome.error or "") and "nonexistent" in outcome.error


def test_commit_meta_nested_too_deeply_is_a_usage_error(tmp_path):
    repo = make_repo(tmp_path / "repo")
    r = _cli(repo.root, "commit", "-m", "x", "--allow-empty", "--meta", "a=" + "[" * 5000 + "]" * 5000)
    assert r.exit_code == 2 and "nested too deeply" in r.output and "Traceback" not in r.output


def test_gc_names_a_damaged_commit_a_commit(tmp_path):
    repo = make_repo(tmp_path / "repo")
    path = os.path.join(repo.root, "m.safetensors")
    write_safetensors_np(path, {"w": np.arange(4, dtype=np.float32)})
    first = repo.commit(path, message="one").commit.id
    write_safetensors_np(path, {"w": np.arange(5, dtype=np.float32)})
    head = repo.commit(path, message="two").commit.id
    for cid, named in ((head, "branch main"), (first, f"commit {head[:12]}")):
        obj = repo.store.locate(cid)
        assert obj is not None and os.path.isfile(obj), "a loose commit object"
        os.chmod(obj, 0o644)
        data = open(obj, "rb").read()
        with open(obj, "wb") as f:
            f.write(data[: len(data) // 2])
        r = _cli(repo.root, "gc")
        line = _one_error_line(r)
        assert r.exit_code == 5 and f"commit {cid}, named by {named}, is damaged" in line and "tag" not in line, line
        with open(obj, "wb") as f:
            f.write(data)


def test_checkout_output_into_the_work_tree_is_refused(tmp_path):
    """`checkout REV --output .` would rewrite the work tree under a HEAD that did not move: refused, nothing
    written (exit 10); a folder inside the work tree is fine."""
    repo = make_repo(tmp_path / "repo")
    a, b = os.path.join(repo.root, "a.safetensors"), os.path.join(repo.root, "b.safetensors")
    write_safetensors_np(a, {"w": np.arange(4, dtype=np.float32)})
    repo.commit(a, message="one")
    write_safetensors_np(b, {"w": np.arange(5, dtype=np.float32)})
    repo.commit(b, message="two")
    for where in (".", repo.root, os.path.join(repo.root, "sub", "..")):
        r = _cli(repo.root, "checkout", "HEAD~1", "--output", where)
        assert r.exit_code == EXIT_CODES[PathError] and "work tree" in _one_error_line(r), r.output
        assert os.path.isfile(b) and Repo(repo.root).status().clean
    r = _cli(repo.root, "checkout", "HEAD~1", "--output", "old")
    assert r.exit_code == 0 and os.listdir(os.path.join(repo.root, "old")) == ["a.safetensors"], r.output


@pytest.mark.parametrize("kind", ["branch", "tag"])
def test_a_branch_or_tag_named_head_is_refused_and_an_old_one_can_be_deleted(tmp_path, kind):
    repo = make_repo(tmp_path / "repo")
    path = os.path.join(repo.root, "m.safetensors")
    write_safetensors_np(path, {"w": np.arange(4, dtype=np.float32)})
    head = repo.commit(path, message="one").commit.id
    r = _cli(repo.root, kind, "HEAD")
    assert r.exit_code == EXIT_CODES[RefError] and "'HEAD' is not a valid" in _one_error_line(r), r.output
    assert not os.path.exists(os.path.join(repo.dir, "refs", "heads" if kind == "branch" else "tags", "HEAD"))
    # one an earlier mlvc made can still be removed
    folder = os.path.join(repo.dir, "refs", "heads" if kind == "branch" else "tags")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "HEAD"), "w") as f:
        f.write(head + "\n")
    r = _cli(repo.root, kind, "-d", "HEAD")
    assert r.exit_code == 0 and not os.path.exists(os.path.join(folder, "HEAD")), r.output


def test_rm_of_a_folder_without_r_is_a_path_error(tmp_path):
    repo = make_repo(tmp_path / "repo")
    os.makedirs(os.path.join(repo.root, "model"))
    write_safetensors_np(os.path.join(repo.root, "model", "m.safetensors"), {"w": np.arange(4, dtype=np.float32)})
    repo.commit(os.path.join(repo.root, "model"), message="one")
    r = _cli(repo.root, "rm", "model")
    assert r.exit_code == EXIT_CODES[PathError] and "pass -r" in _one_error_line(r), r.output


def test_restore_of_a_path_no_commit_has_reads_well(tmp_path):
    repo = make_repo(tmp_path / "repo")
    path = os.path.join(repo.root, "m.safetensors")
    write_safetensors_np(path, {"w": np.arange(4, dtype=np.float32)})
    repo.commit(path, message="one")
    line = _one_error_line(_cli(repo.root, "restore", "nothere"))
    assert "no file of HEAD is there" in line and "(or of HEAD)" not in line, line
    line = _one_error_line(_cli(repo.root, "restore", "--source", "HEAD", "nothere"))
    assert "no file of HEAD is there" in line, line
