"""Fuzzing the config reader: Config.load on random bytes, on byte mutations of real config files, and on
well-formed TOML giving every setting a random value of a random type (booleans, floats, huge integers,
strings, arrays, tables, dates) or putting a value where a table belongs.

Only a ConfigError may come out; a config that loads has every [core] value an integer (never a boolean)
within its documented range.
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given

from fuzz_util import check_all, fuzz_settings, mutate_bytes, random_bytes, seed_batches
from mlvc.config import CORE_RANGES, Config, write_default
from mlvc.errors import ConfigError

# Generated inputs per test: 10,500 in all against the config reader.
BYTES_INPUTS = 2_500  # random bytes
MUTATION_INPUTS = 3_000  # byte mutations of real config files
VALUE_INPUTS = 5_000  # well-formed TOML with random values and shapes


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-config")
    default = folder / "default.toml"
    write_default(str(default))
    seeds = [default.read_bytes(),
             default.read_bytes() + b'\n[user]\nname = "Ada"\n[gc]\ngrace = "2.weeks.ago"\n',
             b'[core]\nthreads = 4\nchunk_size = 65536\n[tasks.acc]\ncommand = "python eval.py"\n',
             b"", b"# nothing\n"]
    return str(folder / "config.toml"), seeds


def _load(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
    try:
        cfg = Config.load(path)
    except ConfigError:
        return
    for key, (low, high, _default, _note) in CORE_RANGES.items():
        value = getattr(cfg, key)
        assert type(value) is int and low <= value <= high, (key, value)
    assert cfg.chunk_size % 8 == 0
    assert cfg.user_name is None or isinstance(cfg.user_name, str)


TOML_VALUES = ["true", "false", "0", "-0", "+1", "1_000", "0x10", "0o17", "0b101", "-1", "2.0", "1e3", "inf",
               "-inf", "nan", '"2"', "''", '"\\u00e9"', "[]", "[1, 2]", "{}", "{ a = 1 }", "1979-05-27",
               "07:32:00", "1979-05-27T07:32:00Z", str(2 ** 63), str(-(2 ** 63) - 1), "9" * 30, "64", "4096",
               "65536", str(1 << 30), str((1 << 30) + 8), "22", "23", "-7", "-8", "256", "257", "1048576",
               "1048577", "1" * 5000, "[" * 3000 + "]" * 3000, "{ a = " * 2000 + "1" + " }" * 2000]


def _toml_value(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.5:
        return rng.choice(TOML_VALUES)
    if r < 0.8:
        return str(rng.choice([rng.randint(-300, 300), rng.randint(-(2 ** 70), 2 ** 70), rng.randint(0, 1 << 31)]))
    x = rng.uniform(-1e6, 1e6)
    return repr(x) if math.isfinite(x) else "0.5"


def _well_formed(rng: random.Random) -> bytes:
    lines = []
    tables = ["core", "user", "gc", "tasks"]
    for table in rng.sample(tables, rng.randint(1, len(tables))):
        if rng.random() < 0.1:  # a value where a table belongs
            lines.insert(0, f"{table} = {_toml_value(rng)}")
            continue
        lines.append(f"[{table}]")
        keys = list(CORE_RANGES) if table == "core" else ["name", "grace", "x"]
        for key in rng.sample(keys, rng.randint(0, len(keys))):
            lines.append(f"{key} = {_toml_value(rng)}")
    return ("\n".join(lines) + "\n").encode()


@fuzz_settings(BYTES_INPUTS)
@given(seed_batches())
def test_config_random_bytes(scratch, seeds):
    path, _ = scratch
    check_all(seeds, lambda rng: random_bytes(rng, 200), lambda data: _load(path, data))


@fuzz_settings(MUTATION_INPUTS)
@given(seed_batches())
def test_config_byte_mutations(scratch, seeds):
    path, files = scratch
    check_all(seeds, lambda rng: mutate_bytes(rng, rng.choice(files), max_ops=3), lambda data: _load(path, data))


@fuzz_settings(VALUE_INPUTS)
@given(seed_batches())
def test_config_random_values(scratch, seeds):
    path, _ = scratch
    check_all(seeds, _well_formed, lambda data: _load(path, data))


def test_the_seed_configs_load(scratch):
    path, files = scratch
    for data in files:
        with open(path, "wb") as f:
            f.write(data)
        Config.load(path)
