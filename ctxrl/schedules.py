"""Context schedules: the context an agent trains on as a function of its env step.

A schedule is piecewise constant: env step ``t`` (per agent, counted from 0) lies in segment
``t // every``, and each segment has one context, computed from the segment index alone. So a
schedule is a pure function of the step (a resumed training needs nothing of it but the step),
and agent ``i``'s contexts never depend on the other agents in a batch.

A *switch* is a segment boundary where the context differs from the previous segment's. The
batched trainers apply switches at iteration boundaries (the first boundary at or after the
switch step) and call every intervention's ``on_context_switch`` hook for the agents that
switched.

Kinds (and their JSON form, ``kind`` plus the constructor's keywords):

- :class:`SequenceSchedule` (``sequence``): a list of contexts, one per segment, cycling or
  holding the last one at the end.
- :class:`SampledSchedule` (``sampled``): a new context drawn for every segment, each feature
  uniform along its scale (log-uniform for ``log`` features), from a seed; e.g. Dohare et al.'s
  Slippery Ant, friction log-uniform in [0.02, 2] redrawn every 2M steps.
- :class:`PeriodicSchedule` (``periodic``): a sine or triangle wave between two contexts.
- :class:`DriftSchedule` (``drift``): a linear drift from one context to another over a number of
  steps, then held.

Periodic and drift schedules interpolate each feature along its scale (geometrically for
``log`` features), so a log-scaled friction drifts by equal factors per segment.

Every schedule is validated against the env's :class:`~ctxrl.context.ContextSpace` when built:
an out-of-range context is a :class:`~ctxrl.errors.ContextError` naming the feature, the value
and the range. :func:`schedule_from_dict` builds one from its JSON form with errors that name
the offending key. This module is torch-free.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from numbers import Integral, Real
from typing import Any, ClassVar, Literal

import numpy as np

from ctxrl.context import Context, ContextSpace
from ctxrl.errors import ConfigError, ContextError

SequenceEnd = Literal["cycle", "hold"]
Waveform = Literal["sine", "triangle"]


def _positive_int(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or int(value) < 1:
        raise ConfigError(f"{where} must be a positive integer (env steps), got {value!r}")
    return int(value)


def _context(space: ContextSpace, values: object, where: str) -> Context:
    """A full context from a partial mapping; errors are prefixed with ``where``."""
    if not isinstance(values, Mapping):
        raise ConfigError(
            f"{where}: a context must be a mapping of feature -> value, got {type(values).__name__}"
        )
    try:
        return space.validate(values)
    except ContextError as exc:
        raise ContextError(f"{where}: {exc}") from None


def _interpolate(space: ContextSpace, start: Context, end: Context, weight: float) -> Context:
    """The context ``weight`` (in [0, 1]) of the way from ``start`` to ``end``, each feature
    along its own scale (geometric for ``log`` features), clipped to its bounds against
    rounding; the ends are returned exactly."""
    if weight <= 0.0:
        return start
    if weight >= 1.0:
        return end
    values: dict[str, float] = {}
    for feature in space.features:
        a, b = start[feature.name], end[feature.name]
        if a == b:  # held: exp(log(a)) need not be a (0.1 -> 0.10000000000000002)
            values[feature.name] = a
            continue
        if feature.scale == "log":
            value = math.exp(math.log(a) + weight * (math.log(b) - math.log(a)))
        else:
            value = a + weight * (b - a)
        values[feature.name] = min(max(value, feature.lower), feature.upper)
    return Context(values)


class ContextSchedule(ABC):
    """Base of context schedules: a context per segment of ``every`` env steps.

    Attributes:
        kind: the name in the JSON form.
        every: env steps per segment (per agent).
        space: the env's context space everything was validated against.
    """

    kind: ClassVar[str] = ""

    def __init__(self, space: ContextSpace, every: int) -> None:
        self.space = space
        self.every = _positive_int(every, f"schedule {self.kind!r}: every")

    @abstractmethod
    def segment_context(self, segment: int) -> Context:
        """The context of segment ``segment`` (steps ``segment * every`` to
        ``(segment + 1) * every - 1``)."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``kind`` plus the constructor's keywords), read back by
        :func:`schedule_from_dict`."""

    def context_at(self, step: int) -> Context:
        """The context in force at env step ``step`` (>= 0)."""
        if step < 0:
            raise ValueError(f"schedule: step {step} is negative")
        return self.segment_context(step // self.every)

    def switch_steps(self, start: int, stop: int) -> list[int]:
        """The switch steps ``s`` with ``start < s <= stop``: multiples of ``every`` where the
        context differs from the one just before."""
        first = start // self.every + 1
        last = stop // self.every
        switches = []
        previous = self.segment_context(first - 1) if first <= last else None
        for segment in range(first, last + 1):
            current = self.segment_context(segment)
            if current != previous:
                switches.append(segment * self.every)
            previous = current
        return switches

    def check_contexts(
        self, check: Callable[[Context], None] | None, total_steps: int, where: str
    ) -> None:
        """Raise a :class:`ConfigError` naming the first segment within ``total_steps`` env
        steps whose context ``check`` (an env's cross-feature constraints,
        ``EnvSpec.check_context``) refuses: before training, not at that segment's switch."""
        if check is None:
            return
        for segment in range((max(total_steps, 1) - 1) // self.every + 1):
            context = self.segment_context(segment)
            try:
                check(context)
            except ContextError as exc:
                steps = f"env steps {segment * self.every}-{(segment + 1) * self.every - 1}"
                raise ConfigError(
                    f"{where}: segment {segment} ({steps}) has the context "
                    f"{context.as_dict()}: {exc}"
                ) from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ContextSchedule):
            return NotImplemented
        return type(self) is type(other) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(sorted(self.to_dict().items(), key=lambda item: item[0])))

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "kind")
        return f"{type(self).__name__}({options})"


