"""SD-MBTL's synthetic transfer matrices: known structure to test selection strategies on.

The benchmark of SD-MBTL (Zhou, Cho, Wu; AAAI 2026, the tables "synthetic performance"):
contexts are the grid ``{0..7}^3`` (512 contexts, flattened in C order: index
``64 c0 + 8 c1 + c2``), row = source ``x``, column = target ``y``, ``d = x - y`` per dimension,

    J_t(x, y) = 500 + h(x, y) + f(x) + g(y) + sigma Z_t(x, y)

with ``h = -sum_i [wl_i min(d_i, 0) + wr_i max(d_i, 0)]``, ``wr = (3, 3, 3)`` and
``wl = (-3, -3, -3)`` (``l1``: ``h = -3 ||x - y||_1``, a Mountain) or ``(1, 1, -3)``
(``non-distance``); ``f(x) = 4 sum(x)`` (``linear``) or 0 (``constant``); ``g(y) = 3 sum(y)``
(``linear``) or 0 (``none``). ``Z_t`` are ``N x N`` standard normals drawn from numpy's legacy
``RandomState(t)``, the same draws for every setting and noise level, so trial ``t`` here is
trial ``t`` of the reference. The reference normalises every trial matrix of a setting with
one min-max over all its 100 trials (:func:`reference_bounds`); written trials keep those
bounds however few of them are written (:func:`setting_bounds`), so a trial scores the same
in a run of 20 trials as in the published tables.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctxrl.errors import CtxrlError

GRID_SHAPE = (8, 8, 8)
REFERENCE_TRIALS = 100
"""The trials of each setting and noise level in the published tables (and their bounds)."""
NOISE_LEVELS = (0.0, 5.0, 30.0)
F_CHOICES = ("constant", "linear")
G_CHOICES = ("none", "linear")
H_CHOICES = ("l1", "non-distance")
_LEFT_WEIGHTS = {"l1": (-3.0, -3.0, -3.0), "non-distance": (1.0, 1.0, -3.0)}
_RIGHT_WEIGHTS = (3.0, 3.0, 3.0)
_F_WEIGHT, _G_WEIGHT, _BASE = 4.0, 3.0, 500.0


@dataclass(frozen=True)
class SyntheticSetting:
    """One structure of the benchmark: the source effect ``f``, target effect ``g`` and
    generalization gap ``h``."""

    f: str
    g: str
    h: str

    def __post_init__(self) -> None:
        for part, value, choices in (
            ("f", self.f, F_CHOICES),
            ("g", self.g, G_CHOICES),
            ("h", self.h, H_CHOICES),
        ):
            if value not in choices:
                raise CtxrlError(f"synthetic setting: {part}={value!r} is not one of {choices}")

    @property
    def name(self) -> str:
        """``f=linear,g=none,h=l1``: what :meth:`parse` reads."""
        return f"f={self.f},g={self.g},h={self.h}"

    @property
    def mountain(self) -> bool:
        """Whether SD-MBTL's Mountain assumption holds (the table's shaded rows): constant
        training performance and a gap that falls off on both sides in every dimension."""
        return self.f == "constant" and self.h == "l1"

    @classmethod
    def parse(cls, text: str) -> SyntheticSetting:
        """``f=linear,g=none,h=l1`` (parts in any order, all three needed)."""
        parts: dict[str, str] = {}
        for item in text.split(","):
            key, sep, value = item.partition("=")
            if not sep or key.strip() not in ("f", "g", "h"):
                raise CtxrlError(
                    f"synthetic setting {text!r}: expected f=...,g=...,h=... "
                    f"(f in {F_CHOICES}, g in {G_CHOICES}, h in {H_CHOICES})"
                )
            if key.strip() in parts:
                raise CtxrlError(f"synthetic setting {text!r}: {key.strip()} is given twice")
            parts[key.strip()] = value.strip()
        missing = sorted({"f", "g", "h"} - set(parts))
        if missing:
            raise CtxrlError(f"synthetic setting {text!r}: {missing} not given")
        return cls(parts["f"], parts["g"], parts["h"])


# The rows of the published tables, in their order.
SETTINGS: tuple[SyntheticSetting, ...] = tuple(
    SyntheticSetting(f, g, h)
    for f in F_CHOICES
    for g in ("linear", "none")
    for h in ("non-distance", "l1")
)


def grid_points(shape: Sequence[int] = GRID_SHAPE) -> np.ndarray:
    """The contexts as integer grid indices, ``(prod(shape), len(shape))``, in C order."""
    return np.array(list(itertools.product(*(range(n) for n in shape))), dtype=np.float64)


def synthetic_matrix(setting: SyntheticSetting, noise: float, trial: int) -> np.ndarray:
    """Trial ``trial`` of ``setting`` at noise ``sigma = noise``: raw ``(512, 512)`` returns."""
    if noise < 0:
        raise CtxrlError(f"synthetic noise must be >= 0, got {noise}")
    if trial < 0:
        raise CtxrlError(f"synthetic trial must be >= 0, got {trial}")
    points = grid_points()
    diff = points[:, None, :] - points[None, :, :]  # (N, N, 3): source - target
    gap = -(
        np.minimum(diff, 0.0) @ np.array(_LEFT_WEIGHTS[setting.h])
        + np.maximum(diff, 0.0) @ np.array(_RIGHT_WEIGHTS)
    )
    source = _F_WEIGHT * points.sum(axis=1) if setting.f == "linear" else np.zeros(len(points))
    target = _G_WEIGHT * points.sum(axis=1) if setting.g == "linear" else np.zeros(len(points))
    draws = np.random.RandomState(trial).normal(0.0, 1.0, size=gap.shape)
    matrix: np.ndarray = _BASE + gap + source[:, None] + target[None, :] + noise * draws
    return matrix


def synthetic_trials(setting: SyntheticSetting, noise: float, trials: int) -> np.ndarray:
    """Trials ``0..trials-1``: ``(trials, 512, 512)`` raw returns."""
    if trials < 1:
        raise CtxrlError(f"synthetic trials must be >= 1, got {trials}")
    return np.stack([synthetic_matrix(setting, noise, t) for t in range(trials)])


def reference_bounds(matrices: np.ndarray) -> tuple[float, float]:
    """The reference's normalisation: one min-max over every trial matrix of a setting."""
    return float(np.min(matrices)), float(np.max(matrices))


