"""How well the generalization model predicts unseen rows of a real transfer matrix.

    python benchmarks/gp_heldout.py RUN_DIR [--observed 3]

For every way of choosing ``--observed`` source rows spread over the grid (equally spaced
starting offsets), the model predicts the other rows; reported: RMSE on the held-out rows and
the share of held-out entries inside the 95% band (mean +- 1.96 std), for
(a) the GP set point with gap slopes estimated from the observed rows (ctxrl's default) and
(b) the same GP with the reference's hand-set slope (0.005 per grid index, a constant gap).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ctxrl.gp import GapModel, held_out_error


def compare(normalised: np.ndarray, observed_count: int) -> dict[str, list[float]]:
    n = normalised.shape[0]
    constant = GapModel.constant(0.005 * (n - 1), 1)
    out: dict[str, list[float]] = {
        "estimated_rmse": [],
        "estimated_coverage": [],
        "constant_rmse": [],
        "constant_coverage": [],
    }
    step = n // observed_count
    for offset in range(step):
        observed = [offset + step * k for k in range(observed_count)]
        for name, gap in (("estimated", None), ("constant", constant)):
            rmse, coverage = held_out_error(normalised, observed, gap=gap)
            out[f"{name}_rmse"].append(rmse)
            out[f"{name}_coverage"].append(coverage)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--observed", type=int, default=3)
    args = parser.parse_args()
    exports = args.run_dir / "exports"
    info = json.loads((exports / "contexts.json").read_text())
    lower, upper = info["return_bounds"]
    raw = np.loadtxt(exports / "matrix_seed0.csv", delimiter=",")
    normalised = np.clip((raw - lower) / (upper - lower), 0, 1)
    result = compare(normalised, args.observed)
    for key, values in result.items():
        print(f"{key}: mean {np.mean(values):.4f} over {len(values)} observed sets")


if __name__ == "__main__":
    main()
