"""Transfer matrices: how well a policy trained on each source context does on each target.

``values[i, j, s]`` is the mean episode return of the policy trained on source ``i`` with seed
``s``, evaluated zero-shot on target ``j``; NaN where unobserved. The reference CSV format (MBTL)
is one header-less N x N file of raw returns per trial: row = source, column = target, contexts
in increasing order.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctxrl.context import Context
from ctxrl.errors import MatrixError


@dataclass(frozen=True)
class TransferMatrix:
    """Raw returns of sources x targets x seeds.

    Attributes:
        sources: the contexts the policies were trained on, length ``S``.
        targets: the contexts they were evaluated on, length ``T``.
        values: float64 array of shape ``(S, T, n_seeds)``; NaN = unobserved.
        env: the environment's registry name ('' when unknown, e.g. an imported CSV).
        features: the varied features, the ones that distinguish the contexts.
    """

    sources: tuple[Context, ...]
    targets: tuple[Context, ...]
    values: np.ndarray
    env: str = ""
    features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=np.float64)
        if values.ndim == 2:
            values = values[:, :, None]
        if values.ndim != 3 or values.shape[:2] != (len(self.sources), len(self.targets)):
            raise MatrixError(
                f"values of shape {values.shape} do not match {len(self.sources)} sources x "
                f"{len(self.targets)} targets x seeds"
            )
        object.__setattr__(self, "values", values)

    # ------------------------------------------------------------------ creation
    @classmethod
    def empty(
        cls,
        sources: Sequence[Context],
        targets: Sequence[Context],
        n_seeds: int = 1,
        *,
        env: str = "",
        features: Sequence[str] = (),
    ) -> TransferMatrix:
        values = np.full((len(sources), len(targets), n_seeds), np.nan)
        return cls(tuple(sources), tuple(targets), values, env, tuple(features))

    @property
    def shape(self) -> tuple[int, int, int]:
        s, t, n = self.values.shape
        return s, t, n

    @property
    def n_seeds(self) -> int:
        return int(self.values.shape[2])

    def is_square(self) -> bool:
        return self.sources == self.targets

    def mean(self) -> np.ndarray:
        """Mean over observed seeds, shape ``(S, T)``; NaN where no seed was observed."""
        observed = ~np.isnan(self.values)
        counts = observed.sum(axis=2)
        total = np.where(observed, self.values, 0.0).sum(axis=2)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, total / np.maximum(counts, 1), np.nan)

    def normalised(self, lower: float, upper: float) -> TransferMatrix:
        """``(raw - lower) / (upper - lower)`` clipped to [0, 1]; NaN stays NaN."""
        if not upper > lower:
            raise MatrixError(f"normalisation bounds need lower < upper, got [{lower}, {upper}]")
        with np.errstate(invalid="ignore"):
            scaled = np.clip((self.values - lower) / (upper - lower), 0.0, 1.0)
        return TransferMatrix(self.sources, self.targets, scaled, self.env, self.features)

    def with_value(self, source: int, target: int, seed: int, value: float) -> TransferMatrix:
        values = self.values.copy()
        values[source, target, seed] = value
        return TransferMatrix(self.sources, self.targets, values, self.env, self.features)

    def seed(self, index: int) -> TransferMatrix:
        """The matrix of one seed (trial)."""
        values = self.values[:, :, index : index + 1]
        return TransferMatrix(self.sources, self.targets, values, self.env, self.features)

    # --------------------------------------------------------------- metrics
    def oracle_transfer(self) -> float:
        """``mean_j max_i M[i, j]`` over seed-means (all sources trained)."""
        return float(np.nanmean(np.nanmax(self.mean(), axis=0)))

    def independent(self) -> float:
        """Mean of the diagonal: every target trained on its own context."""
        if not self.is_square():
            raise MatrixError("independent training needs sources == targets")
        return float(np.nanmean(np.diag(self.mean())))

    # ---------------------------------------------------------- reference CSV
    def to_reference_csv(self, path: str | Path | None = None, seed: int = 0) -> str:
        """Write one seed as the reference CSV (N x N, no header, round-trip float text).

        Returns the CSV text; writes it to ``path`` when given."""
        if not 0 <= seed < self.n_seeds:
            raise MatrixError(f"seed index {seed} is outside 0..{self.n_seeds - 1}")
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        for row in self.values[:, :, seed]:
            writer.writerow(["nan" if np.isnan(v) else repr(float(v)) for v in row])
        text = buffer.getvalue()
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_reference_csv(
        cls,
        paths: str | Path | Sequence[str | Path],
        *,
        contexts: Sequence[Context] | None = None,
        env: str = "",
        features: Sequence[str] = (),
        negate: bool = False,
    ) -> TransferMatrix:
        """Read one or several reference CSVs (one per trial, stacked as seeds).

        Args:
            paths: a file or a list of files with equal shapes.
            contexts: the N contexts in increasing order; ``index=0..N-1`` when omitted.
            negate: multiply by -1 (the reference stores traffic costs; negate to get returns).
        """
        files = [paths] if isinstance(paths, str | Path) else list(paths)
        if not files:
            raise MatrixError("no matrix files given")
        layers: list[np.ndarray] = []
        for file in files:
            layer = _read_numeric_csv(Path(file))
            if layers and layer.shape != layers[0].shape:
                raise MatrixError(
                    f"{file}: shape {layer.shape} differs from {files[0]}: {layers[0].shape}"
                )
            layers.append(layer)
        values = np.stack(layers, axis=2)
        n_rows, n_cols = values.shape[:2]
        if n_rows != n_cols:
            raise MatrixError(f"{files[0]}: a reference matrix is square, got {n_rows} x {n_cols}")
        if contexts is None:
            contexts = [Context({"index": float(i)}) for i in range(n_rows)]
            features = ("index",)
        if len(contexts) != n_rows:
            raise MatrixError(f"{files[0]}: {n_rows} rows but {len(contexts)} contexts given")
        if negate:
            values = -values
        return cls(tuple(contexts), tuple(contexts), values, env, tuple(features))


def _read_numeric_csv(path: Path) -> np.ndarray:
    if not path.is_file():
        raise MatrixError(f"matrix file {path} does not exist")
    rows: list[list[float]] = []
    try:
        # utf-8-sig: a byte-order mark (as spreadsheets save CSV) is not part of the first cell
        with path.open(newline="", encoding="utf-8-sig") as handle:
            for line_no, row in enumerate(csv.reader(handle), start=1):
                if not row:
                    continue
                try:
                    rows.append([float(cell) for cell in row])
                except ValueError as exc:
                    header = " (a matrix CSV has no header row)" if line_no == 1 else ""
                    raise MatrixError(f"{path}:{line_no}: not a number ({exc}){header}") from None
    except UnicodeDecodeError as exc:
        raise MatrixError(f"{path}: not UTF-8 text ({exc})") from None
    if not rows:
        raise MatrixError(f"matrix file {path} is empty")
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise MatrixError(f"{path}: rows have different lengths {sorted(widths)}")
    return np.array(rows, dtype=np.float64)