def setting_bounds(
    setting: SyntheticSetting, noise: float, trials: int, first: np.ndarray | None = None
) -> tuple[float, float]:
    """The normalisation bounds of trials ``0..trials-1`` of ``setting`` at ``noise``: the
    min-max over the reference's :data:`REFERENCE_TRIALS` trials (over all ``trials`` when
    more are written), so that fewer trials are normalised as in the published tables rather
    than by their own extremes. ``first``: trials ``0..len(first)-1`` already made, ``(T, N,
    N)``; the others are made a trial at a time."""
    lower, upper = math.inf, -math.inf
    if first is not None and len(first):
        lower, upper = float(np.min(first)), float(np.max(first))
    for trial in range(0 if first is None else len(first), max(trials, REFERENCE_TRIALS)):
        matrix = synthetic_matrix(setting, noise, trial)
        lower, upper = min(lower, float(matrix.min())), max(upper, float(matrix.max()))
    return lower, upper


def noise_folder(noise: float) -> str:
    """The folder of one noise level's trials: ``noise5``, ``noise0.5`` (six significant
    digits)."""
    return f"noise{noise:g}"


def write_trials(
    out: Path, setting: SyntheticSetting, noise: float, trials: int, *, fmt: str = "npy"
) -> tuple[Path, tuple[float, float], list[str]]:
    """Write trials ``0..trials-1`` of ``setting`` at ``noise`` as ``trialNNN.npy`` (or
    ``.csv``, the reference matrix format) in ``out/<setting>/noise<sigma>/``, with the
    ``contexts.json`` that ``ctxrl select`` reads: the grid (features ``c0, c1, c2``) and the
    reference normalisation bounds (:func:`setting_bounds`). Every file is written under a temporary
    name first and moved into place once all are written (a write that fails, a full disk,
    leaves the folder as it was; what is not a file where one goes is refused before anything
    is written); then trial files an earlier run left there (other trial counts or formats)
    are removed, so the folder holds these trials only. Returns the folder, the bounds and the
    names of the earlier files removed."""
    if fmt not in ("npy", "csv"):
        raise CtxrlError(f"synthetic format {fmt!r} is not npy or csv")
    matrices = synthetic_trials(setting, noise, trials)
    folder = out / setting.name.replace("=", "-").replace(",", "_") / noise_folder(noise)
    folder.mkdir(parents=True, exist_ok=True)
    bounds = setting_bounds(setting, noise, trials, first=matrices)
    features = [f"c{i}" for i in range(len(GRID_SHAPE))]
    contexts = [dict(zip(features, map(float, p), strict=True)) for p in grid_points()]
    info = {
        "features": features,
        "contexts": contexts,
        "return_bounds": list(bounds),
        "synthetic": {"setting": setting.name, "noise": noise, "trials": trials},
    }
    names = [f"trial{t:03d}.{fmt}" for t in range(trials)] + ["contexts.json"]
    blocked = [name for name in names if (folder / name).exists() and not (folder / name).is_file()]
    if blocked:  # found before anything is written or moved
        raise CtxrlError(
            f"cannot write {folder / blocked[0]}: something other than a file is there"
        )
    staged: list[tuple[Path, Path]] = []
    try:
        for t, matrix in enumerate(matrices):
            path = folder / f"trial{t:03d}.{fmt}"
            partial = folder / f".{path.name}.partial"
            staged.append((partial, path))
            with partial.open("wb") as handle:
                if fmt == "npy":
                    np.save(handle, matrix, allow_pickle=False)
                else:
                    # every digit (repr's 17): the bounds below are the values' own, and a
                    # rounded minimum could fall below them
                    np.savetxt(handle, matrix, delimiter=",", fmt="%.17g")
        partial = folder / ".contexts.json.partial"
        staged.append((partial, folder / "contexts.json"))
        partial.write_text(json.dumps(info))
        for partial, path in staged:
            os.replace(partial, path)
    finally:
        for partial, _ in staged:
            partial.unlink(missing_ok=True)
    written = {path.name for _, path in staged}
    removed = []
    for stale in sorted(folder.iterdir()):
        # an earlier run's trials (trial000 ... trial1000 and on): select would read them too
        if re.fullmatch(r"trial\d{3,}\.(npy|csv)", stale.name) and stale.name not in written:
            stale.unlink()
            removed.append(stale.name)
    return folder, bounds, removed


def reference_random_order(trial: int, n: int, budget: int) -> list[int]:
    """The Random baseline exactly as the reference's synthetic tables ran it, for reproducing
    them: one order per trial from numpy's legacy global generator seeded ``(trial + 1) * 50``
    (the reference loops over 50 seeds ``(trial + 1) * (r + 1)`` but keeps only the last
    order), drawing ``np.random.choice`` from the remaining contexts one at a time. ctxrl's own
    ``random`` strategy is seeded differently and averages many orders."""
    state = np.random.RandomState((trial + 1) * 50)
    remaining = list(range(n))
    order = []
    for _ in range(budget):
        index = int(state.choice(remaining))
        remaining.remove(index)
        order.append(index)
    return order
