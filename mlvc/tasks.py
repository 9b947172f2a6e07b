"""Evaluation tasks: what `mlvc eval run` runs on a checked-out commit, read from the repository settings.

Tasks live under `[tasks.NAME]` in two places, both optional:

1. `mlvc.toml` at the repository root (beside the code, meant to be committed with it: shared settings);
2. `.mlvc/config.toml` (this repository's own settings).

A task defined in both is taken whole from `.mlvc/config.toml` (local settings override shared ones, as in
git); the two are not merged key by key. docs/ledger.md shows the format; here it is checked.

The command is a list of arguments (or one string, split with shell rules *before* placeholders are filled
in). Placeholders `{checkpoint}`, `{output}`, `{commit}`, `{task}`, `{seed}` and `{python}` (the interpreter
running mlvc) are replaced inside each argument; a value never becomes more than one argument and no shell
sees it, so a path with spaces or quotes is safe. Any other text, braces included, is passed as it is (so
`python -c` code with dicts or f-strings works); only these exact names are placeholders.
"""

from __future__ import annotations

import os
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, EvalError
from .metricrules import MetricRule, parse_rule, parse_rules, rule_for
from .util import canonical_json, hash_bytes

if TYPE_CHECKING:
    from .repo import Repo

PROJECT_FILE = "mlvc.toml"
PLACEHOLDERS = ("checkpoint", "output", "commit", "task", "seed", "python")
DEFAULT_TIMEOUT = 3600.0
_TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
_TASK_KEYS = {"command", "timeout", "metrics", "dataset", "dataset_hash", "seed", "env", "cwd", "description"}


@dataclass
class MetricSpec:
    name: str
    higher_is_better: bool
    tolerance: float = 0.0  # changes no larger than this (absolute) count as "no change"
    rel_tolerance: float = 0.0  # ... or no larger than this fraction of |base| (the larger of the two counts)
    required: bool = False  # `mlvc check` fails when the metric has no value

    @property
    def direction(self) -> str:
        return "higher" if self.higher_is_better else "lower"

    @property
    def rule(self) -> MetricRule:
        return MetricRule(self.higher_is_better, self.tolerance, self.rel_tolerance, self.required)


@dataclass
class TaskSpec:
    name: str
    command: list[str]  # argument templates, placeholders not yet filled in
    metrics: dict[str, MetricSpec]
    timeout: float = DEFAULT_TIMEOUT  # seconds
    dataset: str | None = None
    dataset_hash: str | None = None
    seed: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "."  # where the command runs; relative paths are relative to the repository root
    description: str | None = None
    source: str = ""  # the file the task was read from

    def spec_dict(self) -> dict[str, Any]:
        """What was run: the parts that change a measurement (not the timeout, tolerances or directions)."""
        return {"command": list(self.command), "dataset": self.dataset, "dataset_hash": self.dataset_hash,
                "seed": self.seed, "env": dict(sorted(self.env.items()))}

    def spec_json(self) -> str:
        return canonical_json(self.spec_dict()).decode()

    @property
    def spec_hash(self) -> str:
        return hash_bytes(canonical_json(self.spec_dict()))

    def uses_output_file(self) -> bool:
        return any("output" in placeholders(arg) for arg in self.command)

    def argv(self, values: dict[str, str]) -> list[str]:
        """The command with placeholders filled in: one argument per template, never re-split."""
        return [fill(arg, values) for arg in self.command]


def placeholders(template: str) -> set[str]:
    return {m.group(1) for m in _PLACEHOLDER.finditer(template)}


def fill(template: str, values: dict[str, str]) -> str:
    """Replace each placeholder in one pass: a filled-in value is never scanned for placeholders again."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def load_tasks(repo: Repo) -> dict[str, TaskSpec]:
    """Every configured task, by name (`.mlvc/config.toml` over `mlvc.toml`)."""
    tasks: dict[str, TaskSpec] = {}
    for raw, source in _settings(repo):
        tasks.update(parse_tasks(raw.get("tasks", {}), source))
    return tasks


def load_rules(repo: Repo) -> dict[tuple[str, str], MetricRule]:
    """Every configured metric rule, by (task, metric) or (task, "*"): the metrics of [tasks.NAME] and the
    entries of [check.metrics], from mlvc.toml and .mlvc/config.toml (metricrules.parse_rules)."""
    settings = _settings(repo)
    return parse_rules(*(raw for raw, _ in settings), sources=tuple(source for _, source in settings))


def effective_rule(rules: dict[tuple[str, str], MetricRule], directions: dict[tuple[str, str], bool],
                   task: str, metric: str) -> MetricRule:
    """The rule that judges one metric: the configured one (load_rules), its direction filled in from the
    ledger's remembered directions (Ledger.directions) where the configuration gives none."""
    return rule_for(rules, task, metric).with_direction(directions.get((task, metric)))


