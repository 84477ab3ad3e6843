"""Contexts: the parameters that index a family of tasks.

A :class:`ContextFeature` is one physical parameter (a cart's mass in kg, a pole's length in m)
with a default and finite bounds. A :class:`ContextSpace` holds an environment's features and
turns user input into validated :class:`Context` values, grids, samples and unit-cube
coordinates. A :class:`Task` is an environment name plus a context; it is hashable and has an id
that is stable across processes and Python versions.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Real
from typing import Literal

import numpy as np

from ctxrl.errors import ContextError

Scale = Literal["linear", "log"]


def name_list(names: str | Sequence[str]) -> list[str]:
    """Names given as a list, or one name alone (``visible: masscart`` as ``[masscart]``: a
    string is not split into its characters)."""
    return [names] if isinstance(names, str) else [str(name) for name in names]


def visible_features(space: ContextSpace, names: str | Sequence[str]) -> tuple[str, ...]:
    """``visible`` features of ``space`` (one name or a list), each a feature of it and named
    once (shown twice, a feature took two observation columns); a :class:`ContextError`
    naming the one that is not."""
    visible = name_list(names)
    for index, name in enumerate(visible):
        space.feature(name)
        if name in visible[:index]:
            raise ContextError(f"visible: {name!r} is listed twice")
    return tuple(visible)


def _canonical_number(value: float) -> str:
    """A textual form of a float that is identical everywhere (repr is shortest round-trip);
    -0.0 is 0.0, as the contexts compare equal."""
    return repr(float(value) + 0.0)


@dataclass(frozen=True)
class ContextFeature:
    """One context parameter.

    Attributes:
        name: the key users write (``masscart``).
        default: the value of the unmodified environment.
        lower, upper: inclusive bounds; finite, ``lower <= default <= upper``.
        scale: ``linear`` or ``log``; grids, samples and unit-cube coordinates follow it.
        unit: physical unit for docs and plots (``kg``, ``m/s^2``); empty if dimensionless.
        description: one line saying what the feature changes.
        integer: the environment takes the value rounded to the nearest integer, halves up
            (:meth:`env_value`): a count of cells, a noise level. Two grid points that round
            to one integer are one environment, so a grid that makes them is refused.
    """

    name: str
    default: float
    lower: float
    upper: float
    scale: Scale = "linear"
    unit: str = ""
    description: str = ""
    integer: bool = False

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ContextError(f"context feature name {self.name!r} is not an identifier")
        if not (math.isfinite(self.lower) and math.isfinite(self.upper)):
            raise ContextError(
                f"context feature {self.name!r}: bounds must be finite, got "
                f"[{self.lower}, {self.upper}]"
            )
        if self.lower > self.upper:
            raise ContextError(
                f"context feature {self.name!r}: lower bound {self.lower} is above upper bound "
                f"{self.upper}"
            )
        if not self.lower <= self.default <= self.upper:
            raise ContextError(
                f"context feature {self.name!r}: default {self.default} is outside "
                f"[{self.lower}, {self.upper}]"
            )
        if self.scale not in ("linear", "log"):
            raise ContextError(
                f"context feature {self.name!r}: scale {self.scale!r} is not 'linear' or 'log'"
            )
        if self.scale == "log" and self.lower <= 0:
            raise ContextError(
                f"context feature {self.name!r}: a log scale needs lower > 0, got {self.lower}"
            )

    # ----------------------------------------------------------------- transforms
    def to_unit(self, value: float | np.ndarray) -> np.ndarray:
        """Map values in ``[lower, upper]`` to ``[0, 1]`` along the feature's scale."""
        v = np.asarray(value, dtype=np.float64)
        if self.scale == "log":
            lo, hi = math.log(self.lower), math.log(self.upper)
            return (np.log(v) - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
        span = self.upper - self.lower
        return (v - self.lower) / span if span > 0 else np.zeros_like(v)

    def from_unit(self, u: float | np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_unit`."""
        u = np.asarray(u, dtype=np.float64)
        if self.scale == "log":
            lo, hi = math.log(self.lower), math.log(self.upper)
            return np.exp(lo + u * (hi - lo))
        return self.lower + u * (self.upper - self.lower)

    def check(self, value: object, owner: str = "") -> float:
        """Return ``value`` as a float or raise a :class:`ContextError` that names the feature,
        the value and the allowed range."""
        where = f"{owner}: " if owner else ""
        if isinstance(value, bool) or not isinstance(value, Real):
            raise ContextError(
                f"{where}context feature {self.name!r} must be a number in "
                f"[{self.lower}, {self.upper}], got {value!r} ({type(value).__name__})"
            )
        v = float(value)
        # a bound read back from a float32 twin (pi as 3.1415927410125732) is the bound
        if v > self.upper and np.float32(v) == np.float32(self.upper):
            v = self.upper
        elif v < self.lower and np.float32(v) == np.float32(self.lower):
            v = self.lower
        if not math.isfinite(v) or not self.lower <= v <= self.upper:
            raise ContextError(
                f"{where}context feature {self.name!r} = {v} is outside the allowed range "
                f"[{self.lower}, {self.upper}]"
            )
        return v

    def env_value(self, value: float) -> float:
        """The value the environment uses: ``value`` itself, or for an ``integer`` feature the
        nearest integer, halves up, of its float32 value (``floor(x + 0.5)`` in float32, as a
        twin rounds the float32 contexts the trainers pass it: 2.4999999 is 2.5 in float32)."""
        if not self.integer:
            return float(value)
        return float(np.floor(np.float32(value) + np.float32(0.5)))

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "default": self.default,
            "lower": self.lower,
            "upper": self.upper,
            "scale": self.scale,
            "unit": self.unit,
            "description": self.description,
            "integer": self.integer,
        }


class Context(Mapping[str, float]):
    """An immutable, hashable mapping from feature name to value."""

    __slots__ = ("_items",)
    _items: tuple[tuple[str, float], ...]

    def __init__(self, values: Mapping[str, float] | None = None) -> None:
        items = tuple(sorted((str(k), float(v)) for k, v in (values or {}).items()))
        object.__setattr__(self, "_items", items)

    def __getitem__(self, key: str) -> float:
        for name, value in self._items:
            if name == key:
                return value
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Context):
            return self._items == other._items
        if isinstance(other, Mapping):
            return dict(self._items) == {str(k): float(v) for k, v in other.items()}
        return NotImplemented

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v:g}" for k, v in self._items)
        return f"Context({inner})"

    def canonical(self) -> str:
        """JSON text that is identical for equal contexts (sorted keys, round-trip floats)."""
        return "{" + ",".join(f'"{k}":{_canonical_number(v)}' for k, v in self._items) + "}"

    def as_dict(self) -> dict[str, float]:
        return dict(self._items)


@dataclass(frozen=True)
class Task:
    """One member of a contextual family: an environment name and a full context."""

    env: str
    context: Context

    @property
    def id(self) -> str:
        """Stable id: ``{env}-{first 12 hex digits of sha256(env + canonical context)}``."""
        digest = hashlib.sha256(f"{self.env}|{self.context.canonical()}".encode()).hexdigest()
        return f"{self.env}-{digest[:12]}"

    def label(self, features: Sequence[str] | None = None) -> str:
        keys = list(features) if features is not None else list(self.context)
        return ", ".join(f"{k}={self.context[k]:g}" for k in keys)


@dataclass(frozen=True)
class GridAxis:
    """How one feature is gridded: ``num`` points between ``low`` and ``high`` (the feature's
    bounds when omitted) on ``scale`` (the feature's own when omitted), or explicit ``values``."""

    feature: str
    num: int | None = None
    low: float | None = None
    high: float | None = None
    scale: Scale | None = None
    values: tuple[float, ...] | None = None


@dataclass(frozen=True)
class ContextGrid:
    """A Cartesian grid of contexts; the first axis varies slowest.

    Attributes:
        features: names of the varied features, one per axis.
        axis_values: the values along each axis, in increasing order.
        contexts: ``N = prod(shape)`` full contexts (non-varied features at their defaults).
    """

    features: tuple[str, ...]
    axis_values: tuple[tuple[float, ...], ...]
    contexts: tuple[Context, ...] = field(repr=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(v) for v in self.axis_values)

    def __len__(self) -> int:
        return len(self.contexts)

    def grid_coords(self) -> np.ndarray:
        """Each context's position on the grid, scaled to [0, 1] per axis, shape ``(N, d)``.

        Index ``i`` of an axis with ``n`` points maps to ``i / (n - 1)`` (0 when ``n == 1``),
        so distances are grid-index distances, as in the MBTL reference."""
        axes = [np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1) for n in self.shape]
        return np.array(list(itertools.product(*axes)), dtype=np.float64).reshape(len(self), -1)

    def values(self) -> np.ndarray:
        """The varied features' values, shape ``(N, d)``."""
        return np.array([[c[f] for f in self.features] for c in self.contexts], dtype=np.float64)


class ContextSpace:
    """The context features of one environment.

    Args:
        features: the environment's features; names must be unique.
        owner: the environment's name, used in error messages.
    """

    def __init__(self, features: Sequence[ContextFeature], owner: str = "") -> None:
        names = [f.name for f in features]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ContextError(f"{owner}: context features listed twice: {duplicated}")
        self._features = {f.name: f for f in features}
        self.owner = owner

    # ---------------------------------------------------------------- lookup
    @property
    def features(self) -> tuple[ContextFeature, ...]:
        return tuple(self._features.values())

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._features)

    def __contains__(self, name: object) -> bool:
        return name in self._features

    def __len__(self) -> int:
        return len(self._features)

    def feature(self, name: str) -> ContextFeature:
        try:
            return self._features[name]
        except KeyError:
            raise ContextError(
                f"{self.owner or 'environment'} has no context feature {name!r}; "
                f"known features: {', '.join(self.names)}"
            ) from None

    def default(self) -> Context:
        return Context({f.name: f.default for f in self.features})

    def env_context(self, context: Mapping[str, float]) -> Context:
        """The context as the environment uses it (``integer`` features rounded,
        :meth:`ContextFeature.env_value`): two contexts that give one environment are equal
        here."""
        return Context({name: self.feature(name).env_value(v) for name, v in context.items()})

    # ------------------------------------------------------------ validation
    def validate(self, values: Mapping[str, object] | None) -> Context:
        """A full context from a partial mapping (missing features take their defaults).

        Every key and value is checked before anything is returned, so a bad mapping is
        rejected whole: an unknown feature, a non-number or an out-of-bounds value raises a
        :class:`ContextError` naming the environment, the feature, the value and the bounds.
        """
        if values is None:
            return self.default()
        if not isinstance(values, Mapping):
            raise ContextError(
                f"{self.owner}: a context must be a mapping of feature -> value, "
                f"got {type(values).__name__}"
            )
        merged = self.default().as_dict()
        for name, value in values.items():
            merged[name] = self.feature(str(name)).check(value, owner=self.owner)
        return Context(merged)

    # ------------------------------------------------------------- unit cube
    def to_unit(
        self, contexts: Sequence[Mapping[str, float]], features: Sequence[str]
    ) -> np.ndarray:
        """Unit-cube coordinates of ``features`` for each context, shape ``(len(contexts), d)``."""
        specs = [self.feature(f) for f in features]
        out = np.empty((len(contexts), len(specs)), dtype=np.float64)
        for j, spec in enumerate(specs):
            out[:, j] = spec.to_unit(np.array([c[spec.name] for c in contexts], dtype=np.float64))
        return out

    def from_unit(self, points: np.ndarray, features: Sequence[str]) -> list[Context]:
        """Contexts from unit-cube points of shape ``(n, d)``; other features at their defaults."""
        points = np.atleast_2d(np.asarray(points, dtype=np.float64))
        specs = [self.feature(f) for f in features]
        if points.shape[1] != len(specs):
            raise ContextError(
                f"{self.owner}: points have {points.shape[1]} columns for {len(specs)} features"
            )
        if np.any(points < 0) or np.any(points > 1):
            raise ContextError(f"{self.owner}: unit-cube points must lie in [0, 1]")
        base = self.default().as_dict()
        columns = [spec.from_unit(points[:, j]) for j, spec in enumerate(specs)]
        contexts = []
        for i in range(points.shape[0]):
            values = dict(base)
            for j, spec in enumerate(specs):
                values[spec.name] = float(np.clip(columns[j][i], spec.lower, spec.upper))
            contexts.append(Context(values))
        return contexts

    # ------------------------------------------------------- grids, samples
    def axis(self, axis: GridAxis) -> tuple[float, ...]:
        """The sorted values of one grid axis, checked against the feature's bounds."""
        spec = self.feature(axis.feature)
        if axis.values is not None:
            if len(axis.values) == 0:
                raise ContextError(f"{self.owner}: grid for {spec.name!r} has no values")
            given = tuple(sorted({spec.check(v, owner=self.owner) for v in axis.values}))
            self._check_distinct_envs(spec, given, "its values")
            return given
        if axis.num is None or axis.num < 1:
            raise ContextError(
                f"{self.owner}: grid for {spec.name!r} needs num >= 1 or explicit values, "
                f"got num={axis.num}"
            )
        low = spec.check(spec.lower if axis.low is None else axis.low, owner=self.owner)
        high = spec.check(spec.upper if axis.high is None else axis.high, owner=self.owner)
        if high < low:
            raise ContextError(f"{self.owner}: grid for {spec.name!r} has low {low} > high {high}")
        scale = axis.scale or spec.scale
        if axis.num == 1:
            return (low,)
        if scale == "log":
            if low <= 0:
                raise ContextError(f"{self.owner}: log grid for {spec.name!r} needs low > 0")
            raw = np.geomspace(low, high, axis.num)
        else:
            raw = np.linspace(low, high, axis.num)
        raw[0], raw[-1] = low, high  # exact ends, so the bounds check cannot fail on rounding
        values = tuple(float(v) for v in raw)
        if len(set(values)) < len(values):
            raise ContextError(
                f"{self.owner}: grid for {spec.name!r} repeats contexts ({axis.num} points "
                f"from {low} to {high}); give low < high or num: 1"
            )
        self._check_distinct_envs(spec, values, f"its {axis.num} points from {low} to {high}")
        return values

    def _check_distinct_envs(
        self, spec: ContextFeature, values: Sequence[float], what: str
    ) -> None:
        """Refuse grid values of an ``integer`` feature that round to one environment."""
        seen: dict[float, float] = {}
        for value in values:
            env_value = spec.env_value(value)
            if env_value in seen:
                raise ContextError(
                    f"{self.owner}: grid for {spec.name!r}: {what} make one environment "
                    f"twice ({seen[env_value]:g} and {value:g} both give {env_value:g}: the "
                    f"feature is rounded to an integer); give fewer points or integer values"
                )
            seen[env_value] = value

    def grid(self, axes: Sequence[GridAxis]) -> ContextGrid:
        """The Cartesian product of ``axes`` (first axis slowest); other features at defaults."""
        if not axes:
            raise ContextError(f"{self.owner}: a grid needs at least one feature")
        names = [a.feature for a in axes]
        if len(set(names)) != len(names):
            raise ContextError(f"{self.owner}: a grid lists a feature twice: {names}")
        axis_values = tuple(self.axis(a) for a in axes)
        base = self.default().as_dict()
        contexts = tuple(
            Context({**base, **dict(zip(names, combo, strict=True))})
            for combo in itertools.product(*axis_values)
        )
        return ContextGrid(tuple(names), axis_values, contexts)

    def sample(
        self, n: int, rng: np.random.Generator, features: Sequence[str] | None = None
    ) -> list[Context]:
        """``n`` contexts uniform in the unit cube of ``features`` (all when omitted)."""
        names = list(features) if features is not None else list(self.names)
        return self.from_unit(rng.uniform(size=(n, len(names))), names)

    def to_json(self) -> list[dict[str, object]]:
        return [f.to_json() for f in self.features]


def context_from_json(text: str) -> Context:
    """Parse :meth:`Context.canonical` output (or any JSON object of numbers)."""
    return Context({str(k): float(v) for k, v in json.loads(text).items()})
