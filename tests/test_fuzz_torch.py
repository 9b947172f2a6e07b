"""Fuzzing the torch readers and commit path: generated containers and byte mutations of valid .pt files.

Every input is committed (`snapshot_path`, with a store) twice: by the default path, where the torch-free
reader (`torchzip`) reads what it models and declines the rest to torch.load, and by torch.load alone; then,
when it commits, checked out (`write_entry`). Nothing but an MlvcError may escape either path, nothing may be
executed or imported by the torch-free reader, every input that commits must check out byte for byte, and
when both paths commit an input the two entries must be identical (canonical JSON). Deterministic
(derandomized); the counts are below, split between the two generators (one hypothesis example is one input,
and hypothesis shrinks a failure). HYPOTHESIS_PROFILE=explore searches with fresh examples; MLVC_FUZZ_SCALE
multiplies the counts.

Measured on the shared 2-core machine (a -s run prints the counts and times): 10,000 inputs in about 50 s of
CPU, 4,000 containers in 29-34 s (about 60% read without torch, each then committed a second time through
torch.load) and 6,000 mutations in 16-20 s (most refused early); 38 s with one commit per input before.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import pathlib
import sys
import tempfile
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlvc.chunking import Pipeline
from mlvc.errors import FormatError, MlvcError
from mlvc.snapshot import snapshot_path, write_entry
from mlvc.store import MemoryObjectStore
from mlvc.util import canonical_json

torch = pytest.importorskip("torch")
from mlvc.formats import torchfile, torchzip  # noqa: E402

SCALE = float(os.environ.get("MLVC_FUZZ_SCALE", "1"))  # as in tests/fuzz_util.py: 10 for a long local run
FUZZ_EXAMPLES = int(10_000 * SCALE)  # inputs in all, across the two tests below
CONTAINER_EXAMPLES = FUZZ_EXAMPLES * 2 // 5  # generated containers, saved with torch.save
MUTATION_EXAMPLES = FUZZ_EXAMPLES - CONTAINER_EXAMPLES  # byte mutations of valid files
CHUNK = 256  # small chunks, so that tensors and frames span several

EXPLORE = os.environ.get("HYPOTHESIS_PROFILE") == "explore"  # then fresh random examples on each run
FUZZ_SETTINGS = dict(deadline=None, derandomize=not EXPLORE, database=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                            HealthCheck.large_base_example, HealthCheck.function_scoped_fixture])
OUTCOMES: dict[str, dict[str, int]] = {}  # test -> {"ok": n, "refused": n, ...}
TIMINGS: dict[str, tuple[int, float, float]] = {}  # test -> (examples run, wall s, CPU s of this process)


@pytest.fixture(scope="module", autouse=True)
def report():
    """The outcome counts and timings, printed after the module's tests (visible with -s)."""
    yield
    for name, counts in OUTCOMES.items():
        n, wall, cpu = TIMINGS.get(name, (0, 0.0, 0.0))
        print(f"\nfuzz {name}: {counts}; {n} inputs in {wall:.1f} s ({cpu:.1f} s CPU)")


