"""The SQLite results store and safetensors artifacts."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import without_file_privileges

from ctxrl import Context, CtxrlError, Task
from ctxrl.artifacts import (
    artifact_file,
    load_artifact,
    remove_artifact,
    save_artifact,
    verify_artifact,
)
from ctxrl.store import Evaluation, RunRecord, SelectionStep, Store

TARGETS = [Context({"masscart": float(m)}) for m in (0.5, 1.0, 2.0)]


def _run(i: int, status: str = "finished") -> RunRecord:
    task = Task("CartPole", Context({"masscart": float(i)}))
    return RunRecord(
        f"{task.id}-s0",
        "source",
        "CartPole",
        task.id,
        task.context.canonical(),
        0,
        "sb3-ppo",
        status,
        1.0,
        2.0,
        1.0,
        f"artifacts/{i}",
        None,
    )  # type: ignore[arg-type]


def _evaluations(offset: float) -> list[Evaluation]:
    return [
        Evaluation(Task("CartPole", c).id, c, [offset + j, offset + j + 1.0])
        for j, c in enumerate(TARGETS)
    ]


def test_runs_evaluations_and_matrix(tmp_path: Path) -> None:
    with Store(tmp_path / "store.sqlite") as store:
        store.record_run(_run(1), _evaluations(100.0))
        store.record_run(_run(2, "failed"))
        assert [r.status for r in store.runs()] == ["finished", "failed"]
        assert store.finished_run_ids() == {_run(1).run_id}
        returns = store.returns(_run(1).run_id)
        assert returns[Task("CartPole", TARGETS[2]).id] == [102.0, 103.0]
        sources = [Context({"masscart": 1.0}), Context({"masscart": 2.0})]
        matrix = store.matrix(env="CartPole", sources=sources, targets=TARGETS, seeds=[0])
        np.testing.assert_allclose(matrix.values[0, :, 0], [100.5, 101.5, 102.5])
        assert np.isnan(matrix.values[1]).all()  # the failed run has no row
        # a retried run replaces the failed attempt instead of duplicating it
        store.record_run(_run(2), _evaluations(0.0))
        assert len(store.runs()) == 2 and len(store.finished_run_ids()) == 2
        store.set_meta("plan_hash", "abc")
        assert store.get_meta("plan_hash") == "abc"
        files = store.export(tmp_path / "exports")
        assert (tmp_path / "exports" / "runs.csv") in files
        assert len((tmp_path / "exports" / "evaluations.csv").read_text().splitlines()) == 1 + 12


def test_parquet_exports_have_the_store_s_schema_whatever_the_rows(tmp_path: Path) -> None:
    """A sweep whose runs all failed (no evaluations, every artifact null) exports parquet
    files with the same column types as one whose runs finished, so they concatenate."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    tables = {}
    for name, runs in (
        ("finished", [(_run(1), _evaluations(0.0))]),
        ("failed", [(_run(2, "failed"), [])]),
    ):
        with Store(tmp_path / name / "store.sqlite") as store:
            for run, evaluations in runs:
                store.record_run(run, evaluations)
            store.export(tmp_path / name / "exports")
        tables[name] = {
            table: pq.read_table(tmp_path / name / "exports" / f"{table}.parquet")
            for table in ("runs", "evaluations")
        }
    for table in ("runs", "evaluations"):
        finished, failed = tables["finished"][table], tables["failed"][table]
        assert finished.schema == failed.schema
        assert pa.concat_tables([finished, failed]).num_rows == finished.num_rows + failed.num_rows
    schema = tables["failed"]["runs"].schema
    assert schema.field("error").type == pa.string() and schema.field("seed").type == pa.int64()
    assert tables["failed"]["evaluations"].schema.field("episode_return").type == pa.float64()


