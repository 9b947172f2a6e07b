"""Metric rules: direction, absolute and relative tolerances, required metrics; what counts as a regression.

One rule per (task, metric) says which direction is better and how large a change must be to count. The
rules come from the repository settings (mlvc.toml, then .mlvc/config.toml; docs/ledger.md "Metric rules"):

    [tasks.NAME]                              # a configured task: its metrics' rules
    metrics = { acc = { direction = "higher", tolerance = 0.002, rel_tolerance = 0.01 }, loss = "lower" }

    [check.metrics]                           # any task, configured or only recorded; "TASK/*" is every metric
    "train/loss" = { direction = "lower", rel_tolerance = 0.02, required = true }
    "gloss-retrieval/*" = { tolerance = 0.001 }

The arithmetic of `verdict(rule, base, new)`, the one place that decides:

- the tolerance of a change from `base` is max(abs_tol, rel_tol * |base|) (the looser of the two, as in
  pytest.approx and math.isclose; an unset one counts as 0); relative to the *base*, so it does not depend
  on the new value; with base == 0 a relative tolerance allows nothing and only abs_tol counts;
- |new - base| <= tolerance is UNCHANGED: a change exactly equal to the tolerance is within it. Decimal
  numbers are not exact in binary, so the comparison allows a slack of 4 units in the last place of
  max(|base|, tolerance): 0.50 -> 0.49 with tolerance 0.01 is within tolerance, as written. This slack
  also makes a change of a few ulps (float noise) UNCHANGED when the tolerance is 0;
- otherwise IMPROVED when the change goes the better way (up for direction True, down for False), else
  REGRESSED; without a direction, UNKNOWN (a change that is within tolerance is UNCHANGED either way);
- a NaN or infinite base or new value is INVALID (the ledger never stores one; a caller's bug or bad input).

For a fixed base and rule the verdict is monotone in the new value: moving it the better way never gives
a worse verdict (tests/test_metricrules.py checks this and the edges as properties).

This module imports only errors: it is below the ledger and tasks, and the CI gate (ops/check.py), the
effect table (ops/evals.py) and the task configuration (tasks.py) all judge through it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from .errors import ConfigError

ALL_METRICS = "*"  # the metric part of a key that names every metric of a task: ("task", "*") / "task/*"
DIRECTIONS = {"higher": True, "lower": False}  # config words -> direction (True: higher is better)
RULE_KEYS = ("direction", "tolerance", "rel_tolerance", "required")  # the keys of one metric's table
SLACK_ULPS = 4  # units in the last place of max(|base|, tolerance) that the comparison forgives


class Verdict(StrEnum):
    """What a change from a base value to a new value is, by a rule."""

    IMPROVED = "improved"
    REGRESSED = "regressed"
    UNCHANGED = "unchanged"  # within tolerance (whatever the direction)
    UNKNOWN = "unknown"  # a change larger than the tolerance, but the direction is not known
    INVALID = "invalid"  # base or new is NaN or infinite


@dataclass(frozen=True)
class MetricRule:
    """How to judge one metric. None means "not given here" (so rules can be layered with `over`).

    direction: True when higher is better, False when lower is better, None when unknown.
    abs_tol: changes of at most this size count as unchanged (>= 0, finite).
    rel_tol: ... or of at most rel_tol * |base| (a fraction: 0.01 is 1%; >= 0, finite).
    required: the CI gate fails when the metric has no value at the commit being checked.
    """

    direction: bool | None = None
    abs_tol: float | None = None
    rel_tol: float | None = None
    required: bool = False

    def __post_init__(self) -> None:
        if self.direction is not None and not isinstance(self.direction, bool):
            raise ConfigError(f"a metric's direction is True (higher is better), False or None, got "
                              f"{self.direction!r}")
        for name in ("abs_tol", "rel_tol"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise ConfigError(f"{_KEY_OF[name]} must be a finite number >= 0, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not isinstance(self.required, bool):
            raise ConfigError(f"required must be true or false, got {self.required!r}")

    def tolerance(self, base: float) -> float:
        """The largest change from `base` that counts as unchanged: max(abs_tol, rel_tol * |base|)."""
        return max(self.abs_tol or 0.0, (self.rel_tol or 0.0) * abs(base))

    def over(self, base: MetricRule) -> MetricRule:
        """This rule layered over `base`: each field given here wins, the others come from `base`.

        `required` is true when either says so. Used for defaults < config < command-line flags.
        """
        return MetricRule(self.direction if self.direction is not None else base.direction,
                          self.abs_tol if self.abs_tol is not None else base.abs_tol,
                          self.rel_tol if self.rel_tol is not None else base.rel_tol,
                          self.required or base.required)

    def with_direction(self, direction: bool | None) -> MetricRule:
        """The same rule with a direction filled in where it has none (a remembered one, say)."""
        return self if self.direction is not None or direction is None else replace(self, direction=direction)

    @property
    def direction_word(self) -> str | None:
        """"higher", "lower" or None."""
        return None if self.direction is None else ("higher" if self.direction else "lower")

    def tolerance_text(self) -> str:
        """"±0.01", "±1%", "±0.01 or ±1%" (whichever is larger), "" without a tolerance."""
        parts = []
        if self.abs_tol:
            parts.append(f"±{self.abs_tol:g}")
        if self.rel_tol:
            parts.append(f"±{self.rel_tol * 100:g}%")
        return " or ".join(parts)

    def describe(self) -> str:
        """"higher is better, ±0.01 or ±1%", "lower is better", "direction unknown"."""
        head = "direction unknown" if self.direction is None else f"{self.direction_word} is better"
        tol = self.tolerance_text()
        return head + (f", {tol}" if tol else "")

    def to_json(self) -> dict[str, Any]:
        return {"direction": self.direction_word, "tolerance": self.abs_tol, "rel_tolerance": self.rel_tol,
                "required": self.required}


_KEY_OF = {"abs_tol": "tolerance", "rel_tol": "rel_tolerance"}
UNRULED = MetricRule()  # no direction, no tolerance: any change counts, but its sign means nothing


def change(base: float, new: float) -> tuple[float, float | None]:
    """(new - base, (new - base) / |base|); the relative change is None when base is 0."""
    delta = new - base
    return delta, (delta / abs(base) if base != 0 else None)


def verdict(rule: MetricRule, base: float, new: float) -> Verdict:
    """The verdict of moving from `base` to `new` by `rule` (the module docstring has the exact edges)."""
    if not (math.isfinite(base) and math.isfinite(new)):
        return Verdict.INVALID
    tol = rule.tolerance(base)
    slack = SLACK_ULPS * math.ulp(max(abs(base), tol))
    delta = new - base
    if abs(delta) <= tol + slack:
        return Verdict.UNCHANGED
    if rule.direction is None:
        return Verdict.UNKNOWN
    return Verdict.IMPROVED if (delta > 0) == rule.direction else Verdict.REGRESSED


# -- keys ----------------------------------------------------------------------------------------------------
def split_key(key: str) -> tuple[str, str]:
    """"task/metric" -> ("task", "metric"); "task/*" -> ("task", "*"). Task names never contain "/"."""
    task, sep, metric = key.partition("/")
    if not sep or not task or not metric:
        raise ConfigError(f"{key!r} is not TASK/METRIC (or TASK/* for every metric of a task)")
    return task, metric


def rule_for(rules: Mapping[tuple[str, str], MetricRule], task: str, metric: str) -> MetricRule:
    """The rule of one metric: its (task, metric) rule layered over its task's (task, "*") rule."""
    exact = rules.get((task, metric), UNRULED)
    return exact.over(rules.get((task, ALL_METRICS), UNRULED)) if metric != ALL_METRICS else exact


