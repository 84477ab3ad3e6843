"""Batched groups sharded over an executor's workers (``executor.shards``): the same runs, bit
for bit, as one program in the sweep's process; each shard checkpoints and resumes alone; a
failed shard is reported run by run."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import requires_ray
from rich.console import Console

from ctxrl.batched_sweep import (
    _checkpoint_path,
    _continue_other_partitions,
    _split,
    _training_options,
)
from ctxrl.config import SweepPlan, algorithm_params, resolve_plan, validate_config
from ctxrl.context import Task
from ctxrl.plugins import get_host
from ctxrl.runs import run_id
from ctxrl.sweep import run_sweep

BASE: dict[str, Any] = {
    "env": "CartPole",
    "features": {"masscart": {"num": 3, "low": 0.5, "high": 4.0, "scale": "log"}},
    "algorithm": {"name": "batched-ppo", "preset": "CartPole"},
    "seeds": [0, 1],
    "train_steps": 1024,
    "eval_episodes": 2,
    "curves": {"every": 512, "episodes": 1},
    "compare": ["greedy"],
}


def _plan(out: Path, **executor: Any) -> SweepPlan:
    data = {**BASE, "output_dir": str(out), "executor": {"workers": 2, **executor}}
    return resolve_plan(validate_config(data), get_host().registry)


def _stored(run_dir: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every number a sweep stored: runs' status, evaluation returns, curves, diagnostics."""
    tables = {
        "runs": "SELECT run_id, status FROM runs ORDER BY run_id",
        "evaluations": "SELECT run_id, target_task, episode, episode_return FROM evaluations "
        "ORDER BY run_id, target_task, episode",
        "curves": "SELECT run_id, env_steps, target, returns FROM curves "
        "ORDER BY run_id, env_steps, target",
        "diagnostics": "SELECT run_id, env_steps, name, value FROM diagnostics "
        "ORDER BY run_id, env_steps, name",
    }
    with sqlite3.connect(run_dir / "store.sqlite") as db:
        return {name: db.execute(query).fetchall() for name, query in tables.items()}


@pytest.fixture(scope="module")
def one_program(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[Any, ...]]]:
    outcome = run_sweep(_plan(tmp_path_factory.mktemp("one") / "runs"))
    assert outcome.trained == 6 and not outcome.failed
    return _stored(outcome.run_dir)


def test_split_keeps_parts_contiguous_and_even() -> None:
    agents = [(s, seed) for s in range(4) for seed in (0, 1)]
    parts = _split(agents, 3)
    assert [len(p) for p in parts] == [3, 3, 2]
    assert [a for p in parts for a in p] == agents
    assert _split(agents[:2], 5) == [[agents[0]], [agents[1]]]  # never an empty shard


@pytest.mark.long
def test_a_sharded_sweep_stores_what_one_program_stores(
    one_program: dict[str, list[tuple[Any, ...]]], tmp_path: Path
) -> None:
    """Three shards in two worker processes: every return, curve point and diagnostic equal
    (not close) to the sweep that trained the six agents as one program."""
    printed = io.StringIO()
    outcome = run_sweep(_plan(tmp_path / "runs", shards=3), console=Console(file=printed))
    assert outcome.trained == 6 and not outcome.failed, printed.getvalue()
    assert "6 CartPole agents in 3 shards" in printed.getvalue()
    logs = sorted(p.name for p in (outcome.run_dir / "logs").iterdir())
    assert logs == [f"job-0000{i}-shard{i}of3.log" for i in range(3)]
    stored = _stored(outcome.run_dir)
    assert len(stored["evaluations"]) == 6 * 3 * 2 and stored["curves"]
    assert stored == one_program
    again = run_sweep(_plan(tmp_path / "runs", shards=3))
    assert again.trained == 0 and again.skipped == 6


