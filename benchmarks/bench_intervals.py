"""How often the studies' 95 % intervals of a mean over few seeds cover the truth.

    OMP_NUM_THREADS=1 python benchmarks/bench_intervals.py [--studies 400] [--resamples 2000]

Simulated studies: one arm of ``n`` seeds (its mean's interval, the true mean) or two arms of
``(n1, n2)`` seeds with no true difference (the interval of the difference of their means, 0),
the seeds drawn normal or exponential. Each study gets three 95 % intervals from the same
draws: the default of :mod:`ctxrl.estimates` (Student's t for a mean, Welch's for a
difference), the expanded percentile bootstrap (Hesterberg 2015: the percentile interval at
the level of :func:`ctxrl.estimates.expanded_confidence_level`, what the default was for means
until 2026-12-07 and still is for ratios) and the plain percentile bootstrap (rliable's). Prints
a Markdown table of the share of studies whose interval covers the truth.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np

from ctxrl.estimates import (
    BootstrapOptions,
    bootstrap_estimate,
    difference_of_means,
    expanded_confidence_level,
    mean_of,
)

SIZES = [(2,), (3,), (5,), (10,), (2, 10), (3, 3), (3, 20), (5, 3), (5, 5)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=400, help="simulated studies per cell")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    draws: dict[str, tuple[Callable[[int], np.ndarray], float]] = {
        "normal": (lambda n: rng.normal(size=n), 0.0),
        "exponential": (lambda n: rng.exponential(size=n), 1.0),
    }
    print("| seeds | values | t / Welch (default) | expanded percentile | percentile |")
    print("|---|---|---|---|---|")
    for name, (draw, mean) in draws.items():
        for sizes in SIZES:
            statistic = mean_of if len(sizes) == 1 else difference_of_means
            truth = mean if len(sizes) == 1 else 0.0
            covered = np.zeros(3)
            for _ in range(args.studies):
                arms = [draw(n) for n in sizes]
                # with 2 seeds the expanded level rounds to 1: the resamples' whole range
                level = min(expanded_confidence_level(0.95, arms, statistic), 1 - 1e-12)
                methods = [
                    BootstrapOptions(n_resamples=args.resamples),
                    BootstrapOptions(
                        confidence_level=level, method="percentile", n_resamples=args.resamples
                    ),
                    BootstrapOptions(method="percentile", n_resamples=args.resamples),
                ]
                for i, options in enumerate(methods):
                    estimate = bootstrap_estimate(arms, statistic, options=options)
                    covered[i] += estimate.low <= truth <= estimate.high
            shares = " | ".join(f"{c / args.studies:.3f}" for c in covered)
            what = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]} and {sizes[1]}"
            print(f"| {what} | {name} | {shares} |", flush=True)


if __name__ == "__main__":
    main()