class SequenceSchedule(ContextSchedule):
    """Contexts ``contexts[0], contexts[1], ...``, each for ``every`` env steps; after the last
    one the list starts over (``end="cycle"``) or its last context stays (``end="hold"``).

    Args:
        space: the env's context space.
        contexts: partial contexts (missing features at their defaults), at least one.
        every: env steps per context.
        end: ``cycle`` or ``hold``.
    """

    kind: ClassVar[str] = "sequence"

    def __init__(
        self,
        space: ContextSpace,
        contexts: Sequence[Mapping[str, float]],
        every: int,
        end: SequenceEnd = "cycle",
    ) -> None:
        super().__init__(space, every)
        if isinstance(contexts, Mapping | str) or not isinstance(contexts, Sequence):
            raise ConfigError("schedule 'sequence': contexts must be a list of contexts")
        if not contexts:
            raise ConfigError("schedule 'sequence': contexts is empty (give at least one)")
        if end not in ("cycle", "hold"):
            raise ConfigError(f"schedule 'sequence': end must be 'cycle' or 'hold', got {end!r}")
        self.contexts = tuple(
            _context(space, c, f"schedule 'sequence': contexts[{i}]")
            for i, c in enumerate(contexts)
        )
        self.end: SequenceEnd = end

    def segment_context(self, segment: int) -> Context:
        count = len(self.contexts)
        return self.contexts[segment % count if self.end == "cycle" else min(segment, count - 1)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "every": self.every,
            "contexts": [c.as_dict() for c in self.contexts],
            "end": self.end,
        }


