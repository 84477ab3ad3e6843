"""The results store: one SQLite file per run directory (stdlib sqlite3, WAL journal).

A training run and all of its evaluations are written in one transaction as soon as the run
finishes, so a process killed at any moment loses at most the run it was writing; the file opens
again and lists every finished run. Several worker processes may write to the same store.

A ``mode: select`` sweep also writes one row per selection step (table ``selection``): the
sources its strategy proposed, in order, and what the strategy reported about the choice.
"""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ctxrl.context import Context, context_from_json
from ctxrl.errors import CtxrlError
from ctxrl.matrix import TransferMatrix

SCHEMA_VERSION = 3
"""1: runs, evaluations; 2: + selection, curves, diagnostics; 3: + runs.batch_group,
runs.group_duration_s (each added to older stores when they are opened for writing)."""
RunStatus = Literal["finished", "failed"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id         TEXT PRIMARY KEY,
    kind           TEXT NOT NULL,
    env            TEXT NOT NULL,
    source_task    TEXT NOT NULL,
    source_context TEXT NOT NULL,
    seed           INTEGER NOT NULL,
    algorithm      TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('finished', 'failed')),
    started_at     REAL NOT NULL,
    finished_at    REAL NOT NULL,
    duration_s     REAL NOT NULL,
    artifact       TEXT,
    error          TEXT,
    batch_group    TEXT,
    group_duration_s REAL
);
CREATE TABLE IF NOT EXISTS evaluations (
    run_id         TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    target_task    TEXT NOT NULL,
    target_context TEXT NOT NULL,
    deterministic  INTEGER NOT NULL,
    episode        INTEGER NOT NULL,
    episode_return REAL NOT NULL,
    PRIMARY KEY (run_id, target_task, deterministic, episode)
);
CREATE TABLE IF NOT EXISTS selection (
    step        INTEGER PRIMARY KEY,
    k           INTEGER NOT NULL,
    strategy    TEXT NOT NULL,
    proposed    TEXT NOT NULL,
    trace       TEXT NOT NULL,
    proposed_at REAL NOT NULL,
    trained_at  REAL
);
CREATE TABLE IF NOT EXISTS curves (
    run_id      TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    env_steps   INTEGER NOT NULL,
    target      INTEGER NOT NULL,
    mean_return REAL NOT NULL,
    returns     TEXT NOT NULL,
    PRIMARY KEY (run_id, env_steps, target)
);
CREATE TABLE IF NOT EXISTS diagnostics (
    run_id    TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    env_steps INTEGER NOT NULL,
    name      TEXT NOT NULL,
    value     REAL,
    PRIMARY KEY (run_id, env_steps, name)
);
"""


@dataclass(frozen=True)
class RunRecord:
    """One training run (a source context and a seed) as stored.

    ``duration_s`` is wall-clock seconds for training and evaluation; ``artifact`` is the path of
    the saved policy relative to the run directory.

    Runs trained and evaluated together in one batched program name it in ``batch_group``
    and give its wall-clock time in ``group_duration_s``: they share its start
    (``started_at``), and each one's ``duration_s`` is an even share of the group's time, not
    a time of its own. Both are None for runs trained alone.
    """

    run_id: str
    kind: str
    env: str
    source_task: str
    source_context: str
    seed: int
    algorithm: str
    status: RunStatus
    started_at: float
    finished_at: float
    duration_s: float
    artifact: str | None = None
    error: str | None = None
    batch_group: str | None = None
    group_duration_s: float | None = None

    @property
    def context(self) -> Context:
        return context_from_json(self.source_context)


@dataclass(frozen=True)
class SelectionStep:
    """One step of a ``mode: select`` sweep as stored.

    Attributes:
        step: 1-based number of the step.
        k: sources chosen before this step; the first one proposed here is the ``k + 1``-th.
        strategy: the strategy's registry name.
        proposed: grid indices proposed at this step, in order (``batch_size`` of them, fewer
            at the end of the budget).
        trace: what the strategy reported about the choice (JSON data; ``{}`` if nothing).
        proposed_at: wall-clock time of the proposal (s since the epoch).
        trained_at: when every proposed source had been trained (and failed or finished);
            None while they are being trained.
    """

    step: int
    k: int
    strategy: str
    proposed: tuple[int, ...]
    trace: Mapping[str, Any]
    proposed_at: float
    trained_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "proposed": list(self.proposed), "trace": dict(self.trace)}


@dataclass(frozen=True)
class Evaluation:
    """Episode returns of one run on one target context."""

    target_task: str
    target_context: Context
    returns: Sequence[float]
    deterministic: bool = True


def _check_matrix_request(
    env: str,
    rows: Sequence[tuple[str, int, str, float]],
    sources: Sequence[Context],
    targets: Sequence[Context],
    seeds: Sequence[int],
) -> None:
    """Refuse what can match no stored entry (see :meth:`Store.matrix`); nothing stored yet
    matches nothing, rightly."""
    if not rows:
        return
    stored = {frozenset(json.loads(text)) for row in rows for text in (row[0], row[2])}
    for name, contexts in (("sources", sources), ("targets", targets)):
        for index, context in enumerate(contexts):
            if frozenset(context) not in stored:
                names = sorted(frozenset().union(*stored))
                raise CtxrlError(
                    f"{name}[{index}] {dict(context)} names the features {sorted(context)}, "
                    f"but the store's {env} contexts name {names}: give whole contexts "
                    "(EnvSpec.context_space.validate fills in the defaults), or, where the "
                    f"env has gained features since, this store was written by an earlier "
                    f"{env}: train it again in a new run directory"
                )
    held = {int(row[1]) for row in rows}
    if seeds and not held & {int(s) for s in seeds}:
        raise CtxrlError(
            f"seeds {list(seeds)}: the store holds finished {env} runs of seeds {sorted(held)} only"
        )


class Store:
    """A results store at ``path``: created if missing, or with ``readonly=True`` opened for
    reading only (it must exist; nothing is created or written, so a read-only run directory
    can be reported and a missing store is an error, never an empty one)."""

    def __init__(
        self, path: str | Path, *, timeout_s: float = 60.0, readonly: bool = False
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._snapshot: tempfile.TemporaryDirectory[str] | None = None
        """a private copy of a read-only store and its write-ahead log, where one is read"""
        self._depth = 0
        """transactions open (:meth:`atomic`): the outermost one commits"""
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._connect(timeout_s)
        except sqlite3.DatabaseError as exc:
            raise self.damaged(str(exc)) from None
        self._tables = {
            name
            for (name,) in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if not {"runs", "evaluations"} <= self._tables:
            self.close()
            if not self._tables:  # a file emptied (a copy cut short, a truncation)
                raise CtxrlError(
                    f"{self.path} is empty (no tables): a results store emptied or cut short; "
                    "move it aside and rerun the sweep"
                )
            raise CtxrlError(f"{self.path} is not a ctxrl results store (it has no runs table)")
        if not readonly:
            version = self.get_meta("schema_version")
            if version is None or version < SCHEMA_VERSION:  # the new tables were just created
                self.set_meta("schema_version", SCHEMA_VERSION)

    def damaged(self, detail: str) -> CtxrlError:
        """The error for a store SQLite cannot read: it names the file and what to do."""
        return CtxrlError(
            f"{self.path} is damaged ({detail}): move it aside (e.g. to {self.path.name}.damaged) "
            "and rerun the sweep to train its runs again, or restore it from a copy"
        )

    def _connect(self, timeout_s: float) -> sqlite3.Connection:
        """Open the file and check it page by page (``quick_check``: milliseconds for a
        store of thousands of runs), so a damaged store is named here, not by a query deep
        in a sweep or a report."""
        if self.readonly:
            db = self._connect_readonly(timeout_s)
        else:
            db = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
        problems = [row[0] for row in db.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            db.close()
            raise sqlite3.DatabaseError(problems[0])
        if not self.readonly:
            db.executescript(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
            for column, kind in (("batch_group", "TEXT"), ("group_duration_s", "REAL")):
                if column not in columns:  # a store of schema version 2
                    db.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
        return db

    def _connect_readonly(self, timeout_s: float) -> sqlite3.Connection:
        if not self.path.is_file():
            raise CtxrlError(f"{self.path} does not exist: no run was ever stored there")
        uri = self.path.resolve().as_uri() + "?mode=ro"
        db = sqlite3.connect(uri, uri=True, timeout=timeout_s, isolation_level=None)
        try:
            db.execute("SELECT name FROM sqlite_master").fetchall()
        except sqlite3.OperationalError:
            # A WAL store in a directory this process cannot write: SQLite cannot create the
            # shared-memory index beside it. No sweep can be writing it either (it could not
            # create its own). Read as an immutable file SQLite would ignore the write-ahead
            # log, where a sweep killed before its last checkpoint left committed runs, so
            # such a store is read from a private copy of the store and its log.
            db.close()
            log = self.path.with_name(self.path.name + "-wal")
            if log.is_file() and log.stat().st_size > 0:
                self._snapshot = tempfile.TemporaryDirectory(prefix="ctxrl-store-")
                copy = Path(self._snapshot.name) / self.path.name
                shutil.copyfile(self.path, copy)
                shutil.copyfile(log, copy.with_name(log.name))
                uri = copy.as_uri() + "?mode=ro"
                return sqlite3.connect(uri, uri=True, timeout=timeout_s, isolation_level=None)
            db = sqlite3.connect(uri + "&immutable=1", uri=True, isolation_level=None)
        return db

    def close(self) -> None:
        self._db.close()
        if self._snapshot is not None:
            self._snapshot.cleanup()
            self._snapshot = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction; inside another (:meth:`atomic`) a savepoint, so that a write that
        fails is undone alone and the outer transaction still commits what else it wrote."""
        savepoint = f"ctxrl{self._depth}"
        self._db.execute("BEGIN IMMEDIATE" if self._depth == 0 else f"SAVEPOINT {savepoint}")
        self._depth += 1
        try:
            yield self._db
        except BaseException:
            self._depth -= 1
            self._undo(savepoint)
            raise
        self._depth -= 1
        try:
            self._db.execute("COMMIT" if self._depth == 0 else f"RELEASE {savepoint}")
        except BaseException:  # a full disk at the commit: nothing of it stays pending
            self._undo(savepoint)
            raise

    def _undo(self, savepoint: str) -> None:
        """Roll back the transaction (or, nested, its savepoint) a failure left. SQLite rolls
        a whole transaction back itself on some errors (a full disk or database, an I/O
        error): nothing is left to undo, and a ROLLBACK then would raise an error of its own
        ("no transaction is active") in place of the one that says what happened."""
        if not self._db.in_transaction:
            return
        with contextlib.suppress(sqlite3.Error):  # the first error is the one to report
            if self._depth == 0:
                self._db.execute("ROLLBACK")
            else:
                self._db.execute(f"ROLLBACK TO {savepoint}")
                self._db.execute(f"RELEASE {savepoint}")

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """Everything written inside is stored together or (an error, a kill) not at all."""
        with self._transaction():
            yield

    # ------------------------------------------------------------------------ meta
    def set_meta(self, key: str, value: Any) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                (key, json.dumps(value, sort_keys=True)),
            )

    def get_meta(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    # ------------------------------------------------------------------------ runs
    def record_run(self, run: RunRecord, evaluations: Sequence[Evaluation] = ()) -> None:
        """Write a run and its evaluations atomically (replacing an earlier failed attempt)."""
        with self._transaction() as db:
            db.execute("DELETE FROM runs WHERE run_id = ?", (run.run_id,))
            row = asdict(run)
            db.execute(
                f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join(':' + k for k in row)})",
                row,
            )
            db.executemany(
                "INSERT INTO evaluations VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        run.run_id,
                        ev.target_task,
                        ev.target_context.canonical(),
                        int(ev.deterministic),
                        episode,
                        float(value),
                    )
                    for ev in evaluations
                    for episode, value in enumerate(ev.returns)
                ],
            )

    def runs(self, status: RunStatus | None = None) -> list[RunRecord]:
        query = "SELECT * FROM runs"
        args: tuple[Any, ...] = ()
        if status is not None:
            query += " WHERE status = ?"
            args = (status,)
        return self._records(query + " ORDER BY finished_at, rowid", args)

    def run(self, run_id: str) -> RunRecord | None:
        """The stored row of one run, or None."""
        found = self._records("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        return found[0] if found else None

    def _records(self, query: str, args: tuple[Any, ...]) -> list[RunRecord]:
        cursor = self._db.execute(query, args)
        names = [c[0] for c in cursor.description]
        return [RunRecord(**dict(zip(names, row, strict=True))) for row in cursor.fetchall()]

    def finished_run_ids(self) -> set[str]:
        return {r.run_id for r in self.runs("finished")}

    def returns(self, run_id: str, *, deterministic: bool = True) -> dict[str, list[float]]:
        """Episode returns of one run per target task id."""
        out: dict[str, list[float]] = {}
        for task, value in self._db.execute(
            "SELECT target_task, episode_return FROM evaluations WHERE run_id = ? AND "
            "deterministic = ? ORDER BY target_task, episode",
            (run_id, int(deterministic)),
        ):
            out.setdefault(task, []).append(value)
        return out

    # -------------------------------------------------------------------- selection
    def record_selection_step(self, step: SelectionStep) -> SelectionStep:
        """Store a selection step, idempotently, and return the stored one.

        A resumed sweep proposes its steps again (the selection is deterministic): a step
        stored with the same ``k``, strategy and proposal stays as it is, times included. A
        step that differs replaces the stored one and drops every later step, which followed
        from a different history."""
        proposed = json.dumps([int(i) for i in step.proposed])
        with self._transaction() as db:
            row = db.execute(
                "SELECT k, strategy, proposed FROM selection WHERE step = ?", (step.step,)
            ).fetchone()
            if row == (step.k, step.strategy, proposed):
                stored = self._selection_steps("WHERE step = ?", (step.step,))
                return stored[0]
            db.execute("DELETE FROM selection WHERE step >= ?", (step.step,))
            db.execute(
                "INSERT INTO selection VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    step.step,
                    step.k,
                    step.strategy,
                    proposed,
                    json.dumps(step.trace, sort_keys=True, allow_nan=False),
                    step.proposed_at,
                    step.trained_at,
                ),
            )
        return step

    def selection_trained(self, step: int, at: float) -> None:
        """Mark step ``step`` trained at ``at`` (s since the epoch) unless it already was."""
        with self._transaction() as db:
            db.execute(
                "UPDATE selection SET trained_at = ? WHERE step = ? AND trained_at IS NULL",
                (at, step),
            )

    def selection_steps(self) -> list[SelectionStep]:
        """Every stored selection step, in order (empty unless the sweep ran ``mode: select``)."""
        return self._selection_steps("", ())

    def selection_order(self) -> list[int]:
        """The trained selection order: the sources proposed by every trained step, in order
        (a step still training when the sweep stopped is left out)."""
        order: list[int] = []
        for step in self.selection_steps():
            if step.trained_at is None:
                break
            order.extend(step.proposed)
        return order

    def _selection_steps(self, where: str, args: tuple[Any, ...]) -> list[SelectionStep]:
        if "selection" not in self._tables:  # a store of an older ctxrl, opened read-only
            return []
        rows = self._db.execute(
            "SELECT step, k, strategy, proposed, trace, proposed_at, trained_at FROM selection "
            f"{where} ORDER BY step",
            args,
        ).fetchall()
        return [
            SelectionStep(step, k, strategy, tuple(json.loads(proposed)), json.loads(trace), t0, t1)
            for step, k, strategy, proposed, trace, t0, t1 in rows
        ]

    # --------------------------------------------------------------------- matrices
    def matrix(
        self,
        *,
        env: str,
        sources: Sequence[Context],
        targets: Sequence[Context],
        seeds: Sequence[int],
        features: Sequence[str] = (),
        kind: str = "source",
        deterministic: bool = True,
    ) -> TransferMatrix:
        """The transfer matrix of finished runs: mean episode return per (source, target, seed),
        ``(len(sources), len(targets), len(seeds))``, NaN where a run or evaluation is missing.
        Contexts are matched whole: one that names other features than the stored ones (a
        partial context, matching nothing) and seeds none of which the store holds are a
        :class:`CtxrlError` naming them, not a matrix of NaN."""
        source_index = {c.canonical(): i for i, c in enumerate(sources)}
        target_index = {c.canonical(): j for j, c in enumerate(targets)}
        seed_index = {s: k for k, s in enumerate(seeds)}
        values = np.full((len(sources), len(targets), len(seeds)), np.nan)
        rows = self._db.execute(
            "SELECT r.source_context, r.seed, e.target_context, AVG(e.episode_return) "
            "FROM runs r JOIN evaluations e ON e.run_id = r.run_id "
            "WHERE r.status = 'finished' AND r.env = ? AND r.kind = ? AND e.deterministic = ? "
            "GROUP BY r.run_id, e.target_task",
            (env, kind, int(deterministic)),
        ).fetchall()
        _check_matrix_request(env, rows, sources, targets, seeds)
        for source_text, seed, target_text, mean_return in rows:
            i = source_index.get(context_from_json(source_text).canonical())
            j = target_index.get(context_from_json(target_text).canonical())
            k = seed_index.get(seed)
            if i is not None and j is not None and k is not None:
                values[i, j, k] = mean_return
        return TransferMatrix(tuple(sources), tuple(targets), values, env, tuple(features))

    def multitask_returns(
        self, *, env: str, targets: Sequence[Context], seeds: Sequence[int]
    ) -> np.ndarray:
        """Mean return of each multi-task run on each target, ``(len(seeds), len(targets))``;
        NaN where missing."""
        target_index = {c.canonical(): j for j, c in enumerate(targets)}
        seed_index = {s: k for k, s in enumerate(seeds)}
        values = np.full((len(seeds), len(targets)), np.nan)
        rows = self._db.execute(
            "SELECT r.seed, e.target_context, AVG(e.episode_return) "
            "FROM runs r JOIN evaluations e ON e.run_id = r.run_id "
            "WHERE r.status = 'finished' AND r.env = ? AND r.kind = 'multitask' "
            "AND e.deterministic = 1 GROUP BY r.run_id, e.target_task",
            (env,),
        )
        for seed, target_text, mean_return in rows:
            j = target_index.get(context_from_json(target_text).canonical())
            k = seed_index.get(seed)
            if j is not None and k is not None:
                values[k, j] = mean_return
        return values

    # ---------------------------------------------------------------- training logs
    def record_training_log(
        self,
        run_id: str,
        *,
        curve_steps: Sequence[int],
        curve_returns: Sequence[Any],
        diagnostics: Mapping[str, Sequence[tuple[int, float]]],
    ) -> None:
        """Store a run's learning curve (``curve_returns[i]``: ``(targets, episodes)`` returns
        at ``curve_steps[i]`` env steps) and its diagnostics (name -> ``(env steps, value)``
        at each record that has one; NaN stored as NULL), replacing what was stored for it."""
        curve_rows = [
            (run_id, int(step), q, float(sum(r) / len(r)), json.dumps([float(x) for x in r]))
            for step, returns in zip(curve_steps, curve_returns, strict=True)
            for q, r in enumerate(returns)
        ]
        diagnostic_rows = [
            (run_id, int(step), name, None if value != value else float(value))
            for name, points in diagnostics.items()
            for step, value in points
        ]
        with self._transaction() as db:
            db.execute("DELETE FROM curves WHERE run_id = ?", (run_id,))
            db.execute("DELETE FROM diagnostics WHERE run_id = ?", (run_id,))
            db.executemany("INSERT INTO curves VALUES (?, ?, ?, ?, ?)", curve_rows)
            db.executemany("INSERT INTO diagnostics VALUES (?, ?, ?, ?)", diagnostic_rows)

    def curves(self) -> dict[str, list[tuple[int, float]]]:
        """Per run: ``(env_steps, mean return over targets and episodes)`` in step order."""
        out: dict[str, list[tuple[int, float]]] = {}
        if "curves" not in self._tables:
            return out
        for run_id, step, value in self._db.execute(
            "SELECT run_id, env_steps, AVG(mean_return) FROM curves "
            "GROUP BY run_id, env_steps ORDER BY run_id, env_steps"
        ):
            out.setdefault(run_id, []).append((int(step), float(value)))
        return out

    def diagnostics(self) -> dict[str, dict[str, list[tuple[int, float]]]]:
        """Per diagnostic name and run: ``(env_steps, value)`` in step order (NaN where
        stored as NULL)."""
        out: dict[str, dict[str, list[tuple[int, float]]]] = {}
        if "diagnostics" not in self._tables:
            return out
        for run_id, step, name, value in self._db.execute(
            "SELECT run_id, env_steps, name, value FROM diagnostics "
            "ORDER BY name, run_id, env_steps"
        ):
            value = float("nan") if value is None else float(value)
            out.setdefault(name, {}).setdefault(run_id, []).append((int(step), value))
        return out

    # ---------------------------------------------------------------------- exports
    def export(self, directory: str | Path) -> list[Path]:
        """Write ``runs.csv`` and ``evaluations.csv``, and ``selection.csv``, ``curves.csv``
        (learning curves) and ``diagnostics.csv`` when stored (JSON columns as text), with
        ``.parquet`` twins when pyarrow is installed, into ``directory``, rows in key order;
        return the files written."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        tables = ["runs", "evaluations"]
        for optional in ("selection", "curves", "diagnostics"):
            if optional not in self._tables:
                continue
            if self._db.execute(f"SELECT 1 FROM {optional} LIMIT 1").fetchone() is not None:
                tables.append(optional)
        # in key order: the same store gives the same files, whatever order its rows were
        # written in (a resumed training, shards finishing in another order)
        keys = {
            "runs": "run_id",
            "evaluations": "run_id, target_task, deterministic, episode",
            "selection": "step",
            "curves": "run_id, env_steps, target",
            "diagnostics": "run_id, env_steps, name",
        }
        for table in tables:
            cursor = self._db.execute(f"SELECT * FROM {table} ORDER BY {keys[table]}")
            header = [c[0] for c in cursor.description]
            rows = cursor.fetchall()
            path = directory / f"{table}.csv"
            with path.open("w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(header)
                writer.writerows(rows)
            written.append(path)
            declared = {
                name: kind for _, name, kind, *_ in self._db.execute(f"PRAGMA table_info({table})")
            }
            types = [declared.get(name, "TEXT") for name in header]
            parquet = directory / f"{table}.parquet"
            written.extend(_maybe_parquet(parquet, header, types, rows))
        return written


def _maybe_parquet(
    path: Path, header: list[str], types: list[str], rows: list[tuple[Any, ...]]
) -> list[Path]:
    """``rows`` as a parquet file (when pyarrow is installed) with the schema the store's
    columns declare (``types``: SQLite's ``TEXT``, ``INTEGER``, ``REAL``), not one guessed from
    the values: a column that is empty, or all null, in one sweep has the type it has in
    every other, so the files of several sweeps concatenate."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return []
    arrow_types = {"INTEGER": pa.int64(), "REAL": pa.float64()}
    schema = pa.schema(
        [
            (name, arrow_types.get(kind.upper(), pa.string()))
            for name, kind in zip(header, types, strict=True)
        ]
    )
    columns: Mapping[str, list[Any]] = {name: [r[i] for r in rows] for i, name in enumerate(header)}
    pq.write_table(pa.table(dict(columns), schema=schema), path)
    return [path]


def now() -> float:
    """Wall-clock time in seconds since the epoch (the store's timestamps)."""
    return time.time()
