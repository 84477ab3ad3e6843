"""How well the generalization model predicts unseen rows of a transfer matrix, and whether its
uncertainty bands are calibrated.

    python benchmarks/gp_heldout.py MATRIX [MATRIX ...] [--observed 3] [--grid 8x8x8]

A MATRIX is a run directory (its exports) or a folder of kept matrices (``contexts.json`` and
``matrix_seed0.csv``, as in ``benchmarks/results/``), a ``.npy`` of a normalised matrix, or
``synthetic:f=..,g=..,h=..:NOISE:TRIAL`` (:mod:`ctxrl.synthetic`, normalised over its own
entries, on its 8 x 8 x 8 grid). For every way of choosing ``--observed`` source rows spread
over the contexts (equally spaced starting offsets), the model predicts the other rows;
reported: RMSE on the held-out rows and the share of held-out entries inside the central band
at nominal levels 50, 80, 90, 95 and 99 %, for the GP set point with estimated gap slopes
(a) with the calibrated band (ctxrl's default: the gap model's error on the observed rows,
``ctxrl.matrix_prediction.GapResidual``, widened by what the observed rows fail to predict of
each other, ``jackknife_scale``), (b) with the GP's set-point uncertainty alone (before), and
(c) the reference's hand-set slope (0.005 per grid index) with the calibrated band.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ctxrl.gp import GapModel
from ctxrl.matrix_prediction import band_coverage, spread_observations
from ctxrl.offline import coords_from_grid, load_trials, normalised_trials, parse_grid
from ctxrl.plugins import get_host

LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99)


def load(spec: str, grid: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """A normalised matrix, its coordinates and a label."""
    if spec.startswith("synthetic:"):
        from ctxrl.synthetic import SyntheticSetting, grid_points, synthetic_matrix

        _, setting, noise, trial = spec.split(":")
        raw = synthetic_matrix(SyntheticSetting.parse(setting), float(noise), int(trial))
        return (raw - raw.min()) / (raw.max() - raw.min()), grid_points() / 7.0, spec
    path = Path(spec)
    if path.is_dir():
        # a run directory's exports, or a folder of kept matrices (benchmarks/results/...):
        # seed 0's matrix, placed by its contexts.json's features as `ctxrl select` places it
        # (or by --grid)
        exports = path / "exports" if (path / "exports").is_dir() else path
        _, raw, located, bounds = load_trials(
            [exports / "matrix_seed0.csv"],
            contexts=None,
            grid=grid,
            env_name=None,
            bounds=None,
            negate=False,
            registry=get_host().registry,
        )
        return normalised_trials(raw, bounds)[0], located.coords, str(path)
    matrix = np.load(path, allow_pickle=False)
    n = matrix.shape[0]
    coords = coords_from_grid(parse_grid(grid)) if grid else np.linspace(0, 1, n)[:, None]
    return matrix, coords, str(path)


def compare(matrix: np.ndarray, coords: np.ndarray, observed_count: int) -> dict[str, list]:
    steps = np.array([max(len(np.unique(c)) - 1, 1) for c in coords.T])
    constant = GapModel(0.005 * steps, 0.005 * steps)
    out: dict[str, list] = {}
    # as the report chooses them (farthest-first on a grid of several varied features)
    for observed in spread_observations(len(matrix), observed_count, coords=coords):
        for name, gap, calibrate in (
            ("calibrated", None, True),
            ("before", None, False),
            ("constant", constant, True),
        ):
            rmse, coverage = band_coverage(
                matrix, observed, LEVELS, gap=gap, coords=coords, calibrate=calibrate
            )
            out.setdefault(f"{name}_rmse", []).append(rmse)
            out.setdefault(f"{name}_coverage", []).append(coverage)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("matrices", nargs="+")
    parser.add_argument("--observed", type=int, default=3)
    parser.add_argument("--grid", default=None)
    args = parser.parse_args()
    print("| matrix | model | RMSE | coverage at 50 / 80 / 90 / 95 / 99 % |")
    print("|---|---|---|---|")
    for spec in args.matrices:
        matrix, coords, label = load(spec, args.grid)
        result = compare(matrix, coords, args.observed)
        for name in ("before", "calibrated", "constant"):
            rmse = np.mean(result[f"{name}_rmse"])
            coverage = np.mean(result[f"{name}_coverage"], axis=0)
            cells = " / ".join(f"{c:.2f}" for c in coverage)
            print(f"| {label} | {name} | {rmse:.3f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
