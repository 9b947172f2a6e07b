"""What committing from a training loop costs the loop: step time with no tracker, with mlvc.Tracker committing
every few steps in the background, and with the same commits made synchronously (the baseline a loop calling
`repo.commit` pays).

The model is MiniLM-sized (the shape of all-MiniLM-L6-v2: 30522-token embedding, 6 encoder layers of width
384, 12 heads, FFN 1536; 22.7 M parameters, 87 MiB of fp32), written in plain torch so that nothing beyond torch
is needed (scripts/gpu_tracker_check.py runs the same loop on CUDA); it trains with AdamW on random token
batches for a 2-class head. Each mode runs `--steps` steps per round, rounds alternate the modes (none,
background, thread, sync, none, ...) so that a load change on a shared machine hits all of them, and the first
`--warmup` steps of each round are not timed. The overhead of a mode is its median (and mean) step time
against the median (mean) of "none" from the same run. A commit holds the model and, unless --no-state, the
optimizer and RNG states (3x the model's bytes). A step's time ends with `loss.item()` (a loop that logs its
loss waits for the step anyway), so on CUDA it includes the whole step.

The background tracker runs with `--priority` (the Tracker's worker_priority: a nice increment, idle, or 0) and
`--threads` encode threads (default: the Tracker's default), in a worker process (mode "background", the
Tracker's default) and in a worker thread (mode "thread"); `--also PRIORITY:THREADS[:WORKER] ...` adds more
background configurations to the same round-robin (e.g. `--also 0:1 10:1 idle:2 19:1:thread`), to compare
scheduling choices under the same load. Per mode the table gives the commits written (and skipped), the time
the training thread spent in the commit call (the snapshot, or the wait for a full queue), and the commit
latency: from the snapshot to the branch naming the commit. The load average is printed at the start and the end.

    python benchmarks/training_overhead.py                       # CPU, every 10 steps
    python benchmarks/training_overhead.py --steps 12 --rounds 1 --warmup 2 --layers 1   # quick check
    python benchmarks/training_overhead.py --also 0:1 10:1 idle:2  # scheduling choices, same run
    python benchmarks/training_overhead.py --device cuda --batch 32

Prints a table and writes benchmarks/out/training_overhead.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from mlvc import KeepPolicy, Tracker  # noqa: E402
from mlvc.repo import Repo  # noqa: E402
from mlvc.tracker import DEFAULT_PRIORITY, IDLE, default_encode_threads  # noqa: E402

MODES = ("none", "background", "thread", "sync")


class MiniLMShaped(torch.nn.Module):
    """A BERT-style encoder with all-MiniLM-L6-v2's shape, and a 2-class head on the first token."""

    def __init__(self, vocab: int = 30522, width: int = 384, layers: int = 6, heads: int = 12, ffn: int = 1536,
                 max_len: int = 512):
        super().__init__()
        self.tok = torch.nn.Embedding(vocab, width)
        self.pos = torch.nn.Embedding(max_len, width)
        layer = torch.nn.TransformerEncoderLayer(width, heads, ffn, dropout=0.1, activation="gelu",
                                                 batch_first=True, norm_first=False)
        self.encoder = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(width)
        self.head = torch.nn.Linear(width, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        h = self.encoder(self.tok(ids) + self.pos(pos))
        return self.head(self.norm(h[:, 0]))


def build(device: str, layers: int, seed: int = 0):
    torch.manual_seed(seed)
    model = MiniLMShaped(layers=layers).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    return model, opt


def train_step(model, opt, batch, seq: int, device: str) -> float:
    ids = torch.randint(0, 30522, (batch, seq), device=device)
    labels = (ids[:, 1] % 2).long()
    loss = torch.nn.functional.cross_entropy(model(ids), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def parse_config(text: str) -> tuple[str | int, int | None, str]:
    """"PRIORITY:THREADS[:WORKER]" (idle:2, 10:1, 0:auto:thread) as the Tracker's (worker_priority, threads,
    worker)."""
    prio, _, rest = text.partition(":")
    threads, _, worker = rest.partition(":")
    priority: str | int = prio if prio == IDLE else int(prio)
    return priority, None if threads in ("", "auto") else int(threads), worker or "process"


def label(priority: str | int, threads: int | None, worker: str) -> str:
    prio = "idle" if priority == IDLE else f"nice+{priority}" if priority else "normal"
    return f"{worker} {prio}/{threads or default_encode_threads()}t"


def modes_of(args) -> list[tuple[str, dict]]:
    """(name, Tracker arguments) per mode, in round-robin order; the first background one is "background"."""
    out: list[tuple[str, dict]] = []
    for mode in args.modes:
        if mode == "none":
            out.append((mode, {}))
        elif mode == "sync":
            out.append((mode, {"background": False}))
        else:  # "background": a worker process (the Tracker's default); "thread": a worker thread
            out.append((mode, {"background": True, "worker_priority": parse_config(args.priority)[0],
                               "threads": args.threads, "worker": "thread" if mode == "thread" else "process"}))
    for conf in args.also:
        priority, threads, worker = parse_config(conf)
        out.append((label(priority, threads, worker), {"background": True, "worker_priority": priority,
                                                       "threads": threads, "worker": worker}))
    return out


def run_round(mode: str, model, opt, args, repo: Repo, branch: str, conf: dict | None = None) -> dict:
    """One round of one mode: the step times after warm-up, the time the tracker calls took inside them, and
    (background) the time close() waited for the queue at the end."""
    tracker = None
    if conf is None:  # the mode's configuration from args
        conf = dict(modes_of(args)).get(mode, {})
    if mode != "none":
        keep = KeepPolicy(last=2) if args.keep_last else None
        tracker = Tracker(repo, branch, every=args.every, start=None, save_state=not args.no_state,
                          pin_memory=not args.no_pin, keep=keep, **conf)
    times, tracker_s, commit_calls = [], [], []
    for i in range(1, args.warmup + args.steps + 1):
        t0 = time.perf_counter()
        train_step(model, opt, args.batch, args.seq, args.device)
        t1 = time.perf_counter()
        took = tracker is not None and tracker.step(model, step=i, optimizer=opt)
        t2 = time.perf_counter()
        if i > args.warmup:
            times.append(t2 - t0)
            tracker_s.append(t2 - t1)
            if took:
                commit_calls.append(t2 - t1)
    close_s = 0.0
    commits, skipped, latencies, applied = 0, 0, [], ""
    if tracker is not None:
        t0 = time.perf_counter()
        tracker.close()
        close_s = time.perf_counter() - t0
        commits, skipped = len(tracker.commits), tracker.skipped
        latencies = [c.latency_s for c in tracker.commits]
        applied = tracker.applied_priority if tracker.background else ""
    return {"times": times, "tracker_s": tracker_s, "commit_calls": commit_calls, "close_s": close_s,
            "commits": commits, "skipped": skipped, "latency_s": latencies, "applied_priority": applied}


def measure(args) -> dict:
    model, opt = build(args.device, args.layers)
    nbytes = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    modes = modes_of(args)
    results: dict[str, dict] = {m: {"times": [], "tracker_s": [], "commit_calls": [], "close_s": [], "commits": 0,
                                    "skipped": 0, "latency_s": [], "applied_priority": "", "config": conf}
                                for m, conf in modes}
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="mlvc-overhead-", dir=args.workdir) as tmp:
        repo = Repo.init(tmp)
        for r in range(args.rounds):
            for i, (mode, conf) in enumerate(modes):
                got = run_round(mode, model, opt, args, repo, f"m{i}-{r}", conf)
                res = results[mode]
                for key in ("times", "tracker_s", "commit_calls", "latency_s"):
                    res[key] += got[key]
                res["close_s"].append(got["close_s"])
                res["commits"] += got["commits"]
                res["skipped"] += got["skipped"]
                res["applied_priority"] = got["applied_priority"]
    load_end = os.getloadavg()
    base = statistics.median(results["none"]["times"]) if "none" in results else None
    rows = []
    for mode, res in results.items():
        med = statistics.median(res["times"])
        commit_calls = res["commit_calls"]
        rows.append({"mode": mode, "median_step_s": med, "mean_step_s": statistics.fmean(res["times"]),
                     "overhead_pct": None if base is None else 100.0 * (med / base - 1.0),
                     "mean_overhead_pct": None if base is None else
                     100.0 * (statistics.fmean(res["times"]) / statistics.fmean(results["none"]["times"]) - 1.0),
                     "commits": res["commits"], "skipped": res["skipped"],
                     "commit_call_s": statistics.median(commit_calls) if commit_calls else 0.0,
                     "commit_call_max_s": max(commit_calls) if commit_calls else 0.0,
                     "latency_median_s": statistics.median(res["latency_s"]) if res["latency_s"] else 0.0,
                     "latency_max_s": max(res["latency_s"]) if res["latency_s"] else 0.0,
                     "close_wait_s": max(res["close_s"]) if res["close_s"] else 0.0,
                     "config": {k: v for k, v in res["config"].items()}, "applied_priority": res["applied_priority"],
                     "step_times_s": res["times"], "commit_calls_s": commit_calls})
    return {"device": args.device, "device_name": device_name(args.device), "model_bytes": nbytes,
            "params": sum(p.numel() for p in model.parameters()), "every": args.every, "steps": args.steps,
            "rounds": args.rounds, "batch": args.batch, "seq": args.seq, "save_state": not args.no_state,
            "pinned": not args.no_pin, "default_encode_threads": default_encode_threads(),
            "loadavg_start": list(load_start), "loadavg_end": list(load_end),
            "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "rows": rows}


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return platform.processor() or platform.machine()


def table(res: dict) -> str:
    lines = [f"{res['device']} ({res['device_name']}), {res['params'] / 1e6:.1f} M params "
             f"({res['model_bytes'] / 2**20:.0f} MiB), batch {res['batch']} x {res['seq']}, commit every "
             f"{res['every']} steps{' with optimizer + RNG state' if res['save_state'] else ''}, "
             f"{res['steps']} timed steps x {res['rounds']} rounds per mode",
             f"{res['cpus']} CPUs, torch {res['torch_threads']} threads, load average "
             f"{res['loadavg_start'][0]:.2f} at the start, {res['loadavg_end'][0]:.2f} at the end",
             f"{'mode':<24} {'median step':>11} {'overhead':>9} {'mean step':>10} {'mean ovh':>9} {'commits':>8} "
             f"{'call med/max':>14} {'latency med/max':>16} {'close wait':>10}"]
    for r in res["rows"]:
        ovh = "" if r["overhead_pct"] is None else f"{r['overhead_pct']:+.1f}%"
        movh = "" if r["mean_overhead_pct"] is None else f"{r['mean_overhead_pct']:+.1f}%"
        commits = f"{r['commits']}" + (f"+{r['skipped']}sk" if r["skipped"] else "")
        call = f"{r['commit_call_s'] * 1e3:.0f}/{r['commit_call_max_s'] * 1e3:.0f}ms" if r["commits"] else ""
        lat = f"{r['latency_median_s']:.1f}/{r['latency_max_s']:.1f}s" if r["latency_median_s"] else ""
        close = f"{r['close_wait_s']:.2f}s" if r["commits"] else ""
        lines.append(f"{r['mode']:<24} {r['median_step_s'] * 1e3:>9.0f}ms {ovh:>9} {r['mean_step_s'] * 1e3:>8.0f}ms "
                     f"{movh:>9} {commits:>8} {call:>14} {lat:>16} {close:>10}")
    applied = {r["mode"]: r["applied_priority"] for r in res["rows"] if r["applied_priority"]}
    if applied:
        lines.append("worker priority applied: " + ", ".join(f"{m}: {a}" for m, a in applied.items()))
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--every", type=int, default=10, help="commit every N steps (default 10)")
    p.add_argument("--steps", type=int, default=40, help="timed steps per mode and round (default 40)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--no-state", action="store_true", help="commit the model alone (no optimizer/RNG state)")
    p.add_argument("--no-pin", action="store_true", help="snapshot CUDA tensors into pageable, not pinned, memory")
    p.add_argument("--keep-last", action="store_true", help="apply KeepPolicy(last=2) at every commit")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--priority", default=str(DEFAULT_PRIORITY),
                   help="the background tracker's worker_priority: a nice increment 1..19 (default: the Tracker's "
                        "default), idle (SCHED_IDLE), or 0 (unchanged)")
    p.add_argument("--threads", type=int, default=None, help="the background tracker's encode threads (default: "
                                                             "the Tracker's default)")
    p.add_argument("--also", nargs="*", default=[], metavar="PRIORITY:THREADS[:WORKER]",
                   help="more background configurations in the same round-robin, e.g. 0:1 10:1 idle:2 19:1:thread")
    p.add_argument("--workdir", default=None, help="where the temporary repository goes")
    p.add_argument("--out", default=os.path.join(HERE, "out", "training_overhead.json"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    res = measure(args)
    print(table(res))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