# -- configuration ---------------------------------------------------------------------------------------------
def parse_direction(value: Any, where: str) -> bool:
    if value not in DIRECTIONS:
        raise ConfigError(f"{where}: direction must be \"higher\" or \"lower\" (which is better), got {value!r}")
    return DIRECTIONS[value]


def parse_rule(spec: Any, where: str, *, require_direction: bool = False) -> MetricRule:
    """One metric's rule from its config value: "higher" / "lower", or a table of RULE_KEYS.

    `where` names it in errors (file, table, metric). ConfigError on anything else.
    """
    if isinstance(spec, str):
        spec = {"direction": spec}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where} must be \"higher\", \"lower\" or a table with direction, tolerance, "
                          "rel_tolerance, required")
    unknown = set(spec) - set(RULE_KEYS)
    if unknown:
        raise ConfigError(f"{where} has unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                          f"known: {', '.join(RULE_KEYS)}")
    if "direction" in spec or require_direction:
        direction: bool | None = parse_direction(spec.get("direction"), where)
    else:
        direction = None
    values = {}
    for key, attr in (("tolerance", "abs_tol"), ("rel_tolerance", "rel_tol")):
        value = spec.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value < 0):
            raise ConfigError(f"{where}: {key} must be a finite number >= 0, got {value!r}")
        values[attr] = value
    required = spec.get("required", False)
    if not isinstance(required, bool):
        raise ConfigError(f"{where}: required must be true or false, got {required!r}")
    return MetricRule(direction, values["abs_tol"], values["rel_tol"], required)


