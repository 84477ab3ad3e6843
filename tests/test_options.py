"""The option checks plugins share (``ctxrl.options``): what YAML can hand a plugin that
Python would silently take for something else."""

from __future__ import annotations

from typing import Any

import pytest

from ctxrl.errors import ConfigError
from ctxrl.options import count_option, flag_option, names_option, number_option, steps_option


@pytest.mark.parametrize("value", [True, 2.5, float("nan"), float("inf"), "3", None, 0])
def test_a_count_is_a_whole_number_of_at_least_its_minimum(value: Any) -> None:
    with pytest.raises(ConfigError, match="x: every must be"):
        count_option(value, "x: every")


def test_counts_and_steps_that_are_whole_numbers_pass() -> None:
    assert count_option(3.0, "x") == 3 and count_option(0, "x", minimum=0) == 0
    assert steps_option(1000, "x: steps") == 1000
    with pytest.raises(ConfigError, match="x: steps must be > 0, got 0"):
        steps_option(0, "x: steps")
    with pytest.raises(ConfigError, match="whole number of env steps, got True"):
        steps_option(True, "x: steps")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, True, "0.1"])
def test_a_number_is_finite_and_in_range(value: Any) -> None:
    with pytest.raises(ConfigError, match="x: coef must be a"):
        number_option(value, "x: coef", positive=False)
    assert number_option(0, "x", positive=False) == 0.0
    with pytest.raises(ConfigError, match="must be a finite number > 0, got 0"):
        number_option(0, "x")


def test_flags_and_names() -> None:
    assert flag_option(False, "x") is False
    with pytest.raises(ConfigError, match="x: on must be true or false, got 'false'"):
        flag_option("false", "x: on")
    assert names_option("actor", "x") == ["actor"]
    assert names_option(["actor", "critic"], "x") == ["actor", "critic"]
    with pytest.raises(ConfigError, match="a name or a list of names, got 3"):
        names_option(3, "x")


def test_a_factory_failing_with_its_own_bug_is_named_where_it_was_configured() -> None:
    """A plugin factory raising something other than TypeError or ValueError (a KeyError
    for an option it looked up) was a raw traceback naming neither the field nor the plugin."""
    from ctxrl.options import check_options

    def factory(**options: object) -> None:
        raise KeyError("coeff")

    with pytest.raises(ConfigError, match=r"transfer.options: 'mine': the plugin's factory failed"):
        check_options(factory, {"coef": 1}, "transfer.options: 'mine'")
