"""Per-seed estimates with confidence intervals, and the verdict they support.

A study computes a metric once per seed (an area under a learning curve, a jumpstart, a time to
threshold) and reports its mean over seeds with Student's t interval, or a statistic between
two independent arms: a difference of means with Welch's interval, a ratio of means with a
bootstrap interval (``scipy.stats.bootstrap``, each arm resampled on its own;
:class:`BootstrapOptions`). :mod:`ctxrl.transfer_metrics` builds the
transfer metrics on these; the plasticity and distillation studies use them directly.

Everything here is pure numpy / scipy; nothing imports torch or a plugin.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy.stats import DegenerateDataWarning, bootstrap

FloatArray = npt.NDArray[np.float64]

Verdict = Literal["positive", "negative", "absent", "undetermined"]
BootstrapMethod = Literal["expanded", "percentile", "basic", "BCa"]


@dataclass(frozen=True)
class BootstrapOptions:
    """How confidence intervals are computed (``scipy.stats.bootstrap``).

    ``method`` defaults to ``expanded``. For a mean (:func:`mean_of`: one arm's mean, a mean of
    paired differences) or a difference of two arms' means (:func:`difference_of_means`) it is
    Student's t interval, Welch's for two arms (:func:`student_interval`): the interval that
    Hesterberg's expanded percentile interval approximates by resampling, and unlike any
    resampling it reaches past the range of 2 or 3 seeds. For other statistics (ratios) it is
    the expanded percentile interval itself (Hesterberg 2015, "What teachers should know about
    the bootstrap", The American Statistician 69(4)): the percentile interval taken at a wider
    level (:func:`expanded_confidence_level`) that undoes its two small-sample biases, a
    plug-in spread too small by ``sqrt((n - 1) / n)`` and a normal tail where Student's t
    belongs.

    Coverage of the true mean, or of a true difference of 0, by 95 % intervals (400 simulated
    studies each, ``benchmarks/bench_intervals.py``; ``benchmarks/RESULTS.md``, "Intervals of
    few seeds"), t / expanded percentile / plain percentile (what rliable, Agarwal et al. 2021,
    reports): one arm of 5 normal seeds 0.94 / 0.92 / 0.85, of 3 0.96 / 0.71 / 0.71, of 2
    0.95 / 0.52 / 0.52 (no resampling of 2 or 3 values reaches past their range); exponential
    seeds 0.89 / 0.87 (5), 0.88 / 0.68 (3), 0.90 / 0.46 (2); two arms of 5 normal seeds 0.94 /
    0.94 / 0.85 (the percentile interval gave about 15 % of "no effect" pairs a verdict), of 3
    and 3 0.95 / 0.89, of 2 and 10 0.90 / 0.86. BCa adds a jackknife acceleration estimated
    from a handful of values and is not better there.
    ``random_state`` is fixed so that the same curves always give the same interval."""

    confidence_level: float = 0.95
    n_resamples: int = 9999
    method: BootstrapMethod = "expanded"
    random_state: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.confidence_level < 1.0:
            raise ValueError(f"confidence_level must be in (0, 1), got {self.confidence_level}")
        if self.n_resamples < 1:
            raise ValueError(f"n_resamples must be >= 1, got {self.n_resamples}")


DEFAULT_BOOTSTRAP = BootstrapOptions()


def expanded_confidence_level(
    confidence_level: float,
    samples: Sequence[npt.ArrayLike],
    statistic: Callable[..., FloatArray] | None = None,
) -> float:
    """The level at which a percentile interval of ``statistic(*samples)`` is taken so that it
    covers about ``confidence_level`` (the ``expanded`` method of :class:`BootstrapOptions`):
    the two-sided level of the normal deviate ``f * t_{(1 + level) / 2, df}``.

    Each sample's share ``v_i`` of the statistic's variance is its jackknife variance (the
    statistic recomputed with one of its values left out, the other samples whole; ``statistic``
    None: the mean of the first sample, or the difference of two samples' means). Then ``df``
    is Welch and Satterthwaite's ``(sum v_i)^2 / sum(v_i^2 / (n_i - 1))`` and ``f =
    sqrt(sum v_i / sum(v_i (n_i - 1) / n_i))`` undoes the plug-in spread's shrinkage: for one
    sample Hesterberg's rule exactly (``f = sqrt(n / (n - 1))``, ``df = n - 1``), for two arms of
    equal spread and size ``n`` the pooled ``df = 2 (n - 1)``, and an arm of few seeds with the
    larger spread weighs as it should. At 95 %: 0.9981 for one sample of 5, 0.9829 of 10; two
    arms of 5 seeds and equal spread, 0.9901. Samples without spread fall back to those
    equal-spread numbers. No level helps an arm of 2 or 3 seeds much: resampling so few values
    cannot reach past their range (arms of 2 and 10, 3 and 20, 5 and 2 seeds: 80-88 % coverage,
    400 simulated studies each; 5 and 3: 92-96 %)."""
    from scipy.stats import norm
    from scipy.stats import t as student

    arrays = [np.asarray(sample, dtype=np.float64).reshape(-1) for sample in samples]
    sizes = np.array([array.size for array in arrays], dtype=np.float64)
    if sizes.min() < 2:
        raise ValueError(
            f"an interval needs at least two values per sample, got sizes {sizes.astype(int)}"
        )
    if statistic is None:
        statistic = mean_of if len(arrays) == 1 else difference_of_means
    shares = np.array([_jackknife_variance(arrays, i, statistic) for i in range(len(arrays))])
    if not (np.all(np.isfinite(shares)) and shares.sum() > 0.0):
        shares = np.full(len(arrays), 1.0)  # no spread to weigh by: every sample alike
        sizes = np.full(len(arrays), sizes.min())
    df = shares.sum() ** 2 / np.sum(shares**2 / (sizes - 1))
    shrink = math.sqrt(shares.sum() / np.sum(shares * (sizes - 1) / sizes))
    deviate = shrink * student.ppf((1 + confidence_level) / 2, df)
    return float(1.0 - 2.0 * norm.sf(deviate))


def student_interval(
    samples: Sequence[npt.ArrayLike], confidence_level: float = 0.95
) -> tuple[float, float]:
    """``(low, high)``: Student's t interval of one sample's mean (``n - 1`` degrees of
    freedom), or Welch's of the difference of two samples' means (first minus second, with
    Welch and Satterthwaite's degrees of freedom), each sample ``(n_i,)`` with ``n_i >= 2``
    and not every sample without spread (the caller's cases: :func:`bootstrap_estimate`)."""
    from scipy.stats import t as student

    arrays = [np.asarray(sample, dtype=np.float64).reshape(-1) for sample in samples]
    with np.errstate(over="ignore", invalid="ignore"):  # past float range: said below
        variances = [float(np.var(a, ddof=1)) / a.size for a in arrays]  # of each mean
    if len(arrays) == 1:
        centre, df = float(np.mean(arrays[0])), arrays[0].size - 1.0
    elif len(arrays) == 2:
        centre = float(np.mean(arrays[0]) - np.mean(arrays[1]))
        shares = sum(v**2 / (a.size - 1) for v, a in zip(variances, arrays, strict=True) if v > 0)
        df = sum(variances) ** 2 / shares if shares > 0 else 1.0  # no spread: said below
    else:
        raise ValueError(f"a t interval takes one or two samples, got {len(arrays)}")
    spread = sum(variances)
    if not math.isfinite(spread) or not math.isfinite(centre):  # values past float range
        return math.nan, math.nan
    if spread == 0.0:  # spreads below float resolution: nothing to widen the point by
        return centre, centre
    half = float(student.ppf((1 + confidence_level) / 2, df)) * math.sqrt(spread)
    return centre - half, centre + half


def _jackknife_variance(
    arrays: Sequence[FloatArray], index: int, statistic: Callable[..., FloatArray]
) -> float:
    """The jackknife variance of ``statistic(*arrays)`` over ``arrays[index]``'s values, the
    other arrays held whole; NaN where a left-out value makes the statistic undefined."""
    values = arrays[index]
    n = values.size
    left_out = np.array([np.delete(values, j) for j in range(n)])  # (n, n - 1)
    args = [
        left_out if k == index else np.broadcast_to(array, (n, array.size))
        for k, array in enumerate(arrays)
    ]
    with np.errstate(divide="ignore", invalid="ignore"):
        replicates = np.asarray(statistic(*args, axis=-1), dtype=np.float64)
    if not np.all(np.isfinite(replicates)):
        return math.nan
    return float((n - 1) / n * np.sum((replicates - replicates.mean()) ** 2))


@dataclass(frozen=True)
class MetricEstimate:
    """A point estimate with its confidence interval ``[low, high]``.

    ``per_seed`` holds the per-seed values of a one-arm metric (NaN for a seed left out, e.g.
    one that never reached the threshold); it is empty for a statistic between two arms, whose
    per-seed values live in the arms' own estimates. ``n_excluded`` counts seeds left out of the
    estimate. ``low`` / ``high`` equal ``estimate`` when every resample gives the same value
    (all seeds equal) and are NaN together when no interval exists (fewer than two seeds, an
    undefined statistic, one undefined on some resamples); ``note`` then says which."""

    estimate: float
    low: float
    high: float
    per_seed: tuple[float, ...] = ()
    n_excluded: int = 0
    note: str = ""

    def excludes_zero(self) -> bool:
        """Whether the whole interval lies on one side of 0 (False when it is NaN)."""
        return bool(self.low > 0.0 or self.high < 0.0)

    def to_json(self) -> dict[str, Any]:
        return _json_object(self)


def mean_of(values: FloatArray, axis: int = -1) -> FloatArray:
    """Mean of one arm's per-seed values (vectorised statistic for :func:`bootstrap_estimate`)."""
    return np.asarray(np.mean(values, axis=axis), dtype=np.float64)


def difference_of_means(transfer: FloatArray, scratch: FloatArray, axis: int = -1) -> FloatArray:
    """``mean(transfer) - mean(scratch)`` over independent seeds."""
    return np.asarray(np.mean(transfer, axis=axis) - np.mean(scratch, axis=axis), np.float64)


def ratio_of_means(transfer: FloatArray, scratch: FloatArray, axis: int = -1) -> FloatArray:
    """``mean(transfer) / mean(scratch)``; inf / NaN where the scratch mean is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(np.mean(transfer, axis=axis) / np.mean(scratch, axis=axis), np.float64)


def relative_difference_of_means(
    transfer: FloatArray, scratch: FloatArray, axis: int = -1
) -> FloatArray:
    """``(mean(transfer) - mean(scratch)) / mean(scratch)``: the area ratio r when the values
    are shifted AUCs."""
    with np.errstate(divide="ignore", invalid="ignore"):
        scratch_mean = np.mean(scratch, axis=axis)
        return np.asarray((np.mean(transfer, axis=axis) - scratch_mean) / scratch_mean, np.float64)


def bootstrap_estimate(
    samples: Sequence[npt.ArrayLike],
    statistic: Callable[..., FloatArray],
    *,
    options: BootstrapOptions = DEFAULT_BOOTSTRAP,
    per_seed: Sequence[float] = (),
    n_excluded: int = 0,
    note: str = "",
) -> MetricEstimate:
    """``statistic(*samples)`` with a bootstrap interval that resamples each sample on its own
    (or, for a mean or a difference of means under the default ``expanded`` method, Student's
    t or Welch's interval: :class:`BootstrapOptions`).

    Args:
        samples: one ``(n_i,)`` array of per-seed values per arm (one for a per-arm mean, two
            for a transfer-versus-scratch statistic); the arms are independent, so scipy's
            ``bootstrap`` runs with ``paired=False``.
        statistic: vectorised ``statistic(*samples, axis=-1) -> array``, e.g.
            :func:`mean_of` or :func:`difference_of_means` (these two functions themselves,
            not a wrapper of them, get Student's and Welch's intervals under the default
            method; anything else is bootstrapped).
        per_seed, n_excluded, note: stored in the result as given (``note`` is extended with
            the reason for a degenerate interval).

    Degenerate inputs never raise: with fewer than two values in some sample the interval is
    NaN (one seed says nothing about the spread); when every sample has all-equal values every
    resample gives the point estimate, so the interval is the point; an undefined point
    estimate (e.g. a ratio over a zero mean) gives NaN throughout."""
    arrays = [np.asarray(sample, dtype=np.float64).reshape(-1) for sample in samples]
    reasons = [note] if note else []
    sizes = [array.size for array in arrays]
    if min(sizes) == 0:
        reasons.append("no seed to estimate from")
        return _estimate(math.nan, math.nan, math.nan, per_seed, n_excluded, reasons)
    point = float(statistic(*arrays, axis=-1))
    if not math.isfinite(point):
        reasons.append("statistic undefined on these seeds (e.g. a ratio over a zero mean)")
        return _estimate(math.nan, math.nan, math.nan, per_seed, n_excluded, reasons)
    if min(sizes) < 2:
        sizes_text = "/".join(str(size) for size in sizes)
        reasons.append(f"fewer than two seeds per arm ({sizes_text}): no interval")
        return _estimate(point, math.nan, math.nan, per_seed, n_excluded, reasons)
    if all(np.ptp(array) == 0.0 for array in arrays):
        reasons.append("all seeds equal: the interval is the point")
        return _estimate(point, point, point, per_seed, n_excluded, reasons)
    if options.method == "expanded" and (
        (statistic is mean_of and len(arrays) == 1)
        or (statistic is difference_of_means and len(arrays) == 2)
    ):
        low, high = student_interval(arrays, options.confidence_level)
        if not (math.isfinite(low) and math.isfinite(high)):
            reasons.append("the seeds' spread is past float range: no interval")
        return _estimate(point, low, high, per_seed, n_excluded, reasons)
    with warnings.catch_warnings():
        # a statistic undefined on some resamples (inf / NaN: a ratio over a zero mean) or a
        # degenerate BCa acceleration makes scipy and numpy warn; the interval is then not
        # finite, which is "no interval" below, so their warnings only clutter the output
        warnings.filterwarnings("ignore", category=DegenerateDataWarning)
        warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
        expanded = options.method == "expanded"
        result = bootstrap(
            tuple(arrays),
            statistic,
            n_resamples=options.n_resamples,
            vectorized=True,
            paired=False,
            confidence_level=(
                expanded_confidence_level(options.confidence_level, arrays, statistic)
                if expanded
                else options.confidence_level
            ),
            method="percentile" if expanded else options.method,
            random_state=options.random_state,
        )
    low = float(result.confidence_interval.low)
    high = float(result.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):
        # half an interval (a finite low, an infinite or NaN high) would still read as
        # excluding 0; the statistic is undefined on some resamples, so there is no interval
        reasons.append("bootstrap interval not finite (some resamples undefined): no interval")
        low = high = math.nan
    return _estimate(point, low, high, per_seed, n_excluded, reasons)


def mean_estimate(
    values: npt.ArrayLike, *, options: BootstrapOptions = DEFAULT_BOOTSTRAP
) -> MetricEstimate:
    """Mean over seeds of one arm's ``(S,)`` per-seed values with its interval (Student's t
    under the default method).
    NaN values (e.g. never reached the threshold) are left out and counted in
    ``n_excluded``."""
    per_seed = np.asarray(values, dtype=np.float64).reshape(-1)
    kept = per_seed[~np.isnan(per_seed)]
    excluded = int(per_seed.size - kept.size)
    note = f"{excluded} of {per_seed.size} seeds left out (NaN)" if excluded else ""
    return bootstrap_estimate(
        [kept],
        mean_of,
        options=options,
        per_seed=[float(v) for v in per_seed],
        n_excluded=excluded,
        note=note,
    )


def curve_band(values: npt.ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Learning curves ``(S, T)`` over seeds: their mean and a Student-t 95 % band (``t`` with
    ``n - 1`` degrees of freedom, not 1.96: 40 % wider at 3 seeds), each ``(T,)``. NaN points
    are left out, and ``n`` is counted per point over the seeds that remain (counting every seed
    made a band of 2 finite seeds out of 4 5.6 times too narrow); no band (the mean itself)
    where fewer than two remain, NaN where none does."""
    from scipy.stats import t as student

    curves = np.asarray(values, dtype=np.float64)
    n = np.sum(~np.isnan(curves), axis=0)  # (T,) seeds with a value at each point
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # points with no value: NaN, said here
        mean = np.nanmean(curves, axis=0)
        spread = np.nanstd(curves, axis=0, ddof=1)
        half = student.ppf(0.975, np.maximum(n - 1, 1)) * spread / np.sqrt(np.maximum(n, 1))
    half = np.where(n >= 2, half, 0.0)
    return mean, mean - half, mean + half


def verdict(estimate: MetricEstimate, *, absent_band: float = 0.0) -> Verdict:
    """``positive`` when the interval lies entirely above ``absent_band``, ``negative`` when
    entirely below ``-absent_band``, ``absent`` otherwise; ``undetermined`` when there is no
    interval (NaN: one seed, an undefined statistic), which says nothing either way.

    With the default band 0 this is "the interval excludes 0"; Sabatelli & Geurts call
    ``|r| <= 0.05`` absent, which ``absent_band=0.05`` applies to the whole interval."""
    if absent_band < 0.0:
        raise ValueError(f"absent_band must be >= 0, got {absent_band}")
    if math.isnan(estimate.low) or math.isnan(estimate.high):
        return "undetermined"
    if estimate.low > absent_band:
        return "positive"
    if estimate.high < -absent_band:
        return "negative"
    return "absent"


def _estimate(
    point: float,
    low: float,
    high: float,
    per_seed: Sequence[float],
    n_excluded: int,
    reasons: list[str],
) -> MetricEstimate:
    return MetricEstimate(
        estimate=point,
        low=low,
        high=high,
        per_seed=tuple(float(v) for v in per_seed),
        n_excluded=n_excluded,
        note="; ".join(reasons),
    )


def _json_object(result: Any) -> dict[str, Any]:
    """A result dataclass as a JSON-ready dict."""
    data: dict[str, Any] = _jsonable(dataclasses.asdict(result))
    return data


def _jsonable(value: Any) -> Any:
    """Plain JSON data: non-finite floats -> None, tuples -> lists, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


__all__ = [
    "DEFAULT_BOOTSTRAP",
    "BootstrapMethod",
    "BootstrapOptions",
    "MetricEstimate",
    "Verdict",
    "bootstrap_estimate",
    "curve_band",
    "difference_of_means",
    "mean_estimate",
    "mean_of",
    "ratio_of_means",
    "relative_difference_of_means",
    "student_interval",
    "verdict",
]