@pytest.fixture
def scratch(tmp_path):
    """A folder for the generated files: in memory (/dev/shm) where there is one, since rewriting a small file
    on a journaling disk can cost a millisecond or more, ten thousand times."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        with tempfile.TemporaryDirectory(prefix="mlvc-fuzz-", dir="/dev/shm") as d:
            yield pathlib.Path(d)
    else:
        yield tmp_path


def _write(path, data: bytes) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a new file, not a truncated one (ext4 flushes a file truncated and rewritten)
    with open(path, "wb") as f:
        f.write(data)


_ZIP_READ = torchzip.read
ZIP_READS: collections.Counter = collections.Counter()  # "read" / "declined" by the torch-free reader


def _counting_read(f, size):
    try:
        out = _ZIP_READ(f, size)
    except torchzip.Unsupported:
        ZIP_READS["declined"] += 1
        raise
    ZIP_READS["read"] += 1
    return out


def _torch_only(f, size):
    raise torchzip.Unsupported("the fuzz test asks for torch.load")


@contextlib.contextmanager
def _reader(read):
    torchzip.read = read
    try:
        yield
    finally:
        torchzip.read = _ZIP_READ


def _commit_once(path: str, rel: str, original: bytes) -> bytes | None:
    """The entry as canonical JSON, None when refused (an MlvcError); the check-out must be byte for byte."""
    pipe = Pipeline(MemoryObjectStore(), CHUNK, threads=1)  # not entered: no thread pool, all in this thread
    try:
        entry = snapshot_path(pipe, path, rel)
        out = io.BytesIO()
        write_entry(pipe, entry, out)
    except MlvcError:
        return None
    assert entry.exact and out.getvalue() == original
    return canonical_json(entry.to_dict())


def _commit_and_check_out(path: str, rel: str) -> str:
    """'ok' (committed and checked out byte for byte, the same entry whichever reader read it) or 'refused'
    (an MlvcError on both paths); 'zip-only' when the torch-free reader commits a file torch.load refuses
    (the tests fail on it). Anything else fails here: another exception, a module imported, another entry."""
    with open(path, "rb") as f:
        original = f.read()
    modules = set(sys.modules)
    before = ZIP_READS["read"]
    with _reader(_counting_read):
        entry = _commit_once(path, rel, original)
    if ZIP_READS["read"] == before:
        return "ok" if entry is not None else "refused"  # declined: the default path was torch.load itself
    # read without torch: nothing the pickle names was imported (mlvc's own lazy imports and codecs aside)
    new = set(sys.modules) - modules
    assert all(m.startswith(("mlvc", "numpy", "encodings.")) for m in new), new
    with _reader(_torch_only):
        by_torch = _commit_once(path, rel, original)
    if by_torch is None:
        return "zip-only" if entry is not None else "refused"
    assert entry == by_torch
    return "ok"


# -- generated containers ----------------------------------------------------------------------------------

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.uint8, torch.int16,
          torch.int32, torch.int64, torch.bool] + [getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2",
                                                                             "uint16", "uint32", "uint64")
                                                   if hasattr(torch, n)]
PLACEHOLDERS = ["\x00mlvc-tensor:", "\x00mlvc-tensor:0", "\x00mlvc-tensor:w", "\x00", "tensor", "0.0", "",
                "\u00e9\U0001f600", "a.b"]
VIEWS = ["whole", "slice", "t", "strided", "expand", "param", "grad", "row", "unsupported"]


def _primitive(arg: int):
    """A plain value the weights_only unpickler allows, chosen (and shaped) by `arg`."""
    kinds = [
        lambda a: None, lambda a: bool(a & 1), lambda a: a - (1 << 20), lambda a: a << 70,
        lambda a: [0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e-310, 0.1][a % 7],
        lambda a: PLACEHOLDERS[a % len(PLACEHOLDERS)], lambda a: PLACEHOLDERS[a % len(PLACEHOLDERS)] + str(a),
        lambda a: a.to_bytes(4, "little")[: a % 5], lambda a: bytearray(a.to_bytes(2, "little")),
        lambda a: complex(a, -a), lambda a: torch.Size([a % 3, a % 5]),
        lambda a: [torch.float32, torch.int64, torch.bfloat16, torch.bool][a % 4], lambda a: {a % 3, "x"},
        lambda a: chr(a % 0x2FFFF + 1) * (a % 3),
    ]
    return kinds[arg % len(kinds)](arg // len(kinds))


# A container is drawn as a little stack program, three bytes a step (an op, a 16-bit argument): push a
# tensor or a plain value, wrap the top items into a list / tuple / dict / OrderedDict (with the _metadata
# attribute a state_dict has), or push the top item again (the same object twice, as pickle's memo and tied
# weights make it). Hypothesis draws the bytes as one choice, which costs a fraction of a recursive
# strategy's draws (the fuzz budget goes to the code under test), and still shrinks them to the smallest
# failing program. The four base tensors the program's tensors view are drawn the same way.
OPS = ["tensor", "value", "dict", "tensor", "list", "value", "tuple", "tensor", "odict", "again", "dict"]
programs = st.binary(min_size=24, max_size=96)
base_specs = st.binary(min_size=16, max_size=16)


def _bases(spec: bytes) -> list:
    out = []
    for i in range(4):
        d, ndim, dims = spec[4 * i] % len(DTYPES), spec[4 * i + 1] % 4, spec[4 * i + 2] | spec[4 * i + 3] << 8
        out.append(_base(i, DTYPES[d], [(dims >> (3 * k)) % 5 for k in range(ndim)]))
    return out


def _build(program: bytes, bases):
    stack: list = []
    for step in range(0, len(program) - 2, 3):
        kind, arg = OPS[program[step] % len(OPS)], program[step + 1] | program[step + 2] << 8
        if kind == "tensor":
            stack.append(_tensor(bases, arg % len(bases), VIEWS[arg // len(bases) % len(VIEWS)]))
        elif kind == "value":
            stack.append(_primitive(arg))
        elif kind == "again" and stack:
            stack.append(stack[-1])
        elif kind in ("list", "tuple", "dict", "odict"):
            n = min(len(stack), arg % 5)
            items = stack[len(stack) - n :] if n else []
            del stack[len(stack) - n :]
            if kind == "list":
                stack.append(items)
            elif kind == "tuple":
                stack.append(tuple(items))
            else:
                d = {} if kind == "dict" else collections.OrderedDict()
                for i, v in enumerate(items):
                    key = _primitive(arg + i) if (arg >> 3) & 1 else f"k{(arg + i) % 7}"
                    try:
                        d[key] = v
                    except TypeError:  # an unhashable key (bytearray, set): use its position
                        d[i] = v
                if kind == "odict":
                    d._metadata = {"": {"version": arg % 3}}
                stack.append(d)
    return stack[0] if len(stack) == 1 else stack


def _base(i: int, dtype, shape: list[int]):
    g = torch.Generator().manual_seed(i)
    t = torch.randn(shape, generator=g) * 50
    return t.to(dtype) if dtype is not torch.bool else t > 0


def _tensor(bases, i: int, how: str):
    base = bases[i]
    if how == "slice" and base.dim() and base.shape[0] > 1:
        return base[1:]
    if how == "t" and base.dim() == 2:
        return base.t()
    if how == "strided" and base.dim():
        return base[::2]
    if how == "expand":
        return base.reshape(-1)[:1].expand(3) if base.numel() else base
    if how == "row" and base.dim() >= 2 and base.shape[0]:
        return base[0]
    if how == "param":
        return torch.nn.Parameter(base, requires_grad=base.is_floating_point() and base.dtype in
                                  (torch.float32, torch.float64, torch.float16, torch.bfloat16))
    if how == "grad" and base.dtype in (torch.float32, torch.float64):
        return base.detach().clone().requires_grad_(True)
    if how == "unsupported" and i == 3 and base.dim() == 3:  # rare, so that most inputs commit
        return torch.ones(2, dtype=torch.complex64) if base.numel() % 2 else torch.ones(2).to_sparse()
    return base


def test_fuzz_generated_containers(scratch):
    outcomes: collections.Counter = collections.Counter()
    start, cpu = time.perf_counter(), time.process_time()
    reads = ZIP_READS["read"]

    @settings(max_examples=CONTAINER_EXAMPLES, **FUZZ_SETTINGS)
    @given(program=programs, base_spec=base_specs, how=st.integers(0, 31))
    def run(program, base_spec, how):
        legacy, stem, saved_as = how & 3 == 3, how >> 2 & 3, how >> 4  # a quarter in the legacy format
        obj = _build(program, _bases(base_spec))
        # torch names the zip's records after the file it saves to, which need not be the committed name
        path = scratch / f"{['m', 'other'][saved_as]}.pt"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
        rel = ["m.pt", "model.bin", "archive.pt", "x.y.pth"][stem]
        outcome = _commit_and_check_out(str(path), rel)
        if outcome == "refused":
            # only what mlvc documents as unstorable, or what torch itself cannot read back
            with pytest.raises(FormatError):
                torchfile.named_tensors(torchfile.load(str(path), rel), rel)
        assert outcome != "zip-only", "a file torch.save wrote, which torch.load refuses"
        outcomes[outcome] += 1

    run()
    TIMINGS["containers"] = (sum(outcomes.values()), time.perf_counter() - start, time.process_time() - cpu)
    OUTCOMES["containers"] = dict(outcomes)
    OUTCOMES["containers"]["torch-free reads"] = ZIP_READS["read"] - reads
    assert sum(outcomes.values()) >= CONTAINER_EXAMPLES
    assert outcomes["ok"] > CONTAINER_EXAMPLES * 2 // 3 and outcomes["refused"], outcomes
    # most generated files are read without torch (the rest: legacy format, bytearray values, ...)
    assert ZIP_READS["read"] - reads > CONTAINER_EXAMPLES // 3, (ZIP_READS, outcomes)


# -- byte mutations of valid files -----------------------------------------------------------------------------


def _seed_files() -> list[bytes]:
    g = torch.Generator().manual_seed(0)  # the same files in every run, so a failing input reproduces
    base = torch.arange(40, dtype=torch.float32)
    w = torch.randn(6, 4, generator=g)
    objs = [
        {"w": torch.randn(8, 8, generator=g), "b": torch.zeros(8), "step": 3},
        {"embed": w, "head": w, "p": torch.nn.Parameter(torch.ones(5)), "v": base[4:12], "t": w.t()},
        [torch.arange(7, dtype=torch.int64), ("x", {"\x00mlvc-tensor:w": torch.tensor(1.5)}), b"\x00\x01"],
        collections.OrderedDict(a=torch.ones(3, dtype=torch.bfloat16), e=torch.zeros(0, 2)),
    ]
    out = []
    for obj in objs:
        for legacy in (False, True):
            buf = io.BytesIO()
            torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
            out.append(buf.getvalue())
    return out


SEEDS = _seed_files()
INTERESTING = [0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 40, (1 << 64) - 1]
MUTATION_OPS = ["flip", "set", "truncate", "delete", "insert", "int", "copy"]
# One mutation is 12 bytes (an op, where: 3 bytes, an argument: 8 bytes), up to four of them, drawn as one
# binary choice (as for the containers above).
mutations = st.binary(min_size=12, max_size=48)


def _mutate(data: bytes, program: bytes) -> bytes:
    b = bytearray(data)
    for step in range(0, len(program) - 11, 12):
        if not b:
            break
        kind = program[step]
        at = int.from_bytes(program[step + 1 : step + 4], "little")
        arg = int.from_bytes(program[step + 4 : step + 12], "little")
        op, at = MUTATION_OPS[kind % len(MUTATION_OPS)], at % len(b)
        if op == "flip":
            b[at] ^= arg % 255 + 1
        elif op == "set":
            b[at] = arg % 256
        elif op == "truncate":
            del b[at:]
        elif op == "delete":
            del b[at : at + arg % 64 + 1]
        elif op == "insert":
            b[at:at] = arg.to_bytes(8, "little")[: arg % 8 + 1]
        elif op == "int":
            width = (2, 4, 8)[arg % 3]
            value = INTERESTING[arg // 3 % len(INTERESTING)]
            b[at : at + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
        elif op == "copy":
            src = arg % len(b)
            b[at : at + 16] = b[src : src + 16]
    return bytes(b)


def test_fuzz_byte_mutations(scratch):
    outcomes: collections.Counter = collections.Counter()
    start, cpu = time.perf_counter(), time.process_time()
    reads = ZIP_READS["read"]

    @settings(max_examples=MUTATION_EXAMPLES, **FUZZ_SETTINGS)
    @given(seed=st.integers(0, len(SEEDS) - 1), ops=mutations,
           stem=st.sampled_from(["m.pt", "archive.bin"]))
    def run(seed, ops, stem):
        path = scratch / stem
        _write(path, _mutate(SEEDS[seed], ops))
        outcome = _commit_and_check_out(str(path), stem)
        # the torch-free reader answers only where torch.load gives the same answer: a damaged zip that torch's
        # reader refuses (a disk number, a name running past its entry, ...) is declined to it, not committed
        assert outcome != "zip-only", "the torch-free reader committed a file torch.load refuses"
        outcomes[outcome] += 1

    run()
    TIMINGS["mutations"] = (sum(outcomes.values()), time.perf_counter() - start, time.process_time() - cpu)
    OUTCOMES["mutations"] = dict(outcomes)
    OUTCOMES["mutations"]["torch-free reads"] = ZIP_READS["read"] - reads
    assert sum(outcomes.values()) >= MUTATION_EXAMPLES
    assert outcomes["ok"] and outcomes["refused"], outcomes  # both sides of the line were reached
    assert ZIP_READS["read"] > reads, ZIP_READS
