"""Peak memory and time of committing and checking out a large safetensors checkpoint.

Writes a synthetic, weight-like safetensors file (default 2 GiB: transformer-shaped fp32 and bf16 tensors of
scaled normal samples, generated and written tensor by tensor in blocks, so this script stays small), then
runs each step in a fresh child process and measures its peak resident set (ru_maxrss of that one child,
from os.wait4, cross-checked by the child's own VmHWM where the child is Python) and its wall time:

    mlvc commit           Repo.commit(<file>) into a fresh repository
    mlvc checkout         Repo.checkout("HEAD", output=DIR), then verified byte for byte (sha256 of both files)
    mlvc commit, step k   after a simulated training step rewrote the file in place (every weight moved by
                          about 1e-3 of its size), commit it again: the parent's chunks are delta bases; by
                          default 7 steps, so the last commit ends a 7-link delta chain
    mlvc checkout, step N check out the last of those commits (decoding its chains), verified byte for byte
    zstd -1 -T0           compress the same file (baseline; skipped with a note when no zstd binary is found)
    zstd -d               decompress it again
    cp                    plain copy (page cache to page cache)
    cp + sync             copy, then fsync the copy (mlvc fsyncs every object and the checked-out file)

    python benchmarks/memory.py                  # 2 GiB in a temporary folder, removed afterwards
    python benchmarks/memory.py --threads 16     # the same with 16 worker threads (a 16-core host's default)
    python benchmarks/memory.py --size-gb 4 --workdir /big/disk --keep

Prints a table and writes benchmarks/out/memory.json. Exit status 1 if the checkout is not byte-identical
or an mlvc step peaks at or above --limit-mb (default 512).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MiB = 1 << 20
sys.path.insert(0, ROOT)

from mlvc.dtypes import DTYPES, ITEMSIZE  # noqa: E402
from mlvc.numeric import f32_to_bf16_bits  # noqa: E402

# ---------------------------------------------------------------------------------------------------------
# the synthetic checkpoint


def plan_tensors(target_bytes: int, hidden: int = 2048, vocab: int = 32000) -> list[tuple[str, str, list[int]]]:
    """(name, dtype, shape) for a decoder-shaped model: an fp32 embedding, then layers whose dtype alternates
    fp32 / bf16, until the data reaches target_bytes."""
    out = [("model.embed_tokens.weight", "F32", [vocab, hidden])]
    total = vocab * hidden * 4
    layer = 0
    while total < target_bytes:
        dt = "F32" if layer % 2 == 0 else "BF16"
        p = f"model.layers.{layer}."
        for name, shape in (("input_layernorm.weight", [hidden]),
                            ("self_attn.q_proj.weight", [hidden, hidden]),
                            ("self_attn.k_proj.weight", [hidden, hidden]),
                            ("self_attn.v_proj.weight", [hidden, hidden]),
                            ("self_attn.o_proj.weight", [hidden, hidden]),
                            ("post_attention_layernorm.weight", [hidden]),
                            ("mlp.gate_proj.weight", [4 * hidden, hidden]),
                            ("mlp.up_proj.weight", [4 * hidden, hidden]),
                            ("mlp.down_proj.weight", [hidden, 4 * hidden])):
            out.append((p + name, dt, shape))
            total += math.prod(shape) * ITEMSIZE[dt]
        layer += 1
    out.append(("model.norm.weight", "F32", [hidden]))
    return out


def write_checkpoint(path: str, target_bytes: int, seed: int = 0) -> tuple[int, int]:
    """Write the file in blocks of at most 16 Mi elements; returns (file size, tensor count)."""
    tensors = plan_tensors(target_bytes)
    header: dict = {"__metadata__": {"format": "pt", "source": "mlvc benchmarks/memory.py"}}
    pos = 0
    for name, dt, shape in tensors:
        n = math.prod(shape) * ITEMSIZE[dt]
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [pos, pos + n]}
        pos += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    rng = np.random.default_rng(seed)
    block = 16 << 20
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for _name, dt, shape in tensors:
            if len(shape) == 1:  # norm weights: near one
                a = (1.0 + 0.05 * rng.standard_normal(shape[0], dtype=np.float32)).astype(np.float32)
                f.write((f32_to_bf16_bits(a) if dt == "BF16" else a).tobytes())
                continue
            rows, cols = shape
            std = 1.0 / math.sqrt(cols)
            row_scale = rng.lognormal(0.0, 0.25, size=rows).astype(np.float32) * std  # rows differ, like weights
            step = max(1, block // cols)
            for r in range(0, rows, step):
                a = rng.standard_normal((min(step, rows - r), cols), dtype=np.float32)
                a *= row_scale[r : r + step, None]
                f.write((f32_to_bf16_bits(a) if dt == "BF16" else a).tobytes())
        f.flush()
        os.fsync(f.fileno())
    return os.path.getsize(path), len(tensors)


def training_step(path: str, lr: float = 2e-5, seed: int = 1) -> None:
    """Rewrite every tensor in place as after one optimizer step: w += lr * N(0, 1) (about 1e-3 of a weight;
    bf16 weights mostly round back to the same value, as they do in real bf16 training)."""
    rng = np.random.default_rng(seed)
    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        start = 8 + n
        for info in sorted(header.values(), key=lambda i: i["data_offsets"][0]):
            dt = np.float32 if info["dtype"] == "F32" else DTYPES["BF16"].bits.type  # bf16 as its bits
            begin, end = info["data_offsets"]
            step = (16 << 20) * np.dtype(dt).itemsize
            for pos in range(begin, end, step):
                f.seek(start + pos)
                a = np.frombuffer(f.read(min(step, end - pos)), dtype=dt)
                x = a.astype(np.uint32) << 16 if dt is np.uint16 else a.copy()
                x = x.view(np.float32)
                x += lr * rng.standard_normal(x.shape, dtype=np.float32)
                f.seek(start + pos)
                f.write((f32_to_bf16_bits(x) if dt is np.uint16 else x).tobytes())
        f.flush()
        os.fsync(f.fileno())


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 * MiB):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# children

CHILD = r"""
import json, os, sys, time
def rss(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
from mlvc.repo import Repo
op, repo_dir, arg = sys.argv[1:4]
repo = Repo(repo_dir)
before = rss("VmRSS")
t0 = time.perf_counter()
if op == "commit":
    r = repo.commit(arg, message="benchmark: synthetic checkpoint")
    extra = {"commit": r.commit.id, "raw_bytes": r.raw_bytes, "new_bytes": r.new_bytes, "chunks": r.chunks,
             "new_chunks": r.new_chunks}
else:
    r = repo.checkout("HEAD", output=arg)
    extra = {"bytes_written": r.bytes_written, "written": r.written}
op_s = time.perf_counter() - t0
print(json.dumps({"op_s": op_s, "rss_after_import": before, "vmhwm": rss("VmHWM"), **extra}))
"""


# Peak RSS of one child, read with wait4. The child must be forked from a *small* process: Linux carries the
# resident set of the mm a process had before exec (here, a fork or vfork of the caller) into its ru_maxrss,
# so a child spawned straight from this script would report at least this script's own peak. A bare
# `python -S` launcher forks the command, waits for it and writes its figures to a file; the floor is then
# the launcher's few MiB, not ours.
LAUNCHER = r"""
import json, os, sys, time
result, argv = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_pid, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(result, "w") as f:
    json.dump({"wall_s": wall, "peak_rss": usage.ru_maxrss * 1024, "status": os.waitstatus_to_exitcode(status)}, f)
"""


def run_child(argv: list[str], env: dict | None = None) -> dict:
    """Run one command in a fresh process: its wall time, its own peak RSS (wait4's ru_maxrss) and stdout."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", suffix=".json") as res:
        subprocess.run([sys.executable, "-S", "-c", LAUNCHER, res.name, *argv], stdout=out, stderr=err, env=env,
                       check=True)
        r = json.load(res)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if r["status"] != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} ... exited with {r['status']}:\n{stderr[-3000:]}")
    r["stdout"] = stdout
    del r["status"]
    return r


def launcher_floor() -> int:
    """The peak RSS the method reports for a command that uses almost nothing (`true`)."""
    return run_child(["true"])["peak_rss"]


def mlvc_child(op: str, repo_dir: str, arg: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = run_child([sys.executable, "-c", CHILD, op, repo_dir, arg], env=env)
    r.update(json.loads(r.pop("stdout").strip().splitlines()[-1]))
    return r


def find_zstd() -> str | None:
    return shutil.which("zstd")


def parse_size(text: str) -> int:
    """'2M', '256K', '2097152' -> bytes."""
    m = re.fullmatch(r"(\d+)([KkMm]?)(i?B)?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 256K, 2M)")
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20}[m.group(2).lower()]


def set_core(config_path: str, key: str, value: int) -> None:
    with open(config_path) as f:
        text = f.read()
    text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
    assert n == 1, f"no {key} line in {config_path}"
    with open(config_path, "w") as f:
        f.write(text)


# ---------------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=2.0, help="checkpoint size in GiB (2^30 bytes); default 2.0")
    ap.add_argument("--workdir", help="where the checkpoint, repository and copies go (default: a temp folder, "
                    "removed afterwards)")
    ap.add_argument("--keep", action="store_true", help="keep the workdir's contents")
    ap.add_argument("--threads", type=int, default=0,
                    help="core.threads for the repository (0: two per core, up to 16)")
    ap.add_argument("--chunk-size", type=parse_size, help="core.chunk_size for the repository (e.g. 4M; "
                    "default: mlvc's default)")
    ap.add_argument("--config", action="append", default=[], metavar="KEY=INT",
                    help="another [core] setting for the repository, e.g. cache_mb=32 (repeatable)")
    ap.add_argument("--limit-mb", type=float, default=512, help="peak RSS target for the mlvc steps, in MiB")
    ap.add_argument("--steps", type=int, default=7, help="after the first commit, this many simulated training "
                    "steps, each committed (the parent's chunks are delta bases), then a checkout of the last; "
                    "default 7: the deepest chain under the default keyframe interval 8; 0 skips them")
    ap.add_argument("--out", default=os.path.join(HERE, "out", "memory.json"))
    args = ap.parse_args()
    from tabulate import tabulate

    from mlvc.chunking import default_threads
    from mlvc.repo import Repo

    own_tmp = args.workdir is None
    work = tempfile.mkdtemp(prefix="mlvc-memory-") if own_tmp else os.path.abspath(args.workdir)
    os.makedirs(work, exist_ok=True)
    repo_dir = os.path.join(work, "repo")
    if os.path.exists(repo_dir):
        sys.exit(f"{repo_dir} exists; give an empty --workdir")
    try:
        repo = Repo.init(repo_dir)
        if args.threads:
            set_core(os.path.join(repo.dir, "config.toml"), "threads", args.threads)
        if args.chunk_size:
            set_core(os.path.join(repo.dir, "config.toml"), "chunk_size", args.chunk_size)
        for item in args.config:
            key, _, value = item.partition("=")
            set_core(os.path.join(repo.dir, "config.toml"), key.strip(), int(value))
        cfg = Repo(repo_dir).config
        threads, chunk_size = cfg.threads or default_threads(), cfg.chunk_size
        src = os.path.join(repo_dir, "model.safetensors")
        print(f"writing a {args.size_gb:g} GiB synthetic checkpoint to {src} ...", flush=True)
        t0 = time.perf_counter()
        size, n_tensors = write_checkpoint(src, int(args.size_gb * (1 << 30)))
        gen_s = time.perf_counter() - t0
        from safetensors import safe_open  # the reference reader accepts it (header only; data is mmapped)

        with safe_open(src, framework="numpy") as f:
            assert len(list(f.keys())) == n_tensors
        print(f"  {size:,} bytes, {n_tensors} tensors, {gen_s:.1f} s; sha256 ...", flush=True)
        src_sha = sha256_of(src)

        rows: list[dict] = []
        floor = launcher_floor()

        def record(step: str, r: dict, note: str = "") -> None:
            r = dict(r)
            r["step"], r["note"] = step, note
            r["MiBps"] = size / r["wall_s"] / MiB
            rows.append(r)
            print(f"  {step}: {r['wall_s']:.2f} s, peak RSS {r['peak_rss'] / MiB:.0f} MiB {note}", flush=True)

        print("mlvc commit ...", flush=True)
        c = mlvc_child("commit", repo_dir, src)
        stored = c["new_bytes"]
        record("mlvc commit", c, f"stored {stored / size:.3f} of raw in {c['new_chunks']} objects")

        print("mlvc checkout ...", flush=True)
        out_dir = os.path.join(work, "checkout")
        k = mlvc_child("checkout", repo_dir, out_dir)
        dst = os.path.join(out_dir, "model.safetensors")
        identical = sha256_of(dst) == src_sha
        record("mlvc checkout", k, "byte-identical (sha256)" if identical else "DIFFERENT FROM THE ORIGINAL")
        os.unlink(dst)

        for step in range(1, args.steps + 1):
            print(f"training step {step} (every weight moved by ~1e-3 of its size), then mlvc commit ...", flush=True)
            training_step(src, seed=step)
            c2 = mlvc_child("commit", repo_dir, src)
            record(f"mlvc commit, step {step}", c2,
                   f"stored {c2['new_bytes'] / size:.3f} of raw in {c2['new_chunks']} objects")
        if args.steps:
            src_sha2 = sha256_of(src)
            print(f"mlvc checkout of the step-{args.steps} commit ...", flush=True)
            k2 = mlvc_child("checkout", repo_dir, out_dir)
            same2 = sha256_of(dst) == src_sha2
            identical = identical and same2
            record(f"mlvc checkout, step {args.steps}", k2,
                   "byte-identical (sha256)" if same2 else "DIFFERENT FROM THE ORIGINAL")
            os.unlink(dst)

        base = os.path.join(work, "baseline")
        os.makedirs(base)
        zstd = find_zstd()
        if zstd:
            zf = os.path.join(base, "model.safetensors.zst")
            record("zstd -1 -T0", run_child([zstd, "-1", "-T0", "-q", "-f", src, "-o", zf]),
                   f"stored {os.path.getsize(zf) / size:.3f} of raw")
            dec = os.path.join(base, "model.dec")
            record("zstd -d", run_child([zstd, "-d", "-q", "-f", zf, "-o", dec]))
            os.unlink(dec)
            os.unlink(zf)
        else:
            print("  no zstd binary on PATH: zstd baselines skipped (apt-get install zstd)")
        cp = os.path.join(base, "copy")
        record("cp", run_child(["cp", src, cp]))
        os.unlink(cp)
        record("cp + sync", run_child(["sh", "-c", 'cp "$0" "$1" && sync "$1"', src, cp]))
        os.unlink(cp)

        table = [[r["step"], f"{r['wall_s']:.2f}", f"{r['MiBps']:.0f}", f"{r['peak_rss'] / MiB:.0f}",
                  f"{r['vmhwm'] / MiB:.0f}" if "vmhwm" in r else "", r["note"]] for r in rows]
        print()
        print(f"checkpoint: {size / (1 << 30):.2f} GiB ({size:,} bytes, {n_tensors} tensors, fp32 + bf16); "
              f"{os.cpu_count()} cores; mlvc threads {threads}, chunk {chunk_size >> 10} KiB; source file in "
              "the page cache")
        print(tabulate(table, headers=["step", "wall s", "MiB/s", "peak RSS MiB", "VmHWM MiB", "note"]))
        print(f"peak RSS: ru_maxrss of each step's own process (floor of the method: {floor / MiB:.1f} MiB for "
              f"`true`); VmHWM: the mlvc child's own high-water mark (of which {c['rss_after_import'] / MiB:.0f} MiB "
              "is Python + imports before the step starts); wall: whole process, startup included")
        over = [r["step"] for r in rows if r["step"].startswith("mlvc") and r["peak_rss"] >= args.limit_mb * MiB]
        if over:
            print(f"\nOVER the {args.limit_mb:g} MiB target: {', '.join(over)}")
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"size_bytes": size, "tensors": n_tensors, "generate_s": gen_s, "cpu_count": os.cpu_count(),
                       "threads": threads, "chunk_size": chunk_size, "steps": args.steps, "config": args.config,
                       "machine": platform.platform(), "python": platform.python_version(),
                       "identical": identical, "limit_mib": args.limit_mb, "rss_floor": floor, "rows": rows},
                      f, indent=2)
        print(f"wrote {args.out}")
        return 0 if identical and not over else 1
    finally:
        if own_tmp and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif not args.keep:
            for name in ("repo", "checkout", "baseline"):
                shutil.rmtree(os.path.join(work, name), ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
