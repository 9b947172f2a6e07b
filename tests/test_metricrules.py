"""mlvc.metricrules: the verdict arithmetic (edges, both directions, absolute and relative tolerances) and the
configuration of rules ([tasks.NAME] metrics and [check.metrics])."""

from __future__ import annotations

import math
import tomllib
from fractions import Fraction

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from mlvc.errors import ConfigError
from mlvc.metricrules import (
    ALL_METRICS,
    UNRULED,
    MetricRule,
    Verdict,
    change,
    parse_rule,
    parse_rules,
    required_keys,
    rule_for,
    split_key,
    verdict,
)

IMPROVED, REGRESSED, UNCHANGED, UNKNOWN, INVALID = (Verdict.IMPROVED, Verdict.REGRESSED, Verdict.UNCHANGED,
                                                   Verdict.UNKNOWN, Verdict.INVALID)
RANK = {REGRESSED: 0, UNCHANGED: 1, IMPROVED: 2}
FLIP = {IMPROVED: REGRESSED, REGRESSED: IMPROVED, UNCHANGED: UNCHANGED, UNKNOWN: UNKNOWN, INVALID: INVALID}

values = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False)
tols = st.none() | st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)
rel_tols = st.none() | st.floats(min_value=0, max_value=10, allow_nan=False, allow_infinity=False)
directions = st.sampled_from([True, False])
rules = st.builds(MetricRule, st.none() | directions, tols, rel_tols)
directed_rules = st.builds(MetricRule, directions, tols, rel_tols)


def dec(numerator: int, denominator: int) -> float:
    """numerator / denominator as the float nearest to the decimal (what a user types or an evaluator prints)."""
    return float(Fraction(numerator, denominator))


# -- examples, both directions -----------------------------------------------------------------------------------
@pytest.mark.parametrize("direction, base, new, expected", [
    (True, 0.50, 0.49, UNCHANGED),  # a drop equal to the tolerance, as written in decimal
    (True, 0.50, 0.51, UNCHANGED),
    (True, 0.50, 0.4899, REGRESSED),
    (True, 0.50, 0.5101, IMPROVED),
    (False, 0.50, 0.4899, IMPROVED),
    (False, 0.50, 0.5101, REGRESSED),
    (False, 0.30, 0.31, UNCHANGED),  # 0.31 - 0.30 is 0.010000000000000009 in binary
    (True, -2.0, -2.01, UNCHANGED),  # negative values: the change's sign decides, not the value's
    (True, -2.0, -2.02, REGRESSED),
    (False, -2.0, -2.02, IMPROVED),
])
def test_absolute_tolerance_examples(direction, base, new, expected):
    assert verdict(MetricRule(direction, abs_tol=0.01), base, new) == expected


@pytest.mark.parametrize("rule, base, new, expected", [
    (MetricRule(True, rel_tol=0.01), 200.0, 198.0, UNCHANGED),  # -1 % of 200 exactly
    (MetricRule(True, rel_tol=0.01), 200.0, 197.99, REGRESSED),
    (MetricRule(True, rel_tol=0.01), -200.0, -202.0, UNCHANGED),  # relative to |base|
    (MetricRule(False, rel_tol=0.01), -200.0, -202.01, IMPROVED),
    (MetricRule(True, rel_tol=0.5), 0.0, 1e-9, IMPROVED),  # base 0: a relative tolerance allows nothing
    (MetricRule(True, abs_tol=1e-8, rel_tol=0.5), 0.0, 1e-9, UNCHANGED),  # ... and the absolute one still counts
    (MetricRule(True, abs_tol=0.5, rel_tol=0.01), 10.0, 9.6, UNCHANGED),  # both: the looser (0.5 > 0.1)
    (MetricRule(True, abs_tol=0.05, rel_tol=0.01), 10.0, 9.9, UNCHANGED),  # both: the looser (0.1 > 0.05)
    (MetricRule(True, abs_tol=0.05, rel_tol=0.01), 10.0, 9.89, REGRESSED),
    (MetricRule(None, abs_tol=0.01), 0.5, 0.505, UNCHANGED),  # no direction, within tolerance
    (MetricRule(None, abs_tol=0.01), 0.5, 0.6, UNKNOWN),
    (UNRULED, 1.0, 1.0, UNCHANGED),
    (UNRULED, 1.0, 2.0, UNKNOWN),
])
def test_relative_and_combined_examples(rule, base, new, expected):
    assert verdict(rule, base, new) == expected


@pytest.mark.parametrize("base, new", [(math.nan, 1.0), (1.0, math.nan), (math.inf, 1.0), (1.0, -math.inf),
                                       (math.nan, math.nan), (math.inf, math.inf)])
@pytest.mark.parametrize("rule", [MetricRule(True, 0.1), MetricRule(False, rel_tol=0.1), UNRULED])
def test_nan_and_infinite_values_are_invalid(rule, base, new):
    assert verdict(rule, base, new) == INVALID


