"""ContextFeature, ContextSpace, Context, Task and grids."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from ctxrl import Context, ContextError, ContextFeature, ContextSpace, GridAxis, Task

SPACE = ContextSpace(
    [
        ContextFeature("mass", 1.0, 0.1, 10.0, scale="log", unit="kg"),
        ContextFeature("length", 0.5, 0.05, 5.0),
        ContextFeature("gravity", 9.8, 1.0, 20.0),
    ],
    owner="Toy",
)


def test_validate_fills_defaults() -> None:
    context = SPACE.validate({"mass": 2.0})
    assert context == {"mass": 2.0, "length": 0.5, "gravity": 9.8}


def test_unknown_feature_is_named_with_the_known_ones() -> None:
    with pytest.raises(ContextError) as excinfo:
        SPACE.validate({"masss": 2.0})
    message = str(excinfo.value)
    assert "Toy" in message and "'masss'" in message and "mass, length, gravity" in message


@pytest.mark.parametrize("value", [0.0, 10.5, math.inf, math.nan])
def test_out_of_bounds_names_feature_value_and_bounds(value: float) -> None:
    with pytest.raises(ContextError) as excinfo:
        SPACE.validate({"mass": value})
    message = str(excinfo.value)
    assert "Toy" in message and "'mass'" in message and "[0.1, 10.0]" in message
    assert str(value) in message


@pytest.mark.parametrize("value", ["2", None, True, [1.0]])
def test_wrong_type_is_rejected(value: object) -> None:
    with pytest.raises(ContextError, match="'mass' must be a number"):
        SPACE.validate({"mass": value})


def test_feature_definitions_are_checked() -> None:
    with pytest.raises(ContextError, match="default 20"):
        ContextFeature("x", 20.0, 0.0, 10.0)
    with pytest.raises(ContextError, match="log scale needs lower > 0"):
        ContextFeature("x", 1.0, 0.0, 10.0, scale="log")
    with pytest.raises(ContextError, match="finite"):
        ContextFeature("x", 1.0, 0.0, math.inf)
    with pytest.raises(ContextError, match="listed twice"):
        ContextSpace([ContextFeature("x", 1, 0, 2), ContextFeature("x", 1, 0, 2)])


def test_linear_and_log_grids() -> None:
    grid = SPACE.grid([GridAxis("mass", num=3), GridAxis("length", num=2, low=0.5, high=1.0)])
    assert grid.shape == (3, 2) and len(grid) == 6
    np.testing.assert_allclose(grid.axis_values[0], [0.1, 1.0, 10.0])  # log scale of the feature
    assert grid.axis_values[1] == (0.5, 1.0)
    assert grid.contexts[0] == {"mass": 0.1, "length": 0.5, "gravity": 9.8}
    assert grid.contexts[1] == {"mass": 0.1, "length": 1.0, "gravity": 9.8}
    np.testing.assert_allclose(grid.grid_coords()[:, 0], [0, 0, 0.5, 0.5, 1, 1])
    linear = SPACE.grid([GridAxis("mass", num=3, scale="linear")])
    np.testing.assert_allclose(linear.axis_values[0], [0.1, 5.05, 10.0])


def test_grid_errors_name_the_feature() -> None:
    with pytest.raises(ContextError, match="at least one feature"):
        SPACE.grid([])
    with pytest.raises(ContextError, match="'mass' needs num >= 1"):
        SPACE.grid([GridAxis("mass", num=0)])
    with pytest.raises(ContextError, match="'mass' has no values"):
        SPACE.grid([GridAxis("mass", values=())])
    with pytest.raises(ContextError, match=r"'mass' = 50.0 is outside"):
        SPACE.grid([GridAxis("mass", num=3, high=50.0)])
    with pytest.raises(ContextError, match="no context feature 'size'"):
        SPACE.grid([GridAxis("size", num=3)])


def test_an_integer_feature_refuses_grid_points_that_make_one_environment() -> None:
    cells = ContextFeature("cells", 5.0, 1.0, 7.0, integer=True)
    space = ContextSpace([cells], owner="Grid")
    assert [cells.env_value(v) for v in (2.4, 2.5, 2.4999999, 3.49)] == [2.0, 3.0, 3.0, 3.0]
    assert space.grid([GridAxis("cells", num=7)]).axis_values[0] == (1, 2, 3, 4, 5, 6, 7)
    # 10 points over 1..7 put two of them on one integer: one environment trained twice
    with pytest.raises(ContextError) as excinfo:
        space.grid([GridAxis("cells", num=10)])
    message = str(excinfo.value)
    assert "Grid" in message and "'cells'" in message and "10 points from 1.0 to 7.0" in message
    assert "1.66667 and 2.33333 both give 2" in message
    with pytest.raises(ContextError, match=r"its values make one environment twice \(3.2 and 3.4"):
        space.grid([GridAxis("cells", values=(3.2, 3.4, 5.0))])
    assert space.env_context({"cells": 3.4}) == space.env_context({"cells": 2.5})
    # a feature that is not an integer keeps close values apart
    assert len(SPACE.grid([GridAxis("length", values=(0.50, 0.51))])) == 2


def test_unit_cube_round_trip() -> None:
    rng = np.random.default_rng(0)
    contexts = SPACE.sample(50, rng)
    names = list(SPACE.names)
    unit = SPACE.to_unit(contexts, names)
    assert unit.shape == (50, 3) and unit.min() >= 0 and unit.max() <= 1
    back = SPACE.from_unit(unit, names)
    for a, b in zip(contexts, back, strict=True):
        for name in names:
            assert a[name] == pytest.approx(b[name], rel=1e-12)
    # log scale: the geometric middle maps to 0.5
    assert SPACE.to_unit([SPACE.validate({"mass": 1.0})], ["mass"])[0, 0] == pytest.approx(0.5)


def test_context_is_hashable_and_order_free() -> None:
    a = Context({"x": 1.0, "y": 2.0})
    b = Context({"y": 2, "x": 1})
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a.canonical() == '{"x":1.0,"y":2.0}'
    # -0.0 == 0.0: one context, one id (two ids kept its stored runs from being reused)
    zero, negative_zero = Context({"x": 0.0}), Context({"x": -0.0})
    assert zero == negative_zero and zero.canonical() == negative_zero.canonical()


def test_task_id_is_stable_across_processes() -> None:
    task = Task("Toy", SPACE.validate({"mass": 2.0}))
    code = (
        "from ctxrl import Task, Context;"
        "print(Task('Toy', Context({'gravity': 9.8, 'length': 0.5, 'mass': 2.0})).id)"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == task.id
    assert task.id.startswith("Toy-") and len(task.id) == len("Toy-") + 12
    assert Task("Toy", SPACE.validate({"mass": 2.0000001})).id != task.id


def test_a_bound_read_back_from_a_float32_twin_is_the_bound() -> None:
    """A float32 twin holds pi as 3.1415927410125732, above the bound pi: copied into a
    gymnasium env or a float64 twin it was refused as out of range. A value that rounds to a
    bound in float32 is taken as the bound; one past it is still refused."""
    feature = ContextFeature("angle", 1.0, 0.0, math.pi)
    assert feature.check(float(np.float32(math.pi))) == math.pi
    assert feature.check(float(np.float32(0.1))) == float(np.float32(0.1))  # inside: as given
    with pytest.raises(ContextError, match="outside the allowed range"):
        feature.check(3.1416)
