"""A plasticity study's analysis: each arm's measures per seed, their intervals and the
comparisons with the baseline, from the programs' records (:func:`gather`); the report that
writes them out: :mod:`~ctxrl_plugins.transfer.plasticity_study_report`.

Returns are normalised to [0, 1] by the env's return bounds. The curve is cut at the context
switches into *segments*: segment 0 is learned from the fresh network, segment ``k >= 1`` starts
at switch ``k`` (its first point is the return in the new context with the weights of the end
of the previous one). Per agent:

- **segment AUC**: the trapezoid area of the normalised return over the segment divided by its
  length in env steps (the mean normalised return over the segment, in [0, 1]);
- **post-switch AUC**: the mean segment AUC over segments ``k >= 1``;
- **jumpstart**: the mean over switches of the segment's first return;
- **time to threshold**: the mean over switches of the env steps from the switch to the first
  point at or above ``threshold`` (a segment that never reaches it counts its whole length, to
  the next switch, and is counted as missed; the last segment's length ends at the curve's last
  point, so there a miss reads as a success at that point, and only the missed count tells);
- **plasticity lost**: for every context the schedule visits more than once, the AUC of its
  last segment minus that of its first (the first is learned from the fresh network when it is
  segment 0, so this compares the trained network with a fresh one on the same context, as
  Ash & Adams 2020 do), averaged over such contexts; when no context repeats (a sampled
  schedule), the mean AUC of the second half of the segments minus the first half. Negative:
  the agent learns its contexts worse than it used to.
- **dormant fraction**: ReDo's tau-dormant fraction averaged over the hidden layers, at the
  record just before the first switch and at the last record.

Each arm's per-seed values get a 95 % interval (Student's t: :mod:`ctxrl.estimates`), and
each is compared with the baseline ``none`` seed by seed: the mean over seeds of arm - none for
the same seed (seed ``s`` of every arm follows the same schedule and, where the network is the
same, starts from the same weights), with its own interval; the verdict is better / worse when
the interval excludes 0, no difference when it holds 0, and no interval with one seed.

A seed whose curve is not finite somewhere (its training *diverged*: NaN or infinite
parameters) is left out of every metric, interval, comparison and figure, and named (arm, seed)
in the summary and ``metrics.json``; an arm with no finite seed left has NaN estimates (``null``
in JSON, ``n/a`` in the summary) with a note saying so. Arms whose program failed
(:class:`~ctxrl_plugins.transfer.plasticity_study.ProgramFailure`) are named with the error;
the report covers the rest, and says that comparisons are unavailable when the baseline's
program failed or every baseline seed diverged.
"""

from __future__ import annotations

import itertools
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.integrate import trapezoid

from ctxrl.errors import CtxrlError
from ctxrl.transfer_metrics import MetricEstimate, bootstrap_estimate, mean_of
from ctxrl_plugins.transfer.plasticity_plan import BASELINE, StudyPlan
from ctxrl_plugins.transfer.plasticity_runner import ProgramFailure, ProgramResult

# what each summary row measures and which direction is better
MEASURES: dict[str, tuple[str, int]] = {
    "post_switch_auc": ("post-switch AUC (mean normalised return after switches)", +1),
    "late_auc": ("AUC of each context's last visit", +1),
    "plasticity_lost": ("last minus first visit AUC (negative: plasticity lost)", +1),
    "jumpstart": ("jumpstart (normalised return at the switch)", +1),
    "time_to_threshold": ("env steps to threshold after a switch", -1),
    "dormant_first_switch": ("dormant fraction before the first switch", -1),
    "dormant_end": ("dormant fraction at the end", -1),
}


