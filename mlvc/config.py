"""Repository settings in `.mlvc/config.toml`."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .store import DEFAULT_CACHE_BYTES, DEFAULT_KEYFRAME_INTERVAL
from .util import atomic_write_bytes

DEFAULT_CHUNK_SIZE = 2 << 20  # 2 MiB: measured in docs/design.md
DEFAULT_ZSTD_LEVEL = 1
DEFAULT_CACHE_MB = DEFAULT_CACHE_BYTES >> 20


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
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            return cls()
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML ({e}); fix or remove it") from None
        core = raw.get("core", {})
        cfg = cls(raw=raw)
        try:
            cfg.chunk_size = int(core.get("chunk_size", DEFAULT_CHUNK_SIZE))
            cfg.zstd_level = int(core.get("zstd_level", DEFAULT_ZSTD_LEVEL))
            cfg.threads = int(core.get("threads", 0))
            cfg.keyframe_interval = int(core.get("keyframe_interval", DEFAULT_KEYFRAME_INTERVAL))
            cfg.cache_mb = int(core.get("cache_mb", DEFAULT_CACHE_MB))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{path}: [core] values must be integers ({e})") from None
        if not (64 <= cfg.chunk_size <= 1 << 30) or cfg.chunk_size % 8:
            raise ConfigError(f"{path}: core.chunk_size must be a multiple of 8 between 64 B and 1 GiB")
        if not (1 <= cfg.keyframe_interval <= 256):
            raise ConfigError(f"{path}: core.keyframe_interval must be between 1 (no deltas) and 256")
        if cfg.cache_mb < 0:
            raise ConfigError(f"{path}: core.cache_mb must not be negative")
        if not (-7 <= cfg.zstd_level <= 22):
            raise ConfigError(f"{path}: core.zstd_level must be between -7 and 22")
        cfg.user_name = raw.get("user", {}).get("name")
        return cfg


def write_default(path: str) -> None:
    text = (
        "# mlvc repository settings (docs/format.md)\n"
        "[core]\n"
        f"chunk_size = {DEFAULT_CHUNK_SIZE}  # bytes per chunk, element-aligned\n"
        f"zstd_level = {DEFAULT_ZSTD_LEVEL}\n"
        "threads = 0  # 0: one per core\n"
        f"keyframe_interval = {DEFAULT_KEYFRAME_INTERVAL}  # a full object at least every K versions of a chunk; 1: no deltas\n"
        f"cache_mb = {DEFAULT_CACHE_MB}  # decoded delta bases kept in memory while reading\n"
    )
    atomic_write_bytes(path, text.encode())


def config_path(mlvc_dir: str) -> str:
    return os.path.join(mlvc_dir, "config.toml")