def test_a_matrix_of_contexts_or_seeds_the_store_cannot_hold_is_refused(tmp_path: Path) -> None:
    """Contexts are matched whole: a partial one (``{length: 0.25}`` for a full CartPole
    context) or seeds the store does not hold gave a matrix of NaN without a word."""
    with Store(tmp_path / "store.sqlite") as store:
        empty = store.matrix(env="CartPole", sources=TARGETS, targets=TARGETS, seeds=[0])
        assert np.isnan(empty.values).all()  # nothing finished yet: nothing to match, rightly
        store.record_run(_run(1), _evaluations(100.0))
        partial = [Context({"length": 0.5})]
        with pytest.raises(CtxrlError, match=r"sources\[0\] \{'length': 0.5\} names the feat"):
            store.matrix(env="CartPole", sources=partial, targets=TARGETS, seeds=[0])
        with pytest.raises(CtxrlError, match=r"targets\[0\] .* contexts name \['masscart'\]"):
            store.matrix(env="CartPole", sources=TARGETS, targets=partial, seeds=[0])
        with pytest.raises(CtxrlError, match=r"seeds \[3, 4\]: the store holds .* seeds \[0\]"):
            store.matrix(env="CartPole", sources=TARGETS, targets=TARGETS, seeds=[3, 4])
        # a seed the store holds beside one it does not: the missing one is NaN, as before
        both = store.matrix(env="CartPole", sources=TARGETS, targets=TARGETS, seeds=[0, 3])
        assert np.isfinite(both.values[1, :, 0]).all() and np.isnan(both.values[:, :, 1]).all()


def test_atomic_stores_all_or_nothing_and_a_failed_write_inside_alone(tmp_path: Path) -> None:
    """``Store.atomic``: what is written inside is committed together; an error escaping it
    (a kill) leaves none of it; a write that fails inside (a nested transaction) is undone
    alone and the rest still commits."""
    store = Store(tmp_path / "s.sqlite")

    class Killed(BaseException):
        pass

    with pytest.raises(Killed), store.atomic():
        store.record_run(_run(1))
        store.record_run(_run(2))
        raise Killed
    assert store.runs() == []
    with store.atomic():
        store.record_run(_run(1))
        with pytest.raises(sqlite3.IntegrityError):  # the same episode twice
            evaluation = Evaluation(Task("CartPole", TARGETS[0]).id, TARGETS[0], [1.0])
            store.record_run(_run(2), [evaluation, evaluation])
        store.record_run(_run(3))
    assert sorted(r.run_id for r in store.runs()) == sorted([_run(1).run_id, _run(3).run_id])
    store.close()


def test_a_full_database_says_so_and_the_store_still_works(tmp_path: Path) -> None:
    """SQLite rolls a transaction back itself when the database or disk is full; the error
    that reaches the user is that one (a second ROLLBACK said "no transaction is active"
    instead), and the store takes writes again once there is room."""
    store = Store(tmp_path / "s.sqlite")
    store.record_run(_run(1), _evaluations(0.0))
    (pages,) = store._db.execute("PRAGMA page_count").fetchone()
    store._db.execute(f"PRAGMA max_page_count = {pages}")
    many = [Evaluation(Task("CartPole", c).id, c, [1.0] * 20_000) for c in TARGETS]
    for nested in (False, True):
        with pytest.raises(sqlite3.Error, match="full"):
            if nested:  # a savepoint inside the sweep's transaction
                with store.atomic():
                    store.record_run(_run(2), many)
            else:
                store.record_run(_run(2), many)
        assert not store._db.in_transaction
    store._db.execute("PRAGMA max_page_count = 1073741823")
    store.record_run(_run(2), many)
    assert {r.run_id for r in store.runs()} == {_run(1).run_id, _run(2).run_id}
    store.close()


