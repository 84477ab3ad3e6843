"""MBTL-GP against Greedy, Random and Equidistant on noisy 1-D mountains (issue 16, item 6) and
on families of real matrices (one sweep's per-seed matrices).

    OMP_NUM_THREADS=1 python benchmarks/bench_mbtl_robust.py [--seeds 6] [--seed0 0] [--n 60]
        [--noise 0.02 0.05 0.1] [--variant NAME=k:v,k:v ...] [--budget 15] [--out FILE.json]
        [--real FOLDER=ENV ... [--mirror]]

e.g. ``--variant fixed=noise_std:0.1,best:observed`` replays ``mbtl-gp`` with those options (the
reference's GP noise and baseline, ctxrl's default before 2026-12-04) next to the default one
(``noise_std: rows``, the residual GP, the expected gain against the model's rows; ``--variant
gap=residual:none,acquisition:optimistic,best:consistent`` is the default of earlier in
2026-12-04, MBTL's own model; a few seconds per MBTL-GP replay at N = 60, K = 15 on one core).

Matrices (normalised, row = source, column = target, contexts ``x = linspace(0, 1, N)``):

- ``mountain``: ``M[i, j] = clip(d(x_i) - l(x_i) (x_i - x_j)^+ - r(x_i) (x_j - x_i)^+ + e_ij,
  0, 1)`` with training performance ``d(x) = clip(0.8 + 0.15 sin(p + w x), 0, 1)``,
  slopes that change linearly with the source context, ``l(x) = l0 + (l1 - l0) x`` and
  ``r(x) = r0 + (r1 - r0) (1 - x)`` (``l0, l1, r0, r1 ~ U(0.2, 1.5)`` per unit of ``x``),
  ``p ~ U(0, 6)``, ``w ~ U(2, 6)``, noise ``e_ij ~ N(0, sigma^2)``; parameters drawn from
  ``numpy.random.default_rng(seed)``, one matrix per (seed, sigma).
- ``test-mountain``: the three matrices of ``tests/test_gp.py::test_mbtl_beats_random_on_
  mountain_matrices`` (N = 25, no noise, ``default_rng(3)``).
- ``failures``: noisy *training*: a 1-D stand-in for the 100k-step CartPole matrices whose rows
  are dominated by whether a run trained at all: each source trains with success probability
  0.6 (``d = U(0.7, 1)``) or not (``d = U(0.15, 0.5)``), its row ``d_i - 0.5 |x_i - x_j| +
  e_ij``, ``sigma = 0.05``.

- ``--real FOLDER=ENV``: every ``matrix_seedN.csv`` of a sweep's exports (or a folder kept in
  ``benchmarks/results``), normalised and placed as ``ctxrl select --matrix FOLDER --env ENV``
  does (the contexts from its ``contexts.json``), one matrix per seed: a family of real matrices
  trained alike, so that a strategy's lead is measured over seeds instead of on one matrix whose
  few successful sources decide the order. ``--mirror`` adds each matrix with its contexts in
  reverse order (the same transfer, the other end of the space first).

Strategies: ``mbtl-gp`` and each ``--variant`` (mbtl-gp with options), ``greedy``,
``equidistant``, ``random`` (mean over 100 seeded orders), ``sequential-oracle``. Printed: mean
G_1..K per family with the Student-t 95 % half-width over the family's matrices, and the
mean paired difference variant - greedy / - random with its half-width.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ctxrl.offline import load_trials, mean_ci, normalised_trials, trial_seed
from ctxrl.plugins import get_host
from ctxrl.selection import replay

RANDOM_ORDERS = 100


def mountain(n: int, seed: int, sigma: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 1.0, n)
    phase, freq = rng.uniform(0, 6), rng.uniform(2, 6)
    l0, l1, r0, r1 = rng.uniform(0.2, 1.5, 4)
    diag = np.clip(0.8 + 0.15 * np.sin(phase + freq * x), 0, 1)
    left, right = l0 + (l1 - l0) * x, r0 + (r1 - r0) * (1 - x)
    below = np.maximum(x[:, None] - x[None, :], 0)
    above = np.maximum(x[None, :] - x[:, None], 0)
    noise = np.random.default_rng(1000 + seed).normal(0, sigma, (n, n))
    rows = diag[:, None] - left[:, None] * below - right[:, None] * above + noise
    return np.clip(rows, 0.0, 1.0)  # type: ignore[no-any-return]


def test_mountains() -> list[np.ndarray]:
    n = 25
    x = np.linspace(0.0, 1.0, n)
    rng = np.random.default_rng(3)
    out = []
    for _ in range(3):
        diag = np.clip(0.8 + 0.15 * np.sin(rng.uniform(0, 6) + 4 * x), 0, 1)
        left, right = rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0)
        below = np.maximum(x[:, None] - x[None, :], 0)
        above = np.maximum(x[None, :] - x[:, None], 0)
        out.append(np.clip(diag[:, None] - left * below - right * above, 0.0, 1.0))
    return out


def failures(n: int, seed: int, sigma: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(2000 + seed)
    x = np.linspace(0.0, 1.0, n)
    trained = rng.random(n) < 0.6
    diag = np.where(trained, rng.uniform(0.7, 1.0, n), rng.uniform(0.15, 0.5, n))
    rows = diag[:, None] - 0.5 * np.abs(x[:, None] - x[None, :])
    return np.clip(rows + rng.normal(0, sigma, (n, n)), 0, 1)


def parse_variant(text: str) -> tuple[str, dict[str, object]]:
    """``NAME=key:value,key:value`` as the variant's name and its ``mbtl-gp`` options."""
    name, equals, spec = text.partition("=")
    if not equals or not name or not spec:
        raise argparse.ArgumentTypeError(f"--variant {text!r}: expected NAME=key:value,...")
    options: dict[str, object] = {}
    for item in filter(None, spec.split(",")):
        key, colon, value = item.partition(":")
        if not colon or not key:
            raise argparse.ArgumentTypeError(f"--variant {text!r}: {item!r} is not key:value")
        try:
            options[key] = float(value) if "." in value or value.isdigit() else value
        except ValueError:
            options[key] = value
    return name, options


