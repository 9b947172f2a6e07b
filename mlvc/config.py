"""Repository settings in `.mlvc/config.toml`."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .util import atomic_write_bytes, show

# The defaults of every [core] setting live here, at the bottom of the layers (config imports only errors and
# util); the Repo passes the values to the store and the chunk pipeline. A bare ObjectStore has the same
# defaults for its own arguments (tests/test_layers.py checks they agree).
DEFAULT_CHUNK_SIZE = 2 << 20  # 2 MiB: measured in docs/design.md
DEFAULT_ZSTD_LEVEL = 1
DEFAULT_KEYFRAME_INTERVAL = 8  # a full object at least every 8 versions of a chunk
DEFAULT_CACHE_MB = 128  # decoded delta bases kept in memory


@dataclass
class Config:
    chunk_size: int = DEFAULT_CHUNK_SIZE
    zstd_level: int = DEFAULT_ZSTD_LEVEL
    threads: int = 0  # 0: one per core
    keyframe_interval: int = DEFAULT_KEYFRAME_INTERVAL  # delta chains stay under this many links; 1: no deltas
    cache_mb: int = DEFAULT_CACHE_MB  # decoded delta bases kept in memory
    user_name: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str) -> Config:
        """The settings in `path` (defaults when it does not exist). Every value is checked: a ConfigError
        names the key and what it may be (a TOML boolean is not an integer, nor is 2.0 or "2")."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return cls()
        try:
            raw = tomllib.loads(data.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path} is not UTF-8 text (byte {e.start} is not UTF-8); fix or remove it") from None
        except ValueError as e:  # TOMLDecodeError, and an integer past Python's 4300-digit limit
            raise ConfigError(f"{path} is not valid TOML ({str(e)[:200]}); fix or remove it") from None
        except RecursionError:
            raise ConfigError(f"{path} nests too deeply to be an mlvc config; fix or remove it") from None
        for table in TABLES:
            if not isinstance(raw.get(table, {}), dict):
                raise ConfigError(f"{path}: [{table}] must be a table of settings, not a value")
        core = raw.get("core", {})
        cfg = cls(raw=raw)
        for key, (low, high, default, note) in CORE_RANGES.items():
            value = core.get(key, default)
            if type(value) is not int or not low <= value <= high:
                raise ConfigError(f"{path}: core.{key} must be an integer from {low} to {high}{note}, "
                                  f"not {show(value)}")
            setattr(cfg, key, value)
        if cfg.chunk_size % 8:
            raise ConfigError(f"{path}: core.chunk_size must be a multiple of 8 (whole elements of any dtype), "
                              f"not {cfg.chunk_size}")
        name = raw.get("user", {}).get("name")
        if name is not None and not (isinstance(name, str) and name.strip() and "\n" not in name):
            raise ConfigError(f"{path}: user.name must be a one-line string, not {show(name)}")
        cfg.user_name = name
        return cfg


# [core] key -> (lowest, highest, default, what it means); every value must be a TOML integer in range.
CORE_RANGES: dict[str, tuple[int, int, int, str]] = {
    "chunk_size": (64, 1 << 30, DEFAULT_CHUNK_SIZE, " bytes (a multiple of 8)"),
    "zstd_level": (-7, 22, DEFAULT_ZSTD_LEVEL, ""),
    "threads": (0, 256, 0, " (0: one per core)"),
    "keyframe_interval": (1, 256, DEFAULT_KEYFRAME_INTERVAL, " (1: no deltas)"),
    "cache_mb": (0, 1 << 20, DEFAULT_CACHE_MB, " MiB"),
}
# Top-level names that must be tables when present (read by other modules: gc settings, evaluation tasks).
TABLES = ("core", "user", "gc", "tasks")


def write_default(path: str) -> None:
    text = (
        "# mlvc repository settings (docs/format.md)\n"
        "[core]\n"
        f"chunk_size = {DEFAULT_CHUNK_SIZE}  # bytes per chunk, element-aligned\n"
        f"zstd_level = {DEFAULT_ZSTD_LEVEL}\n"
        "threads = 0  # 0: one per core\n"
        f"keyframe_interval = {DEFAULT_KEYFRAME_INTERVAL}"
        "  # a full object at least every K versions of a chunk; 1: no deltas\n"
        f"cache_mb = {DEFAULT_CACHE_MB}  # decoded delta bases kept in memory while reading\n"
    )
    atomic_write_bytes(path, text.encode())


def config_path(mlvc_dir: str) -> str:
    return os.path.join(mlvc_dir, "config.toml")