def test_selection_steps_are_stored_idempotently(tmp_path: Path) -> None:
    """A resumed sweep re-proposes its steps: the same step is kept (times included); a step
    that differs replaces it and drops the later ones; only trained steps make the order."""
    first = SelectionStep(1, 0, "mbtl-gp", (2,), {"rule": "middle"}, 10.0)
    second = SelectionStep(2, 1, "mbtl-gp", (0, 4), {"picks": [1.5, None]}, 11.0)
    with Store(tmp_path / "store.sqlite") as store:
        assert store.selection_steps() == [] and store.selection_order() == []
        store.record_selection_step(first)
        store.selection_trained(1, 10.5)
        store.record_selection_step(second)
        assert store.selection_order() == [2]  # step 2 is still training
        store.selection_trained(2, 12.0)
        again = store.record_selection_step(replace(first, proposed_at=20.0, trace={}))
        assert again == replace(first, trained_at=10.5)
        store.selection_trained(1, 21.0)  # already trained: keeps its time
        assert [s.trained_at for s in store.selection_steps()] == [10.5, 12.0]
        assert store.selection_order() == [2, 0, 4]
        assert store.selection_steps()[1].trace == {"picks": [1.5, None]}
        assert "selection.csv" in [p.name for p in store.export(tmp_path / "out")]
        store.record_selection_step(replace(first, proposed=(1,)))
        assert [s.proposed for s in store.selection_steps()] == [(1,)]
        assert store.selection_order() == []
    with sqlite3.connect(tmp_path / "store.sqlite") as db:
        db.execute("DROP TABLE selection")  # a store written before selection steps
        db.execute("ALTER TABLE runs DROP COLUMN batch_group")  # and before batch groups
        db.execute("ALTER TABLE runs DROP COLUMN group_duration_s")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    with Store(tmp_path / "store.sqlite", readonly=True) as store:  # read as it is
        assert store.selection_steps() == [] and store.runs() == []
    with Store(tmp_path / "store.sqlite") as store:
        assert store.selection_steps() == [] and store.get_meta("schema_version") == 3
        assert "selection.csv" not in [p.name for p in store.export(tmp_path / "old")]
        store.record_run(_run(1))
        assert store.runs()[0].batch_group is None


WRITER = """
import sys
from ctxrl import Context, Task
from ctxrl.store import Evaluation, RunRecord, Store

store = Store(sys.argv[1])
targets = [Context({"masscart": 0.1 * k}) for k in range(1, 41)]
for i in range(100000):
    task = Task("CartPole", Context({"masscart": 1.0 + i}))
    run = RunRecord(f"run-{i}", "source", "CartPole", task.id, task.context.canonical(), 0,
                    "algo", "finished", 0.0, 0.0, 0.0, None, None)
    evaluations = [Evaluation(Task("CartPole", c).id, c, [float(i)] * 25) for c in targets]
    store.record_run(run, evaluations)
    print(i, flush=True)
"""


def test_sigkill_mid_write_loses_only_the_unfinished_run(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    confirmed = -1
    deadline = time.monotonic() + 120
    while confirmed < 30 and time.monotonic() < deadline:
        confirmed = int(process.stdout.readline())
    time.sleep(0.013)  # land somewhere inside a later transaction
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert confirmed >= 30
    with Store(path) as store:
        runs = store.runs()
        assert len(runs) >= confirmed + 1  # every confirmed run survived
        for run in runs:  # and each one is whole: all 40 targets x 25 episodes
            returns = store.returns(run.run_id)
            assert len(returns) == 40 and all(len(v) == 25 for v in returns.values())
    check = sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()
    assert check == ("ok",)


KILLED_WRITER = """
import os, signal, sys
from ctxrl import Context, Task
from ctxrl.store import Evaluation, RunRecord, Store

store = Store(sys.argv[1])
for i in range(5):
    task = Task("CartPole", Context({"masscart": 1.0 + i}))
    run = RunRecord(f"run-{i}", "source", "CartPole", task.id, task.context.canonical(), 0,
                    "algo", "finished", 0.0, 0.0, 0.0, None, None)
    store.record_run(run, [Evaluation(task.id, task.context, [float(i)])])
os.kill(os.getpid(), signal.SIGKILL)  # before the store is closed and its log checkpointed
"""

READER = """
import sys
from ctxrl.store import Store

with Store(sys.argv[1], readonly=True) as store:
    print(sorted(run.run_id for run in store.runs()))
"""


@pytest.mark.parametrize("copied", ["files read-only", "without its index"])
def test_a_killed_sweeps_store_in_a_read_only_directory_shows_every_run(
    tmp_path: Path, copied: str
) -> None:
    """A sweep killed before SQLite checkpointed its write-ahead log leaves committed runs in
    ``store.sqlite-wal``. A reader that can write neither the directory nor the log's index
    (``-shm``: read-only, or not copied along) reads them from a private copy of the store and
    its log, and writes nothing beside the store."""
    folder = tmp_path / "run"
    folder.mkdir()
    path = folder / "store.sqlite"
    subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], check=False, timeout=120)
    log = folder / "store.sqlite-wal"
    assert log.is_file() and log.stat().st_size > 0  # the runs are in the log only
    if copied == "without its index":
        (folder / "store.sqlite-shm").unlink()
    before = sorted(p.name for p in folder.iterdir())
    for file in folder.iterdir():
        file.chmod(0o444)
    folder.chmod(0o555)
    try:
        command = without_file_privileges([sys.executable, "-c", READER, str(path)])
        read = subprocess.run(command, capture_output=True, text=True, timeout=120)
    finally:
        folder.chmod(0o755)
    assert read.returncode == 0, read.stderr
    assert read.stdout.strip() == str([f"run-{i}" for i in range(5)])
    assert sorted(p.name for p in folder.iterdir()) == before