class SampledSchedule(ContextSchedule):
    """A fresh context for every segment: each of ``features`` drawn uniformly along its scale
    (log-uniform for ``log`` features) within its range, the others as in ``base``. Segment
    ``k``'s draw depends on ``(seed, k)`` only (numpy's generator seeded with both), so the
    schedule is a pure function of the step.

    Args:
        space: the env's context space.
        features: feature names (drawn over their whole bounds) or ``{name: (low, high)}``
            (drawn over that range, inside the bounds).
        every: env steps per context.
        seed: the draws' seed (different agents may share one schedule or have their own).
        base: the other features' values (partial; defaults elsewhere).
    """

    kind: ClassVar[str] = "sampled"
    seed: int
    base: Context
    ranges: dict[str, tuple[float, float]]

    def __init__(
        self,
        space: ContextSpace,
        features: Sequence[str] | Mapping[str, Sequence[float]],
        every: int,
        seed: int = 0,
        base: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(space, every)
        if isinstance(seed, bool) or not isinstance(seed, Integral) or int(seed) < 0:
            raise ConfigError(f"schedule 'sampled': seed must be an integer >= 0, got {seed!r}")
        self.seed = int(seed)
        self.base = _context(space, base or {}, "schedule 'sampled': base")
        if isinstance(features, str) or not isinstance(features, Sequence | Mapping):
            raise ConfigError(
                "schedule 'sampled': features must be a list of names or a mapping "
                "name -> [low, high]"
            )
        if not features:
            raise ConfigError("schedule 'sampled': features is empty (name at least one)")
        ranges = (
            dict(features.items())
            if isinstance(features, Mapping)
            else {name: None for name in features}
        )
        self.ranges = {}
        for name, bounds in ranges.items():
            feature = space.feature(str(name))
            if bounds is None:
                self.ranges[feature.name] = (feature.lower, feature.upper)
                continue
            if isinstance(bounds, str) or not isinstance(bounds, Sequence) or len(bounds) != 2:
                raise ConfigError(
                    f"schedule 'sampled': features.{name} must be [low, high], got {bounds!r}"
                )
            where = f"schedule 'sampled': features.{name}"
            low = feature.check(bounds[0], owner=where)
            high = feature.check(bounds[1], owner=where)
            if high < low:
                raise ConfigError(f"{where}: low {low} > high {high}")
            self.ranges[feature.name] = (low, high)
        # drawn in name order: the same features in another order are the same schedule
        # (its equality, hash and a study's plan hash ignore the order)
        self.ranges = dict(sorted(self.ranges.items()))

    def segment_context(self, segment: int) -> Context:
        draws = np.random.default_rng([self.seed, segment]).uniform(size=len(self.ranges))
        values = self.base.as_dict()
        for u, (name, (low, high)) in zip(draws, self.ranges.items(), strict=True):
            feature = self.space.feature(name)
            if feature.scale == "log":
                value = math.exp(math.log(low) + float(u) * (math.log(high) - math.log(low)))
            else:
                value = low + float(u) * (high - low)
            values[name] = min(max(value, low), high)
        return Context(values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "every": self.every,
            "features": {name: list(bounds) for name, bounds in self.ranges.items()},
            "seed": self.seed,
            "base": self.base.as_dict(),
        }


class PeriodicSchedule(ContextSchedule):
    """A wave between contexts ``low`` and ``high`` with a period of ``period`` env steps,
    sampled at the start of every segment: segment ``k`` has the context a fraction ``w`` of
    the way from ``low`` to ``high``, with ``x = (k * every / period + phase) mod 1`` and
    ``w = (1 - cos(2 pi x)) / 2`` (``sine``) or ``w = 1 - |2 x - 1|`` (``triangle``); so the
    wave starts at ``low`` (phase 0) and reaches ``high`` at half a period.

    Args:
        space: the env's context space.
        low, high: the two extreme contexts (partial).
        period: env steps per period.
        every: env steps between updates of the context (at most ``period``).
        waveform: ``sine`` or ``triangle``.
        phase: the wave's starting point, in periods, in [0, 1).
    """

    kind: ClassVar[str] = "periodic"
    low: Context
    high: Context
    period: int
    waveform: Waveform
    phase: float

    def __init__(
        self,
        space: ContextSpace,
        low: Mapping[str, float],
        high: Mapping[str, float],
        period: int,
        every: int,
        waveform: Waveform = "sine",
        phase: float = 0.0,
    ) -> None:
        super().__init__(space, every)
        self.low = _context(space, low, "schedule 'periodic': low")
        self.high = _context(space, high, "schedule 'periodic': high")
        self.period = _positive_int(period, "schedule 'periodic': period")
        if self.period < self.every:
            raise ConfigError(
                f"schedule 'periodic': period {self.period} is shorter than every {self.every}"
            )
        if waveform not in ("sine", "triangle"):
            raise ConfigError(
                f"schedule 'periodic': waveform must be 'sine' or 'triangle', got {waveform!r}"
            )
        self.waveform = waveform
        if isinstance(phase, bool) or not isinstance(phase, Real) or not 0 <= phase < 1:
            raise ConfigError(f"schedule 'periodic': phase must be in [0, 1), got {phase!r}")
        self.phase = float(phase)

    def weight(self, segment: int) -> float:
        """How far segment ``segment``'s context is from ``low`` toward ``high``, in [0, 1]."""
        # exact rational position in the period, so that whole periods repeat exactly
        x = (segment * self.every % self.period) / self.period + self.phase
        x -= math.floor(x)
        if self.waveform == "sine":
            return (1.0 - math.cos(2.0 * math.pi * x)) / 2.0
        return 1.0 - abs(2.0 * x - 1.0)

    def segment_context(self, segment: int) -> Context:
        return _interpolate(self.space, self.low, self.high, self.weight(segment))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "every": self.every,
            "low": self.low.as_dict(),
            "high": self.high.as_dict(),
            "period": self.period,
            "waveform": self.waveform,
            "phase": self.phase,
        }


