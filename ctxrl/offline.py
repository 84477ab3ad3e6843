"""Offline source selection on stored matrices: what ``ctxrl select`` and ``ctxrl synth`` read
and write.

A *trial* is one transfer matrix of a domain (one independently trained matrix, or one draw of
a synthetic benchmark). SD-MBTL reports each strategy's ``G_K`` as the mean over trials with a
95 % confidence interval; :func:`replay_trials` does the same here. Context coordinates come
from a contexts file (the ``contexts.json`` a sweep or ``ctxrl synth`` writes beside its
matrices, or a CSV of feature columns) or a grid shape; without them a matrix is 1-D.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ctxrl.errors import CtxrlError, UnknownNameError
from ctxrl.options import check_options, is_number
from ctxrl.registry import Registry, StrategySpec
from ctxrl.selection import myopic_oracle, replay_many
from ctxrl.yaml12 import parse_yaml

MATRIX_SUFFIXES = (".csv", ".npy")
CONTEXTS_FILE = "contexts.json"
ONE_D = "no --contexts, --grid or contexts.json beside the matrix"


@dataclass(frozen=True)
class ContextCoordinates:
    """Unit-cube coordinates ``(N, d)`` of a matrix's contexts and where they came from."""

    coords: np.ndarray
    source: str
    shape: tuple[int, ...] | None = None

    @property
    def dims(self) -> int:
        """The number of features that vary (a constant one, or an axis of size 1, is none)."""
        return int(np.sum(np.ptp(self.coords, axis=0) > 0)) if len(self.coords) else 0

    def describe(self) -> str:
        """One line for the user: how many contexts, how many dimensions, from where."""
        n = self.coords.shape[0]
        if self.source == ONE_D:
            return f"treating the {n} contexts as 1-D ({ONE_D})"
        several_axes = self.shape is not None and len(self.shape) > 1
        grid = f" on a {' x '.join(map(str, self.shape or ()))} grid" if several_axes else ""
        return f"{n} contexts{grid}, {self.dims}-D (from {self.source})"