def test_artifacts_are_safetensors_and_json(tmp_path: Path) -> None:
    tensors = {"layer.weight": torch.randn(3, 4), "layer.bias": torch.zeros(3)}
    weights = save_artifact(tmp_path / "policy", tensors, {"algorithm": "x", "params": {"lr": 1}})
    assert weights.suffix == ".safetensors"
    loaded, meta = load_artifact(tmp_path / "policy")
    assert torch.equal(loaded["layer.weight"], tensors["layer.weight"])
    assert meta["params"] == {"lr": 1} and meta["format_version"] == 1
    assert json.loads((tmp_path / "policy.json").read_text())["algorithm"] == "x"
    (tmp_path / "policy.json").unlink()  # a readable copy: the header holds the metadata
    assert load_artifact(tmp_path / "policy")[1]["params"] == {"lr": 1}
    (tmp_path / "policy.safetensors").unlink()
    with pytest.raises(CtxrlError, match=r"policy\.safetensors is missing"):
        load_artifact(tmp_path / "policy")


def test_artifacts_whose_names_hold_a_dot_are_kept_apart(tmp_path: Path) -> None:
    """``sp-0.8`` and ``sp-0.9`` (a plasticity arm's label, a user's ``dqn.lr1e-3``) were both
    written to ``sp-0.safetensors``: the suffix replaced ``.8``, so the second save overwrote
    the first and loading the first returned the second."""
    for name, value in (("sp-0.8", 0.8), ("sp-0.9", 0.9)):
        save_artifact(tmp_path / name, {"w": torch.full((2,), value)}, {"name": name})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "sp-0.8.json",
        "sp-0.8.safetensors",
        "sp-0.9.json",
        "sp-0.9.safetensors",
    ]
    for name, value in (("sp-0.8", 0.8), ("sp-0.9", 0.9)):
        tensors, meta = load_artifact(tmp_path / name)
        assert meta["name"] == name and torch.equal(tensors["w"], torch.full((2,), value))
        assert verify_artifact(tmp_path / name) is None
    # a stem given with its suffix names the same artifact
    assert load_artifact(tmp_path / "sp-0.8.safetensors")[1]["name"] == "sp-0.8"
    assert artifact_file(tmp_path / "sp-0.8.json") == tmp_path / "sp-0.8.safetensors"
    remove_artifact(tmp_path / "sp-0.8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sp-0.9.json", "sp-0.9.safetensors"]


