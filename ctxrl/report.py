"""Metrics and figures of a sweep: pure functions over a normalised matrix and selection curves.

Figures (matplotlib, Agg backend) are written as PNG and SVG:

- ``matrix``: the normalised transfer matrix as a heatmap (row = source, column = target);
- ``selection``: G_k against k for every strategy (with several seeds: the mean over seeds'
  matrices and its 95% confidence band; with one: one standard deviation over replays), with
  Independent, Oracle transfer and Multi-task as reference lines, styled like the MBTL
  reference figures;
- ``generalization``: for the strategy's chosen sources, the GP posterior of training
  performance with its 95% band, and the observed rows against the linear-gap model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.subplots(figsize=(6.0, 4.2))


def _save(fig: Any, stem: Path) -> list[Path]:
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    return paths


def plot_matrix(matrix: np.ndarray, labels: Sequence[str], title: str, stem: Path) -> list[Path]:
    """Heatmap of a normalised ``(N, N)`` matrix; NaN cells stay blank."""
    plt, (fig, ax) = _figure()
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis", origin="lower")
    fig.colorbar(image, ax=ax, label="normalised return")
    ticks = np.linspace(0, len(labels) - 1, min(len(labels), 6)).round().astype(int)
    ax.set_xticks(ticks, [labels[i] for i in ticks])
    ax.set_yticks(ticks, [labels[i] for i in ticks])
    ax.set_xlabel("target context")
    ax.set_ylabel("source context (trained on)")
    ax.set_title(title)
    paths = _save(fig, stem)
    plt.close(fig)
    return paths


def plot_selection(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    references: Mapping[str, float],
    title: str,
    stem: Path,
) -> list[Path]:
    """G_k against k per strategy (mean, +- std band) with horizontal reference lines."""
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
    ax.set_xlabel("number of trained models k")
    ax.set_ylabel("generalized performance G_k")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    paths = _save(fig, stem)
    plt.close(fig)
    return paths


def plot_generalization(
    coords: np.ndarray, matrix: np.ndarray, sources: Sequence[int], title: str, stem: Path
) -> list[Path]:
    """GP posterior of training performance from ``sources`` and the gap model's rows."""
    from ctxrl.gp import GapModel, PerformanceGP

    plt, (fig, ax) = _figure()
    x = coords[:, 0]
    rows = {i: matrix[i] for i in sources}
    posterior = PerformanceGP(coords[list(sources)], np.diag(matrix)[list(sources)]).posterior(
        coords
    )
    ax.plot(x, np.diag(matrix), "k.", label="training performance (all)")
    ax.plot(x, posterior.mean, color="C0", label="GP mean")
    ax.fill_between(
        x,
        posterior.mean - 1.96 * posterior.std,
        posterior.mean + 1.96 * posterior.std,
        color="C0",
        alpha=0.2,
        label="GP 95%",
    )
    gap = GapModel.estimate(coords, rows).gap(coords)
    for n, i in enumerate(sources[:5]):  # the first five keep the figure readable
        ax.plot(x, matrix[i], color=f"C{n % 8 + 1}", alpha=0.6, linewidth=1)
        ax.plot(
            x,
            np.clip(matrix[i, i] - gap[i], 0, 1),
            color=f"C{n % 8 + 1}",
            linestyle="--",
            linewidth=1,
        )
    ax.set_xlabel("context (grid position in [0, 1])")
    ax.set_ylabel("normalised return")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(title + "\nrows of chosen sources (solid) and linear-gap model (dashed)")
    ax.legend(fontsize=8, loc="lower left")
    paths = _save(fig, stem)
    plt.close(fig)
    return paths


def plot_learning_curves(
    curves: Mapping[str, Sequence[tuple[int, float]]],
    groups: Mapping[str, tuple[float, str]],
    bounds: tuple[float, float],
    title: str,
    stem: Path,
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
    ax.set_ylabel("normalised return (own context)")
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
    paths = _save(fig, stem)
    plt.close(fig)
    return paths
