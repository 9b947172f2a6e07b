"""Shared pieces of the fuzz tests (tests/test_fuzz_*.py): hypothesis settings, and mutators that turn a seed
into an awkward input (byte mutations of valid files, structural mutations of valid JSON, random JSON).

Every fuzz test is deterministic (derandomize=True: the same inputs on every run) and takes its input count
from a module constant, so CI time stays known. Hypothesis draws seeds, BATCH per example, and the mutators
below turn each seed into an input with Python's `random`: hypothesis's own strategies cost one to several
milliseconds per input on a loaded 2-core runner (its recursive JSON strategy about 5 ms), which would put
the 10,000 inputs per parser well past the time budget; a seed costs microseconds. The price is shrinking:
a failing input is reported as it is (with `note`, shown by hypothesis on failure), not minimized
(the shrink phase is off).
MLVC_FUZZ_SCALE multiplies every count (e.g. 10 for a long local run).
"""

from __future__ import annotations

import copy
import os
import random

from hypothesis import HealthCheck, Phase, note, settings
from hypothesis import strategies as st

SCALE = float(os.environ.get("MLVC_FUZZ_SCALE", "1"))
BATCH = 20  # inputs checked per hypothesis example


def fuzz_settings(inputs: int, batch: int = BATCH):
    """Settings for a fuzz test of `inputs` generated inputs, `batch` per example (see `seed_batches`)."""
    return settings(max_examples=max(1, int(inputs * SCALE) // batch), deadline=None, derandomize=True,
                    database=None, suppress_health_check=list(HealthCheck), print_blob=True,
                    phases=[Phase.explicit, Phase.generate])  # shrinking seeds means nothing


def seed_batches(batch: int = BATCH):
    """`batch` seeds per example; `check_all(seeds, make, check)` turns them into inputs and checks each."""
    return st.lists(st.integers(0, 2 ** 64 - 1), min_size=batch, max_size=batch)


def check_all(seeds: list[int], make, check) -> None:
    """check(make(random.Random(seed))) for each seed; the input that fails is noted (hypothesis shows it)."""
    for seed in seeds:
        value = make(random.Random(seed))
        try:
            check(value)
        except BaseException:
            note(f"failing input (seed {seed}): {value!r:.3000}")
            raise


# -- bytes ------------------------------------------------------------------------------------------------

INTERESTING_BYTES = [0x00, 0x01, 0x7F, 0x80, 0xFF, ord("{"), ord("}"), ord("["), ord("]"), ord('"'), ord(","),
                     ord(":"), ord("-"), ord("0"), ord("9"), ord("\\"), ord("u"), ord("t"), ord("e")]


def random_bytes(rng: random.Random, max_size: int = 64) -> bytes:
    return rng.randbytes(rng.randint(0, max_size))


def mutate_bytes(rng: random.Random, data: bytes, head: int | None = None, max_ops: int = 4) -> bytes:
    """`data` with 1..max_ops mutations: a byte set to a random or interesting value, bytes inserted, deleted
    or duplicated, the data cut short or extended. With `head`, three positions in four fall in the first
    `head` bytes (where headers live)."""
    data = bytearray(data)
    for _ in range(rng.randint(1, max_ops)):
        n = len(data)
        pos = rng.randint(0, min(n, head) if head is not None and rng.random() < 0.75 else n)
        op = rng.choice(["set", "set", "interesting", "insert", "delete", "cut", "extend", "dup", "flip"])
        if op == "set" and pos < n:
            data[pos] = rng.randrange(256)
        elif op == "flip" and pos < n:
            data[pos] ^= 1 << rng.randrange(8)
        elif op == "interesting" and pos < n:
            data[pos] = rng.choice(INTERESTING_BYTES)
        elif op == "insert":
            data[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == "delete":
            del data[pos : pos + rng.randint(1, 8)]
        elif op == "cut":
            del data[pos:]
        elif op == "extend":
            data += rng.randbytes(rng.randint(1, 16))
        elif op == "dup" and pos < n:
            data[pos:pos] = data[pos : pos + rng.randint(1, 16)]
    return bytes(data)


# -- JSON -------------------------------------------------------------------------------------------------

AWKWARD_STRINGS = ["", ".", "..", "/", "a/", "/a", "a//b", "a/../b", "./a", ".mlvc/x", "\x00", "\ud800", "\udcff",
                   "a\udc80b", "é", "\n", "\\", "0" * 32, "f" * 32, "F" * 32, "g" * 32, "0" * 33, "a/" * 300 + "f",
                   "x" * 300, "F32", "U8", "BF16", "F4", "blob", "torch", "safetensors", "manifest", "commit",
                   "__metadata__", "a", "a/b", "NaN"]
AWKWARD_INTS = [0, 1, -1, 2, 3, 4, 7, 8, 63, 64, 4096, 2 ** 31, 2 ** 32, 2 ** 53 + 1, 2 ** 62, 2 ** 63 - 1,
                2 ** 63, 2 ** 64, -(2 ** 63), 10 ** 30]
AWKWARD_FLOATS = [0.0, -0.0, 0.5, 1.0, 4.0, 1e300, -1e-300]


def random_json(rng: random.Random, depth: int = 3):
    """A JSON value of any type, awkward ones favoured (booleans where integers go, huge and negative integers,
    empty and lone-surrogate strings, nested containers)."""
    r = rng.random()
    if depth > 0 and r < 0.2:
        return [random_json(rng, depth - 1) for _ in range(rng.randint(0, 4))]
    if depth > 0 and r < 0.3:
        return {random_key(rng): random_json(rng, depth - 1) for _ in range(rng.randint(0, 4))}
    return rng.choice([
        lambda: None, lambda: True, lambda: False,
        lambda: rng.choice(AWKWARD_INTS), lambda: rng.randint(-(2 ** 70), 2 ** 70), lambda: rng.randint(-9, 99),
        lambda: rng.choice(AWKWARD_FLOATS), lambda: rng.uniform(-1e9, 1e9),
        lambda: rng.choice(AWKWARD_STRINGS),
        lambda: "".join(chr(rng.randint(0, 0x2FF)) for _ in range(rng.randint(0, 6))),
        lambda: "".join(rng.choice("0123456789abcdef") for _ in range(32)),
    ])()


def random_key(rng: random.Random) -> str:
    return rng.choice(AWKWARD_STRINGS) if rng.random() < 0.5 else "".join(
        rng.choice("abcdefghijklmnopqrstuvwxyz_./") for _ in range(rng.randint(0, 6)))


def paths_in(value, prefix=()) -> list[tuple]:
    """Every path (tuple of keys and indexes) to a value inside nested dicts and lists, the root included."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths_in(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths_in(v, prefix + (i,))
    return out


def mutate_json(rng: random.Random, doc, max_ops: int = 3, keys: tuple[str, ...] = ()):
    """A deep copy of `doc` with 1..max_ops structural mutations: a value replaced by an awkward one, a key
    deleted or added (`keys` are likely additions), a list item duplicated, removed or moved, a string or
    integer nudged (a path one folder up, an integer off by one)."""
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, max_ops)):
        where = rng.choice(paths_in(doc))
        op = rng.choice(["replace", "replace", "nudge", "nudge", "delete", "add", "dup", "swap"])
        if not where:
            if op == "replace":
                doc = random_json(rng)
            continue
        parent = doc
        for k in where[:-1]:
            parent = parent[k]
        key = where[-1]
        value = parent[key]
        if op == "replace":
            parent[key] = random_json(rng)
        elif op == "nudge":
            parent[key] = _nudge(rng, value)
        elif op == "delete":
            del parent[key]
        elif op == "add" and isinstance(parent, dict):
            parent[rng.choice(keys) if keys and rng.random() < 0.5 else random_key(rng)] = random_json(rng)
        elif op == "dup" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(value))
        elif op == "swap" and isinstance(parent, list) and len(parent) > 1:
            other = rng.randrange(len(parent))
            parent[key], parent[other] = parent[other], parent[key]
    return doc


def _nudge(rng: random.Random, value):
    if isinstance(value, bool):
        return int(value) if rng.random() < 0.5 else not value
    if isinstance(value, int):
        return rng.choice([value + 1, value - 1, -value, value * 2 ** 32, float(value), bool(value), str(value)])
    if isinstance(value, str):
        parts = value.split("/")
        return rng.choice(["/".join(parts[:-1]) or value + "/x", value + "/x", value.upper(), value[:-1],
                           value + "\ud800", value * 2, "/" + value])
    if isinstance(value, list):
        return value[:-1] if value and rng.random() < 0.5 else value + [random_json(rng, 1)]
    return random_json(rng)