def _checkpoint_second_of_two_shards(plan: SweepPlan) -> Path:
    """What a sweep with two shards killed while its second shard trained leaves behind: that
    shard's checkpoint, after the first of its two iterations. Returns its path."""
    plan.run_dir.mkdir(parents=True)
    agents = [(source, seed) for source in range(3) for seed in (0, 1)]
    second = _split(agents, 2)[1]
    ids = [run_id(Task(plan.env.name, plan.grid.contexts[s]), seed) for s, seed in second]
    checkpoint = _checkpoint_path(plan, ids)
    algorithm = plan.algorithm.factory(algorithm_params(plan.config, plan.algorithm), env=plan.env)
    algorithm.train_many(
        plan.env,
        [plan.grid.contexts[s].as_dict() for s, _ in second],
        [seed for _, seed in second],
        total_steps=1024,
        checkpoint=checkpoint,
        checkpoint_every=512,  # the last checkpoint: after the first of two iterations
        **_training_options(plan),
    )
    return checkpoint


@pytest.mark.long
def test_a_killed_shard_resumes_from_its_own_checkpoint(
    one_program: dict[str, list[tuple[Any, ...]]], tmp_path: Path
) -> None:
    """What a sweep killed while its second shard trained leaves behind: that shard's
    checkpoint. The rerun resumes that shard alone and stores the same numbers."""
    plan = _plan(tmp_path / "runs", shards=2)
    _checkpoint_second_of_two_shards(plan)
    outcome = run_sweep(plan)
    assert outcome.trained == 6 and outcome.resumed == 3 and not outcome.failed
    assert "resumed 3 agents" in (outcome.run_dir / "logs" / "job-00001-shard1of2.log").read_text()
    assert not list((outcome.run_dir / "checkpoints").iterdir())
    assert _stored(outcome.run_dir) == one_program


@pytest.mark.long
def test_a_checkpoint_of_another_shard_count_is_continued(
    one_program: dict[str, list[tuple[Any, ...]]], tmp_path: Path
) -> None:
    """Killed with two shards, rerun as one program: the second shard's checkpoint is not that
    program's, so it is continued as the program it was (named), the other three agents train
    as what is left of the one program, and every stored number equals the one-program
    sweep's."""
    plan = _plan(tmp_path / "runs", shards=1)
    checkpoint = _checkpoint_second_of_two_shards(plan)
    printed = io.StringIO()
    outcome = run_sweep(plan, console=Console(file=printed, width=400))
    said = printed.getvalue()
    assert outcome.trained == 6 and outcome.resumed == 3 and not outcome.failed, said
    assert f"{checkpoint.with_suffix('.safetensors')} holds 3 of these agents" in said, said
    assert "executor.shards: 2 (now 1): continuing them as that program" in said
    assert "6 CartPole agents in 2 shards" in said
    assert not list((outcome.run_dir / "checkpoints").iterdir())
    assert _stored(outcome.run_dir) == one_program


def test_the_programs_of_a_rerun_under_another_shard_count(tmp_path: Path) -> None:
    """Which programs a rerun runs when checkpoints of other shard counts lie in the run
    directory: each one whose agents are all pending is continued as it was (this count's own
    first, no agent in two programs), and this count's shards lose the agents they hold."""
    plan = _plan(tmp_path / "runs", shards=3)
    agents = [(source, seed) for source in range(3) for seed in (0, 1)]
    (plan.run_dir / "checkpoints").mkdir(parents=True)

    def leave_checkpoint(shard: list[tuple[int, int]]) -> None:
        ids = [run_id(Task(plan.env.name, plan.grid.contexts[s]), seed) for s, seed in shard]
        _checkpoint_path(plan, ids).with_suffix(".safetensors").write_bytes(b"")

    def programs(shards: list[list[tuple[int, int]]]) -> list[list[tuple[int, int]]]:
        return _continue_other_partitions(plan, Console(file=io.StringIO()), agents, shards)

    mine = _split(agents, 3)
    assert programs(mine) == mine  # nothing to continue
    leave_checkpoint(_split(agents, 2)[0])  # agents 0-2 under two shards
    assert programs(mine) == [agents[:3], [agents[3]], agents[4:]]
    leave_checkpoint(_split(agents, 6)[5])  # the last agent alone
    assert programs(mine) == [agents[:3], [agents[5]], [agents[3]], [agents[4]]]
    leave_checkpoint(_split(agents, 1)[0])  # all six as one program: the larger first
    assert programs(mine) == [agents]
    leave_checkpoint(mine[1])  # this count's own checkpoint before any other
    assert programs(mine) == [mine[1], [agents[5]], agents[:2], [agents[4]]]
    # a checkpoint holding a finished agent is not continued: agent 0 finished
    pending = [[a for a in shard if a != agents[0]] for shard in mine]
    assert programs(pending) == [mine[1], [agents[5]], [agents[1]], [agents[4]]]