def real_family(folder: Path, env: str, mirror: bool) -> tuple[list[np.ndarray], np.ndarray]:
    """The normalised per-seed matrices of ``folder`` (read as ``ctxrl select`` reads a folder, in
    file-name order; with ``mirror`` each followed by its mirror image) and the contexts'
    coordinates ``(N, d)``."""
    _, raw, located, bounds = load_trials(
        [folder],
        contexts=None,
        grid=None,
        env_name=env,
        bounds=None,
        negate=False,
        registry=get_host().registry,
    )
    matrices = []
    for matrix in normalised_trials(raw, bounds):
        matrices.append(matrix)
        if mirror:
            matrices.append(matrix[::-1, ::-1].copy())
    return matrices, located.coords


def score(
    name: str,
    matrix: np.ndarray,
    budget: int,
    coords: np.ndarray | None = None,
    trial: int = 0,
    **options: object,
) -> float:
    """Mean G_1..budget of strategy ``name`` replayed on ``matrix`` (contexts ``coords``,
    default ``linspace(0, 1, N)``); stochastic strategies averaged over 100 seeded orders, the
    matrix's own (``trial``: its place in the family, :func:`ctxrl.offline.trial_seed`; until
    2026-12-06 every matrix of a family drew the same 100 orders)."""
    spec = get_host().registry.strategy(name)
    if coords is None:
        coords = np.linspace(0.0, 1.0, matrix.shape[0])[:, None]
    runs = RANDOM_ORDERS if spec.stochastic else 1
    return float(
        np.mean(
            [
                replay(
                    spec.factory(**options),
                    matrix,
                    coords,
                    budget,
                    seed=trial_seed(s, trial),
                    full_knowledge=spec.requires_full_matrix,
                ).curve.mean()
                for s in range(runs)
            ]
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--seed0", type=int, default=0, help="first seed")
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    parser.add_argument("--budget", type=int, default=15)
    parser.add_argument(
        "--variant", nargs="*", default=[], type=parse_variant, help="NAME=key:value,key:value"
    )
    parser.add_argument(
        "--families",
        nargs="*",
        default=["mountain", "test-mountain", "failures"],
        choices=["mountain", "test-mountain", "failures"],
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--real", nargs="*", default=[], help="FOLDER=ENV: a sweep's matrices")
    parser.add_argument("--mirror", action="store_true", help="--real: add mirrored matrices")
    args = parser.parse_args()
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    matrices: dict[str, list[np.ndarray]] = {}
    coordinates: dict[str, np.ndarray] = {}
    if "mountain" in args.families:
        for sigma in args.noise:
            matrices[f"mountain s={sigma:g}"] = [
                mountain(args.n, s, sigma) for s in range(args.seed0, args.seed0 + args.seeds)
            ]
    if "test-mountain" in args.families:
        matrices["test-mountain"] = test_mountains()
    if "failures" in args.families:
        matrices["failures"] = [
            failures(args.n, s) for s in range(args.seed0, args.seed0 + args.seeds)
        ]
    for spec in args.real:
        folder, _, env = spec.partition("=")
        if not env:
            parser.error(f"--real {spec!r}: give FOLDER=ENV")
        family = Path(folder).name + (" (+ mirrored)" if args.mirror else "")
        matrices[family], coordinates[family] = real_family(Path(folder), env, args.mirror)
    variants: list[tuple[str, dict[str, object]]] = [("mbtl-gp", {}), *args.variant]
    if len({label for label, _ in variants}) != len(variants):
        parser.error("variant names must differ from each other and from mbtl-gp")
    columns = [v[0] for v in variants] + ["greedy", "equidistant", "random", "seq-oracle"]
    results: dict[str, dict[str, list[float]]] = {}
    start = time.perf_counter()
    for family, mats in matrices.items():
        cell: dict[str, list[float]] = {c: [] for c in columns}
        coords = coordinates.get(family)
        for t, m in enumerate(mats):
            budget = min(args.budget, m.shape[0])
            for label, options in variants:
                cell[label].append(score("mbtl-gp", m, budget, coords, **options))
            for name, column in (
                ("greedy", "greedy"),
                ("equidistant", "equidistant"),
                ("random", "random"),
                ("sequential-oracle", "seq-oracle"),
            ):
                cell[column].append(score(name, m, budget, coords, trial=t))
        results[family] = cell
        print(f"{family}: {time.perf_counter() - start:.0f} s", flush=True)
        if args.out:
            args.out.write_text(json.dumps(results))
    print(f"\nmean G_1..{args.budget} (+- 95 % over matrices; [n] matrices)\n")
    print("| matrices | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for family, cell in results.items():
        values = [f"{m:.4f} ± {h:.4f}" for m, h in (mean_ci(np.array(cell[c])) for c in columns)]
        print(f"| {family} [{len(cell[columns[0]])}] | " + " | ".join(values) + " |")
    print("\npaired differences (mean ± 95 %): variant - greedy, variant - random\n")
    for label, _ in variants:
        parts = []
        for family, cell in results.items():
            v = np.array(cell[label])
            greedy, random = np.array(cell["greedy"]), np.array(cell["random"])
            dg, dr = mean_ci(v - greedy), mean_ci(v - random)
            wins = f"at or above in {(v >= greedy).sum()} / {(v >= random).sum()} of {len(v)}"
            parts.append(f"{family}: {dg[0]:+.4f}±{dg[1]:.4f} / {dr[0]:+.4f}±{dr[1]:.4f} ({wins})")
        print(f"- {label}: " + "; ".join(parts))


if __name__ == "__main__":
    main()