def test_change_and_tolerance():
    assert change(2.0, 1.5) == (-0.5, -0.25)
    assert change(-2.0, -1.0) == (1.0, 0.5)  # relative to |base|: up from -2 is +50 %
    assert change(0.0, 1.0) == (1.0, None)
    assert MetricRule(abs_tol=0.1, rel_tol=0.01).tolerance(100.0) == 1.0
    assert MetricRule(abs_tol=0.1, rel_tol=0.01).tolerance(-5.0) == 0.1
    assert UNRULED.tolerance(123.0) == 0.0


# -- properties ----------------------------------------------------------------------------------------------------
@given(directed_rules, values, values, values)
def test_a_better_value_never_gets_a_worse_verdict(rule, base, x, y):
    lo, hi = min(x, y), max(x, y)
    worse, better = (lo, hi) if rule.direction else (hi, lo)
    assert RANK[verdict(rule, base, better)] >= RANK[verdict(rule, base, worse)]


@given(rules, values, values)
def test_directions_mirror_each_other(rule, base, new):
    """Flipping the direction flips improved and regressed; negating both values and flipping gives the same."""
    v = verdict(rule, base, new)
    assume(rule.direction is not None)
    flipped = MetricRule(not rule.direction, rule.abs_tol, rule.rel_tol)
    assert verdict(flipped, base, new) == FLIP[v]
    assert verdict(flipped, -base, -new) == v


@given(rules, values, values)
def test_unknown_direction_only_says_whether_the_change_is_within_tolerance(rule, base, new):
    v_none = verdict(MetricRule(None, rule.abs_tol, rule.rel_tol), base, new)
    v_up = verdict(MetricRule(True, rule.abs_tol, rule.rel_tol), base, new)
    assert v_none == (UNCHANGED if v_up == UNCHANGED else UNKNOWN)


@given(directions, values, values, tols, rel_tols)
def test_both_tolerances_take_the_looser(direction, base, new, abs_tol, rel_tol):
    both = verdict(MetricRule(direction, abs_tol, rel_tol), base, new)
    either = {verdict(MetricRule(direction, abs_tol, None), base, new),
              verdict(MetricRule(direction, None, rel_tol), base, new)}
    assert (both == UNCHANGED) == (UNCHANGED in either)
    if both != UNCHANGED:
        assert either == {both}


@given(directions, st.integers(-10**6, 10**6), st.integers(0, 10**4), st.sampled_from([1, -1]))
def test_a_change_exactly_at_the_absolute_tolerance_is_within_it(direction, k, t, sign):
    """Decimal values k/100 and a tolerance t/100, each rounded to binary as typed: at it, and 0.01 past it."""
    rule = MetricRule(direction, abs_tol=dec(t, 100))
    base = dec(k, 100)
    assert verdict(rule, base, dec(k + sign * t, 100)) == UNCHANGED
    past = verdict(rule, base, dec(k + sign * (t + 1), 100))
    assert past == (IMPROVED if (sign > 0) == direction else REGRESSED)


@given(directions, st.integers(-10**6, 10**6), st.integers(0, 100), st.sampled_from([1, -1]))
def test_a_change_exactly_at_the_relative_tolerance_is_within_it(direction, k, p, sign):
    """base k/100, rel_tol p %: the change |base| * p / 100 is within it, 1e-4 more is not."""
    rule = MetricRule(direction, rel_tol=dec(p, 100))
    base = dec(k, 100)
    at = abs(k) * p  # the tolerance in units of 1e-4
    assert verdict(rule, base, dec(k * 100 + sign * at, 10**4)) == UNCHANGED
    past = verdict(rule, base, dec(k * 100 + sign * (at + 1), 10**4))
    assert past == (IMPROVED if (sign > 0) == direction else REGRESSED)


@given(directions, rel_tols, st.floats(min_value=1e-300, max_value=1e12), st.sampled_from([1.0, -1.0]))
def test_relative_tolerance_allows_no_change_from_zero(direction, rel_tol, size, sign):
    v = verdict(MetricRule(direction, None, rel_tol), 0.0, sign * size)
    assert v == (IMPROVED if (sign > 0) == direction else REGRESSED)


@given(rules, values, st.integers(1, 4))
def test_float_noise_of_a_few_ulps_is_unchanged(rule, base, ulps):
    new = base
    for _ in range(ulps):
        new = math.nextafter(new, math.inf)
    assert verdict(rule, base, new) == UNCHANGED


@given(rules, values)
def test_no_change_is_unchanged(rule, base):
    assert verdict(rule, base, base) == UNCHANGED


# -- rules themselves ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [{"abs_tol": -0.1}, {"rel_tol": math.nan}, {"abs_tol": math.inf},
                                    {"rel_tol": True}, {"abs_tol": "0.1"}, {"direction": "higher"},
                                    {"required": 1}])
def test_bad_rules_are_refused(kwargs):
    with pytest.raises(ConfigError):
        MetricRule(**kwargs)