def grid_index_coords(values: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """Coordinates in grid steps scaled to [0, 1] per feature: each feature's ``n`` distinct
    values map to ``0, 1/(n-1), ..., 1`` in increasing order (what sweeps use, so distances
    are grid-index distances as in the MBTL reference). ``values`` is ``(N, d)``; returns the
    coordinates and the number of distinct values per feature."""
    columns, shape = [], []
    for column in np.asarray(values, dtype=np.float64).T:
        distinct, position = np.unique(column, return_inverse=True)
        shape.append(len(distinct))
        columns.append(position / max(len(distinct) - 1, 1))
    return np.stack(columns, axis=1), tuple(shape)


def parse_grid(text: str) -> tuple[int, ...]:
    """``8x8x8`` -> ``(8, 8, 8)``."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        raise CtxrlError(f"--grid {text!r}: expected sizes joined by 'x', like 8x8x8") from None
    if not shape or min(shape) < 1:
        raise CtxrlError(f"--grid {text!r}: every size must be >= 1")
    return shape


def coords_from_grid(shape: Sequence[int]) -> np.ndarray:
    """Unit-cube coordinates of a C-order grid (the last axis varies fastest)."""
    axes = [np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1) for n in shape]
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.reshape(-1) for m in mesh], axis=1)


def read_contexts(path: Path) -> tuple[np.ndarray, list[str], tuple[float, float] | None]:
    """A contexts file: ``contexts.json`` (``{"features", "contexts": [{feature: value}],
    "return_bounds"?}``) or a CSV with a header of feature names and one row per context.
    Returns the ``(N, d)`` values, the feature names and the return bounds when given."""
    if not path.is_file():
        raise CtxrlError(f"contexts file {path} does not exist")
    if path.suffix == ".json":
        try:  # a UnicodeDecodeError is a ValueError
            data = json.loads(path.read_text(encoding="utf-8"))
            features = [str(f) for f in data["features"]]
            values = np.array(
                [[float(c[f]) for f in features] for c in data["contexts"]], dtype=np.float64
            )
            if not features or len(values) == 0:
                raise ValueError("no features or no contexts")
        except (ValueError, KeyError, TypeError) as exc:
            raise CtxrlError(
                f"{path}: expected {{'features': [...], 'contexts': [{{feature: value}}]}} "
                f"({type(exc).__name__}: {exc})"
            ) from None
        bounds = _return_bounds(path, data.get("return_bounds"))
        return _checked_contexts(path, values, features), features, bounds
    try:  # utf-8-sig: a byte-order mark (as spreadsheets save CSV) is not part of a name
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = [row for row in csv.reader(handle) if row]
    except UnicodeDecodeError as exc:
        raise CtxrlError(f"{path}: not UTF-8 text ({exc})") from None
    if len(rows) < 2:
        raise CtxrlError(f"{path}: expected a header of feature names and one row per context")
    features = [name.strip() for name in rows[0]]
    if all(is_number(name) for name in features):
        raise CtxrlError(
            f"{path}: its first row ({', '.join(features)}) is numbers; a contexts CSV starts "
            "with a header of feature names"
        )
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(features):
            raise CtxrlError(
                f"{path}: row {line} has {len(row)} column(s), the header {len(features)}"
            )
        for column, cell in enumerate(row):
            if not is_number(cell):
                raise CtxrlError(
                    f"{path}: row {line}, column {features[column]!r}: {cell!r} is not a number"
                )
    values = np.array([[float(cell) for cell in row] for row in rows[1:]], dtype=np.float64)
    if values.shape[1:] != (len(features),):
        raise CtxrlError(f"{path}: rows do not all have {len(features)} columns")
    return _checked_contexts(path, values, features), features, None


def _checked_contexts(path: Path, values: np.ndarray, features: Sequence[str]) -> np.ndarray:
    """``values`` ``(N, d)`` of a contexts file, unless a value is not finite or two contexts
    coincide (they would sit at one point, and a strategy's distances would be wrong): then a
    :class:`CtxrlError` naming the file, the context (counted from 0, in the matrix's row
    order) and the feature."""
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        row, column = (int(i) for i in bad[0])
        raise CtxrlError(
            f"{path}: context {row} has {features[column]} = {values[row, column]}: every "
            "value must be a finite number"
        )
    _, first, inverse = np.unique(values, axis=0, return_index=True, return_inverse=True)
    repeated = [i for i, group in enumerate(inverse.reshape(-1)) if first[group] != i]
    if repeated:
        again = repeated[0]
        original = int(first[inverse.reshape(-1)[again]])
        raise CtxrlError(
            f"{path}: contexts {original} and {again} are the same "
            f"({', '.join(f'{f}={values[again, j]:g}' for j, f in enumerate(features))}); each "
            "row of the matrix is a context of its own"
        )
    return values


def _return_bounds(path: Path, bounds: Any) -> tuple[float, float] | None:
    """A contexts.json's ``return_bounds``: absent, or two numbers, lower < upper."""
    if bounds is None:
        return None
    try:
        lower, upper = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise CtxrlError(
            f"{path}: return_bounds must be two numbers [lower, upper], got {bounds!r}"
        ) from None
    if not (math.isfinite(lower) and math.isfinite(upper) and lower < upper):
        raise CtxrlError(f"{path}: return_bounds need finite lower < upper, got {bounds!r}")
    return lower, upper


def read_matrix_file(path: Path) -> np.ndarray:
    """One raw ``(N, N)`` matrix from a reference CSV (no header, row = source) or a ``.npy``
    array (read without pickle)."""
    if path.suffix == ".npy":
        try:  # EOFError: an empty file (click would take it for the user's Ctrl-D)
            matrix = np.load(path, allow_pickle=False)
            if matrix.dtype.kind not in "biuf":  # complex: the imaginary part would be dropped
                raise TypeError(f"its values are {matrix.dtype}, not real numbers")
            matrix = np.asarray(matrix, dtype=np.float64)
        except (ValueError, EOFError, OSError, TypeError) as exc:
            raise CtxrlError(
                f"{path}: not a numeric .npy array ({type(exc).__name__}: {exc})"
            ) from None
    else:
        from ctxrl.matrix import TransferMatrix

        matrix = TransferMatrix.from_reference_csv(path).values[:, :, 0]
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise CtxrlError(f"{path}: a transfer matrix is square, got shape {matrix.shape}")
    if matrix.size == 0:
        raise CtxrlError(f"{path}: the matrix is empty (shape {matrix.shape})")
    return matrix


SWEEP_MATRIX = re.compile(r"matrix_seed(\d+)")
"""The name of a per-seed matrix in a sweep's ``exports`` folder (``matrix_seed0.csv``)."""


def matrix_files(path: Path) -> list[Path]:
    """The matrix files of ``path``: itself, or a folder's ``*.csv`` / ``*.npy`` files (one per
    trial, in name order; ``contexts.csv`` is not a matrix). In a sweep's ``exports`` folder,
    beside its tables of runs, evaluations and curves, the per-seed matrices
    ``matrix_seed{seed}.csv`` only, in seed order."""
    if path.is_file():
        return [path]
    per_seed: dict[int, Path] = {}
    for file in sorted(path.iterdir()):
        if file.suffix == ".csv" and (match := SWEEP_MATRIX.fullmatch(file.stem)):
            other = per_seed.setdefault(int(match[1]), file)
            if other is not file:
                raise CtxrlError(
                    f"{path}: {other.name} and {file.name} are both seed {int(match[1])}'s "
                    "matrix; keep one"
                )
    if per_seed:
        return [per_seed[seed] for seed in sorted(per_seed)]
    files = sorted(
        (p for p in path.iterdir() if p.suffix in MATRIX_SUFFIXES and p.stem != "contexts"),
        key=_in_number_order,
    )
    if not files:
        raise CtxrlError(f"{path}: no matrix files (*.csv, *.npy) in this folder")
    return files


def _in_number_order(path: Path) -> tuple[tuple[int, str], ...]:
    """A file name's key in number order: ``trial999`` before ``trial1000`` (text order put
    it between ``trial100`` and ``trial101``)."""
    parts = re.split(r"(\d+)", path.name)
    return tuple((int(part), "") if part.isdigit() else (-1, part) for part in parts)


def _check_folders_agree(
    files: Sequence[Path], *, coordinates_given: bool, bounds_given: bool
) -> None:
    """Trials from several folders: the first folder's ``contexts.json`` gives the contexts
    (unless ``--contexts`` or ``--grid`` do) and the bounds for all (unless ``--bounds`` or
    ``--env`` do), so the folders must agree on what they give: every one has the same file,
    or none has one. With ``coordinates_given`` only the return bounds must agree (every
    folder has them, the same), with ``bounds_given`` only the contexts; with both, nothing
    is taken from the files."""
    folders: dict[Path, Path] = {}  # each folder's contexts file -> its first matrix
    for file in files:
        folders.setdefault(file.parent / CONTEXTS_FILE, file)
    if len(folders) < 2 or (coordinates_given and bounds_given):
        return
    present = {path: read_contexts(path) for path in sorted(folders) if path.is_file()}
    if not present:
        return
    absent = [
        f"{path} is absent (beside {folders[path]})"
        for path in sorted(folders)
        if path not in present
    ]
    if coordinates_given:
        bounds = {str(data[2]) for data in present.values()}
        if absent or len(bounds) > 1:
            found = ", ".join(f"{p}: {d[2]}" for p, d in present.items())
            raise CtxrlError(
                "--matrix: the trials' folders disagree on their return bounds ("
                + (f"{absent[0]}; " if absent else "")
                + f"{found}); give --bounds LOWER UPPER or --env NAME for all of them"
            )
        return
    first, *others = present
    differing = [
        str(p)
        for p in others
        if not _same_contexts(present[p], present[first], bounds=not bounds_given)
    ]
    if absent or differing:
        what = absent[0] if absent else f"{differing[0]} is not {first}"
        raise CtxrlError(
            f"--matrix: the trials' folders disagree on their contexts: {what}; replay trials "
            "of one set of contexts together, or give --contexts / --grid (and --bounds or "
            "--env where their return bounds differ)"
        )


def _same_contexts(
    a: tuple[np.ndarray, list[str], Any], b: tuple[np.ndarray, list[str], Any], *, bounds: bool
) -> bool:
    """Whether two read contexts files hold the same contexts and features (and, with
    ``bounds``, the same return bounds)."""
    same = a[0].shape == b[0].shape and bool(np.array_equal(a[0], b[0])) and a[1] == b[1]
    return same and (not bounds or a[2] == b[2])


def resolve_coordinates(
    n: int,
    *,
    contexts: Path | None,
    grid: str | None,
    beside: Path | None,
) -> tuple[ContextCoordinates, tuple[float, float] | None]:
    """The coordinates of ``n`` contexts: from ``--contexts``, else ``--grid``, else a
    ``contexts.json`` beside the matrix (``beside``: the matrix file's folder), else 1-D.
    Also the return bounds a contexts.json carries."""
    if contexts is not None and grid is not None:
        raise CtxrlError("give --contexts or --grid, not both")
    found = contexts
    nearby = beside / CONTEXTS_FILE if beside is not None else None
    nearby_bounds = None
    nearby_shape: tuple[int, ...] | None = None
    unread = ""  # why the contexts.json beside the matrix was not read, when it was not
    if nearby is not None and nearby.is_file():
        if found is None and grid is None:
            found = nearby
        elif nearby != found:  # coordinates from elsewhere; its return bounds still apply
            try:
                nearby_values, _, nearby_bounds = read_contexts(nearby)
                nearby_shape = grid_index_coords(nearby_values)[1]
            except CtxrlError as exc:  # not needed for the coordinates: said, not fatal
                unread = f"; {nearby} not read: {exc}"
    if found is not None:
        values, features, bounds = read_contexts(found)
        if len(values) != n:
            raise CtxrlError(f"{found}: {len(values)} contexts, but the matrix has {n} rows")
        coords, shape = grid_index_coords(values)
        grid_like = math.prod(shape) == n
        varied = [f for f, size in zip(features, shape, strict=True) if size > 1]
        constant = [f for f, size in zip(features, shape, strict=True) if size == 1]
        named = ", ".join(varied) + (f"; constant: {', '.join(constant)}" if constant else "")
        return (
            ContextCoordinates(coords, f"{found}: {named}{unread}", shape if grid_like else None),
            bounds or nearby_bounds,
        )
    if grid is not None:
        shape = parse_grid(grid)
        if math.prod(shape) != n:
            raise CtxrlError(f"--grid {grid}: {math.prod(shape)} contexts, but the matrix has {n}")
        source = f"--grid{unread}"
        if nearby_shape is not None and tuple(d for d in nearby_shape if d > 1) != tuple(
            d for d in shape if d > 1
        ):  # said where it is printed: the file beside describes another grid
            described = " x ".join(map(str, nearby_shape))
            source = f"--grid, not the {described} grid of {nearby}"
        return ContextCoordinates(coords_from_grid(shape), source, shape), nearby_bounds
    coords = np.linspace(0.0, 1.0, n)[:, None] if n > 1 else np.zeros((1, 1))
    return ContextCoordinates(coords, ONE_D), None


def check_one_dimensional(specs: Mapping[str, StrategySpec], located: ContextCoordinates) -> None:
    """Refuse, before any replay, a strategy that works on one varied feature in increasing
    order (Greedy, Equidistant) when the contexts vary in several or are out of order."""
    varied = np.flatnonzero(np.ptp(located.coords, axis=0) > 0)
    for name, spec in specs.items():
        if not spec.one_dimensional:
            continue
        if len(varied) > 1:
            raise CtxrlError(
                f"--strategy {name}: works on one varied feature; these contexts vary "
                f"{len(varied)} ({located.describe()})"
            )
        values = located.coords[:, varied[0] if len(varied) else 0]
        if np.any(np.diff(values) < 0):
            raise CtxrlError(
                f"--strategy {name}: needs the contexts in increasing order, the matrix's rows "
                f"are not ({located.describe()})"
            )


def load_trials(
    paths: Sequence[Path],
    *,
    contexts: Path | None,
    grid: str | None,
    env_name: str | None,
    bounds: tuple[float, float] | None,
    negate: bool,
    registry: Registry,
) -> tuple[list[Path], np.ndarray, ContextCoordinates, tuple[float, float]]:
    """What ``ctxrl select --matrix`` reads: raw trial matrices ``(T, N, N)`` from matrix
    files, folders of them or one run directory (each seed's matrix a trial; the seed-mean
    matrix where a seed misses entries), the files read, the contexts' coordinates and the
    normalisation bounds (``bounds``, else the env's, else a ``contexts.json``'s)."""
    from ctxrl.run_dirs import PLAN_FILE

    runs = [p for p in paths if p.is_dir() and (p / PLAN_FILE).is_file()]
    if runs:
        if len(paths) > 1:
            raise CtxrlError(f"--matrix {runs[0]} is a run directory: give it alone")
        if negate or env_name is not None:
            raise CtxrlError(
                f"--matrix {runs[0]} is a run directory: its plan names the env and its "
                "bounds; --negate and --env apply to matrix files only (--bounds overrides)"
            )
        from ctxrl.results import load_plan, open_store
        from ctxrl.summary import sweep_matrix

        plan = load_plan(runs[0], registry)
        with open_store(runs[0]) as store:
            matrix = sweep_matrix(plan, store)
        # each seed's matrix a trial, as the sweep's summary scores them (a seed-mean matrix,
        # clipped after averaging, gave other Independent and Oracle values than the summary
        # of the same run); where a seed misses entries (a killed sweep, a failed run) the
        # seed-mean matrix, one trial, as the summary falls back to it
        per_seed = np.moveaxis(matrix.values, 2, 0)  # (seeds, N, N)
        named = [Path(f"{runs[0]} (seed {seed})") for seed in plan.config.seeds]
        if np.isnan(per_seed).any():
            per_seed, named = matrix.mean()[None], [Path(f"{runs[0]} (seed-mean)")]
        shape = plan.grid.shape
        located = ContextCoordinates(
            plan.grid.grid_coords(), f"{runs[0]}: {', '.join(plan.grid.features)}", shape
        )
        if contexts is not None or grid is not None:
            coords, _ = resolve_coordinates(
                per_seed.shape[1], contexts=contexts, grid=grid, beside=None
            )
            located = coords
        return named, per_seed, located, bounds or plan.env.return_bounds
    files = [f for p in paths for f in matrix_files(p)]
    seen: dict[Path, Path] = {}
    for file in files:  # a trial counted twice would narrow every interval
        first = seen.setdefault(file.resolve(), file)
        if first is not file:
            raise CtxrlError(f"--matrix: {file} is given twice (also as {first})")
    layers = [read_matrix_file(f) for f in files]
    shapes: dict[tuple[int, ...], Path] = {}
    for file, layer in zip(files, layers, strict=True):
        shapes.setdefault(layer.shape, file)
    if len(shapes) > 1:
        each = ", ".join(f"{shape} ({file} ...)" for shape, file in sorted(shapes.items()))
        raise CtxrlError(f"--matrix: the trial matrices differ in shape: {each}")
    raw = np.stack(layers) * (-1.0 if negate else 1.0)
    _check_folders_agree(
        files,
        coordinates_given=contexts is not None or grid is not None,
        bounds_given=bounds is not None or env_name is not None,
    )
    located, file_bounds = resolve_coordinates(
        raw.shape[1], contexts=contexts, grid=grid, beside=files[0].parent
    )
    if bounds is not None and env_name is not None:
        raise CtxrlError("--env and --bounds both give the normalisation bounds; give one of them")
    if bounds is None and env_name is not None:
        try:
            bounds = registry.env(env_name).return_bounds
        except UnknownNameError as exc:
            raise CtxrlError(f"--env: {exc}") from None
    bounds = bounds or file_bounds
    if bounds is None:
        raise CtxrlError(
            f"{files[0]}: give --env NAME or --bounds LOWER UPPER to normalise raw returns "
            "(or a contexts.json with return_bounds beside the matrices)"
        )
    return files, raw, located, bounds


def normalised_trials(raw: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    """Raw returns ``(T, N, N)`` as normalised performance ``(R - lower) / (upper - lower)``
    clipped to [0, 1] (NaN, an unobserved entry, stays NaN); an error naming the bounds
    unless they are finite, ``lower < upper`` (infinite bounds made every entry 0 or NaN)."""
    lower, upper = bounds
    if not (math.isfinite(lower) and math.isfinite(upper) and upper > lower):
        raise CtxrlError(
            f"normalisation bounds need finite lower < upper, got [{lower}, {upper}] (from "
            "--bounds, --env or a contexts.json's return_bounds)"
        )
    with np.errstate(invalid="ignore"):
        return np.clip((raw - lower) / (upper - lower), 0.0, 1.0)


def parse_options(
    items: Sequence[str], specs: Mapping[str, StrategySpec]
) -> dict[str, dict[str, Any]]:
    """``--option [STRATEGY.]KEY=VALUE`` -> options per strategy; values are YAML scalars
    (``0.01``, ``true``, ``estimate``). Without ``STRATEGY.`` an option goes to every strategy
    given; each strategy is built once here so an option it does not take is an error naming
    the option and the strategy, before any replay."""
    options: dict[str, dict[str, Any]] = {name: {} for name in specs}
    scoped: dict[str, set[str]] = {name: set() for name in specs}  # given as STRATEGY.KEY
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise CtxrlError(f"--option {item!r}: expected KEY=VALUE or STRATEGY.KEY=VALUE")
        target, dot, name = key.strip().rpartition(".")
        targets = [target] if dot else list(specs)
        if dot and target not in specs:
            raise CtxrlError(
                f"--option {item!r}: strategy {target!r} is not among --strategy {list(specs)}"
            )
        try:
            value = parse_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise CtxrlError(f"--option {item!r}: the value is not valid YAML ({exc})") from None
        for strategy in targets:
            # STRATEGY.KEY overrides a KEY given to every strategy; the same key twice at one
            # scope with two values is refused (one of them would be dropped silently)
            explicit = name in scoped[strategy]
            if name in options[strategy] and explicit == bool(dot):
                if options[strategy][name] != value:
                    raise CtxrlError(
                        f"--option {item!r}: {strategy}'s {name} is already given as "
                        f"{options[strategy][name]!r}; give it once"
                    )
            elif explicit:  # a KEY for every strategy after this one's own: its own stays
                continue
            options[strategy][name] = value
            if dot:
                scoped[strategy].add(name)
    for strategy, given in options.items():
        if not given:
            continue
        where = f"--option: strategy {strategy!r}"
        try:
            check_options(specs[strategy].factory, given, where)
        except CtxrlError as exc:
            own = {k: v for k, v in given.items() if k in scoped[strategy]}
            if len(specs) == 1 or len(own) == len(given):
                raise
            check_options(specs[strategy].factory, own, where)  # its own options first
            # a KEY=VALUE given to every strategy is what this one refuses
            raise type(exc)(
                f"{exc} (--option KEY=VALUE goes to every --strategy; give it to one as "
                "STRATEGY.KEY=VALUE)"
            ) from None
    return options


def mean_ci(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Mean over trials and the half-width of its Student-t confidence interval (0 for one
    trial)."""
    from scipy.stats import t

    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return float(values.mean()), 0.0
    sem = float(values.std(ddof=1) / math.sqrt(values.size))
    return float(values.mean()), float(t.ppf(0.5 + confidence / 2, values.size - 1) * sem)


def trial_seed(repeat: int, trial: int) -> int:
    """The seed of a stochastic strategy's ``repeat``-th replay on trial ``trial``: the
    repeat itself on trial 0 (one matrix replays as it always did), a seed of its own derived
    from both elsewhere. One seed for every trial gave each trial the same random orders, so
    their shared error was left out of the interval over trials (Random's G_50 on SD-MBTL's
    synthetic trials: 0.6965 +- 0.0001 against the true 0.6957)."""
    if trial == 0:
        return repeat
    return int(np.random.SeedSequence([repeat, trial]).generate_state(1)[0])


def replay_trials(
    trials: np.ndarray,
    coords: np.ndarray,
    specs: Mapping[str, StrategySpec],
    budget: int,
    *,
    repeats: int,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    batch_sizes: Mapping[str, int] | None = None,
    first_trial: int = 0,
) -> dict[str, dict[str, Any]]:
    """Replay every strategy on every normalised trial matrix ``(T, N, N)``, proposing
    ``batch_sizes[name]`` sources a step (default 1); ``first_trial``: the number of the first
    (a trial replayed alone is seeded as it is among the others).

    Stochastic strategies are replayed ``repeats`` times on each trial, with seeds of their
    own (:func:`trial_seed`: no two trials share an order, so the interval over trials holds
    the replays' spread too), and averaged within the trial. Returns ``{name: {"curves": (T,
    K) G_k per trial, "spread": (T, K) the standard deviation over a trial's replays (0 for
    deterministic strategies), "orders": the first replay's order per trial}}``."""
    out: dict[str, dict[str, Any]] = {}
    for name, spec in specs.items():
        runs = repeats if spec.stochastic else 1
        curves, spread, orders = [], [], []
        make = functools.partial(spec.factory, **(options or {}).get(name, {}))
        per_seed = [
            replay_many(
                make,
                trials,
                coords,
                budget,
                seed=[trial_seed(repeat, first_trial + t) for t in range(len(trials))],
                name=name,
                full_knowledge=spec.requires_full_matrix,
                batch_size=(batch_sizes or {}).get(name, 1),
            )
            for repeat in range(runs)
        ]
        for results in zip(*per_seed, strict=True):
            curves.append(np.mean([r.curve for r in results], axis=0))
            spread.append(np.std([r.curve for r in results], axis=0))
            orders.append(list(results[0].order))
        out[name] = {"curves": np.array(curves), "spread": np.array(spread), "orders": orders}
    return out


def paired_differences(
    lines: Mapping[str, Mapping[str, Any]], reference: str
) -> dict[str, dict[str, float]]:
    """Each line's mean G_1..K per trial set against ``reference``'s on the same trials
    (:func:`replay_trials`' ``curves``, ``(T, K)`` each): ``reference - other``, its mean over
    the trials and 95 % Student-t half-width, and on how many trials ``reference`` is at or
    above. Paired, so the trial-to-trial spread that both lines share (a matrix where every
    strategy scores low) cancels: the interval is usually much narrower than the lines' own."""
    mine = np.asarray(lines[reference]["curves"]).mean(axis=1)
    out: dict[str, dict[str, float]] = {}
    for name, line in lines.items():
        if name == reference:
            continue
        difference = mine - np.asarray(line["curves"]).mean(axis=1)
        mean, half = mean_ci(difference)
        out[name] = {"mean": mean, "ci95": half, "at_or_above": int((difference >= 0).sum())}
    return out


def summarise_replays(
    trials: np.ndarray, lines: Mapping[str, Mapping[str, Any]], reference: str
) -> dict[str, Any]:
    """What ``ctxrl select --json`` reports of :func:`replay_trials`' ``lines`` on the
    normalised ``trials`` ``(T, N, N)``: ``independent`` and ``oracle_transfer`` (means over
    trials), and per line (``strategies``) ``mean`` G_k for k = 1..K with its band (``ci95``,
    the 95 % interval over several trials, or ``std``, one trial's spread over stochastic
    replays), ``mean_g`` (mean G_1..K) and ``mean_g_ci95``, ``final_per_trial`` G_K and the
    first trial's ``order``; with several trials ``paired``: ``reference``'s mean G_1..K
    minus every other line's (:func:`paired_differences`)."""
    several = len(trials) > 1
    strategies: dict[str, Any] = {}
    for name, line in lines.items():
        curves = np.asarray(line["curves"])  # (T, K)
        if several:
            mean, band = zip(*(mean_ci(curves[:, k]) for k in range(curves.shape[1])), strict=True)
        else:
            mean, band = tuple(curves[0].tolist()), tuple(np.asarray(line["spread"])[0].tolist())
        mean_g, mean_g_ci95 = mean_ci(curves.mean(axis=1))
        strategies[name] = {
            "mean": [float(m) for m in mean],
            "ci95": [float(h) for h in band] if several else None,
            "std": [float(h) for h in band] if not several else None,
            "mean_g": mean_g,
            "mean_g_ci95": mean_g_ci95 if several else None,
            "final_per_trial": curves[:, -1].tolist(),
            "order": line["orders"][0],
        }
    return {
        "independent": float(np.mean(np.diagonal(trials, axis1=1, axis2=2))),
        "oracle_transfer": float(np.mean(trials.max(axis=1))),
        "strategies": strategies,
        "paired": (
            {"strategy": reference, "minus": paired_differences(lines, reference)}
            if several
            else None
        ),
    }


def myopic_oracle_line(trials: np.ndarray, budget: int) -> dict[str, Any]:
    """:func:`~ctxrl.selection.myopic_oracle` in the form of :func:`replay_trials`."""
    order, curves = myopic_oracle(trials, budget)
    return {"curves": curves, "spread": np.zeros_like(curves), "orders": [list(order)]}
