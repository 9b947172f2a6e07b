"""Push and clone of a real fine-tune series through a local S3 API server: bytes, requests, time.

The series is benchmarks/make_series.py's (all-MiniLM-L6-v2 fine-tuned with AdamW, a checkpoint every 10
steps). The S3 server is moto's ThreadedMotoServer on loopback (tests/s3server.py; `pip install -e '.[test]'`).

Measured in one run:
  - mlvc: commit checkpoints 0..N-2, `push` (bytes sent against the raw size of the checkpoints, requests,
    time); a second `push` with nothing new; `clone` into a new repository (bytes received, requests, time,
    and every commit checked out byte for byte against its checkpoint); then commit checkpoint N-1 and
    `push` again: bytes sent against that checkpoint's stored size;
  - the baseline: uploading the same checkpoint files whole, one PutObject each (what `aws s3 sync` of the
    checkpoint folder sends), then the one new file.

Run: python benchmarks/remote.py [--series DIR] [--kind fp32] [--json benchmarks/out/remote.json]
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from tabulate import tabulate  # noqa: E402

from mlvc.repo import Repo  # noqa: E402


def checkpoints(series: str, kind: str) -> list[str]:
    paths = glob.glob(os.path.join(series, kind, "ckpt-*", "model.safetensors"))
    paths.sort(key=lambda p: int(p.split("ckpt-")[1].split(os.sep)[0]))
    if len(paths) < 3:
        sys.exit(f"need at least 3 checkpoints under {series}/{kind}: run benchmarks/make_series.py")
    return paths


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def stored(repo: Repo, ids) -> int:
    return sum(repo.store.stored_size(o) for o in ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--series", default=os.path.join(HERE, "out", "series"))
    ap.add_argument("--kind", default="fp32")
    ap.add_argument("--json", default=os.path.join(HERE, "out", "remote.json"))
    args = ap.parse_args()
    paths = checkpoints(args.series, args.kind)
    raw = [os.path.getsize(p) for p in paths]

    import boto3

    from s3server import make_bucket, s3_server

    work = tempfile.mkdtemp(prefix="mlvc-remote-bench-")
    rows = []
    out: dict = {"series": args.series, "kind": args.kind, "checkpoints": len(paths), "raw_bytes": raw}
    try:
        with s3_server() as endpoint:
            make_bucket(endpoint, "bench")
            url = "s3://bench/minilm"

            # -- baseline: every checkpoint file whole, one PutObject each ---------------------------------
            s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            t = time.perf_counter()
            for i, p in enumerate(paths[:-1]):
                with open(p, "rb") as f:
                    s3.put_object(Bucket="bench", Key=f"files/ckpt-{i}/model.safetensors", Body=f)
            base_t = time.perf_counter() - t
            t = time.perf_counter()
            with open(paths[-1], "rb") as f:
                s3.put_object(Bucket="bench", Key=f"files/ckpt-{len(paths) - 1}/model.safetensors", Body=f)
            base_t1 = time.perf_counter() - t

            # -- mlvc ---------------------------------------------------------------------------------------
            a = Repo.init(os.path.join(work, "a"))
            target = os.path.join(a.root, "model.safetensors")
            commits = []
            for i, p in enumerate(paths[:-1]):
                shutil.copyfile(p, target)
                commits.append(a.commit(target, message=f"ckpt {i}").commit.id)
            a.remote_add("origin", url, endpoint=endpoint)
            t = time.perf_counter()
            first = a.push()
            push_t = time.perf_counter() - t
            again = a.push()
            b = Repo.init(os.path.join(work, "b"))
            t = time.perf_counter()
            cl = b.clone(url, endpoint=endpoint)
            clone_t = time.perf_counter() - t
            for i, cid in enumerate(commits):  # every commit, byte for byte
                folder = os.path.join(work, f"check-{i}")
                b.checkout(cid, output=folder)
                assert sha256(os.path.join(folder, "model.safetensors")) == sha256(paths[i]), i
                shutil.rmtree(folder)
            before = set(a.store.ids())
            shutil.copyfile(paths[-1], target)
            a.commit(target, message=f"ckpt {len(paths) - 1}")
            new_stored = stored(a, set(a.store.ids()) - before)
            t = time.perf_counter()
            inc = a.push()
            inc_t = time.perf_counter() - t
            b.pull()
            assert sha256(os.path.join(b.root, "model.safetensors")) == sha256(paths[-1])

            n = len(paths) - 1
            raw_n = sum(raw[:-1])
            rows = [
                ["files whole (PutObject each)", f"{n} ckpts", raw_n, f"{1.0:.3f}", n, f"{base_t:.2f}"],
                ["mlvc push", f"{n} ckpts", first.bytes_sent, f"{first.bytes_sent / raw_n:.3f}", first.requests,
                 f"{push_t:.2f}"],
                ["mlvc push, nothing new", "-", again.bytes_sent, f"{again.bytes_sent / raw_n:.3f}", again.requests,
                 "-"],
                ["mlvc clone (received)", f"{n} ckpts", cl.fetch.bytes_received,
                 f"{cl.fetch.bytes_received / raw_n:.3f}", cl.fetch.requests, f"{clone_t:.2f}"],
                ["file whole (PutObject)", "+1 ckpt", raw[-1], f"{1.0:.3f}", 1, f"{base_t1:.2f}"],
                ["mlvc push", "+1 ckpt", inc.bytes_sent, f"{inc.bytes_sent / raw[-1]:.3f}", inc.requests,
                 f"{inc_t:.2f}"],
            ]
            out.update({
                "baseline": {"bytes": raw_n, "requests": n, "seconds": base_t, "one_more_bytes": raw[-1],
                             "one_more_seconds": base_t1},
                "push": {**first.to_json(), "seconds": push_t},
                "push_again": again.to_json(),
                "clone": {**cl.fetch.to_json(), "seconds": clone_t},
                "push_one_more": {**inc.to_json(), "seconds": inc_t, "checkpoint_stored_bytes": new_stored,
                                  "checkpoint_raw_bytes": raw[-1]},
            })
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(tabulate(rows, headers=["transfer", "what", "bytes", "of raw", "requests", "seconds"],
                   intfmt=","))
    print(f"\nlast push: {out['push_one_more']['bytes_sent']:,} bytes sent for a checkpoint stored in "
          f"{new_stored:,} bytes ({out['push_one_more']['bytes_sent'] / new_stored:.3f} of its stored size; "
          f"raw {raw[-1]:,})")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