def test_layering_describe_and_json():
    config = MetricRule(True, 0.01, None)
    flags = MetricRule(None, None, 0.02, required=True)
    both = flags.over(config)
    assert both == MetricRule(True, 0.01, 0.02, True)
    assert both.describe() == "higher is better, ±0.01 or ±2%"
    assert MetricRule(False).describe() == "lower is better"
    assert UNRULED.describe() == "direction unknown"
    assert both.to_json() == {"direction": "higher", "tolerance": 0.01, "rel_tolerance": 0.02, "required": True}
    assert UNRULED.with_direction(False).direction is False
    assert MetricRule(True).with_direction(False).direction is True  # a given direction is kept


# -- configuration -----------------------------------------------------------------------------------------------------
PROJECT = tomllib.loads("""
[tasks.qa]
command = ["x", "{checkpoint}"]
metrics = { f1 = { direction = "higher", tolerance = 0.002, rel_tolerance = 0.01 }, loss = "lower" }

[check.metrics]
"qa/loss" = { tolerance = 0.05, required = true }
"train/loss" = { direction = "lower", rel_tolerance = 0.02 }
"qa/*" = { tolerance = 0.001 }
""")


def test_parse_rules_reads_tasks_and_check_entries():
    rules = parse_rules(PROJECT, sources=("mlvc.toml",))
    assert rules[("qa", "f1")] == MetricRule(True, 0.002, 0.01)
    assert rules[("qa", "loss")] == MetricRule(False, 0.05, None, True)  # check entry layered over the task's
    assert rules[("train", "loss")] == MetricRule(False, None, 0.02)
    assert rules[("qa", ALL_METRICS)] == MetricRule(None, 0.001)
    assert rule_for(rules, "qa", "f1") == MetricRule(True, 0.002, 0.01)  # the exact rule's fields win
    assert rule_for(rules, "qa", "extra") == MetricRule(None, 0.001)  # a metric only the wildcard covers
    assert rule_for(rules, "nope", "x") == UNRULED
    assert required_keys(rules) == [("qa", "loss")]


def test_a_later_config_replaces_tasks_whole_and_check_entries_by_key():
    local = tomllib.loads("""
    [tasks.qa]
    command = ["y", "{checkpoint}"]
    metrics = { f1 = "higher" }
    [check.metrics]
    "train/loss" = { direction = "lower", tolerance = 1.0 }
    """)
    rules = parse_rules(PROJECT, local)
    assert rules[("qa", "f1")] == MetricRule(True)
    assert rules[("qa", "loss")] == MetricRule(None, 0.05, None, True)  # only the check entry is left
    assert rules[("train", "loss")] == MetricRule(False, 1.0, None)


@pytest.mark.parametrize("text, message", [
    ('[check.metrics]\n"qa" = "higher"', "is not TASK/METRIC"),
    ('[check.metrics]\n"/m" = "higher"', "is not TASK/METRIC"),
    ('[check.metrics]\n"t/m" = { direction = "up" }', 'direction must be "higher" or "lower"'),
    ('[check.metrics]\n"t/m" = { tolerance = -1 }', "tolerance must be a finite number >= 0"),
    ('[check.metrics]\n"t/m" = { rel_tolerance = nan }', "rel_tolerance must be a finite number >= 0"),
    ('[check.metrics]\n"t/m" = { tolerance = true }', "tolerance must be a finite number >= 0"),
    ('[check.metrics]\n"t/m" = { required = "yes" }', "required must be true or false"),
    ('[check.metrics]\n"t/m" = { margin = 1 }', "unknown key(s) margin"),
    ('[check.metrics]\n"t/m" = 3', 'must be "higher", "lower" or a table'),
    ('[check]\nmetrics = 3', "[check.metrics] must be a table"),
    ('check = 3', "[check] must be a table"),
    ('[tasks.t]\nmetrics = { a = { tolerance = 1 } }', 'direction must be "higher" or "lower"'),
    ('[tasks.t]\nmetrics = { a = "higher" }\n[check.metrics]\n"t/a" = "lower"', "contradicts [tasks.t]"),
    ('[tasks.t]\nmetrics = { a = "higher" }\n[check.metrics]\n"t/*" = "lower"', "contradicts [tasks.t]"),
])
def test_bad_rule_configs_get_clear_errors(text, message):
    with pytest.raises(ConfigError) as e:
        parse_rules(tomllib.loads(text), sources=("mlvc.toml",))
    assert message in str(e.value) and "mlvc.toml" in str(e.value)


def test_parse_rule_and_split_key():
    assert parse_rule("lower", "x") == MetricRule(False)
    assert parse_rule({"tolerance": 1}, "x") == MetricRule(None, 1.0)
    with pytest.raises(ConfigError, match="direction"):
        parse_rule({"tolerance": 1}, "x", require_direction=True)
    assert split_key("a.b-c/metric/with/slash") == ("a.b-c", "metric/with/slash")
    assert split_key("t/*") == ("t", ALL_METRICS)