@pytest.mark.long
@requires_ray
def test_ray_shards_store_what_one_program_stores(
    one_program: dict[str, list[tuple[Any, ...]]], tmp_path: Path
) -> None:
    outcome = run_sweep(_plan(tmp_path / "runs", name="ray", shards=2))
    assert outcome.trained == 6 and not outcome.failed
    assert _stored(outcome.run_dir) == one_program


def test_a_group_s_one_pending_shard_runs_as_an_executor_job(tmp_path: Path) -> None:
    """With ``shards`` >= 2, a group whose pending agents made one shard (the others finished,
    or fewer agents than shards) trained in the sweep's own process: without the executor's
    time limit, job log or (Ray) cluster."""
    data = {
        **BASE,
        "features": {"masscart": {"values": [1.0]}},
        "seeds": [0],
        "output_dir": str(tmp_path / "runs"),
        "executor": {"workers": 2, "shards": 4, "timeout_s": 0.5},
    }
    plan = resolve_plan(validate_config(data), get_host().registry)
    printed = io.StringIO()
    outcome = run_sweep(plan, console=Console(file=printed, width=300))
    assert len(outcome.failed) == 1 and outcome.trained == 0, printed.getvalue()
    assert "limit and was killed" in printed.getvalue()
    assert [p.name for p in (outcome.run_dir / "logs").iterdir()] == ["job-00000-shard0of1.log"]


@requires_ray
def test_a_ray_cluster_that_cannot_be_reached_or_bad_gpus_are_named_before_any_work(
    tmp_path: Path,
) -> None:
    """An address nothing listens at hung the sweep silently (Ray retries for minutes, and
    SIGTERM did not stop it) after its run directory was made; ``num_gpus: -1`` or ``abc``
    failed with a traceback once a local cluster had started."""
    from ctxrl.errors import ConfigError

    for options, message in [
        ({"address": "127.0.0.1:1"}, r"address: nothing accepts connections at '127\.0\.0\.1:1'"),
        ({"address": "ray://127.0.0.1:1"}, r"nothing accepts connections at 'ray://127"),
        ({"num_gpus": -1}, r"executor\.options\.num_gpus must be a finite number >= 0, got -1"),
        ({"num_gpus": "abc"}, r"executor\.options\.num_gpus must be a number >= 0, got 'abc'"),
        ({"address": ""}, r"executor\.options\.address must be 'auto', 'local', HOST:PORT"),
        ({"address": "notanaddress"}, r"'notanaddress' is not 'auto', 'local', HOST:PORT"),
    ]:
        plan = _plan(tmp_path / "runs", name="ray", shards=2, options=options)
        with pytest.raises(ConfigError, match=message):
            run_sweep(plan)
        assert not any((tmp_path / "runs").glob("*/plan.yaml")), options
    from ctxrl_plugins.executors.ray_cluster import RayExecutor

    local = RayExecutor(workers=3, address="local")  # a new cluster here, as without one
    assert local.local and local.in_flight == 3


@requires_ray
def test_ray_leaves_the_sweep_s_sigterm_handler_in_place() -> None:
    """``ray.init`` installs its own SIGTERM handler (a terminated sweep under Ray exited 1,
    a failed run's status, without a word); the sweep's, which stops the jobs, says what is
    kept and exits 143, is put back."""
    import signal

    from ctxrl_plugins.executors.ray_cluster import RayExecutor

    def sweep_handler(signum: int, frame: object) -> None:
        raise AssertionError("not called here")

    before = signal.signal(signal.SIGTERM, sweep_handler)
    executor = RayExecutor(workers=1, address="local")
    try:
        executor._start()
        assert signal.getsignal(signal.SIGTERM) is sweep_handler
    finally:
        executor.close()
        signal.signal(signal.SIGTERM, before)


