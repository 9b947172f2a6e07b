"""Repository settings in `.mlvc/config.toml`: reading and checking them (`Config.load`), and the settings
`mlvc config get/set/list` reads and writes (`SETTINGS`, `get_setting`, `list_settings`, `set_setting`)."""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .util import atomic_write_bytes, show

if TYPE_CHECKING:
    from .repo import Repo

# The defaults of every [core] setting live here, at the bottom of the layers (config imports only errors and
# util); the Repo passes the values to the store and the chunk pipeline. A bare ObjectStore has the same
# defaults for its own arguments (tests/test_layers.py checks they agree).
DEFAULT_CHUNK_SIZE = 2 << 20  # 2 MiB: measured in docs/design.md
DEFAULT_ZSTD_LEVEL = 1
DEFAULT_KEYFRAME_INTERVAL = 8  # a full object at least every 8 versions of a chunk
DEFAULT_CACHE_MB = 128  # decoded delta bases kept in memory
DEFAULT_SKIP_DELTAS = 0  # 1: skip-delta bases (shallower chains, some storage); docs/design.md
DEFAULT_RAW_CACHE_MB = 0  # > 0: raw copies of the last commits' objects on disk (.mlvc/cache/raw); docs/design.md


@dataclass
class Config:
    chunk_size: int = DEFAULT_CHUNK_SIZE
    zstd_level: int = DEFAULT_ZSTD_LEVEL
    threads: int = 0  # 0: two per core, up to 16
    keyframe_interval: int = DEFAULT_KEYFRAME_INTERVAL  # delta chains stay under this many links; 1: no deltas
    cache_mb: int = DEFAULT_CACHE_MB  # decoded delta bases kept in memory
    skip_deltas: int = DEFAULT_SKIP_DELTAS  # 1: version n of a chunk against version n & (n-1)
    raw_cache_mb: int = DEFAULT_RAW_CACHE_MB  # raw copies of the last commits' objects (mlvc/rawcache.py)
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
        return cls.parse(data, path)

    @classmethod
    def parse(cls, data: bytes, path: str) -> Config:
        """The settings in the bytes of a config file (`path` names it in errors); checked as `load` does."""
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
    "threads": (0, 256, 0, " (0: two per core, up to 16)"),
    "keyframe_interval": (1, 256, DEFAULT_KEYFRAME_INTERVAL, " (1: no deltas)"),
    "cache_mb": (0, 1 << 20, DEFAULT_CACHE_MB, " MiB"),
    "skip_deltas": (0, 1, DEFAULT_SKIP_DELTAS, " (1: skip-delta bases)"),
    "raw_cache_mb": (0, 1 << 20, DEFAULT_RAW_CACHE_MB, " MiB (0: no raw cache)"),
}
# Top-level names that must be tables when present (read by other modules: gc settings, evaluation tasks, the
# rules of `mlvc check`).
TABLES = ("core", "user", "gc", "tasks", "check")


def write_default(path: str) -> None:
    text = (
        "# mlvc repository settings (docs/format.md)\n"
        "[core]\n"
        f"chunk_size = {DEFAULT_CHUNK_SIZE}  # bytes per chunk, element-aligned\n"
        f"zstd_level = {DEFAULT_ZSTD_LEVEL}\n"
        "threads = 0  # 0: two per core, up to 16\n"
        f"keyframe_interval = {DEFAULT_KEYFRAME_INTERVAL}"
        "  # a full object at least every K versions of a chunk; 1: no deltas\n"
        f"cache_mb = {DEFAULT_CACHE_MB}  # decoded delta bases kept in memory while reading\n"
        f"skip_deltas = {DEFAULT_SKIP_DELTAS}  # 1: chains of at most log2(K) + 1 links, for a few % more storage\n"
        f"raw_cache_mb = {DEFAULT_RAW_CACHE_MB}  # > 0: raw copies of the last two commits' objects, up to this\n"
        "#   many MiB (.mlvc/cache/raw): their checkouts decode no delta chain; each commit writes twice\n"
    )
    atomic_write_bytes(path, text.encode())


def config_path(mlvc_dir: str) -> str:
    return os.path.join(mlvc_dir, "config.toml")


# -- mlvc config get / set / list ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    key: str  # "core.threads"
    kind: str  # "integer", "string", "grace"
    default: Any  # None: unset unless given
    meaning: str


SETTINGS: dict[str, Setting] = {
    **{f"core.{k}": Setting(f"core.{k}", "integer", default, f"integer from {low} to {high}{note}")
       for k, (low, high, default, note) in CORE_RANGES.items()},
    "user.name": Setting("user.name", "string", None, "commit author (MLVC_AUTHOR wins; else the login name)"),
    "gc.grace": Setting("gc.grace", "grace", "2.weeks.ago", "gc keeps unreachable objects younger than this"),
    "gc.temp_grace": Setting("gc.temp_grace", "grace", "1.day.ago", "gc keeps temp files younger than this"),
    "gc.reflog_expire": Setting("gc.reflog_expire", "grace", "90.days.ago",
                                "gc first drops reflog entries older than this"),
}
_INT = re.compile(r"^[+-]?\d{1,20}$")
_NUMBER = re.compile(r"^\d{1,15}(\.\d{1,9})?$")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass
class SettingValue:
    key: str
    value: Any  # what commands use: the file's value, else the default (None: not set and no default)
    set: bool  # whether config.toml sets it
    default: Any

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value, "set": self.set, "default": self.default}


