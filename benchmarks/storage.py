"""Storage and speed of mlvc on real checkpoint series, against the alternatives, measured in one run.

Series come from benchmarks/make_series.py (fine-tunes of all-MiniLM-L6-v2). For each series:
  stored/raw for: full copies (what git-lfs and DVC store), zstd -1 and -3 of each file, ZipNN (the real
  package: byte grouping + entropy coding per tensor), content-defined-chunking dedupe of the files with
  ~64 KiB chunks (what Xet does; fastcdc), raw and zstd-compressed chunks, and mlvc;
  commit and checkout time per checkpoint (each in a fresh process) against `zstd -1 -T0` and `zstd -d` of the
  same file, and peak RSS of the mlvc processes.

Speed table: the commit columns (mlvc and `zstd -1 -T0`) are means over checkpoints 1..N-1, the delta commits
of a training run (checkpoint 0's first commit, which stores full objects, is in the JSON and the per-checkpoint
line); the checkout columns (mlvc and `zstd -d`) are means over all N checkpoints. The headers name the sets.

Run: python benchmarks/storage.py [--series DIR] [--json benchmarks/out/storage.json]
Needs: pip install -e '.[bench]' (fastcdc, zipnn), the zstd binary.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import zstandard

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from mlvc.dtypes import DTYPES  # noqa: E402
from mlvc.formats.safetensors import read_layout  # noqa: E402

MiB = 1 << 20
ZIPNN_DTYPES = ("F32", "BF16", "F16")  # the float types ZipNN byte-groups (by the same names as torch's)

CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r})
from mlvc.repo import Repo
op, repo_dir, arg = sys.argv[1], sys.argv[2], sys.argv[3]
repo = Repo(repo_dir)
t = time.perf_counter()
if op == "commit":
    r = repo.commit(message=arg, paths=[repo_dir + "/model.safetensors"], allow_empty=True)
    out = {{"new_bytes": r.new_bytes, "raw_bytes": r.raw_bytes}}
else:
    repo.checkout(arg, output=sys.argv[4], force=True)
    out = {{}}
out["seconds"] = time.perf_counter() - t
# VmHWM (in KiB), not ru_maxrss: Linux carries ru_maxrss across exec, so a child would report its parent's peak
out["peak_rss_mib"] = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
print(json.dumps(out))
"""


def files_of(series_dir: str) -> list[str]:
    paths = glob.glob(os.path.join(series_dir, "ckpt-*", "model.safetensors"))
    return sorted(paths, key=lambda p: int(os.path.basename(os.path.dirname(p)).split("-")[1]))


def zstd_size(paths: list[str], level: int) -> int:
    c = zstandard.ZstdCompressor(level=level, threads=-1)
    total = 0
    for p in paths:
        with open(p, "rb") as f:
            total += len(c.compress(f.read()))
    return total


def zipnn_size(paths: list[str]) -> int:
    """ZipNN per tensor (the header stored as it is; tensors of other dtypes or under 1 KiB stored raw)."""
    from zipnn import ZipNN

    zippers = {}
    total = 0
    for p in paths:
        with open(p, "rb") as f:
            layout = read_layout(f, p)
            data = f.read()
        total += layout.data_start
        for t in layout.tensors:
            raw = data[t.begin : t.end]
            if t.dtype not in ZIPNN_DTYPES or len(raw) < 1024:
                total += len(raw)
                continue
            name = DTYPES[t.dtype].torch
            z = zippers.setdefault(name, ZipNN(input_format="byte", bytearray_dtype=name, threads=2))
            total += min(len(z.compress(raw)), len(raw))
    return total


def cdc_sizes(paths: list[str]) -> tuple[int, int]:
    from fastcdc import fastcdc

    seen = set()
    raw = comp = 0
    c = zstandard.ZstdCompressor(level=1)
    for p in paths:
        with open(p, "rb") as f:
            data = f.read()
        for ch in fastcdc(data, min_size=16384, avg_size=65536, max_size=262144, fat=True, hf=None):
            key = hash(ch.data)
            if key in seen:
                continue
            seen.add(key)
            raw += ch.length
            comp += min(len(c.compress(ch.data)), ch.length)
    return raw, comp


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def du(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(b, f)) for b, _, fs in os.walk(folder) for f in fs)


