"""End-to-end sweeps through the CLI: matrix, exports, failures, timeouts and resume."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import requires_ray, requires_sb3, write_distribution

Run = Callable[..., subprocess.CompletedProcess[str]]

# A small real algorithm: a linear controller u = 1[k . obs > 0] whose gains are trained by
# random search on the source context. It learns CartPole in seconds, and its failure modes
# (raise, hang) can be switched on per context to exercise the sweep machinery.
SCRIPTED = """
import time
import numpy as np
from ctxrl import hookimpl, AlgorithmSpec, CtxrlError
from ctxrl.artifacts import save_artifact, load_artifact

KNOWN = {"candidates", "fail_above", "hang_above", "delay_s"}

def rollout(env_spec, context, gains, seed, episodes=1):
    total = 0.0
    for e in range(episodes):
        env = env_spec.make(context)
        obs, _ = env.reset(seed=seed + e)
        done = False
        while not done:
            obs, r, term, trunc, _ = env.step(int(np.dot(gains, obs) > 0))
            total += r
            done = term or trunc
    return total / episodes

class Scripted:
    def __init__(self, params):
        unknown = set(params) - KNOWN
        if unknown:
            raise CtxrlError(f"algorithm.params: scripted has no hyperparameter {sorted(unknown)}")
        self.p = params

    def train(self, env, task, *, seed, total_steps):
        x = task.context["masscart"]
        if x > self.p.get("fail_above", 1e9):
            raise RuntimeError(f"diverged at masscart={x}")
        if x > self.p.get("hang_above", 1e9):
            time.sleep(3600)
        time.sleep(self.p.get("delay_s", 0.0))
        rng = np.random.default_rng(seed)
        best, best_return = None, -1.0
        for _ in range(self.p.get("candidates", 8)):
            gains = rng.normal(size=4)
            value = rollout(env, task.context.as_dict(), gains, seed)
            if value > best_return:
                best, best_return = gains, value
        return {"gains": best, "context": task.context.as_dict()}

    def evaluate(self, policy, env, tasks, *, episodes, seed, deterministic=True):
        return np.array([[rollout(env, t.context.as_dict(), policy["gains"], seed + 7 * e)
                          for e in range(episodes)] for t in tasks])

    def save(self, policy, path):
        import torch
        tensors = {"gains": torch.tensor(policy["gains"])}
        save_artifact(path, tensors, {"context": policy["context"]})

    def load(self, path, env):
        tensors, meta = load_artifact(path)
        return {"gains": tensors["gains"].numpy(), "context": meta["context"]}

@hookimpl
def ctxrl_register_algorithms(register):
    register(AlgorithmSpec("scripted", lambda params, device="cpu", env=None: Scripted(params),
                           action_spaces=frozenset({"discrete"})))
"""


# A logger plugin: writes every ctxrl_run_finished event as a JSON line to $EVENTS_FILE.
EVENT_LOGGER = """
import json, os
from ctxrl import hookimpl

@hookimpl
def ctxrl_run_finished(plan, run):
    with open(os.environ["EVENTS_FILE"], "a") as f:
        f.write(json.dumps(run) + "\\n")
