"""Diff scaling: a diff costs time in proportion to what changed, not to the size of the model.

Two synthetic fp32 checkpoints with the same layer shape, a large one (32 layers, >= 2 GB) and a small one
(one layer, ~100 MB), are each committed twice; between the two commits one tensor changes in every element
(model.layers.0.attn.w, 16 MiB, the same tensor in both models). Timed on each:

- `diff`: Repo.diff(HEAD~1, HEAD), run --repeat times (best and median; the first run included);
- baseline, in the same run: decoding every chunk of both commits, the least a diff that did not skip
  equal chunks would have to do (`decode all`).

    python benchmarks/diff_scaling.py                 # builds the models in a temp folder, removes it after
    python benchmarks/diff_scaling.py --dir /big/disk --keep --layers 32

Needs about 3x the large model's size in free disk (the file and the store). Prints a table and writes
benchmarks/out/diff_scaling.json. Page cache: the store was just written, so reads are warm for both sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mlvc.formats import safetensors as st  # noqa: E402
from mlvc.repo import Repo  # noqa: E402

MiB = 1 << 20
ATTN = 4 * MiB  # elements: 16 MiB of fp32
MLP = 12 * MiB  # elements: 48 MiB
EMBED = 9 * MiB  # elements: 36 MiB
CHANGED = "model.layers.0.attn.w"


def spec(layers: int) -> list[tuple[str, int]]:
    out = [("model.embed.w", EMBED)]
    for i in range(layers):
        out += [(f"model.layers.{i}.attn.w", ATTN), (f"model.layers.{i}.mlp.w", MLP)]
    return out


def write_model(path: str, tensors: list[tuple[str, int]], seed: int) -> int:
    """Stream a safetensors file of random fp32 tensors (never the whole model in memory)."""
    layout = st.build_layout([(name, "F32", [n], 4 * n) for name, n in tensors])
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(layout.header_bytes)
        for _name, n in tensors:
            f.write(rng.standard_normal(n, dtype=np.float32).tobytes())
    return os.path.getsize(path)


def change_tensor(path: str, name: str, seed: int) -> int:
    """Rewrite one tensor in place: every element moves by a small step."""
    with open(path, "r+b") as f:
        layout = st.read_layout(f, path)
        span = next(t for t in layout.tensors if t.name == name)
        f.seek(layout.data_start + span.begin)
        old = np.frombuffer(f.read(span.nbytes), dtype="<f4")
        new = old + np.random.default_rng(seed).standard_normal(old.size, dtype=np.float32) * np.float32(1e-3)
        f.seek(layout.data_start + span.begin)
        f.write(new.astype("<f4").tobytes())
        f.flush()
        os.fsync(f.fileno())
    return span.nbytes


def build(folder: str, layers: int, seed: int) -> tuple[Repo, dict]:
    os.makedirs(folder)
    repo = Repo.init(folder)
    path = os.path.join(folder, "model.safetensors")
    t0 = time.perf_counter()
    size = write_model(path, spec(layers), seed)
    t1 = time.perf_counter()
    repo.commit(paths=[path], message="first")
    t2 = time.perf_counter()
    changed = change_tensor(path, CHANGED, seed + 1)
    repo.commit(paths=[path], message=f"change {CHANGED}")
    t3 = time.perf_counter()
    return repo, {"file_bytes": size, "tensors": len(spec(layers)), "changed_bytes": changed,
                  "write_s": t1 - t0, "first_commit_s": t2 - t1, "second_commit_s": t3 - t2}


def time_diff(repo: Repo, repeat: int) -> tuple[list[float], dict]:
    runs = []
    d = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        d = repo.diff("HEAD~1", "HEAD")
        runs.append(time.perf_counter() - t0)
    changed = [t for t in d.tensors if t.status != "unchanged"]
    assert [t.name for t in changed] == [CHANGED], [t.name for t in changed]
    t = changed[0]
    return runs, {"changed_tensors": len(changed), "rel_change": t.rel_change, "cosine": t.cosine}


def time_decode_all(repo: Repo) -> float:
    t0 = time.perf_counter()
    with repo.pipeline() as pipe:
        for rev in ("HEAD~1", "HEAD"):
            m = repo.read_manifest(repo.read_commit(repo.resolve(rev)).manifest)
            for t in m.tensors().values():
                for _chunk in pipe.read(t.chunks):
                    pass
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=None, help="Where to build the repositories (default: a temp folder).")
    ap.add_argument("--keep", action="store_true", help="Keep the repositories.")
    ap.add_argument("--layers", type=int, default=32, help="Layers of the large model (64 MiB each).")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="mlvc-diff-scaling-", dir=args.dir)
    results = []
    try:
        for label, layers, seed in (("small", 1, 10), ("large", args.layers, 20)):
            repo, info = build(os.path.join(base, label), layers, seed)
            runs, check = time_diff(repo, args.repeat)
            decode_all = time_decode_all(repo)
            results.append({"model": label, "layers": layers, **info, "diff_s": runs, "diff_best_s": min(runs),
                            "diff_median_s": statistics.median(runs), "decode_all_s": decode_all, **check})
            print(f"{label}: {info['file_bytes'] / 1e9:.2f} GB, diff best {min(runs) * 1e3:.0f} ms", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    small, large = results
    summary = {"size_ratio": large["file_bytes"] / small["file_bytes"],
               "diff_time_ratio": large["diff_median_s"] / small["diff_median_s"],
               "decode_all_ratio": large["decode_all_s"] / small["decode_all_s"]}
    from tabulate import tabulate

    rows = [[r["model"], f"{r['file_bytes'] / 1e9:.2f} GB", r["tensors"], f"{r['changed_bytes'] / MiB:.0f} MiB",
             f"{r['diff_best_s'] * 1e3:.0f} ms", f"{r['diff_median_s'] * 1e3:.0f} ms", f"{r['diff_s'][0] * 1e3:.0f} ms",
             f"{r['decode_all_s']:.2f} s"] for r in results]
    print(tabulate(rows, headers=["model", "size", "tensors", "changed", "diff best", "diff median", "diff 1st run",
                                  "decode all (baseline)"], tablefmt="github"))
    print(f"\nsize x{summary['size_ratio']:.1f}: diff time x{summary['diff_time_ratio']:.2f}, "
          f"decode-all baseline x{summary['decode_all_ratio']:.1f}")
    out = {"benchmark": "diff_scaling", "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                                    "platform": platform.platform()},
           "changed_tensor": CHANGED, "repeat": args.repeat, "results": results, "summary": summary}
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "diff_scaling.json"), "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {os.path.join(folder, 'diff_scaling.json')}")


if __name__ == "__main__":
    main()