@dataclass
class ArmData:
    """One arm's records, seeds in the study's order (diverged seeds included)."""

    seeds: list[int]
    curves: np.ndarray  # (S, T) normalised returns
    plasticity: dict[str, np.ndarray]  # {metric}.{layer} -> (S, P)

    @property
    def finite(self) -> np.ndarray:
        """``(S,)`` bool: the seeds whose curve is finite at every point (not diverged)."""
        finite: np.ndarray = np.isfinite(self.curves).all(axis=1)
        return finite

    @property
    def diverged(self) -> list[int]:
        """The seeds whose curve is not finite somewhere: their training diverged."""
        return [seed for seed, ok in zip(self.seeds, self.finite, strict=True) if not ok]

    def rows(self, keep: np.ndarray) -> ArmData:
        """The seeds where ``keep`` ``(S,)`` is True."""
        return ArmData(
            [seed for seed, kept in zip(self.seeds, keep, strict=True) if kept],
            self.curves[keep],
            {name: values[keep] for name, values in self.plasticity.items()},
        )


@dataclass
class StudyTables:
    steps: np.ndarray  # (T,)
    plasticity_steps: np.ndarray  # (P,)
    switches: list[int]
    arms: dict[str, ArmData]  # the arms whose program finished, in the plan's order
    per_seed: dict[str, dict[str, np.ndarray]]  # arm -> measure -> (S,), NaN where diverged
    estimates: dict[str, dict[str, MetricEstimate]]  # arm -> measure -> estimate
    versus: dict[str, dict[str, MetricEstimate]]  # arm -> measure -> arm minus none
    missed: dict[str, int]  # arm -> segments (over finite seeds) that never reached it
    failures: list[ProgramFailure]  # the programs that failed (their arms are not in arms)
    no_comparison: str = ""  # why there is no comparison with none (empty when there is)


def gather(
    plan: StudyPlan,
    results: Mapping[str, ProgramResult],
    failures: Sequence[ProgramFailure] = (),
) -> StudyTables:
    """Every arm's records from the programs that finished (at least one), checked to share
    one step grid; the measures of each arm's finite seeds and their comparisons with
    ``none`` (none when the baseline's program failed or every baseline seed diverged)."""
    if not results:
        raise CtxrlError("no program of the study finished: nothing to analyse")
    steps: np.ndarray | None = None
    plasticity_steps: np.ndarray | None = None
    switches: list[int] | None = None
    arms: dict[str, ArmData] = {}
    for name, result in results.items():
        if steps is None:
            steps, plasticity_steps = result.curve_steps, result.plasticity_steps
            switches = result.switches
        elif plasticity_steps is None or not (
            np.array_equal(steps, result.curve_steps)
            and np.array_equal(plasticity_steps, result.plasticity_steps)
        ):
            raise CtxrlError(f"program {name!r} recorded on another step grid than the others")
        for label in dict.fromkeys(label for label, _ in result.agents):
            rows = [i for i, (arm, _) in enumerate(result.agents) if arm == label]
            arms[label] = ArmData(
                [result.agents[i][1] for i in rows],
                plan.env.normalise_curves(result.curves[rows]),  # a diverged seed stays NaN
                {k: v[rows] for k, v in result.plasticity.items()},
            )
    assert steps is not None and plasticity_steps is not None and switches is not None
    # a switch at the last step starts no segment
    switches = [s for s in switches if s < int(steps[-1])]
    ordered = {label: arms[label] for label in plan.labels if label in arms}
    tables = StudyTables(steps, plasticity_steps, switches, ordered, {}, {}, {}, {}, list(failures))
    for label, data in ordered.items():
        tables.per_seed[label], tables.missed[label] = _measures(plan, tables, data)
        note = _diverged_note(data)
        tables.estimates[label] = {
            k: _arm_estimate(v, note) for k, v in tables.per_seed[label].items()
        }
    if BASELINE not in ordered:
        tables.no_comparison = "the baseline's program failed"
        return tables
    if not ordered[BASELINE].finite.any():
        tables.no_comparison = "every baseline seed diverged"
        return tables
    base = tables.per_seed[BASELINE]
    base_rows = {seed: row for row, seed in enumerate(ordered[BASELINE].seeds)}
    for label in list(ordered)[1:]:
        # seed s of every arm starts from the same weights (where the network is the same) and
        # follows the same schedule: each arm - none difference is taken seed by seed
        seeds = ordered[label].seeds
        pairs = [(row, base_rows[seed]) for row, seed in enumerate(seeds) if seed in base_rows]
        unmatched = sorted(set(seeds) ^ set(base_rows))  # in one arm only: no pair
        note = _diverged_note(ordered[label])
        if unmatched:
            listed = ", ".join(str(seed) for seed in unmatched)
            note = "; ".join(filter(None, [note, f"seed(s) {listed} not in both arms: no pair"]))
        tables.versus[label] = {
            k: _paired_difference(v, base[k], pairs, note, len(unmatched))
            for k, v in tables.per_seed[label].items()
        }
    return tables


