"""TransferMatrix: shapes, normalisation, metrics and the reference CSV format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctxrl import Context, MatrixError, TransferMatrix


def _matrix(n: int = 6, seeds: int = 2) -> TransferMatrix:
    rng = np.random.default_rng(1)
    contexts = [Context({"masscart": 0.1 * (i + 1)}) for i in range(n)]
    values = rng.normal(200.0, 150.0, size=(n, n, seeds))
    values[0, 3, 1] = np.nan
    values[2, 2, 0] = 1e-300
    return TransferMatrix(tuple(contexts), tuple(contexts), values, "CartPole", ("masscart",))


def test_reference_csv_round_trip_is_identical(tmp_path: Path) -> None:
    matrix = _matrix()
    paths = []
    for seed in range(matrix.n_seeds):
        path = tmp_path / f"cartpole_masscart_{seed}_transfer_result.csv"
        matrix.to_reference_csv(path, seed=seed)
        paths.append(path)
    back = TransferMatrix.from_reference_csv(
        paths, contexts=matrix.sources, env="CartPole", features=("masscart",)
    )
    np.testing.assert_array_equal(back.values, matrix.values)  # NaN == NaN here, bit-exact
    assert back.sources == matrix.sources
    text = paths[0].read_text().splitlines()
    assert len(text) == 6 and all(len(line.split(",")) == 6 for line in text)  # no header


def test_csv_without_contexts_uses_indices(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("1,2\n3,4\n")
    matrix = TransferMatrix.from_reference_csv(path, negate=True)
    assert matrix.sources[1] == {"index": 1.0}
    np.testing.assert_array_equal(matrix.mean(), [[-1, -2], [-3, -4]])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,2\n3\n", "different lengths"),
        ("1,x\n3,4\n", r"bad.csv:1: not a number .*\(a matrix CSV has no header row\)"),
        ("1,2\n3,x\n", r"bad.csv:2: not a number \([^)]*\)$"),
        ("", "empty"),
        ("1,2,3\n4,5,6\n", "square"),
    ],
)
def test_bad_csv_is_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(MatrixError, match=message) as excinfo:
        TransferMatrix.from_reference_csv(path)
    assert "bad.csv" in str(excinfo.value)


def test_normalisation_and_metrics() -> None:
    contexts = tuple(Context({"x": float(i)}) for i in range(3))
    raw = np.array([[500.0, 250.0, 0.0], [100.0, 400.0, 600.0], [np.nan, 50.0, 300.0]])
    matrix = TransferMatrix(contexts, contexts, raw)
    normalised = matrix.normalised(0.0, 500.0).mean()
    np.testing.assert_allclose(normalised[0], [1.0, 0.5, 0.0])
    assert normalised[1, 2] == 1.0  # clipped
    assert np.isnan(normalised[2, 0])
    assert matrix.normalised(0, 500).independent() == pytest.approx((1.0 + 0.8 + 0.6) / 3)
    assert matrix.normalised(0, 500).oracle_transfer() == pytest.approx((1.0 + 0.8 + 1.0) / 3)
    with pytest.raises(MatrixError, match="lower < upper"):
        matrix.normalised(1.0, 1.0)


def test_mean_ignores_unobserved_seeds() -> None:
    matrix = _matrix()
    mean = matrix.mean()
    assert mean[0, 3] == matrix.values[0, 3, 0]
    assert mean[1, 1] == pytest.approx(matrix.values[1, 1].mean())
    with pytest.raises(MatrixError, match="do not match"):
        TransferMatrix(matrix.sources, matrix.targets, np.zeros((2, 2, 1)))