class DriftSchedule(ContextSchedule):
    """A continuous drift: segment ``k`` has the context ``min(k * every / over, 1)`` of the way
    from ``start`` to ``end``; after ``over`` env steps ``end`` holds.

    Args:
        space: the env's context space.
        start, end: the contexts at step 0 and from step ``over`` on (partial).
        over: env steps the drift takes.
        every: env steps between updates of the context.
    """

    kind: ClassVar[str] = "drift"

    def __init__(
        self,
        space: ContextSpace,
        start: Mapping[str, float],
        end: Mapping[str, float],
        over: int,
        every: int,
    ) -> None:
        super().__init__(space, every)
        self.start = _context(space, start, "schedule 'drift': start")
        self.end = _context(space, end, "schedule 'drift': end")
        self.over = _positive_int(over, "schedule 'drift': over")

    def segment_context(self, segment: int) -> Context:
        return _interpolate(self.space, self.start, self.end, segment * self.every / self.over)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "every": self.every,
            "start": self.start.as_dict(),
            "end": self.end.as_dict(),
            "over": self.over,
        }


SCHEDULE_KINDS: dict[str, type[ContextSchedule]] = {
    cls.kind: cls for cls in (SequenceSchedule, SampledSchedule, PeriodicSchedule, DriftSchedule)
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    "sequence": ("every", "contexts"),
    "sampled": ("every", "features"),
    "periodic": ("every", "low", "high", "period"),
    "drift": ("every", "start", "end", "over"),
}
_OPTIONAL: dict[str, tuple[str, ...]] = {
    "sequence": ("end",),
    "sampled": ("seed", "base"),
    "periodic": ("waveform", "phase"),
    "drift": (),
}


def schedule_from_dict(
    data: Mapping[str, Any], space: ContextSpace, where: str = "schedule"
) -> ContextSchedule:
    """A schedule from its JSON form, e.g. ``{"kind": "sequence", "every": 50000, "contexts":
    [{"length": 0.5}, {"length": 1.0}]}``. A missing or unknown kind, a missing or unknown key
    is a :class:`~ctxrl.errors.ConfigError` naming it (prefixed with ``where``); a bad value is a
    ConfigError or, for contexts, a :class:`~ctxrl.errors.ContextError` naming the feature, the
    value and its range."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: a schedule is a mapping with a 'kind', got {data!r}")
    kind = data.get("kind")
    if kind not in SCHEDULE_KINDS:
        raise ConfigError(
            f"{where}.kind: unknown schedule kind {kind!r}; known: {', '.join(SCHEDULE_KINDS)}"
        )
    options = {k: v for k, v in data.items() if k != "kind"}
    missing = [k for k in _REQUIRED[kind] if k not in options]
    if missing:
        raise ConfigError(f"{where}: a {kind!r} schedule needs {', '.join(missing)}")
    known = (*_REQUIRED[kind], *_OPTIONAL[kind])
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"{where}: a {kind!r} schedule takes no {', '.join(map(repr, unknown))}; "
            f"its keys: {', '.join(known)}"
        )
    try:
        return SCHEDULE_KINDS[kind](space, **options)
    except ContextError as exc:
        raise ContextError(f"{where}: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


__all__ = [
    "SCHEDULE_KINDS",
    "ContextSchedule",
    "DriftSchedule",
    "PeriodicSchedule",
    "SampledSchedule",
    "SequenceEnd",
    "SequenceSchedule",
    "Waveform",
    "schedule_from_dict",
]