def _paired_difference(
    values: np.ndarray,
    base: np.ndarray,
    pairs: Sequence[tuple[int, int]],
    note: str,
    unmatched: int = 0,
) -> MetricEstimate:
    """Mean over seeds of ``values[i] - base[j]`` for the seed pairs ``pairs`` (rows of the
    same seed in the arm and the baseline) with its interval: a paired difference,
    so what a seed's luck gives both arms cancels. A pair NaN on either side (a diverged seed,
    an undefined value) is left out and counted in ``n_excluded``, as are the ``unmatched``
    seeds that only one of the two arms has."""
    differences = np.array([values[i] - base[j] for i, j in pairs], dtype=np.float64)
    kept = differences[~np.isnan(differences)]
    undefined = int(differences.size - kept.size)
    if undefined and not note:
        note = f"{undefined} of {differences.size} seed pairs left out (NaN on either side)"
    return bootstrap_estimate(
        [kept],
        mean_of,
        per_seed=[float(v) for v in differences],
        n_excluded=undefined + unmatched,
        note=note,
    )


def _diverged_note(data: ArmData) -> str:
    """What an estimate of ``data``'s arm leaves out for divergence (empty when nothing)."""
    diverged = data.diverged
    if not diverged:
        return ""
    seeds = ", ".join(str(seed) for seed in diverged)
    left = "no finite seed is left" if len(diverged) == len(data.seeds) else "left out"
    return f"diverged: seed(s) {seeds} of {len(data.seeds)} (non-finite returns); {left}"


def _arm_estimate(values: np.ndarray, note: str) -> MetricEstimate:
    """Mean over seeds of one arm's ``(S,)`` per-seed values (NaN for a diverged seed or an
    undefined value, left out and counted) with its interval; ``note`` says which
    seeds diverged."""
    kept = values[~np.isnan(values)]
    excluded = int(values.size - kept.size)
    return bootstrap_estimate(
        [kept],
        mean_of,
        per_seed=[float(v) for v in values],
        n_excluded=excluded,
        note=note or (f"{excluded} of {values.size} seeds left out (NaN)" if excluded else ""),
    )


def _segments(steps: np.ndarray, switches: Sequence[int]) -> list[np.ndarray]:
    """Index arrays of the curve points of each segment: from its switch (the point taken at
    the switch step is measured in the new context: the trainer switches before it evaluates)
    to the last point before the next switch, the last segment to the curve's end."""
    bounds = [int(steps[0]), *switches, int(steps[-1])]
    out = []
    for k, (start, stop) in enumerate(itertools.pairwise(bounds)):
        before_stop = steps <= stop if k == len(bounds) - 2 else steps < stop
        index = np.nonzero((steps >= start) & before_stop)[0]
        if len(index) >= 2:
            out.append(index)
    return out


def _measures(
    plan: StudyPlan, tables: StudyTables, data: ArmData
) -> tuple[dict[str, np.ndarray], int]:
    """Each measure's ``(S,)`` per-seed values (NaN for a diverged seed, left out: a NaN
    curve read as never reaching the threshold) and the segments of the finite seeds that
    never reached the threshold."""
    segments = _segments(tables.steps, tables.switches)
    if len(segments) < 2:
        raise CtxrlError(
            "the study's curve has fewer than two segments with two points each: no switch "
            "happened within total_steps, or curve_every is longer than a segment"
        )
    finite = data.finite
    per_seed = {name: np.full(len(data.seeds), math.nan) for name in MEASURES}
    if not finite.any():
        return per_seed, 0
    measured, missed = _finite_measures(plan, tables, data.rows(finite), segments)
    for name, values in measured.items():
        per_seed[name][finite] = values
    return per_seed, missed


