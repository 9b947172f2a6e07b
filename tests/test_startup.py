"""What a command imports: a command that never touches tensor bytes imports no numpy, pyarrow or torch, and one
that reads no object not even zstandard (issue 11: start-up is most of a light command's time, and numpy alone
is about 0.1 s of it). docs/benchmarks.md ("speed") has the times.

Each case runs a real `mlvc` command in a fresh interpreter (`python -m mlvc ARGS`, through runpy) inside a small
repository and reads `sys.modules` when the command has ended. No timings are asserted: what is checked is which
modules were imported. Positive controls show that the probe sees a lazy import when one happens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import make_repo

# Runs `mlvc ARGS` as `python -m mlvc ARGS` does and, at exit (the process ends without the interpreter's
# teardown, after the atexit handlers: runtime.end_process), writes the names of every module imported (not the
# ones blocked with a None entry) to the file named by its first argument.
PROBE = r"""
import atexit, json, runpy, sys
out, sys.argv = sys.argv[1], ["mlvc", *sys.argv[2:]]

def dump():
    with open(out, "w") as f:
        json.dump(sorted(name for name, m in sys.modules.items() if m is not None), f)

atexit.register(dump)
runpy.run_module("mlvc", run_name="__main__", alter_sys=True)
"""

# concurrent.futures (which imports logging) is there for the thread pools of a pipeline that reads or stores chunks.
HEAVY = ("numpy", "pyarrow", "torch", "zstandard", "concurrent.futures")
NO_TENSOR_BYTES = tuple(m for m in HEAVY if m != "zstandard")  # reading commits and manifests needs zstandard

def imported(cwd, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run `mlvc ARGS` in `cwd` in a fresh interpreter: (the finished process, the modules it imported)."""
    fd, listing = tempfile.mkstemp(prefix="mlvc-modules-", suffix=".json")
    os.close(fd)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLVC_")}
    env["MLVC_NO_PROGRESS"] = "1"
    proc = subprocess.run([sys.executable, "-c", PROBE, listing, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    try:
        with open(listing) as f:
            text = f.read()
    finally:
        os.remove(listing)
    assert text, f"the probe ended before the command did (exit {proc.returncode}):\n{proc.stderr}"
    return proc, set(json.loads(text))


def heavy_in(modules: set[str], names) -> list[str]:
    return sorted(n for n in names if n in modules)


def age(*paths) -> None:
    """Date files an hour back, as a user's checkpoint usually is: the stat cache trusts an entry only when the
    file is older than the entry (a file written in the same instant could still change unseen)."""
    then = time.time() - 3600
    for p in paths:
        os.utime(p, (then, then))


def write_model(path, seed: int = 0) -> None:
    """A small checkpoint: one tensor above the pack limit (a loose object), two small ones (packed)."""
    rng = np.random.default_rng(seed)
    save_file({"encoder.weight": rng.standard_normal((100, 100)).astype(np.float32),
               "encoder.bias": rng.standard_normal(100).astype(np.float32),
               "step": np.array([seed], np.int64)}, str(path))


@pytest.fixture(scope="module")
def repos(tmp_path_factory) -> dict[str, str]:
    """Three folders: "new" is empty, "empty" a repository with no commit, "model" one with two commits (the second
    changes only config.json, so showing it compares no tensor values), a branch and an annotated tag, and a
    work tree as HEAD has it."""
    base = tmp_path_factory.mktemp("startup")
    out = {"new": str(base / "new"), "empty": str(base / "empty"), "model": str(base / "model")}
    os.makedirs(out["new"])
    make_repo(out["empty"])
    repo = make_repo(out["model"])
    model = os.path.join(repo.root, "model")
    os.makedirs(model)
    weights, config = os.path.join(model, "model.safetensors"), os.path.join(model, "config.json")
    write_model(weights)
    with open(config, "w") as f:
        f.write('{"hidden": 100}')
    age(weights, config)
    repo.commit(model, message="first")
    with open(config, "w") as f:
        f.write('{"hidden": 100, "dropout": 0.1}')
    age(config)
    repo.commit(model, message="config only")
    repo.create_branch("exp")
    repo.create_tag("v1", message="first release")
    return out


def case(where: str, args: list[str], forbidden: tuple[str, ...], says: str):
    """One command: the repository it runs in, its arguments, the modules it must not import and a piece of
    its output (so that the command is known to have done its work)."""
    return pytest.param(where, args, forbidden, says, id=f"{where}: mlvc {' '.join(args)}")


CASES = [
    case("new", ["--version"], HEAVY, "mlvc, version"),
    case("new", ["--help"], HEAVY, "Commands:"),
    case("new", ["log", "--help"], HEAVY, "Usage:"),
    case("new", ["status"], HEAVY, "not an mlvc repository"),
    case("new", ["init"], HEAVY, "Initialized"),
    case("empty", ["status"], HEAVY, "No commits yet"),
    case("empty", ["config", "list"], HEAVY, "core.chunk_size"),
    case("empty", ["config", "get", "core.zstd_level"], HEAVY, "1"),
    case("model", ["status"], NO_TENSOR_BYTES, "matches HEAD"),
    case("model", ["status", "--json"], NO_TENSOR_BYTES, '"clean": true'),
    case("model", ["log"], NO_TENSOR_BYTES, "config only"),
    case("model", ["log", "--all", "--graph", "--oneline"], NO_TENSOR_BYTES, "first"),
    case("model", ["branch"], NO_TENSOR_BYTES, "exp"),
    case("model", ["tag"], NO_TENSOR_BYTES, "v1"),
    case("model", ["reflog"], NO_TENSOR_BYTES, "config only"),
    case("model", ["show", "HEAD"], NO_TENSOR_BYTES, "config.json"),  # only config.json changed
    case("model", ["show", "HEAD~1"], NO_TENSOR_BYTES, "encoder.weight"),  # the first commit: every tensor added
    case("model", ["show", "v1", "--no-diff"], NO_TENSOR_BYTES, "first release"),
    case("model", ["diff", "HEAD~1", "HEAD"], NO_TENSOR_BYTES, "config.json"),
]


@pytest.mark.parametrize(("where", "args", "forbidden", "says"), CASES)
def test_a_light_command_imports_nothing_heavy(repos, where, args, forbidden, says):
    proc, modules = imported(repos[where], *args)
    assert says in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert heavy_in(modules, forbidden) == [], f"mlvc {' '.join(args)} imported {heavy_in(modules, forbidden)}"


def test_a_file_whose_stat_changed_is_hashed_without_numpy(repos, tmp_path):
    """A file touched but not changed (a copy, a checkout elsewhere) is hashed again: hashing reads bytes, and
    needs no numpy (xxhash reads them as they are)."""
    path = os.path.join(repos["model"], "model", "model.safetensors")
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    proc, modules = imported(repos["model"], "status")
    assert "matches HEAD" in proc.stdout, proc.stdout + proc.stderr
    assert heavy_in(modules, NO_TENSOR_BYTES) == []


def test_the_probe_sees_lazy_imports(repos, tmp_path):
    """Positive controls: the probe reports a module imported late, inside a command. Reading commits imports
    zstandard; comparing tensor values (a changed tensor in the working checkpoint) imports numpy."""
    proc, modules = imported(repos["model"], "log")
    assert proc.returncode == 0 and "zstandard" in modules
    repo = make_repo(tmp_path / "changed")
    write_model(tmp_path / "changed" / "model.safetensors", seed=0)
    repo.commit(str(tmp_path / "changed" / "model.safetensors"), message="first")
    write_model(tmp_path / "changed" / "model.safetensors", seed=1)
    proc, modules = imported(str(tmp_path / "changed"), "diff")
    assert proc.returncode == 0 and "encoder.weight" in proc.stdout, proc.stdout + proc.stderr
    assert "numpy" in modules


def test_a_committed_pt_file_is_listed_without_torch(tmp_path):
    """A `.pt` state_dict is committed by mlvc's own reader; status and log of it import no torch."""
    torch = pytest.importorskip("torch")
    repo = make_repo(tmp_path / "pt")
    path = tmp_path / "pt" / "model.pt"
    torch.save({"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.zeros(3)}, str(path))
    repo.commit(str(path), message="a .pt file")
    for args in (["status"], ["log"], ["show", "HEAD"]):
        proc, modules = imported(str(tmp_path / "pt"), *args)
        assert proc.returncode == 0, proc.stderr
        assert "torch" not in modules, f"mlvc {' '.join(args)} imported torch"


def test_commit_and_checkout_import_no_more_than_they_use(tmp_path):
    """A commit and a checkout of a checkpoint with small tensors (bundled) and a large one import numpy, but not
    its masked arrays (np.unique imports numpy.ma: 10 ms a command), nor pyarrow, torch or tabulate."""
    repo = make_repo(tmp_path / "r")
    write_model(tmp_path / "r" / "model.safetensors")
    proc, modules = imported(repo.root, "commit", "model.safetensors", "-m", "first")
    assert proc.returncode == 0, proc.stderr
    assert "numpy" in modules  # the positive control: the probe sees what the commit imported
    proc2, modules2 = imported(repo.root, "checkout", "HEAD", "--output", str(tmp_path / "out"))
    assert proc2.returncode == 0, proc2.stderr
    with open(tmp_path / "out" / "model.safetensors", "rb") as a, open(tmp_path / "r" / "model.safetensors", "rb") as b:
        assert a.read() == b.read()
    for m in (modules, modules2):
        assert heavy_in(m, ("numpy.ma", "pyarrow", "torch", "tabulate")) == []