def _settings(repo: Repo) -> list[tuple[dict[str, Any], str]]:
    """(parsed TOML, its path) of mlvc.toml (when present) and of .mlvc/config.toml, in that order."""
    project = os.path.join(repo.root, PROJECT_FILE)
    try:
        with open(project, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raw = {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ConfigError(f"{project} is not valid TOML ({str(e)[:200]}); fix it") from None
    return [(raw, project), (repo.config.raw, os.path.join(repo.dir, "config.toml"))]


def get_task(repo: Repo, name: str, tasks: dict[str, TaskSpec] | None = None) -> TaskSpec:
    tasks = load_tasks(repo) if tasks is None else tasks
    if name not in tasks:
        known = ", ".join(sorted(tasks)) or "none"
        raise EvalError(f"no task named {name!r} (configured: {known}); add [tasks.{name}] to "
                        f"{PROJECT_FILE} or .mlvc/config.toml (docs/ledger.md)")
    return tasks[name]


def parse_tasks(raw: Any, source: str) -> dict[str, TaskSpec]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: [tasks] must be a table of tasks, like [tasks.accuracy]")
    return {name: parse_task(name, body, source) for name, body in raw.items()}


def parse_task(name: str, body: Any, source: str) -> TaskSpec:
    where = f"{source}: [tasks.{name}]"
    if not _TASK_NAME.match(name):
        raise ConfigError(f"{where}: a task name is 1-100 letters, digits, '.', '_' or '-', starting with a "
                          "letter or digit")
    if not isinstance(body, dict):
        raise ConfigError(f"{where} must be a table with at least `command` and `metrics`")
    unknown = set(body) - _TASK_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                          f"known: {', '.join(sorted(_TASK_KEYS))}")
    command = _parse_command(body.get("command"), where)
    metrics = _parse_metrics(body.get("metrics"), where)
    timeout = body.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (0 < timeout <= 7 * 86400):
        raise ConfigError(f"{where}: timeout is a number of seconds between 0 and 604800, got {timeout!r}")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError(f"{where}: seed must be an integer, got {seed!r}")
    if seed is None and any("seed" in placeholders(a) for a in command):
        raise ConfigError(f"{where}: the command uses {{seed}} but the task sets no seed")
    env = body.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ConfigError(f"{where}: env must be a table of strings, like env = {{ OMP_NUM_THREADS = \"1\" }}")
    for k, v in env.items():  # what the operating system cannot pass to a process
        if not k or "=" in k or "\0" in k or "\0" in v:
            raise ConfigError(f"{where}: env {k!r} cannot be passed to a process: a variable's name is not empty "
                              "and holds no '=' or NUL character, and its value holds no NUL")
    strings = {}
    for key in ("dataset", "dataset_hash", "cwd", "description"):
        value = body.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{where}: {key} must be a string, got {value!r}")
        strings[key] = value
    if strings["cwd"] is not None and "\0" in strings["cwd"]:
        raise ConfigError(f"{where}: cwd holds a NUL character, which no path can")
    return TaskSpec(name, command, metrics, float(timeout), strings["dataset"], strings["dataset_hash"], seed,
                    dict(env), strings["cwd"] or ".", strings["description"], source)


def _parse_command(cmd: Any, where: str) -> list[str]:
    if cmd is None:
        raise ConfigError(f"{where}: `command` is missing, e.g. command = [\"python\", \"eval.py\", "
                          "\"{checkpoint}\", \"{output}\"]")
    if isinstance(cmd, str):
        try:
            cmd = shlex.split(cmd)
        except ValueError as e:
            raise ConfigError(f"{where}: cannot split command ({e}); write it as a list of arguments") from None
    if not isinstance(cmd, list) or not cmd or not all(isinstance(a, str) for a in cmd):
        raise ConfigError(f"{where}: command must be a non-empty list of strings (or one string)")
    if any("\0" in a for a in cmd):
        raise ConfigError(f"{where}: an argument of the command holds a NUL character, which no process can take")
    if not any("checkpoint" in placeholders(a) for a in cmd):
        raise ConfigError(f"{where}: the command never mentions {{checkpoint}}, so it cannot see the commit "
                          "it should evaluate")
    return list(cmd)


def _parse_metrics(raw: Any, where: str) -> dict[str, MetricSpec]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: `metrics` is missing or empty, e.g. metrics = {{ accuracy = \"higher\", "
                          "loss = { direction = \"lower\", tolerance = 0.01, rel_tolerance = 0.02 } }")
    out = {}
    for name, spec in raw.items():
        rule = parse_rule(spec, f"{where}: metric {name!r}", require_direction=True)
        assert rule.direction is not None  # require_direction
        out[name] = MetricSpec(name, rule.direction, rule.abs_tol or 0.0, rule.rel_tol or 0.0, rule.required)
    return out