def test_failed_shards_store_every_run_as_failed_with_the_error(tmp_path: Path) -> None:
    """A shard whose program cannot start: its runs are stored failed, with the worker's
    error, and the sweep still writes its exports. (Half a second is less than a worker takes
    to import torch, so both shards run past the limit.)"""
    plan = _plan(tmp_path / "runs", shards=2, timeout_s=0.5)
    printed = io.StringIO()
    outcome = run_sweep(plan, console=Console(file=printed, width=300))
    assert sorted(outcome.failed) == sorted(
        run_id(Task(plan.env.name, c), seed) for c in plan.grid.contexts for seed in (0, 1)
    )
    assert printed.getvalue().count("limit and was killed") == 2
    assert "trained and evaluated 0 agents (6 failed) in 2 shards" in printed.getvalue()
    with sqlite3.connect(outcome.run_dir / "store.sqlite") as db:
        errors = [e for (e,) in db.execute("SELECT error FROM runs WHERE status = 'failed'")]
    assert len(errors) == 6 and all("0.5 s limit" in e for e in errors)
    assert (outcome.run_dir / "exports" / "summary.json").is_file()


def _write_visible_gpu(job: dict[str, Any]) -> None:
    import os

    Path(job["out"]).write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))


def _fail_loudly_then_silently(job: dict[str, Any]) -> None:
    import os
    import sys

    if job["attempt"] == 1:  # killed in the middle of a line
        sys.stdout.write("the first attempt's own failure, step 7/500 ...")
        sys.stdout.flush()
        os._exit(2)
    os._exit(3)  # the second attempt dies without a word


def test_a_failures_log_tail_is_its_own_attempts(tmp_path: Path) -> None:
    """A rerun appends to the job's log: a second attempt that died silently was reported with
    the first attempt's last lines."""
    from ctxrl_plugins.executors.local import LocalProcessExecutor

    executor = LocalProcessExecutor(workers=1, log_dir=tmp_path)
    for attempt in (1, 2):
        job = {"source": 0, "seed": 0, "attempt": attempt}
        ((_, error),) = list(executor.map(_fail_loudly_then_silently, [job]))
        assert error is not None
        assert ("the first attempt's own failure" in str(error)) == (attempt == 1), str(error)


def test_the_local_executor_gives_each_job_one_of_its_gpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``options: {gpus: [...]}``: each job sees one GPU alone, a free one when it starts;
    under a scheduler's ``CUDA_VISIBLE_DEVICES`` the indices count the sweep's own GPUs (they
    named physical GPUs another job may hold)."""
    from ctxrl_plugins.executors.local import LocalProcessExecutor

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    executor = LocalProcessExecutor(workers=2, gpus=[3, 5])
    jobs = [{"out": str(tmp_path / f"job{i}")} for i in range(4)]
    for _, error in executor.map(_write_visible_gpu, jobs):
        assert error is None
    seen = [Path(job["out"]).read_text() for job in jobs]
    assert sorted(seen[:2]) == ["3", "5"] and set(seen) == {"3", "5"}
    with pytest.raises(ValueError, match=r"executor\.options\.gpus"):
        LocalProcessExecutor(gpus=[])
    with pytest.raises(ValueError, match=r"executor\.options\.gpus"):
        LocalProcessExecutor(gpus=[True])  # not GPU 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    allocated = LocalProcessExecutor(workers=2, gpus=[0, 1])
    for _, error in allocated.map(_write_visible_gpu, jobs):
        assert error is None
    assert {Path(job["out"]).read_text() for job in jobs} == {"4", "6"}
    with pytest.raises(ValueError, match=r"GPU 2, but CUDA_VISIBLE_DEVICES='4,6' gives"):
        LocalProcessExecutor(gpus=[2])


def test_a_per_run_job_takes_its_share_of_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without OMP_NUM_THREADS every per-run job (SB3) used all cores: 16 workers on 16 cores
    ran 256 threads. A job sets torch's threads to its share, as batched shards do."""
    import torch

    from ctxrl.errors import ConfigError
    from ctxrl.sweep import execute_job

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        torch.set_num_threads(2)
        with pytest.raises(ConfigError):  # the threads are set first, then the job's config read
            execute_job({"run_dir": "/nonexistent", "config": {}, "threads": 1})
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
