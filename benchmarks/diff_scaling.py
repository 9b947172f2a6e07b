"""Diff scaling: a diff costs time in proportion to what changed, not to the size of the model.

Two synthetic fp32 checkpoints with the same layer shape, a large one (32 layers, 2 GiB) and a small one
(one layer, 100 MiB), are each committed twice; between the two commits one tensor changes in every element
(model.layers.0.attn.w, 16 MiB, the same tensor in both models). Timed on each, --repeat times (default 7;
best and median reported):

- `diff`: Repo.diff("HEAD~1", "HEAD");
- baseline, in the same run: decoding every chunk of both commits, the least a diff that did not skip
  equal chunks would have to do (`decode all`).

Every timed run is its own fresh process (mlvc imported and the repository opened before the clock starts),
so no run is served from what an earlier one, or the commits, left in memory: the delta-base cache
(`core.cache_mb`) of a process that just committed or decoded the store would otherwise hold most of the
small model and make its baseline look cheap. What persists between runs is on disk: the page cache (the
store was just written, so reads are warm for both sizes) and the chunk-norm cache that the first diff
writes (docs/diff.md), which is why the first diff run is shown on its own.

    python benchmarks/diff_scaling.py                 # builds the models in a temp folder, removes it after
    python benchmarks/diff_scaling.py --dir /big/disk --keep --layers 32
    python benchmarks/diff_scaling.py --layers 2 --repeat 2   # a quick check that it runs

Needs about 3x the large model's size in free disk (the file and the store). Prints a table and writes
benchmarks/out/diff_scaling.json (--out to change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mlvc.formats import safetensors as st  # noqa: E402
from mlvc.repo import Repo  # noqa: E402
from mlvc.util import human_bytes  # noqa: E402

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


def build(folder: str, layers: int, seed: int) -> dict:
    """A repository in `folder` with the model committed twice (the second time with CHANGED changed)."""
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
    return {"file_bytes": size, "tensors": len(spec(layers)), "changed_bytes": changed,
                  "write_s": t1 - t0, "first_commit_s": t2 - t1, "second_commit_s": t3 - t2}


# One timed operation in a fresh process: imports and Repo() happen before the clock starts, so the time is
# the operation's own, with nothing decoded in memory yet. Prints one JSON line.
CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[3])
import mlvc.ops.diff  # noqa: F401  (imported before the clock, as a long-lived process would have it)
from mlvc.repo import Repo
op, folder = sys.argv[1], sys.argv[2]
repo = Repo(folder)
t0 = time.perf_counter()
if op == "diff":
    d = repo.diff("HEAD~1", "HEAD")
    seconds = time.perf_counter() - t0
    changed = [t for t in d.tensors if t.status != "unchanged"]
    out = {"changed": [t.name for t in changed], "rel_change": changed[0].rel_change if changed else None,
           "cosine": changed[0].cosine if changed else None}
else:
    with repo.pipeline() as pipe:
        for rev in ("HEAD~1", "HEAD"):
            m = repo.read_manifest(repo.read_commit(repo.resolve(rev)).manifest)
            for t in m.tensors().values():
                for _chunk in pipe.read(t.chunks):
                    pass
    seconds = time.perf_counter() - t0
    out = {}
out["seconds"] = seconds
print(json.dumps(out))
"""


def fresh(op: str, folder: str) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, op, folder, ROOT], capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"{op} child failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def time_diff(folder: str, repeat: int) -> tuple[list[float], dict]:
    """`repeat` diffs, each in a fresh process."""
    outs = [fresh("diff", folder) for _ in range(repeat)]
    changed = outs[-1]["changed"]
    assert changed == [CHANGED], changed
    return [o["seconds"] for o in outs], {"changed_tensors": len(changed), "rel_change": outs[-1]["rel_change"],
                                          "cosine": outs[-1]["cosine"]}


def time_decode_all(folder: str, repeat: int) -> list[float]:
    """The baseline, `repeat` times, each in a fresh process (never from a warm in-process cache)."""
    return [fresh("decode", folder)["seconds"] for _ in range(repeat)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=None, help="Where to build the repositories (default: a temp folder).")
    ap.add_argument("--keep", action="store_true", help="Keep the repositories.")
    ap.add_argument("--layers", type=int, default=32, help="Layers of the large model (64 MiB each).")
    ap.add_argument("--repeat", type=int, default=7, help="timed runs of the diff and of the baseline (each a "
                    "fresh process); default 7")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "out", "diff_scaling.json"))
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="mlvc-diff-scaling-", dir=args.dir)
    results = []
    try:
        for label, layers, seed in (("small", 1, 10), ("large", args.layers, 20)):
            folder = os.path.join(base, label)
            info = build(folder, layers, seed)  # the timed runs below are fresh processes, not this one
            runs, check = time_diff(folder, args.repeat)
            decode_all = time_decode_all(folder, args.repeat)
            results.append({"model": label, "layers": layers, **info, "diff_s": runs, "diff_best_s": min(runs),
                            "diff_median_s": statistics.median(runs), "decode_all_s": decode_all,
                            "decode_all_best_s": min(decode_all), "decode_all_median_s": statistics.median(decode_all),
                            **check})
            print(f"{label}: {human_bytes(info['file_bytes'])}, diff best {min(runs) * 1e3:.0f} ms", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    small, large = results
    summary = {"size_ratio": large["file_bytes"] / small["file_bytes"],
               "diff_time_ratio": large["diff_median_s"] / small["diff_median_s"],
               "decode_all_ratio": large["decode_all_median_s"] / small["decode_all_median_s"]}
    from tabulate import tabulate

    rows = [[r["model"], human_bytes(r["file_bytes"]), r["tensors"], f"{r['changed_bytes'] / MiB:.0f} MiB",
             f"{r['diff_best_s'] * 1e3:.0f} ms", f"{r['diff_median_s'] * 1e3:.0f} ms", f"{r['diff_s'][0] * 1e3:.0f} ms",
             f"{r['decode_all_best_s']:.2f} s", f"{r['decode_all_median_s']:.2f} s"] for r in results]
    print(tabulate(rows, headers=["model", "size", "tensors", "changed", "diff best", "diff median", "diff 1st run",
                                  "decode all best", "decode all median"], tablefmt="github"))
    print(f"(each of the {args.repeat} runs of each column a fresh process)")
    print(f"\nsize x{summary['size_ratio']:.1f}: diff time x{summary['diff_time_ratio']:.2f}, "
          f"decode-all baseline x{summary['decode_all_ratio']:.1f}")
    out = {"benchmark": "diff_scaling", "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                                    "platform": platform.platform()},
           "changed_tensor": CHANGED, "repeat": args.repeat, "results": results, "summary": summary}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