def run_mlvc(paths: list[str], work: str) -> dict:
    repo = os.path.join(work, "repo")
    os.makedirs(repo)
    subprocess.run([sys.executable, "-m", "mlvc", "init", repo], check=True, cwd=ROOT, capture_output=True)
    script = CHILD.format(root=ROOT)
    commits, checkouts = [], []
    target = os.path.join(repo, "model.safetensors")
    for i, p in enumerate(paths):
        shutil.copyfile(p, target)
        r = subprocess.run([sys.executable, "-c", script, "commit", repo, f"ckpt {i}"], capture_output=True, text=True)
        if r.returncode:
            sys.exit(r.stderr)
        res = json.loads(r.stdout)
        zt = timed(["zstd", "-1", "-T0", "-q", "-f", target, "-o", os.path.join(work, "z.zst")])
        res["zstd_seconds"] = zt
        commits.append(res)
    for i, p in enumerate(paths):
        out = os.path.join(work, f"out-{i}")
        rev = f"HEAD~{len(paths) - 1 - i}"
        r = subprocess.run([sys.executable, "-c", script, "checkout", repo, rev, out], capture_output=True, text=True)
        if r.returncode:
            sys.exit(r.stderr)
        res = json.loads(r.stdout)
        with open(os.path.join(out, "model.safetensors"), "rb") as a, open(p, "rb") as b:
            res["exact"] = a.read() == b.read()
        shutil.copyfile(p, os.path.join(work, "ref.safetensors"))
        subprocess.run(["zstd", "-1", "-T0", "-q", "-f", os.path.join(work, "ref.safetensors"), "-o",
                        os.path.join(work, "ref.zst")], check=True)
        res["zstd_d_seconds"] = timed(["zstd", "-d", "-q", "-f", os.path.join(work, "ref.zst"), "-o",
                                       os.path.join(work, "ref.out")])
        shutil.rmtree(out)
        checkouts.append(res)
    return {"stored": du(os.path.join(repo, ".mlvc", "objects")), "commits": commits, "checkouts": checkouts}


def main() -> None:
    from tabulate import tabulate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", default=os.path.join(HERE, "out", "series"))
    ap.add_argument("--json", default=os.path.join(HERE, "out", "storage.json"))
    ap.add_argument("--only", nargs="*", help="series names (fp32 bf16 frozen)")
    args = ap.parse_args()
    names = args.only or sorted(os.listdir(args.series))
    results = {}
    size_rows, speed_rows = [], []
    for name in names:
        paths = files_of(os.path.join(args.series, name))
        if not paths:
            continue
        raw = sum(os.path.getsize(p) for p in paths)
        work = tempfile.mkdtemp(prefix=f"mlvc-bench-{name}-")
        try:
            m = run_mlvc(paths, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        cdc_raw, cdc_z = cdc_sizes(paths)
        sizes = {"full copies (git-lfs, DVC)": raw, "zstd -1 per file": zstd_size(paths, 1),
                 "zstd -3 per file": zstd_size(paths, 3), "ZipNN per tensor": zipnn_size(paths),
                 "CDC 64 KiB dedupe (Xet-like)": cdc_raw, "CDC dedupe + zstd-1 (Xet-like)": cdc_z, "mlvc": m["stored"]}
        results[name] = {"checkpoints": len(paths), "raw_bytes": raw, "stored": sizes, "mlvc": m}
        for method, size in sizes.items():
            size_rows.append([name, method, f"{size / MiB:.1f}", f"{size / raw:.3f}"])
        n = len(paths)
        commit_set = list(range(1, n)) or [0]  # the delta commits (a one-checkpoint series: its only commit)
        c = [m["commits"][i] for i in commit_set]
        k = m["checkouts"]
        mean = lambda rows, key: sum(x[key] for x in rows) / len(rows)  # noqa: E731
        means = {"commit_checkpoints": commit_set, "checkout_checkpoints": list(range(n)),
                 "mlvc_commit_s": mean(c, "seconds"), "zstd_1_s": mean(c, "zstd_seconds"),
                 "mlvc_checkout_s": mean(k, "seconds"), "zstd_d_s": mean(k, "zstd_d_seconds"),
                 "first_commit_s": m["commits"][0]["seconds"]}
        results[name]["means"] = means
        mib = os.path.getsize(paths[0]) / MiB
        speed_rows.append([name, n, f"{mib:.1f}", f"{means['mlvc_commit_s']:.3f}", f"{means['zstd_1_s']:.3f}",
                           f"{means['mlvc_checkout_s']:.3f}", f"{means['zstd_d_s']:.3f}",
                           f"{max(x['peak_rss_mib'] for x in m['commits'] + k):.0f}", all(x["exact"] for x in k)])
        print(f"{name} per checkpoint: commit s " + ", ".join(f"{x['seconds']:.2f}" for x in m["commits"])
              + "; checkout s " + ", ".join(f"{x['seconds']:.2f}" for x in k), file=sys.stderr)
    print(tabulate(size_rows, headers=["series", "method", "stored MiB", "stored/raw"]))
    print()
    print(tabulate(speed_rows, headers=["series", "ckpts", "MiB each", "mlvc commit s\n(mean, ckpts 1..N-1)",
                                        "zstd -1 -T0 s\n(mean, ckpts 1..N-1)", "mlvc checkout s\n(mean, all N)",
                                        "zstd -d s\n(mean, all N)", "peak RSS MiB", "byte-exact"]))
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