def parse_rules(*configs: Mapping[str, Any], sources: tuple[str, ...] = ()) -> dict[tuple[str, str], MetricRule]:
    """Every metric rule of the given parsed TOML configs, by (task, metric) or (task, "*").

    Pass mlvc.toml's dict first and .mlvc/config.toml's after it (`sources` names them in errors): as for
    tasks, a later file's [tasks.NAME] replaces an earlier one's whole, and a later [check.metrics] entry
    replaces the same key's entry whole. Within the result, a [check.metrics] entry is layered over the
    task's own rule for that metric (`MetricRule.over`): it may set tolerances or `required`, but a
    direction that contradicts the task's is a ConfigError (a direction is a fact about the metric, not a
    policy). Only the metric tables are read here; tasks.py checks the rest of a task.
    """
    names = list(sources) + [f"config #{i + 1}" for i in range(len(sources), len(configs))]
    task_rules: dict[str, dict[str, MetricRule]] = {}
    check_rules: dict[tuple[str, str], tuple[MetricRule, str]] = {}
    for config, source in zip(configs, names, strict=False):
        tasks = config.get("tasks", {})
        if not isinstance(tasks, Mapping):
            raise ConfigError(f"{source}: [tasks] must be a table of tasks, like [tasks.accuracy]")
        for task, body in tasks.items():
            metrics = body.get("metrics") if isinstance(body, Mapping) else None
            if not isinstance(metrics, Mapping):
                raise ConfigError(f"{source}: [tasks.{task}]: `metrics` is missing or not a table")
            task_rules[task] = {m: parse_rule(s, f"{source}: [tasks.{task}]: metric {m!r}", require_direction=True)
                                for m, s in metrics.items()}
        check = config.get("check", {})
        if not isinstance(check, Mapping):
            raise ConfigError(f"{source}: [check] must be a table")
        entries = check.get("metrics", {})
        if not isinstance(entries, Mapping):
            raise ConfigError(f"{source}: [check.metrics] must be a table of \"TASK/METRIC\" = rule")
        for key, spec in entries.items():
            where = f"{source}: [check.metrics] {key!r}"
            try:
                k = split_key(key)
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
            check_rules[k] = (parse_rule(spec, where), where)
    out: dict[tuple[str, str], MetricRule] = {}
    for task, metrics in task_rules.items():
        for metric, rule in metrics.items():
            out[(task, metric)] = rule
    for (task, metric), (rule, where) in check_rules.items():
        configured = task_rules.get(task, {})
        targets = list(configured) if metric == ALL_METRICS else [metric]
        for m in targets:
            own = configured.get(m)
            if own is not None and rule.direction is not None and rule.direction != own.direction:
                raise ConfigError(f"{where}: direction {rule.direction_word!r} contradicts [tasks.{task}], "
                                  f"where {m!r} is {own.direction_word!r} is better; remove one")
        base = out.get((task, metric), UNRULED)
        out[(task, metric)] = rule.over(base)
    return out


def required_keys(rules: Mapping[tuple[str, str], MetricRule]) -> list[tuple[str, str]]:
    """The (task, metric) and (task, "*") keys whose rule is required, sorted."""
    return sorted(k for k, r in rules.items() if r.required)

