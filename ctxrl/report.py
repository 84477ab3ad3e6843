"""Metrics and figures of a sweep: pure functions over a normalised matrix and selection curves.

Figures (matplotlib, Agg backend) are written as PNG and SVG:

- ``matrix``: the normalised transfer matrix as a heatmap (row = source, column = target), on
  the feature's values and unit for 1-D grids, the normalisation bounds on the colour bar;
- ``selection``: G_k against k for every strategy (with several seeds: the mean over seeds'
  matrices and its 95% confidence band; with one: one standard deviation over replays, the
  band's meaning under the title), with Independent, Oracle transfer and Multi-task as
  reference lines, styled like the MBTL reference figures;
- ``generalization``: for the strategy's chosen sources, the GP posterior of training
  performance with its 95% band and every chosen source named, then one small panel per
  source: its observed row against the linear-gap model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def sample_efficiency(
    curve: Sequence[float], independent: float, multitask: float | None, n_contexts: int
) -> dict[str, Any]:
    """MBTL's sample-efficiency factor: ``N / k*`` where ``k*`` is the first step at which
    ``curve`` (G_k, k = 1..K) exceeds Independent (and Multi-task, when given); ``None`` when
    it never does within K.

    Also ``k_match`` / ``factor_match``: the first step at which the curve reaches those levels
    (``>=``, to 1e-9). They differ from ``k*`` where Independent sits at the ceiling (every
    context solved on itself), which no curve can exceed."""
    levels = [independent] + ([multitask] if multitask is not None else [])

    def first(reached: Callable[[float, float], bool]) -> int | None:
        steps = [k + 1 for k, g in enumerate(curve) if all(reached(g, lv) for lv in levels)]
        return steps[0] if steps else None

    k_star = first(lambda g, level: g > level)
    k_match = first(lambda g, level: g >= level - 1e-9)
    return {
        "k_star": k_star,
        "factor": (n_contexts / k_star) if k_star else None,
        "k_match": k_match,
        "factor_match": (n_contexts / k_match) if k_match else None,
        "against": ["independent"] + (["multitask"] if multitask is not None else []),
    }


@dataclass(frozen=True)
class ContextAxis:
    """How a figure draws the contexts of a 1-D grid: at their values on a labelled axis.

    Attributes:
        values: the grid's values of its one varied feature, increasing ``(N,)``.
        label: the axis label, the feature's name, description and unit
            (``length: half the pole's length (m)``).
        log: a log axis (the grid is log-spaced).
        unit: the feature's unit, for legends (``m``; empty when dimensionless).
    """

    values: np.ndarray
    label: str
    log: bool = False
    unit: str = ""

    def edges(self) -> np.ndarray:
        """Cell edges around the values ``(N + 1,)``: midpoints between neighbours (geometric
        on a log axis), the outer cells as wide as their neighbours."""
        v = np.log(self.values) if self.log else np.asarray(self.values, dtype=np.float64)
        if len(v) == 1:
            half = 0.5 * max(abs(float(v[0])), 1.0) * (0.1 if self.log else 1.0)
            inner = np.array([v[0] - half, v[0] + half])
        else:
            mid = (v[1:] + v[:-1]) / 2
            inner = np.concatenate([[2 * v[0] - mid[0]], mid, [2 * v[-1] - mid[-1]]])
        return np.exp(inner) if self.log else inner

    def apply(self, ax: Any, which: str) -> None:
        """Put ``ax``'s ``which`` axis (``x`` or ``y``) on this scale, ticks as plain numbers
        (``0.1``, ``1``; not ``10^-1``); minor ticks labelled only within one decade."""
        if not self.log:
            return
        from matplotlib.ticker import FuncFormatter, NullFormatter

        getattr(ax, f"set_{which}scale")("log")
        target = ax.xaxis if which == "x" else ax.yaxis
        plain = FuncFormatter(lambda value, _: f"{value:g}")
        target.set_major_formatter(plain)
        one_decade = self.values.max() / self.values.min() < 10
        target.set_minor_formatter(plain if one_decade else NullFormatter())


def _figure(width: float = 6.0, height: float = 4.2) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.subplots(figsize=(width, height))


def save_figure(fig: Any, stem: Path, *, dpi: int = 150) -> list[Path]:
    """``fig`` as ``stem.png`` and ``stem.svg``; returns both paths."""
    import matplotlib

    png, svg = stem.with_suffix(".png"), stem.with_suffix(".svg")
    # SVG text stays text (selectable, editable in a paper's figure), not glyph outlines; no
    # date and fixed element ids, so a report of unchanged results rewrites the same bytes
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "ctxrl"}):
        fig.savefig(png, dpi=dpi, bbox_inches="tight")
        fig.savefig(svg, dpi=dpi, bbox_inches="tight", metadata={"Date": None})
    return [png, svg]


def bounds_label(bounds: tuple[float, float]) -> str:
    """How returns ``R`` were normalised, for a colour bar or an axis."""
    lower, upper = bounds
    shifted = "R" if lower == 0 else f"(R - {lower:g})" if lower > 0 else f"(R + {-lower:g})"
    return f"normalised return {shifted} / {upper - lower:g}, clipped to [0, 1]"


def plot_matrix(
    matrix: np.ndarray,
    labels: Sequence[str],
    title: str,
    stem: Path,
    *,
    axis: ContextAxis | None = None,
    bounds: tuple[float, float] | None = None,
) -> list[Path]:
    """Heatmap of a normalised ``(N, N)`` matrix (row = source, column = target); NaN cells
    stay blank. With ``axis`` (1-D grids) both axes are the feature's values in its unit,
    each cell spanning its context's share of the axis; else cells are labelled by
    ``labels``. ``bounds``: the return bounds the matrix was normalised by (in the colour
    bar's label)."""
    plt, (fig, ax) = _figure(6.4, 5.0)
    masked = np.ma.masked_invalid(matrix)
    if axis is not None:
        edges = axis.edges()
        image = ax.pcolormesh(edges, edges, masked, vmin=0.0, vmax=1.0, cmap="viridis")
        axis.apply(ax, "x")
        axis.apply(ax, "y")
        ax.set_xlabel(f"target context, {axis.label}")
        ax.set_ylabel(f"source context (trained on), {axis.label}")
        ax.set_aspect("equal" if not axis.log else "auto")
    else:
        image = ax.imshow(masked, vmin=0.0, vmax=1.0, cmap="viridis", origin="lower")
        ticks = np.linspace(0, len(labels) - 1, min(len(labels), 6)).round().astype(int)
        ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=30, ha="right", fontsize=7)
        ax.set_yticks(ticks, [labels[i] for i in ticks], fontsize=7)
        ax.set_xlabel("target context")
        ax.set_ylabel("source context (trained on)")
    label = bounds_label(bounds) if bounds is not None else "normalised return"
    fig.colorbar(image, ax=ax, label=label)
    ax.set_title(title)
    paths = save_figure(fig, stem)
    plt.close(fig)
    return paths


def plot_selection(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    references: Mapping[str, float],
    title: str,
    stem: Path,
    *,
    band: str = "",
) -> list[Path]:
    """G_k against k per strategy (mean and a shaded band) with horizontal reference lines.

    ``band`` says what the shading is (e.g. ``95 % CI over 3 seeds``); it is written under
    the title."""
    plt, (fig, ax) = _figure()
    for name, curve in curves.items():
        # a band of +- the 95% interval over seeds when several were trained, else +- one std
        # over replays of a stochastic strategy
        mean = np.asarray(curve.get("seed_mean", curve["mean"]))
        std = np.asarray(curve.get("seed_ci95", curve["std"]))
        k = np.arange(1, len(mean) + 1)
        (line,) = ax.plot(k, mean, marker="o", markersize=3, label=name)
        if np.any(std > 0):
            ax.fill_between(k, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    styles = {"independent": ":", "oracle transfer": "--", "multitask": "-."}
    for name, value in references.items():
        ax.axhline(value, color="gray", linestyle=styles.get(name, ":"), label=name)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("number of trained models k")
    ax.set_ylabel("generalized performance G_k (normalised)")
    ax.set_title(title + (f"\nshaded: {band}" if band else ""), fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    paths = save_figure(fig, stem)
    plt.close(fig)
    return paths


def plot_generalization(
    coords: np.ndarray,
    matrix: np.ndarray,
    sources: Sequence[int],
    title: str,
    stem: Path,
    *,
    axis: ContextAxis | None = None,
) -> list[Path]:
    """What a strategy knew of its chosen ``sources`` (1-D grids).

    Top: the training performance of every context (the matrix's diagonal), the GP
    posterior fitted to the chosen sources' with its 95 % band, and each chosen source
    marked in its colour and named in the legend (``k: value unit``). Below, one small
    panel per chosen source: its row of the matrix (solid) against the linear-gap model's
    estimate (dashed). ``axis`` puts the contexts at their values in the feature's unit;
    without it they sit at their grid position in [0, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ctxrl.gp import GapModel, PerformanceGP

    sources = list(sources)
    x = axis.values if axis is not None else coords[:, 0]
    xlabel = axis.label if axis is not None else "context (grid position in [0, 1])"
    unit = f" {axis.unit}" if axis is not None and axis.unit else ""
    columns = min(5, max(1, len(sources)))
    rows = -(-len(sources) // columns)
    fig = plt.figure(figsize=(2.2 * columns + 2.4, 3.4 + 1.9 * rows), layout="constrained")
    grid = fig.add_gridspec(1 + rows, columns, height_ratios=[2.2] + [1.0] * rows)
    top = fig.add_subplot(grid[0, :])
    diagonal = np.diag(matrix)
    posterior = PerformanceGP(coords[sources], diagonal[sources]).posterior(coords)
    trained = "all contexts" if np.isfinite(diagonal).all() else "trained contexts"
    top.plot(x, diagonal, "k.", label=f"training performance ({trained})")
    # MBTL's plain model (a GP of the chosen sources' training performance, a linear gap):
    # mbtl-gp's defaults add floored slopes and a residual GP to it
    top.plot(x, posterior.mean, color="0.35", label="MBTL's GP mean (chosen sources)")
    top.fill_between(
        x,
        posterior.mean - 1.96 * posterior.std,
        posterior.mean + 1.96 * posterior.std,
        color="0.35",
        alpha=0.15,
        label="GP 95 % band",
    )
    colours = plt.get_cmap("tab10" if len(sources) <= 10 else "turbo")
    colour = [
        colours(n % 10 if len(sources) <= 10 else n / max(1, len(sources) - 1))
        for n in range(len(sources))
    ]
    for n, i in enumerate(sources):
        top.plot(
            x[i],
            diagonal[i],
            "o",
            color=colour[n],
            markersize=7,
            label=f"{n + 1}: {x[i]:.3g}{unit}",
        )
    top.set_ylabel("normalised return")
    top.set_ylim(-0.05, 1.05)
    top.set_xlabel(xlabel)
    if axis is not None:
        axis.apply(top, "x")
    top.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="chosen sources")
    top.set_title(title, fontsize=10)
    gap = GapModel.estimate(coords, {i: matrix[i] for i in sources}).gap(coords)
    panels: list[Any] = []
    for n, i in enumerate(sources):
        ax = fig.add_subplot(
            grid[1 + n // columns, n % columns],
            sharex=panels[0] if panels else None,
            sharey=panels[0] if panels else None,
        )
        panels.append(ax)
        ax.plot(x, matrix[i], color=colour[n], linewidth=1.2)
        ax.plot(x, np.clip(matrix[i, i] - gap[i], 0, 1), color=colour[n], linestyle="--")
        ax.axvline(x[i], color=colour[n], linewidth=0.6, alpha=0.6)
        ax.set_title(f"{n + 1}: {x[i]:.3g}{unit}", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_ylim(-0.05, 1.05)
        if axis is not None and n == 0:
            axis.apply(ax, "x")
    fig.supxlabel(
        f"target context, {xlabel} (small panels: the chosen source's transfer, solid; "
        "MBTL's linear-gap model, dashed; mbtl-gp's defaults add a residual GP to it)",
        fontsize=8,
    )
    paths = save_figure(fig, stem)
    plt.close(fig)
    return paths


def plot_learning_curves(
    curves: Mapping[str, Sequence[tuple[int, float]]],
    groups: Mapping[str, tuple[float, str]],
    bounds: tuple[float, float],
    title: str,
    stem: Path,
    *,
    ylabel: str = "normalised return (own context)",
) -> list[Path]:
    """Learning curves: mean deterministic return (normalised to [0, 1] by ``bounds``) against
    env steps. ``groups`` maps a run id to ``(order, label)``: one line per label (the mean over
    the runs that share it, e.g. a source context's seeds, with their range shaded), coloured
    in ``order`` (e.g. the source's feature value); a colour bar names them when there are
    many."""
    plt, (fig, ax) = _figure()
    lines: dict[str, tuple[float, list[Sequence[tuple[int, float]]]]] = {}
    for run_id, points in curves.items():
        order, label = groups.get(run_id, (0.0, run_id))
        lines.setdefault(label, (order, []))[1].append(points)
    ranked = sorted(lines.items(), key=lambda item: item[1][0])
    lower, upper = bounds
    cmap = plt.get_cmap("viridis")
    for index, (label, (_, runs)) in enumerate(ranked):
        length = min(len(r) for r in runs)
        steps = np.array([p[0] for p in runs[0][:length]], dtype=np.float64)
        values = np.array([[p[1] for p in r[:length]] for r in runs], dtype=np.float64)
        values = np.clip((values - lower) / (upper - lower), 0.0, 1.0)
        colour = cmap(index / max(1, len(ranked) - 1))
        ax.plot(steps, values.mean(axis=0), color=colour, label=label, linewidth=1.2)
        if len(runs) > 1:
            ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=colour, alpha=0.15)
    ax.set_xlabel("environment steps per agent")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    if len(ranked) <= 10:
        ax.legend(fontsize=7, loc="lower right")
    else:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        bar = fig.colorbar(
            ScalarMappable(Normalize(0, len(ranked) - 1), cmap), ax=ax, label="source context"
        )
        ticks = np.linspace(0, len(ranked) - 1, min(len(ranked), 6)).round().astype(int)
        bar.set_ticks(ticks, labels=[ranked[t][0] for t in ticks])
    paths = save_figure(fig, stem)
    plt.close(fig)
    return paths


def plot_calibration(calibration: Mapping[str, Any], title: str, stem: Path) -> list[Path]:
    """Nominal against empirical coverage of the generalization model's bands on held-out rows
    (``calibration`` as :func:`ctxrl.summary.model_calibration` returns it); a calibrated model
    lies on the diagonal."""
    plt, (fig, ax) = _figure(4.6, 4.2)
    levels, coverage = calibration["levels"], calibration["coverage"]
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="calibrated")
    ax.plot(levels, coverage, marker="o", label=f"GP + gap (RMSE {calibration['rmse']:.3f})")
    ax.set_xlabel("nominal coverage of the band")
    ax.set_ylabel("held-out entries inside the band")
    ax.set_xlim(0.4, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    paths = save_figure(fig, stem)
    plt.close(fig)
    return paths
