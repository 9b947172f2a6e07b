"""Ctrl-C during a long `mlvc commit`: one line on stderr, exit 130, and nothing half-done (fsck clean, HEAD
where it was or on a complete new commit, the next commit works)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import save_file

from mlvc.repo import Repo

SIZE = 100 << 20  # a ~100 MB checkpoint: long enough to be interrupted in the middle


def stored_bytes(repo: Repo) -> int:
    """Bytes under .mlvc (objects, packs, temp files): what a commit in progress has written so far."""
    total = 0
    for base, _, files in os.walk(repo.dir):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(base, name))
            except FileNotFoundError:  # a temp file renamed meanwhile
                pass
    return total


def write_checkpoint(path: str, seed: int) -> None:
    """Random float32 tensors (incompressible, so every chunk costs real work), SIZE bytes in all."""
    rng = np.random.default_rng(seed)
    n = SIZE // 4 // 8
    save_file({f"layer.{i}.weight": rng.standard_normal(n, dtype=np.float32) for i in range(8)}, path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two versions of the checkpoint, written once for every test here."""
    folder = tmp_path_factory.mktemp("ckpt")
    paths = [str(folder / f"v{i}.safetensors") for i in range(2)]
    for i, p in enumerate(paths):
        write_checkpoint(p, i)
    return paths


def interrupt_commit(root: str, after_bytes: int) -> subprocess.CompletedProcess:
    """Start `mlvc commit`, send SIGINT (Ctrl-C) once it has stored `after_bytes` (so the signal lands in the
    middle of the work, not during start-up), and wait for it."""
    repo = Repo(root)
    before = stored_bytes(repo)
    env = {**os.environ, "MLVC_AUTHOR": "tester", "MLVC_DEBUG": ""}
    proc = subprocess.Popen([sys.executable, "-m", "mlvc", "commit", "-m", "big"], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while stored_bytes(repo) < before + after_bytes and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("after_bytes", [1, 40 << 20], ids=["first chunk", "40 MiB stored"])
def test_ctrl_c_during_commit(tmp_path, checkpoints, after_bytes):
    root = str(tmp_path / "repo")
    repo = Repo.init(root)
    model = os.path.join(root, "model.safetensors")
    _copy(checkpoints[0], model)
    first = repo.commit(model, message="first").commit.id
    _copy(checkpoints[1], model)

    r = interrupt_commit(root, after_bytes)
    assert r.returncode == 130, f"the commit finished before the signal (rc {r.returncode}): {r.stderr}"
    assert r.stderr == "interrupted\n"  # one line: no traceback, no "Exception ignored", no bar left over
    assert r.stdout == ""

    repo = Repo(root)
    head = repo.head()
    # the ref moves last, after every object is durable: the interrupted commit either never moved it (the
    # signal landed in the work, as here) or moved it to a complete commit
    assert head == first or repo.read_commit(head).parents == [first]
    fsck = subprocess.run([sys.executable, "-m", "mlvc", "fsck", "--json"], cwd=root, capture_output=True,
                          text=True, timeout=300)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    if head == first:  # nothing left in the way: the same commit now goes through
        again = subprocess.run([sys.executable, "-m", "mlvc", "commit", "-m", "big"], cwd=root, capture_output=True,
                               text=True, timeout=300, env={**os.environ, "MLVC_AUTHOR": "tester"})
        assert again.returncode == 0, again.stderr
    repo = Repo(root)
    assert repo.log("HEAD")[0].parents == [first]
    out = str(tmp_path / "out")
    repo.checkout("HEAD", output=out)  # byte for byte
    with open(os.path.join(out, "model.safetensors"), "rb") as a, open(checkpoints[1], "rb") as b:
        assert a.read() == b.read()


def _copy(src: str, dst: str) -> None:
    with open(src, "rb") as a, open(dst + ".part", "wb") as b:
        while block := a.read(1 << 22):
            b.write(block)
    os.replace(dst + ".part", dst)