def _finite_measures(
    plan: StudyPlan, tables: StudyTables, data: ArmData, segments: Sequence[np.ndarray]
) -> tuple[dict[str, np.ndarray], int]:
    """:func:`_measures` on seeds whose curves ``(S, T)`` are finite throughout."""
    steps, curves = tables.steps.astype(np.float64), data.curves
    auc = np.stack(
        [
            trapezoid(curves[:, idx], steps[idx], axis=1) / (steps[idx[-1]] - steps[idx[0]])
            for idx in segments
        ],
        axis=1,
    )  # (S, K)
    threshold = plan.config.threshold
    times, missed = [], 0
    for idx in segments[1:]:
        reached = curves[:, idx] >= threshold
        start = steps[idx[0]]
        # a segment that never reaches it counts its whole length, to the next switch (its
        # last point's offset, one curve interval shorter, read the same as a late success)
        later = [float(s) for s in tables.switches if s > start]
        length = (later[0] if later else steps[-1]) - start
        offsets = steps[idx] - start
        missed += int((~reached.any(axis=1)).sum())
        times.append(np.where(reached.any(axis=1), offsets[reached.argmax(axis=1)], length))
    # each segment's context per seed: plasticity lost = last visit - first visit
    lost = np.full(len(data.seeds), math.nan)
    late = np.full(len(data.seeds), math.nan)
    for row, seed in enumerate(data.seeds):
        schedule = plan.schedules[seed]
        keys = [
            json.dumps(schedule.context_at(int(tables.steps[idx[0]])).as_dict(), sort_keys=True)
            for idx in segments
        ]
        visits: dict[str, list[int]] = {}
        for k, key in enumerate(keys):
            visits.setdefault(key, []).append(k)
        repeated = [v for v in visits.values() if len(v) > 1]
        if repeated:
            lost[row] = float(np.mean([auc[row, v[-1]] - auc[row, v[0]] for v in repeated]))
            late[row] = float(np.mean([auc[row, v[-1]] for v in repeated]))
        else:
            half = len(keys) // 2
            lost[row] = float(auc[row, half:].mean() - auc[row, :half].mean())
            late[row] = float(auc[row, half:].mean())
    dormant = layer_mean(data.plasticity, "dormant")
    before = [i for i, s in enumerate(tables.plasticity_steps) if s == tables.switches[0]]
    first = dormant[:, before[0]] if before and dormant.size else np.full(len(data.seeds), np.nan)
    end = dormant[:, -1] if dormant.size else np.full(len(data.seeds), np.nan)
    return (
        {
            "post_switch_auc": auc[:, 1:].mean(axis=1),
            "late_auc": late,
            "plasticity_lost": lost,
            "jumpstart": np.stack([curves[:, idx[0]] for idx in segments[1:]], axis=1).mean(1),
            "time_to_threshold": np.stack(times, axis=1).mean(axis=1),
            "dormant_first_switch": first,
            "dormant_end": end,
        },
        missed,
    )


WEIGHT_METRICS = ("weight_magnitude", "distance_from_init")
"""Plasticity metrics recorded for every layer, heads too (the others: hidden layers only)."""


def layer_mean(plasticity: Mapping[str, np.ndarray], metric: str) -> np.ndarray:
    """``metric`` averaged over the layers that have it: ``(S, P)`` (empty if none): the
    hidden layers, and for the weight metrics (:data:`WEIGHT_METRICS`) the output layers too."""
    values = [v for k, v in plasticity.items() if k.split(".", 1)[0] == metric]
    if not values:
        return np.zeros((0, 0))
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a point no layer has: NaN
        mean: np.ndarray = np.nanmean(np.stack(values), axis=0)
    return mean