def setting(key: str) -> Setting:
    """The setting `key` names; ConfigError naming the closest keys for anything else."""
    if key in SETTINGS:
        return SETTINGS[key]
    if key.startswith("tasks."):
        raise ConfigError(f"{key}: evaluation tasks are tables of several keys; edit .mlvc/config.toml by hand "
                          "(docs/ledger.md)")
    import difflib  # only for the error message: opening a repository does not import it

    close = difflib.get_close_matches(key, list(SETTINGS), n=3)
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    raise ConfigError(f"unknown setting {key!r}; {hint}`mlvc config list` shows every setting")


def _file(repo: Repo) -> tuple[str, bytes, dict[str, Any]]:
    path = config_path(repo.dir)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        data = b""
    Config.parse(data, path)  # a damaged file is reported, never edited
    return path, data, tomllib.loads(data.decode("utf-8"))


def _value(raw: dict[str, Any], s: Setting) -> SettingValue:
    table, name = s.key.split(".", 1)
    section = raw.get(table, {})
    if isinstance(section, dict) and name in section:
        return SettingValue(s.key, section[name], True, s.default)
    return SettingValue(s.key, s.default, False, s.default)


def get_setting(repo: Repo, key: str) -> SettingValue:
    """The value of one setting (`core.threads`, `user.name`, `gc.grace`, ...) and whether the file sets it."""
    s = setting(key)
    return _value(_file(repo)[2], s)


def list_settings(repo: Repo) -> list[SettingValue]:
    """Every setting mlvc knows, in SETTINGS order, with its value (the file's, else the default)."""
    raw = _file(repo)[2]
    return [_value(raw, s) for s in SETTINGS.values()]


def set_setting(repo: Repo, key: str, text: str) -> SettingValue:
    """Set one setting from its command-line text, checked as every command would check it (a ConfigError
    naming the key and its range otherwise, and the file is not touched). config.toml is edited in place, its
    comments and other lines kept, and replaced atomically (temp file, fsync, rename)."""
    s = setting(key)
    value = _parse_text(s, text)
    if s.kind == "grace":
        repo.parse_grace(value, key)  # gc's own syntax check, through the Repo (config sits below ops/)
    path, data, raw = _file(repo)
    table, name = key.split(".", 1)
    new = _edit(data.decode("utf-8"), table, name, _toml_value(value))
    expected = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    expected.setdefault(table, {})[name] = value
    try:
        parsed = tomllib.loads(new)
    except ValueError:
        parsed = None
    if parsed != expected:  # the line editor met a layout it cannot edit safely (dotted keys, inline tables)
        raise ConfigError(f"cannot set {key} in {path} without rewriting it (it is written in an unusual layout); "
                          f"edit it by hand: [{table}] {name} = {_toml_value(value)}")
    Config.parse(new.encode("utf-8"), path)
    atomic_write_bytes(path, new.encode("utf-8"))
    return SettingValue(key, value, True, s.default)


def _parse_text(s: Setting, text: str) -> Any:
    if s.kind == "integer":
        if not _INT.match(text.strip()):
            raise ConfigError(f"{s.key} must be an {s.meaning}, not {show(text)}")
        value: Any = int(text)
        low, high, _default, _note = CORE_RANGES[s.key.split(".", 1)[1]]
        if not low <= value <= high:
            raise ConfigError(f"{s.key} must be an {s.meaning}, not {value}")
        return value
    if s.kind == "grace" and _NUMBER.match(text.strip()):
        return float(text) if "." in text else int(text)  # seconds
    if s.kind == "string" and not (text.strip() and "\n" not in text and "\r" not in text):
        raise ConfigError(f"{s.key} must be a one-line string, not {show(text)}")
    return text


def _toml_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"cannot write {show(value)} to config.toml")
    if isinstance(value, str):  # JSON's escapes are TOML's; TOML also wants DEL escaped
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    return repr(value)


_TABLE_LINE = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")


def _edit(text: str, table: str, name: str, value: str) -> str:
    """`text` with `name = value` set in `[table]`: the key's line rewritten in place (its comment kept),
    else a line added at the end of the table, else the table appended."""
    lines = text.splitlines(keepends=True)
    key_line = re.compile(rf"^(\s*){re.escape(name)}\s*=\s*")
    current, start, end = None, None, None  # end: index after the last key line of [table]
    for i, line in enumerate(lines):
        m = _TABLE_LINE.match(line)
        if m:
            current = m.group(1).strip()
            if current == table:
                start = end = i + 1
            continue
        if current == table and line.strip() and not line.lstrip().startswith("#"):
            if km := key_line.match(line):
                comment = _trailing_comment(line)
                indent = km.group(1)
                eol = "\n" if line.endswith("\n") else ""
                lines[i] = f"{indent}{name} = {value}{'  ' + comment if comment else ''}{eol}"
                return "".join(lines)
            end = i + 1
    if start is not None and end is not None:
        lines.insert(end, f"{name} = {value}\n")
        if end > 0 and not lines[end - 1].endswith("\n"):
            lines[end - 1] += "\n"
        return "".join(lines)
    if not _BARE_KEY.match(table):
        raise ConfigError(f"cannot add the table [{table}]")
    head = text if not text or text.endswith("\n") else text + "\n"
    return f"{head}{chr(10) if head else ''}[{table}]\n{name} = {value}\n"


def _trailing_comment(line: str) -> str:
    """The `# ...` comment at the end of a `key = value` line (outside any string), or ""."""
    quote = None
    i = line.index("=") + 1
    while i < len(line):
        ch = line[i]
        if quote:
            if ch == "\\" and quote == '"':
                i += 2
                continue
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            return line[i:].rstrip("\r\n")
        i += 1
    return ""

