"""mlvc.Tracker on CUDA: the training-loop overhead benchmark and a bit-exactness check, in one short run.

Needs only `pip install -e .` and torch (no transformers); on a machine without CUDA it runs the same on the
CPU, smaller, so that it can be checked anywhere. Three parts:

1. copy: the training thread's cost of a snapshot of the model and AdamW state: plain `.cpu()` of every tensor
   against non-blocking copies into reused pinned buffers (a worker thread's snapshot) and into shared memory
   page-locked with cudaHostRegister (a worker process's snapshot, trackworker.SharedSnapshot), each timed to
   the end of the copy (synchronized), median of 5.
2. overhead: benchmarks/training_overhead.py's loop (a MiniLM-sized encoder, AdamW) with no tracker, the
   background tracker (worker process, then worker thread; pinned buffers), the background tracker with
   unpinned buffers, and synchronous commits.
   The commit interval is chosen from the measured step time (about --interval-s seconds between commits,
   at least every 5 steps), because a GPU step takes milliseconds.
3. exact: a model with fp32 and bf16 tensors on CUDA committed in the background (worker process and worker
   thread) while the loop keeps changing the weights right after each `step()` returns; every commit loaded
   back to CUDA must be bit-equal to a clone taken at its step.

    python scripts/gpu_tracker_check.py            # prints a table; writes $OUT/gpu_tracker_check.json if $OUT is set
    python scripts/gpu_tracker_check.py --quick    # a few steps (the CPU fallback uses this size by default)

Exit status 1 if the exactness check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import torch  # noqa: E402
import training_overhead as bench  # noqa: E402

from mlvc import Tracker  # noqa: E402
from mlvc.repo import Repo  # noqa: E402
from mlvc.trackworker import SharedSnapshot, snapshot_layout  # noqa: E402


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def copy_check(device: str, layers: int) -> dict:
    model, opt = bench.build(device, layers)
    for _ in range(2):
        bench.train_step(model, opt, 4, 64, device)  # the optimizer state exists
    tensors = list(model.state_dict().values())
    tensors += [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.dim()]
    nbytes = sum(t.numel() * t.element_size() for t in tensors)

    def plain():
        return [t.cpu() for t in tensors]

    pinned = [torch.empty(t.shape, dtype=t.dtype, pin_memory=device == "cuda") for t in tensors]

    def into_pinned():
        for b, t in zip(pinned, tensors, strict=True):
            b.copy_(t, non_blocking=device == "cuda")

    shared = SharedSnapshot(snapshot_layout([[(str(i), t) for i, t in enumerate(tensors)]]), device == "cuda",
                            tempfile.gettempdir())
    views = [shared.views[(0, str(i))] for i in range(len(tensors))]

    def into_shared():
        for b, t in zip(views, tensors, strict=True):
            b.copy_(t, non_blocking=shared.pinned)

    out: dict = {"bytes": nbytes, "shared_registered": shared.pinned}
    for name, fn in (("plain .cpu()", plain), ("reused pinned, non-blocking", into_pinned),
                     ("shared memory, registered", into_shared)):
        times = []
        for _ in range(6):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times[1:])
        out[name] = {"median_s": med, "GiB_per_s": nbytes / med / 2**30}
    views.clear()  # the views of the segment go before it is unmapped
    shared.free()
    return out


def overhead(device: str, quick: bool, interval_s: float, layers: int, workdir: str | None) -> dict:
    batch, seq = (32, 128) if device == "cuda" else (4, 64)
    model, opt = bench.build(device, layers)
    for _ in range(3):
        bench.train_step(model, opt, batch, seq, device)
    t0 = time.perf_counter()
    for _ in range(5):
        bench.train_step(model, opt, batch, seq, device)
    step_s = (time.perf_counter() - t0) / 5
    every = max(5, math.ceil(interval_s / step_s))
    steps = 2 * every if quick else 4 * every
    del model, opt
    results = []
    for pin in (True, False):
        modes = ["none", "background", "thread", "sync"] if pin else ["background"]
        args = bench.parser().parse_args(["--device", device, "--every", str(every), "--steps", str(steps),
                                          "--warmup", "3", "--rounds", "1" if quick else "2", "--batch", str(batch),
                                          "--seq", str(seq), "--layers", str(layers), "--modes", *modes]
                                         + (["--workdir", workdir] if workdir else []))
        if not pin:  # the same background tracker, copying into ordinary (pageable) host memory
            args.no_pin = True
            row = bench.measure(args)["rows"][0]
            row["mode"] = "background, unpinned"
            base = next(r for r in results[0]["rows"] if r["mode"] == "none")
            row["overhead_pct"] = 100.0 * (row["median_step_s"] / base["median_step_s"] - 1.0)
            row["mean_overhead_pct"] = 100.0 * (row["mean_step_s"] / base["mean_step_s"] - 1.0)
            results[0]["rows"].append(row)
        else:
            results.append(bench.measure(args))
    out = results[0]
    out["calibrated_step_s"] = step_s
    return out


def exact(device: str, workdir: str | None) -> dict:
    runs = {w: exact_run(device, workdir, w) for w in ("process", "thread")}
    bad = [f"{w}: {m}" for w, r in runs.items() for m in r["mismatches"]]
    return {"commits": sum(r["commits"] for r in runs.values()), "mismatches": bad,
            "ok": all(r["ok"] for r in runs.values()), "runs": runs}


def exact_run(device: str, workdir: str | None, worker: str) -> dict:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 256)).to(device)
    model[2].to(torch.bfloat16)
    expected = {}
    with tempfile.TemporaryDirectory(prefix="mlvc-gpu-exact-", dir=workdir) as tmp:
        repo = Repo.init(tmp)
        with Tracker(repo, "exact", every=1, background=True, start=None, max_queue_mb=64, worker=worker) as t:
            for step in range(1, 9):
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(torch.randn_like(p) * 0.01)
                expected[step] = {k: v.clone() for k, v in model.state_dict().items()}
                t.step(model, step=step)
                with torch.no_grad():  # the loop goes on at once: the snapshot must not see this
                    for p in model.parameters():
                        p.mul_(1.5)
        bad = []
        for tc in t.commits:
            got = repo.load(tc.commit, path="model.safetensors")
            for k, v in expected[tc.step].items():
                g = got[k].to(device)
                if g.dtype != v.dtype or not torch.equal(g.view(torch.uint8), v.contiguous().view(torch.uint8)):
                    bad.append(f"step {tc.step} {k}")
        return {"commits": len(t.commits), "mismatches": bad, "ok": not bad and len(t.commits) == 8}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--interval-s", type=float, default=None, help="seconds between commits (default 1.5, CPU 0)")
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    quick = args.quick or device == "cpu"
    layers = 6 if device == "cuda" else 1
    interval = args.interval_s if args.interval_s is not None else (1.5 if device == "cuda" else 0.0)
    t0 = time.perf_counter()
    res = {"device": device, "device_name": bench.device_name(device), "torch": torch.__version__}
    res["copy"] = copy_check(device, layers)
    res["overhead"] = overhead(device, quick, interval, layers, args.workdir)
    res["exact"] = exact(device, args.workdir)
    res["wall_s"] = time.perf_counter() - t0

    c = res["copy"]
    print(f"device: {device} ({res['device_name']}), torch {res['torch']}")
    print(f"snapshot copy of model + AdamW state ({c['bytes'] / 2**20:.0f} MiB):")
    for name in ("plain .cpu()", "reused pinned, non-blocking", "shared memory, registered"):
        print(f"  {name:<30} {c[name]['median_s'] * 1e3:9.1f} ms  {c[name]['GiB_per_s']:7.2f} GiB/s")
    print(bench.table(res["overhead"]))
    e = res["exact"]
    print(f"shared memory page-locked with cudaHostRegister: {c['shared_registered']}")
    print(f"exact: {e['commits']} background commits (worker process and thread) from {device}, loaded back "
          f"to {device}: "
          f"{'bit-equal' if e['ok'] else 'MISMATCH ' + ', '.join(e['mismatches'][:5])}")
    print(f"wall: {res['wall_s']:.1f} s")
    out = os.environ.get("OUT")
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "gpu_tracker_check.json"), "w") as f:
            json.dump(res, f, indent=2)
    return 0 if e["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