"""


@pytest.fixture
def event_log(plugin_site: Path, tmp_path: Path) -> Path:
    """Install the event logger; returns the file it writes."""
    write_distribution(
        plugin_site, "ctxrl-events", "0.1", "ctxrl_events", EVENT_LOGGER, {"events": "ctxrl_events"}
    )
    return tmp_path / "events.jsonl"


def _events(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def scripted(plugin_site: Path) -> Path:
    write_distribution(
        plugin_site,
        "ctxrl-scripted",
        "0.1",
        "ctxrl_scripted",
        SCRIPTED,
        {"scripted": "ctxrl_scripted"},
    )
    return plugin_site


def _config(tmp_path: Path, **changes: object) -> Path:
    config = {
        "env": "CartPole",
        "features": {"masscart": {"num": 4, "low": 0.5, "high": 8.0, "scale": "log"}},
        "algorithm": {"name": "scripted", "params": {"candidates": 6}},
        "seeds": [0],
        "train_steps": 1000,
        "eval_episodes": 2,
        "executor": {"name": "local", "workers": 2},
        "output_dir": str(tmp_path / "runs"),
    }
    for key, value in changes.items():
        node = config
        parts = key.split(".")
        for part in parts[:-1]:
            node = node[part]  # type: ignore[assignment]
        node[parts[-1]] = value  # type: ignore[index]
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run_dir(tmp_path: Path) -> Path:
    (run_dir,) = (tmp_path / "runs").iterdir()
    return run_dir


def _count(run_dir: Path, table: str) -> int:
    with sqlite3.connect(run_dir / "store.sqlite") as db:
        return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


@pytest.mark.long
def test_full_sweep_writes_matrix_exports_and_summary(
    run_ctxrl: Run, scripted: Path, tmp_path: Path
) -> None:
    result = run_ctxrl("sweep", str(_config(tmp_path)), check=True)
    run_dir = _run_dir(tmp_path)
    assert "trained 4, already finished 0, failed 0" in result.stderr
    for name in ("plan.yaml", "command.txt", "environment.json", "summary.md", "store.sqlite"):
        assert (run_dir / name).is_file(), name
    environment = json.loads((run_dir / "environment.json").read_text())
    assert environment["versions"]["ctxrl"] == "0.1.0" and environment["device"] == "cpu"
    assert environment["plugins"]["scripted"]["version"] == "0.1"
    matrix = np.loadtxt(run_dir / "exports" / "matrix_seed0.csv", delimiter=",")
    assert matrix.shape == (4, 4) and np.all((matrix >= 8) & (matrix <= 500))
    assert len(list((run_dir / "artifacts").glob("*.safetensors"))) == 4
    summary = json.loads((run_dir / "exports" / "summary.json").read_text())
    curves = summary["curves"]
    assert set(curves) >= {"random", "equidistant", "greedy", "sequential-oracle"}
    assert curves["sequential-oracle"]["mean"][-1] == pytest.approx(summary["oracle_transfer"])
    assert _count(run_dir, "evaluations") == 4 * 4 * 2
    again = run_ctxrl("sweep", str(_config(tmp_path)), "--json", check=True)
    assert "trained 0, already finished 4, failed 0" in again.stderr
    assert _count(run_dir, "runs") == 4 and _count(run_dir, "evaluations") == 32
    printed = json.loads(again.stdout)  # stdout holds the JSON object alone
    assert printed["run_dir"] == str(run_dir.resolve()) and printed["skipped"] == 4
    assert printed["trained"] == 0 and printed["failed"] == [] and printed["kept"] == []
    assert printed["summary"] == json.loads((run_dir / "exports" / "summary.json").read_text())
    report = run_ctxrl("report", str(run_dir), check=True)
    assert "sequential-oracle" in report.stdout
    replayed = json.loads(
        run_ctxrl(
            "select",
            "--matrix",
            str(run_dir),
            "--strategy",
            "greedy",
            "-k",
            "2",
            "--json",
            check=True,
        ).stdout
    )
    assert replayed["n"] == 4


def test_report_of_a_select_run_follows_the_stored_selection(
    run_ctxrl: Run, scripted: Path, tmp_path: Path
) -> None:
    """The selection order and the strategy's trace are stored per step; `ctxrl report` draws
    G_k along that order, and a resumed sweep leaves the stored steps as they were."""
    config = _config(
        tmp_path,
        **{
            "algorithm.params": {"candidates": 3},
            "mode": "select",
            "strategy": {"name": "mbtl-gp", "budget": 3},
        },
    )
    run_ctxrl("sweep", str(config), check=True)
    run_dir = _run_dir(tmp_path)
    order = json.loads((run_dir / "exports" / "summary.json").read_text())["order"]
    assert len(order) == 3 and order[0] == 1  # the middle first (the lower one on ties)
    with sqlite3.connect(run_dir / "store.sqlite") as db:
        stored = db.execute("SELECT * FROM selection ORDER BY step").fetchall()
    assert [json.loads(row[3]) for row in stored] == [[i] for i in order]
    report = run_ctxrl("report", str(run_dir), check=True)
    summary = json.loads((run_dir / "exports" / "summary.json").read_text())
    assert summary["order"] == order and len(summary["curve"]) == 3
    masscart = np.geomspace(0.5, 8.0, 4)  # the sources by their values, not grid indices
    listed = "; ".join(
        f"masscart = {masscart[i]:.3g}: {g:.3f}"
        for i, g in zip(order, summary["curve"], strict=True)
    )
    assert f"G_k along the trained order: {listed}" in report.stdout
    steps = json.loads((run_dir / "exports" / "selection.json").read_text())
    assert [s["step"] for s in steps] == [1, 2, 3] and [s["k"] for s in steps] == [0, 1, 2]
    assert [s["proposed"] for s in steps] == [[i] for i in order]
    assert [s["g_k"] for s in steps] == summary["curve"]
    assert steps[0]["strategy"] == "mbtl-gp" and steps[0]["trace"]["rule"] == "middle"
    later = steps[1]["trace"]
    assert later["rule"] == "acquisition" and len(later["picks"][0]["acquisition"]) == 4
    assert later["picks"][0]["acquisition"][order[0]] is None  # tried: never proposed again
    assert all(s["proposed_at"] <= s["trained_at"] for s in steps)
    assert (run_dir / "exports" / "selection.csv").is_file()
    # K < N: no complete matrix, so no replayed curves; the trained order's G_k and what the
    # strategy chose are drawn (only the heatmap was)
    assert {"figures/selection.png", "figures/generalization.png"} <= set(summary["figures"])
    assert "The sweep stopped" not in report.stdout
    again = run_ctxrl("sweep", str(config), check=True)
    assert "trained 0, already finished 3, failed 0" in again.stderr
    with sqlite3.connect(run_dir / "store.sqlite") as db:
        assert db.execute("SELECT * FROM selection ORDER BY step").fetchall() == stored
        # what a kill after the second step leaves: two steps stored, and their runs
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("DELETE FROM selection WHERE step = 3")
        db.execute("DELETE FROM runs WHERE finished_at = (SELECT max(finished_at) FROM runs)")
    stopped = run_ctxrl("report", str(run_dir), check=True)
    assert "The sweep has trained 2 of its K = 3 sources" in " ".join(stopped.stdout.split())
    with sqlite3.connect(run_dir / "store.sqlite") as db:  # a source's own entry missing
        db.execute(
            "DELETE FROM evaluations WHERE target_task = (SELECT source_task FROM runs"
            " ORDER BY finished_at LIMIT 1) AND run_id = (SELECT run_id FROM runs"
            " ORDER BY finished_at LIMIT 1)"
        )
    run_ctxrl("report", str(run_dir), check=True)  # the GP had a NaN to fit: a traceback


def test_a_select_run_that_trains_every_context_reports_its_own_selection(
    run_ctxrl: Run, scripted: Path, tmp_path: Path
) -> None:
    """With K = N the matrix is complete, and the report replayed the compared baselines
    alone: the sweep's own strategy had no G_k and sample efficiency was credited to the
    first baseline (``random``), the generalization figure titled with it."""
    config = _config(
        tmp_path,
        **{
            "algorithm.params": {"candidates": 3},
            "mode": "select",
            "strategy": {"name": "mbtl-gp", "budget": 4},
            "compare": ["random", "greedy"],
        },
    )
    run_ctxrl("sweep", str(config), check=True)
    run_dir = _run_dir(tmp_path)
    summary = json.loads((run_dir / "exports" / "summary.json").read_text())
    assert sorted(summary["order"]) == [0, 1, 2, 3] and len(summary["curve"]) == 4
    assert set(summary["curves"]) >= {"random", "greedy"}
    assert summary["sample_efficiency"]["strategy"] == "mbtl-gp"
    text = (run_dir / "summary.md").read_text()
    assert "G_k along the trained order: " in text and "Sample efficiency of random" not in text


def test_a_full_sweeps_report_replays_its_strategy_with_its_batch_size(
    run_ctxrl: Run, scripted: Path, tmp_path: Path
) -> None:
    """With strategy.batch_size 2 a select sweep trains two sources a step, but the full
    sweep's summary replayed the strategy one at a time under its name: another order and
    another G_k than the configured strategy gives."""
    from ctxrl.plugins import get_host
    from ctxrl.selection import replay

    config = _config(
        tmp_path,
        **{
            "algorithm.params": {"candidates": 3},
            "strategy": {"name": "mbtl-gp", "budget": 4, "batch_size": 2},
            "compare": ["random"],
        },
    )
    run_ctxrl("sweep", str(config), check=True)
    run_dir = _run_dir(tmp_path)
    summary = json.loads((run_dir / "exports" / "summary.json").read_text())
    matrix = np.loadtxt(run_dir / "exports" / "matrix_seed0.csv", delimiter=",")
    spec = get_host().registry.env("CartPole")
    normalised = spec.normalise(matrix)
    coords = np.linspace(0.0, 1.0, 4)[:, None]
    strategy = get_host().registry.strategy("mbtl-gp")
    expected = replay(strategy.factory(), normalised, coords, 4, batch_size=2)
    assert summary["curves"]["mbtl-gp"]["order"] == list(expected.order)
    assert summary["curves"]["mbtl-gp"]["mean"] == pytest.approx(expected.curve.tolist())
    assert "| mbtl-gp (q = 2) |" in (run_dir / "summary.md").read_text()


def test_a_report_that_fails_part_way_leaves_the_earlier_report_whole(
    run_ctxrl: Run, scripted: Path, tmp_path: Path
) -> None:
    """A report failing while it drew a figure had already rewritten the exports (a run
    failed since: its row gone from the matrices) beside the old summary, which still
    counted it."""
    config = _config(tmp_path)
    run_ctxrl("sweep", str(config), check=True)
    run_dir = _run_dir(tmp_path)
    before = {p.name: p.read_bytes() for p in (run_dir / "exports").iterdir()}
    summary = (run_dir / "summary.md").read_text()
    with sqlite3.connect(run_dir / "store.sqlite") as db:
        (run,) = db.execute("SELECT run_id FROM runs LIMIT 1").fetchone()
        db.execute("UPDATE runs SET status = 'failed', error = 'lost' WHERE run_id = ?", (run,))
        db.execute("DELETE FROM evaluations WHERE run_id = ?", (run,))
    (run_dir / "figures" / "matrix.png").unlink()
    (run_dir / "figures" / "matrix.png").mkdir()  # the figure cannot be written
    failed = run_ctxrl("report", str(run_dir))
    assert failed.returncode != 0 and "cannot write the report" in failed.stderr
    assert {p.name: p.read_bytes() for p in (run_dir / "exports").iterdir()} == before
    assert (run_dir / "summary.md").read_text() == summary
    assert not list(run_dir.glob(".exports-*"))
    (run_dir / "figures" / "matrix.png").rmdir()
    run_ctxrl("report", str(run_dir), check=True)
    assert "1 of 4 runs failed" in (run_dir / "summary.md").read_text()


def test_a_failing_run_is_reported_and_the_sweep_goes_on(
    run_ctxrl: Run, scripted: Path, event_log: Path, tmp_path: Path
) -> None:
    config = _config(tmp_path, **{"algorithm.params": {"candidates": 4, "fail_above": 5.0}})
    result = run_ctxrl("sweep", str(config), env={"EVENTS_FILE": str(event_log)})
    assert result.returncode == 1
    events = sorted(_events(event_log), key=lambda e: str(e["status"]))
    assert [e["status"] for e in events] == ["failed", "finished", "finished", "finished"]
    assert "diverged at masscart=8.0" in str(events[0]["error"]) and not events[0]["returns"]
    assert all(e["kind"] == "source" and len(e["returns"]) == 4 for e in events[1:])  # type: ignore[arg-type]
    assert "failed 1" in result.stderr and "diverged at masscart=8" in result.stderr
    run_dir = _run_dir(tmp_path)
    with sqlite3.connect(run_dir / "store.sqlite") as db:
        rows = db.execute("SELECT status, error FROM runs ORDER BY status").fetchall()
    assert [r[0] for r in rows] == ["failed", "finished", "finished", "finished"]
    assert "RuntimeError: diverged at masscart=8.0" in rows[0][1]
    matrix = np.genfromtxt(run_dir / "exports" / "matrix_seed0.csv", delimiter=",")
    assert np.isnan(matrix[3]).all() and not np.isnan(matrix[:3]).any()


def test_a_hanging_run_times_out(run_ctxrl: Run, scripted: Path, tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        **{"algorithm.params": {"candidates": 2, "hang_above": 5.0}, "executor.timeout_s": 8},
    )
    started = time.monotonic()
    result = run_ctxrl("sweep", str(config))
    assert time.monotonic() - started < 120
    assert result.returncode == 1 and "exceeded its 8 s limit" in result.stderr
    assert _count(_run_dir(tmp_path), "runs") == 4


def _slow_sweep(
    scripted: Path, tmp_path: Path, stderr: int = subprocess.DEVNULL
) -> tuple[list[str], dict[str, str], subprocess.Popen[str]]:
    """A six-run sweep of 1.5 s runs, one at a time, started in its own process group:
    its command, environment and process."""
    config = _config(
        tmp_path,
        **{
            "algorithm.params": {"candidates": 2, "delay_s": 1.5},
            "features.masscart.num": 6,
            "executor.workers": 1,
        },
    )
    environ = dict(os.environ, PYTHONPATH=str(scripted), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "ctxrl.cli", "sweep", str(config)]
    process = subprocess.Popen(
        command,
        env=environ,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
        # Ctrl-C as at a terminal: a test run started in the background (CI under `&`)
        # passes SIGINT on ignored, and Python keeps an ignored SIGINT ignored
        preexec_fn=_default_sigint,
    )
    return command, environ, process


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for_runs(tmp_path: Path, runs: int) -> int:
    """Wait (at most 120 s) until the sweep under ``tmp_path`` has stored ``runs`` runs;
    returns how many it had stored."""
    deadline = time.monotonic() + 120
    stored = 0
    while time.monotonic() < deadline and stored < runs:
        time.sleep(0.2)
        store = tmp_path / "runs"
        if store.exists() and any(store.iterdir()):
            with contextlib.suppress(sqlite3.OperationalError):
                stored = _count(_run_dir(tmp_path), "runs")
    return stored


def test_ctrl_c_says_what_is_kept_and_how_to_continue(scripted: Path, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the foreground process group) printed click's bare "Aborted!": the
    sweep now says that what was stored is kept and how to continue, and exits 130."""
    _, _, process = _slow_sweep(scripted, tmp_path, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120  # until its first job runs (its log is written)
    while time.monotonic() < deadline and not list((tmp_path / "runs").glob("*/logs/job-*")):
        time.sleep(0.1)
    assert process.poll() is None, "the sweep ended before it could be interrupted"
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted: what was stored so far is kept" in " ".join(stderr.split())
    assert "Aborted!" not in stderr


def test_killed_sweep_resumes_without_retraining_or_duplicates(
    scripted: Path, tmp_path: Path
) -> None:
    command, environ, process = _slow_sweep(scripted, tmp_path)
    finished_before = _wait_for_runs(tmp_path, 2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert 2 <= finished_before < 6
    resumed = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    finished_after_kill = 6 - int(resumed.stderr.split("trained ")[1].split(",")[0])
    assert finished_after_kill >= finished_before
    assert f"already finished {finished_after_kill}" in resumed.stderr
    run_dir = _run_dir(tmp_path)
    assert _count(run_dir, "runs") == 6 and _count(run_dir, "evaluations") == 6 * 6 * 2
    # the killed invocation's environment is kept beside the resumed one's, as its command is
    environment = json.loads((run_dir / "environment.json").read_text())
    assert environment["device"] == "cpu" and len(environment["earlier"]) == 1
    assert environment["earlier"][0]["versions"] == environment["versions"]
    assert len((run_dir / "command.txt").read_text().splitlines()) == 2


@requires_sb3
def test_sb3_ppo_sweep_end_to_end(run_ctxrl: Run, tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        **{
            "algorithm": {"name": "sb3-ppo", "preset": "CartPole"},
            "features.masscart.num": 3,
            "train_steps": 1024,
            "eval_episodes": 1,
        },
    )
    result = run_ctxrl("sweep", str(config), check=True)
    assert "trained 3, already finished 0, failed 0" in result.stderr
    matrix = np.loadtxt(_run_dir(tmp_path) / "exports" / "matrix_seed0.csv", delimiter=",")
    assert matrix.shape == (3, 3) and np.all(matrix >= 1)


def test_batched_sweep_select_mode_with_multitask(
    run_ctxrl: Run, event_log: Path, tmp_path: Path
) -> None:
    """One batched program per step: MBTL picks 2 of 5 sources, plus the multi-task baseline."""
    config = _config(
        tmp_path,
        **{
            "algorithm": {"name": "batched-ppo", "preset": "CartPole"},
            "features.masscart.num": 5,
            "train_steps": 2048,
            "mode": "select",
            "multitask": True,
            "strategy": {"name": "mbtl-gp", "budget": 2},
        },
    )
    result = run_ctxrl("sweep", str(config), check=True, env={"EVENTS_FILE": str(event_log)})
    assert "trained 3, already finished 0, failed 0" in result.stderr  # 2 sources + 1 multi-task
    events = _events(event_log)
    multitask = [e for e in events if e["kind"] == "multitask"]
    assert len(events) == 3 and [e["source_task"] for e in multitask] == ["multitask"]
    assert all(e["status"] == "finished" and len(e["returns"]) == 5 for e in events)  # type: ignore[arg-type]
    run_dir = _run_dir(tmp_path)
    summary = json.loads((run_dir / "exports" / "summary.json").read_text())
    assert summary["order"][0] == 2 and len(summary["order"]) == 2  # the middle first
    assert 0.0 <= summary["multitask"] <= 1.0
    assert len(summary["curve"]) == 2
    with sqlite3.connect(run_dir / "store.sqlite") as db:
        kinds = sorted(k for (k,) in db.execute("SELECT kind FROM runs"))
    assert kinds == ["multitask", "source", "source"]
    assert (run_dir / "figures" / "matrix.png").is_file()
    again = run_ctxrl("sweep", str(config), check=True)
    assert "trained 0, already finished 3, failed 0" in again.stderr


# CartPole again, under another name, with a torch twin that cannot start: every batched
# program on it fails before training.
BROKEN_TWIN = """
import dataclasses
from ctxrl import hookimpl
from ctxrl_envs.classic_control import ENTRIES

def broken_twin(num_envs, **kwargs):
    raise RuntimeError("the twin cannot start")

@hookimpl
def ctxrl_register_envs(register):
    spec = ENTRIES["CartPole"].spec()
    register(dataclasses.replace(spec, name="BrokenTwin", gym_id=None, make_batched=broken_twin))
"""


def test_failed_batched_runs_reach_the_run_finished_hook(
    run_ctxrl: Run, event_log: Path, plugin_site: Path, tmp_path: Path
) -> None:
    """A batched program (sources and multi-task) that fails tells loggers about every run."""
    write_distribution(
        plugin_site, "ctxrl-twin", "0.1", "ctxrl_twin", BROKEN_TWIN, {"twin": "ctxrl_twin"}
    )
    config = _config(
        tmp_path,
        **{
            "env": "BrokenTwin",
            "algorithm": {"name": "batched-ppo", "preset": "CartPole"},
            "features.masscart.num": 3,
            "train_steps": 2048,
            "multitask": True,
        },
    )
    result = run_ctxrl("sweep", str(config), env={"EVENTS_FILE": str(event_log)})
    assert result.returncode == 1 and "failed 4" in result.stderr, result.stderr
    events = _events(event_log)
    assert sorted(str(e["source_task"]) for e in events)[-1] == "multitask"
    assert sorted(str(e["kind"]) for e in events) == ["multitask", "source", "source", "source"]
    for event in events:
        assert event["status"] == "failed" and not event["returns"]
        assert "RuntimeError: the twin cannot start" in str(event["error"])


@pytest.mark.long
@requires_ray
def test_ray_executor_gives_the_same_matrix_as_local(
    run_ctxrl: Run, scripted: Path, tmp_path: Path
) -> None:
    matrices, hashes = {}, []
    for executor in ("local", "ray"):
        out = tmp_path / executor
        out.mkdir()
        config = _config(out, **{"executor.name": executor, "output_dir": str(out / "runs")})
        result = run_ctxrl("sweep", str(config), check=True)
        assert "trained 4, already finished 0, failed 0" in result.stderr
        (run_dir,) = (out / "runs").iterdir()
        matrices[executor] = np.loadtxt(run_dir / "exports" / "matrix_seed0.csv", delimiter=",")
        hashes.append(run_dir.name)
    assert hashes[0] == hashes[1]  # the executor is not part of the plan
    np.testing.assert_array_equal(matrices["local"], matrices["ray"])


@pytest.mark.long
@requires_ray
def test_ray_time_limits_run_from_a_jobs_start_not_its_queueing() -> None:
    """Three 1.5 s jobs on one worker with a 2.5 s limit each: all finish, as with the local
    executor (the limit ran from submission, so the queued jobs were cancelled unrun)."""
    from ctxrl_plugins.executors.ray_cluster import RayExecutor

    def sleepy(job: dict[str, Any]) -> None:
        time.sleep(1.5)

    executor = RayExecutor(workers=1, timeout_s=2.5)
    try:
        outcomes = list(executor.map(sleepy, [{"i": i} for i in range(3)]))
    finally:
        executor.close()
    assert [job["i"] for job, _ in outcomes] == [0, 1, 2]
    assert all(error is None for _, error in outcomes), outcomes


@pytest.mark.slow
@requires_ray
def test_a_ray_node_that_dies_fails_its_jobs_and_the_sweep_goes_on() -> None:
    """The local cluster's raylet killed under a running job: every job is reported (the
    running one finishes or fails, the next one fails naming the raylet), and ``map`` ends
    rather than waiting for jobs no node will run."""
    import threading

    import ray

    from ctxrl_plugins.executors.ray_cluster import RayExecutor

    def sleepy(job: dict[str, Any]) -> None:
        time.sleep(job["sleep"])

    def kill_the_raylet() -> None:
        while not ray.is_initialized():
            time.sleep(0.2)
        time.sleep(3.0)  # the first job running
        ray._private.worker._global_node.kill_raylet()

    executor = RayExecutor(workers=1)
    killer = threading.Thread(target=kill_the_raylet, daemon=True)
    killer.start()
    started = time.monotonic()
    try:
        outcomes = list(executor.map(sleepy, [{"i": 0, "sleep": 20}, {"i": 1, "sleep": 0.1}]))
    finally:
        executor.close()
    assert time.monotonic() - started < 90
    assert [job["i"] for job, _ in outcomes] == [0, 1]
    assert outcomes[1][1] is not None and "raylet" in str(outcomes[1][1]).lower()


@pytest.mark.long
@requires_ray
def test_ray_starts_once_per_sweep_and_reports_a_task_s_own_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ray started when the executor was built and stopped at the end of every `map`, so the
    second step of a select sweep ran on a cluster Ray started by itself (all CPUs, and not the
    remote one given); a failed task was stored as Ray's coloured wrapper line; a sweep with
    nothing to run started Ray all the same."""
    import ray

    from ctxrl.runs import error_summary
    from ctxrl_plugins.executors.ray_cluster import RayExecutor

    def _fails_or_checks_its_environment(job: dict[str, Any]) -> None:
        # nested: Ray's workers cannot import the test module, so it travels by value
        import os

        if job["fail"]:
            raise RuntimeError(f"injected failure at {job['i']}")
        if os.environ.get("CTXRL_PROBE") != "forwarded" or os.environ["OMP_NUM_THREADS"] != "1":
            raise AssertionError("the sweep's CTXRL_* and OMP_NUM_THREADS did not reach the task")

    monkeypatch.setenv("CTXRL_PROBE", "forwarded")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    executor = RayExecutor(workers=1)
    try:
        assert list(executor.map(_fails_or_checks_its_environment, [])) == []
        assert not ray.is_initialized()  # nothing to run, no Ray
        first = list(executor.map(_fails_or_checks_its_environment, [{"i": 0, "fail": True}]))
        assert ray.is_initialized() and ray.cluster_resources()["CPU"] == 1
        second = list(executor.map(_fails_or_checks_its_environment, [{"i": 1, "fail": False}]))
        assert ray.cluster_resources()["CPU"] == 1  # the same cluster for the next step
    finally:
        executor.close()
    assert not ray.is_initialized()
    ((_, error),) = first
    assert error is not None and error_summary(error) == "RuntimeError: injected failure at 0"
    assert "\x1b[" not in str(error) and "raise RuntimeError" in str(error)  # its traceback
    assert second == [({"i": 1, "fail": False}, None)]


@pytest.mark.long
def test_cartpole_masscart_sweep_mbtl_at_least_random(run_ctxrl: Run, tmp_path: Path) -> None:
    """CI-sized end to end: 20 cart masses, batched PPO, K = 15: the matrix, every strategy's
    curve, the figures, and MBTL's mean G_k over k = 1..15 at least Random's."""
    config = _config(
        tmp_path,
        **{
            "algorithm": {"name": "batched-ppo", "preset": "CartPole"},
            "features.masscart": {"num": 20, "low": 0.1, "high": 10.0, "scale": "linear"},
            "train_steps": 30_000,
            "eval_episodes": 5,
            "strategy": {"name": "mbtl-gp", "budget": 15},
        },
    )
    run_ctxrl("sweep", str(config), check=True)
    run_dir = _run_dir(tmp_path)
    summary = json.loads((run_dir / "exports" / "summary.json").read_text())
    curves = summary["curves"]
    assert len(curves["mbtl-gp"]["mean"]) == 15
    assert np.mean(curves["mbtl-gp"]["mean"]) >= np.mean(curves["random"]["mean"])
    assert np.mean(curves["sequential-oracle"]["mean"]) >= np.mean(curves["mbtl-gp"]["mean"])
    for figure in ("matrix", "selection", "generalization"):
        assert (run_dir / "figures" / f"{figure}.png").is_file()


@pytest.mark.long
def test_several_seeds_give_confidence_intervals(
    run_ctxrl: Run, scripted: Path, tmp_path: Path
) -> None:
    config = _config(tmp_path, seeds=[0, 1, 2], **{"algorithm.params": {"candidates": 3}})
    run_ctxrl("sweep", str(config), check=True)
    run_dir = _run_dir(tmp_path)
    summary = json.loads((run_dir / "exports" / "summary.json").read_text())
    for name in ("equidistant", "random", "greedy", "sequential-oracle"):
        curve = summary["curves"][name]
        assert len(curve["seed_ci95"]) == len(curve["seed_mean"]) == summary["budget"]
        assert all(ci >= 0 for ci in curve["seed_ci95"])
    spread = [sum(summary["curves"][n]["seed_ci95"]) for n in summary["curves"]]
    assert max(spread) > 0  # three differently seeded matrices do differ
    markdown = (run_dir / "summary.md").read_text()
    assert "95% CI over seeds" in markdown
    for seed in (0, 1, 2):
        assert (run_dir / "exports" / f"matrix_seed{seed}.csv").is_file()
    # The table, the figure and the reference lines are one estimator: G_k on each seed's
    # matrix, averaged (before, the figure drew per-seed means, the table the seed-mean
    # matrix's curves, and the oracles' curves rose above the "oracle transfer" line); the
    # interval is Student t over seeds, as `ctxrl select` gives it over trials.
    seeds = np.array(
        [
            np.loadtxt(run_dir / "exports" / f"matrix_seed{seed}.csv", delimiter=",")
            for seed in (0, 1, 2)
        ]
    )
    per_seed_oracle = np.clip((seeds - 0) / 500, 0, 1).max(axis=1).mean(axis=1)
    oracle = summary["oracle_transfer_seeds"]
    assert oracle["mean"] == pytest.approx(per_seed_oracle.mean())
    for name, curve in summary["curves"].items():
        assert max(curve["seed_mean"]) <= oracle["mean"] + 1e-12, name
    replayed = json.loads(
        run_ctxrl(
            "select",
            *[
                arg
                for seed in (0, 1, 2)
                for arg in ("--matrix", str(run_dir / "exports" / f"matrix_seed{seed}.csv"))
            ],
            "--env",
            "CartPole",
            "--strategy",
            "greedy",
            "-k",
            str(summary["budget"]),
            "--json",
            check=True,
        ).stdout
    )
    greedy = summary["curves"]["greedy"]
    assert greedy["seed_g_mean"] == pytest.approx(replayed["strategies"]["greedy"]["mean_g"])
    assert greedy["seed_g_ci95"] == pytest.approx(replayed["strategies"]["greedy"]["mean_g_ci95"])
    assert f"| greedy | {greedy['seed_g_mean']:.4f} +- {greedy['seed_g_ci95']:.4f} |" in markdown


def test_failure_summaries_name_the_exception_or_the_signal() -> None:
    from ctxrl_plugins.executors.local import _crash_summary

    tail = 'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: bad mass\n'
    assert _crash_summary(1, tail) == "ValueError: bad mass"
    assert _crash_summary(-9, tail) == "worker killed by SIGKILL"
    assert _crash_summary(3, "no traceback here") == "worker exited with code 3"


# A job that starts a child process which never notices its parent's death (like a SUMO still
# waiting for its TraCI client), writes the child's pid, and waits.
ORPHAN_DRIVER = """
import subprocess, sys, time
from pathlib import Path
from ctxrl_plugins.executors.local import LocalProcessExecutor

def job(j):
    child = subprocess.Popen(["sleep", "600"])
    Path(j["pid_file"]).write_text(str(child.pid))
    time.sleep(600)

if __name__ == "__main__":
    for _ in LocalProcessExecutor(workers=1).map(job, [{"pid_file": sys.argv[1]}]):
        pass
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
def test_a_killed_sweep_takes_its_workers_children_with_it(tmp_path: Path) -> None:
    (tmp_path / "orphan_driver.py").write_text(ORPHAN_DRIVER)
    pid_file = tmp_path / "child.pid"
    driver = subprocess.Popen(
        [sys.executable, str(tmp_path / "orphan_driver.py"), str(pid_file)],
        env=dict(os.environ, PYTHONPATH=str(tmp_path)),
    )
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.monotonic() < deadline and driver.poll() is None, "the job never started"
        time.sleep(0.1)
    child = int(pid_file.read_text())
    driver.kill()  # SIGKILL: no clean-up code runs in the driver
    driver.wait()
    deadline = time.monotonic() + 10
    while _alive(child):
        assert time.monotonic() < deadline, "the worker's child outlived the killed sweep"
        time.sleep(0.1)


# Jobs for the local executor: each starts a child that would outlive it (as a SUMO could),
# then ends or raises; one uses a process pool of its own.
ENDING_JOBS = """
import multiprocessing, subprocess
from pathlib import Path

def job(j):
    child = subprocess.Popen(["sleep", "600"])
    Path(j["pid_file"]).write_text(str(child.pid))
    if j["kind"] == "raise":
        raise RuntimeError("the job failed")

def square(x):
    return x * x

def pooled(j):
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        assert pool.map(square, [1, 2, 3]) == [1, 4, 9]
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups: Linux")
def test_a_reported_job_leaves_nothing_running_and_may_start_a_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a job is reported (finished or failed) the processes it started are gone; a job
    may start processes of its own (a worker is not a daemon)."""
    from ctxrl_plugins.executors.local import LocalProcessExecutor

    (tmp_path / "ending_jobs.py").write_text(ENDING_JOBS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    import ending_jobs

    jobs = [{"kind": kind, "pid_file": str(tmp_path / f"{kind}.pid")} for kind in ("ok", "raise")]
    executor = LocalProcessExecutor(workers=2, log_dir=tmp_path / "logs")
    errors = {j["kind"]: error for j, error in executor.map(ending_jobs.job, jobs)}
    assert errors["ok"] is None and "the job failed" in str(errors["raise"])
    for j in jobs:
        child = int(Path(j["pid_file"]).read_text())
        deadline = time.monotonic() + 10
        while _alive(child):
            assert time.monotonic() < deadline, f"the {j['kind']} job's child outlived it"
            time.sleep(0.1)
    ((_, error),) = list(LocalProcessExecutor(workers=1).map(ending_jobs.pooled, [{}]))
    assert error is None, error


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (Linux ``/proc``)."""
    with contextlib.suppress(OSError):
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    return False


def test_a_diverged_agent_fails_alone_and_a_failed_retry_keeps_stored_results(
    tmp_path: Path,
) -> None:
    """A batched agent whose returns are NaN is stored as failed, naming why, while the others
    are stored; a later failure of a run that finished (a retrain of a damaged policy, a worker
    that crashed after storing) keeps its row and evaluations."""
    from ctxrl.config import resolve_plan, validate_config
    from ctxrl.context import Task
    from ctxrl.plugins import get_host
    from ctxrl.runs import ensure_failed, run_id
    from ctxrl.store import Store
    from ctxrl.sweep import run_sweep

    config = {
        "env": "Pendulum",
        "features": {"g": {"values": [5.0, 10.0]}},
        "algorithm": {"name": "batched-ppo", "params": {"learning_rate": 1e30}},
        "seeds": [0],
        "train_steps": 1024,
        "eval_episodes": 1,
        "compare": ["random"],
        "multitask": True,
        "output_dir": str(tmp_path),
    }
    plan = resolve_plan(validate_config(config), get_host().registry)
    outcome = run_sweep(plan)
    assert len(outcome.failed) == 3 and (outcome.run_dir / "summary.md").is_file()
    with Store(outcome.run_dir / "store.sqlite") as store:
        errors = [store.run(rid).error for rid in outcome.failed]
    assert all("not finite (NaN or inf): the training diverged" in e for e in errors)
    # discrete actions: NaN logits act as the first action, with finite returns; the agents'
    # NaN parameters make their returns NaN all the same
    cartpole = {**config, "env": "CartPole", "features": {"masscart": {"values": [1.0, 2.0]}}}
    cartpole.update(multitask=False, output_dir=str(tmp_path / "cartpole"))
    outcome = run_sweep(resolve_plan(validate_config(cartpole), get_host().registry))
    assert outcome.trained == 0 and len(outcome.failed) == 2

    config.update(algorithm={"name": "batched-ppo"}, output_dir=str(tmp_path / "good"))
    plan = resolve_plan(validate_config(config), get_host().registry)
    outcome = run_sweep(plan)
    assert outcome.trained == 3 and not outcome.failed
    task = Task(plan.env.name, plan.grid.contexts[0])
    rid = run_id(task, 0)
    with Store(outcome.run_dir / "store.sqlite") as store:
        returns = store.returns(rid)
        assert not ensure_failed(store, task, 0, plan, "worker crashed after storing")
        assert store.run(rid).status == "finished" and store.returns(rid) == returns


@requires_sb3
def test_a_failed_retrain_of_a_damaged_policy_keeps_the_runs_evaluations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-run path (the SB3 adapter): a finished run whose saved policy is damaged is
    retrained by the rerun; when that retrain fails, the run keeps its row and evaluations
    (the failed attempt's error is raised and reported), as on the batched path."""
    import io

    from rich.console import Console

    import ctxrl_plugins.algorithms.sb3 as sb3
    from ctxrl.config import resolve_plan, validate_config
    from ctxrl.plugins import get_host
    from ctxrl.store import Store
    from ctxrl.sweep import run_sweep

    config = {
        "env": "CartPole",
        "features": {"length": {"values": [0.5, 1.0]}},
        "algorithm": {"name": "sb3-ppo", "params": {"n_steps": 64, "batch_size": 32}},
        "seeds": [0],
        "train_steps": 128,
        "eval_episodes": 2,
        "compare": [],
        "executor": {"name": "inline"},
        "output_dir": str(tmp_path),
    }
    plan = resolve_plan(validate_config(config), get_host().registry)
    outcome = run_sweep(plan)
    weights = sorted((outcome.run_dir / "artifacts").glob("*.safetensors"))[0]
    with Store(outcome.run_dir / "store.sqlite") as store:
        returns = store.returns(weights.stem)
    weights.write_bytes(weights.read_bytes()[:100])  # cut short

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the retrain crashed")

    monkeypatch.setattr(sb3.SB3Algorithm, "train", crash)
    printed = io.StringIO()
    again = run_sweep(plan, console=Console(file=printed, width=300))
    assert f"run {weights.stem} (length=0.5): the retrain crashed" in printed.getvalue()
    assert "its retrain failed; its earlier evaluations are kept" in printed.getvalue()
    # counted as kept, not as trained (it counted as trained: "trained 1" for no training)
    assert again.kept == [weights.stem] and again.trained == 0 and again.skipped == 1
    with Store(outcome.run_dir / "store.sqlite") as store:
        assert store.run(weights.stem).status == "finished"
        assert store.returns(weights.stem) == returns


BAD_PICKS = """
from ctxrl import hookimpl, StrategySpec

class Picks:
    def __init__(self, pick):
        self.pick = pick

    def propose(self, state):
        return self.pick(state)

PICKS = {
    "beyond": lambda state: [state.n + 5],
    "negative": lambda state: [-1],
    "scalar": lambda state: 1,
    "fraction": lambda state: [1.7],
    "again": lambda state: [0],
}

@hookimpl
def ctxrl_register_strategies(register):
    for name, pick in PICKS.items():
        register(StrategySpec(name, lambda pick=pick, **options: Picks(pick)))
"""


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        ("beyond", "proposed index 9 outside 0..3"),
        ("negative", "proposed index -1 outside 0..3"),
        ("scalar", "must propose a list of context indices, got 1"),
        ("fraction", "proposed 1.7 at step 1: not a whole number"),
        ("again", "proposed index 0 at step 2, which is already chosen"),
    ],
)
def test_a_select_sweep_refuses_a_strategy_s_bad_proposal_by_name(
    run_ctxrl: Run, scripted: Path, plugin_site: Path, tmp_path: Path, strategy: str, message: str
) -> None:
    """A third-party strategy's index out of range crashed the sweep with an IndexError, a
    negative one trained the last context, a fraction the one below it: each is now the
    error `ctxrl select` gives, naming the strategy, and nothing of the bad step trains."""
    write_distribution(
        plugin_site, "ctxrl-picks", "0.1", "ctxrl_picks", BAD_PICKS, {"picks": "ctxrl_picks"}
    )
    config = _config(tmp_path, mode="select", strategy={"name": strategy, "budget": 2})
    result = run_ctxrl("sweep", str(config))
    assert result.returncode != 0
    assert f"strategy {strategy!r} {message}" in " ".join(result.stderr.split()), result.stderr
    assert "Traceback" not in result.stderr
    trained = _count(_run_dir(tmp_path), "runs")
    assert trained == (1 if strategy == "again" else 0)