def test_the_same_artifact_is_the_same_bytes_every_time(tmp_path: Path) -> None:
    """A run directory's checksums reproduce: safetensors orders its header's metadata
    differently from call to call (6 different files in 10 saves before), ctxrl writes it
    sorted; non-ASCII, quotes and newlines in the metadata keep the header's length."""
    import hashlib

    tensors = {"layer.weight": torch.arange(12.0).reshape(3, 4), "layer.bias": torch.ones(3)}
    metadata = {"algorithm": "x", "context": {"unit": 'µs "q"\n'}, "seed": 3}
    digests = {
        hashlib.sha256(save_artifact(tmp_path / f"p{i}", tensors, metadata).read_bytes()).digest()
        for i in range(10)
    }
    assert len(digests) == 1
    loaded, meta = load_artifact(tmp_path / "p0")
    assert torch.equal(loaded["layer.weight"], tensors["layer.weight"])
    assert meta["context"] == metadata["context"]


ARTIFACT_WRITER = """
import sys, torch
from ctxrl.artifacts import save_artifact
for i in range(1, 10_000):
    save_artifact(sys.argv[1], {"x": torch.full((2_000_000,), float(i))}, {"iteration": i})
    print(i, flush=True)
"""


def test_an_artifact_killed_mid_write_is_old_or_new_never_torn(tmp_path: Path) -> None:
    """A checkpoint writer killed at arbitrary moments: what is on disk always loads, and its
    tensors and metadata belong together."""
    stem = tmp_path / "checkpoint"
    for delay in (0.5, 0.9, 1.3):
        writer = subprocess.Popen(
            [sys.executable, "-c", ARTIFACT_WRITER, str(stem)], stdout=subprocess.PIPE, text=True
        )
        assert writer.stdout is not None
        writer.stdout.readline()  # at least one artifact is complete
        time.sleep(delay)
        writer.kill()
        writer.wait()
        tensors, meta = load_artifact(stem)
        assert float(tensors["x"][0]) == float(tensors["x"][-1]) == meta["iteration"]


LIMITED_WRITER = """
import resource, sys, torch
from ctxrl.artifacts import save_artifact, write_text_atomic
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))  # Python ignores SIGXFSZ
for write in (
    lambda: save_artifact(sys.argv[1], {"x": torch.zeros(100_000)}, {"iteration": 1}),
    lambda: write_text_atomic(sys.argv[1] + ".txt", "x" * 200_000),
):
    try:
        write()
    except OSError as exc:
        print(exc, flush=True)
"""


def test_a_write_the_disk_refuses_names_its_file_and_leaves_no_partial_file(
    tmp_path: Path,
) -> None:
    """A full disk or a file-size limit: the error names the file being written (a failed
    ``write`` names none) and the half-written temporary file is removed, not left taking
    space."""
    stem = tmp_path / "checkpoint"
    done = subprocess.run(
        [sys.executable, "-c", LIMITED_WRITER, str(stem)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    assert "File too large" in first and f"{stem}.safetensors" in first
    assert "File too large" in second and f"{stem}.txt" in second
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_plan_files_are_replaced_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``write_text_atomic`` (plan.yaml is rewritten at every resume): a write that fails
    before its file is moved into place leaves the old file as it was."""
    import os

    from ctxrl.artifacts import write_text_atomic

    plan = tmp_path / "plan.yaml"
    write_text_atomic(plan, "old: 1\n")
    write_text_atomic(plan, "new: 2\n")
    assert plan.read_text() == "new: 2\n" and [p.name for p in tmp_path.iterdir()] == ["plan.yaml"]

    def killed(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_text_atomic(plan, "cut")
    assert plan.read_text() == "new: 2\n"


def test_artifacts_are_as_readable_as_the_umask_allows(tmp_path: Path) -> None:
    """safetensors writes its files owner-only (0600) whatever the umask; an artifact's
    tensors file gets the mode of its JSON file, so that others sharing a run directory can
    read the policies a report or a warm start loads."""
    import os
    import stat

    previous = os.umask(0o022)
    try:
        weights = save_artifact(tmp_path / "policy", {"w": torch.zeros(2)}, {"algorithm": "x"})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(weights.stat().st_mode) == 0o644
    assert stat.S_IMODE(weights.with_suffix(".json").stat().st_mode) == 0o644
