"""Run directories kept safe: the plan hash and what the directory records, reruns and
reports that never replace results with nothing, one sweep at a time, damaged files named."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import requires_sb3, without_file_privileges
from rich.console import Console

from ctxrl.config import SweepPlan, resolve_plan, validate_config
from ctxrl.plugins import get_host
from ctxrl.sweep import SweepOutcome, run_sweep

BASE: dict[str, Any] = {
    "env": "CartPole",
    "features": {"length": {"values": [0.5, 1.0]}},
    "algorithm": {"name": "batched-ppo", "preset": "CartPole"},
    "train_steps": 512,
}


def _plan(tmp_path: Path, **changes: Any) -> SweepPlan:
    data = {
        **BASE,
        "eval_episodes": 1,
        "compare": ["greedy"],
        "output_dir": str(tmp_path / "runs"),
        **changes,
    }
    return resolve_plan(validate_config(data), get_host().registry)


def _sweep(tmp_path: Path, **changes: Any) -> SweepOutcome:
    return run_sweep(_plan(tmp_path, **changes))


def _group_checkpoint(plan: SweepPlan) -> Path:
    """Where a sweep checkpoints the batched group of every grid context at seed 0 (without
    a suffix)."""
    from ctxrl.context import Task
    from ctxrl.sweep import run_id

    ids = [run_id(Task(plan.env.name, c), 0) for c in plan.grid.contexts]
    key = hashlib.sha256("|".join(ids).encode()).hexdigest()[:12]
    return plan.run_dir / "checkpoints" / f"batch-{key}"


def _train_into_checkpoint(plan: SweepPlan, total_steps: int, **options: Any) -> Path:
    """Train that group as the sweep would, into its checkpoint (``options``: of
    ``train_many``); returns the checkpoint's path."""
    from ctxrl.config import algorithm_params

    checkpoint = _group_checkpoint(plan)
    algorithm = plan.algorithm.factory(algorithm_params(plan.config, plan.algorithm), env=plan.env)
    contexts = [c.as_dict() for c in plan.grid.contexts]
    algorithm.train_many(
        plan.env,
        contexts,
        [0] * len(contexts),
        total_steps=total_steps,
        checkpoint=checkpoint,
        **options,
    )
    return checkpoint


# ------------------------------------------------------------------------- the plan hash
def test_the_plan_hash_covers_what_trains_the_runs() -> None:
    """The strategy trains nothing in mode full (it is replayed on the finished matrix), so it
    is not hashed there; in mode select it chooses the trained sources, so it is."""
    full = validate_config(BASE)
    for changes in (
        {"strategy": {"name": "mbtl-gp", "budget": 1, "options": {"c": 2.0}}},
        {"compare": ["random"]},
        {"executor": {"workers": 1}, "output_dir": "/elsewhere"},
    ):
        assert validate_config({**BASE, **changes}).plan_hash() == full.plan_hash(), changes
    select = validate_config(
        {**BASE, "mode": "select", "strategy": {"name": "greedy", "budget": 1}}
    )
    changed = {**BASE, "mode": "select", "strategy": {"name": "random", "budget": 1}}
    assert validate_config(changed).plan_hash() != select.plan_hash()
    # the hash of a select-mode plan is the one earlier versions gave it
    assert select.plan_hash() == "b3dd311141ff06626e07589c046df5fd2654304c962a64702d8c0a7a62d82ab3"


def test_fixing_the_strategy_of_a_full_run_keeps_its_runs(tmp_path: Path) -> None:
    """A typo fixed in a field the hash does not cover continues in the same run directory
    and records the new value in plan.yaml, instead of training everything again."""
    first = _sweep(tmp_path, strategy={"name": "random"})
    assert first.trained == 2
    printed = io.StringIO()
    plan = _plan(tmp_path, strategy={"name": "greedy", "budget": 2})
    again = run_sweep(plan, console=Console(file=printed, width=200))
    assert again.run_dir == first.run_dir and again.trained == 0 and again.skipped == 2
    assert "strategy.budget, strategy.name changed since the last run" in printed.getvalue()
    stored = yaml.safe_load((first.run_dir / "plan.yaml").read_text())
    assert stored["config"]["strategy"]["name"] == "greedy"
    assert stored["plan_hash"] == _plan(tmp_path).plan_hash


def test_return_bounds_of_a_sweep_renormalise_its_report_without_training(
    tmp_path: Path,
) -> None:
    """An env's return bounds clipped trained policies alike (Pendulum's upper -500 against
    SAC's -150 to -200) and a sweep could not change them. ``return_bounds`` does, in the
    report alone for a full zero-shot sweep (same run directory, nothing trained), in the
    plan hash where normalised returns decide what trains (``mode: select``, ``distill``)."""
    first = _sweep(tmp_path)
    runs = json.loads((first.run_dir / "exports" / "summary.json").read_text())
    assert runs["independent"] > 0
    printed = io.StringIO()
    plan = _plan(tmp_path, return_bounds=[0.0, 1.0])
    assert plan.env.return_bounds == (0.0, 1.0)
    again = run_sweep(plan, console=Console(file=printed, width=200))
    assert again.run_dir == first.run_dir and again.trained == 0
    assert "return_bounds changed since the last run" in printed.getvalue()
    exports = again.run_dir / "exports"
    assert json.loads((exports / "contexts.json").read_text())["return_bounds"] == [0.0, 1.0]
    summary = json.loads((exports / "summary.json").read_text())
    assert summary["clipped"] == 4 and summary["independent"] == 1.0  # every return above 1
    # `ctxrl report` and `ctxrl select` read the bounds from plan.yaml
    reported = _cli("report", str(again.run_dir))
    assert reported.exit_code == 0, reported.output
    assert json.loads((exports / "summary.json").read_text())["clipped"] == 4
    # select reads them too: every return lies above 1, which it refuses, naming them
    selected = _cli("select", "--matrix", str(again.run_dir), "--strategy", "random", "-k", "1")
    assert selected.exit_code == 2 and "normalisation bounds [0.0, 1.0]" in selected.output
    for changes in (
        {"mode": "select", "strategy": {"name": "greedy", "budget": 1}},
        {"transfer": {"name": "distill"}},
    ):
        bounded = validate_config({**BASE, **changes, "return_bounds": [0.0, 1.0]})
        assert bounded.plan_hash() != validate_config({**BASE, **changes}).plan_hash(), changes


def test_a_run_directory_named_by_an_earlier_hash_is_continued(tmp_path: Path) -> None:
    """Full-mode run directories written before the strategy left the hash are named by the
    hash of then: a rerun finds and continues them."""
    plan = _plan(tmp_path)
    first = run_sweep(plan)
    data = plan.config.plan_data()
    data["strategy"] = plan.config.strategy.model_dump(mode="json")  # hashed until now
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    legacy = hashlib.sha256(text.encode()).hexdigest()
    legacy_dir = first.run_dir.with_name(f"CartPole-length-{legacy[:10]}")
    first.run_dir.rename(legacy_dir)
    stored = yaml.safe_load((legacy_dir / "plan.yaml").read_text())
    stored.update(plan_hash=legacy, plan=data)
    (legacy_dir / "plan.yaml").write_text(yaml.safe_dump(stored, sort_keys=False))
    again = run_sweep(_plan(tmp_path))
    assert again.run_dir == legacy_dir and again.trained == 0 and again.skipped == 2
    # each invocation through the Python API is a line of command.txt naming the process (an
    # empty line before)
    lines = (legacy_dir / "command.txt").read_text().splitlines()
    assert len(lines) == 2 and all(
        line.startswith("run_sweep() from Python: python ") for line in lines
    )


def test_an_m_mbtl_sweep_given_options_it_ignored_is_still_read_and_resumed(
    tmp_path: Path,
) -> None:
    """m-mbtl took (and ignored) sd-mbtl's detection and GP options until it took
    ``clustering`` only: a select sweep's run directory written with them is reported, and
    the config without them resumes it rather than training a new one."""
    from ctxrl.errors import ConfigError
    from ctxrl.results import load_plan

    select = {"mode": "select", "strategy": {"name": "m-mbtl", "budget": 1}, "seeds": [0]}
    plan = _plan(tmp_path, **select)
    first = run_sweep(plan)
    stored = yaml.safe_load((first.run_dir / "plan.yaml").read_text())
    stored["config"]["strategy"]["options"] = {"residual": "none", "noise_std": 0.1}
    legacy = validate_config(stored["config"]).plan_hash()  # the hash it was named by then
    legacy_dir = first.run_dir.with_name(f"CartPole-length-{legacy[:10]}")
    first.run_dir.rename(legacy_dir)
    stored["plan_hash"] = legacy
    (legacy_dir / "plan.yaml").write_text(yaml.safe_dump(stored, sort_keys=False))
    assert load_plan(legacy_dir).config.strategy.options == {}
    again = run_sweep(_plan(tmp_path, **select))
    assert again.run_dir == legacy_dir and again.trained == 0
    with pytest.raises(ConfigError, match="takes only the option clustering, not residual"):
        _plan(
            tmp_path,
            **{**select, "strategy": {**select["strategy"], "options": {"residual": "none"}}},
        )


def test_a_different_plan_in_the_same_directory_is_refused_naming_the_fields(
    tmp_path: Path,
) -> None:
    from ctxrl.errors import CtxrlError
    from ctxrl.results import load_plan

    first = _sweep(tmp_path)
    plan_file = first.run_dir / "plan.yaml"
    original = plan_file.read_text()
    stored = yaml.safe_load(original)
    stored["config"]["train_steps"] = stored["plan"]["train_steps"] = 1024
    plan_file.write_text(yaml.safe_dump(stored, sort_keys=False))
    with pytest.raises(CtxrlError, match=r"plan\.yaml holds a different plan \(train_steps"):
        _sweep(tmp_path)
    # the config alone edited (the plan beside it says what trained): the report refuses it
    # (it read a 2-context matrix as a 1-context one), and a sweep of the edited config
    # trains in a directory of its own rather than resuming this one
    stored = yaml.safe_load(original)
    stored["config"]["features"]["length"]["values"] = [0.5]
    plan_file.write_text(yaml.safe_dump(stored, sort_keys=False))
    edited = r"its config no longer says what its runs trained on \(features\.length\.values"
    with pytest.raises(CtxrlError, match=edited):
        load_plan(first.run_dir)
    own = _sweep(tmp_path, features={"length": {"values": [0.5]}})
    assert own.run_dir != first.run_dir and own.trained == 1


def test_runs_trained_with_other_defaults_are_not_resumed(tmp_path: Path) -> None:
    """The plan hash covers the config as written; plan.yaml also records what it resolved
    to (the grid, every hyperparameter, each plugin's options with their defaults: what
    --dry-run prints). Runs trained when a default (or a preset's value) was another are
    refused, naming it with both values; a value on one side only, or a plan.yaml from
    before the record, resumes (and gains the record, keeping what the new version
    dropped)."""
    from ctxrl.errors import CtxrlError

    first = _sweep(tmp_path)
    plan_file = first.run_dir / "plan.yaml"
    stored = yaml.safe_load(plan_file.read_text())
    resolved = yaml.safe_load(plan_file.read_text())["resolved"]  # a copy, kept unchanged
    hyper = resolved["hyperparameters"]
    assert hyper["ent_coef"] == 0.01 and hyper["num_minibatches"] == 4  # defaults
    assert resolved["grid"] == {"length": [0.5, 1.0]}
    assert resolved == _plan(tmp_path).resolved

    # an earlier version: one hyperparameter it did not have, one it had and this one drops
    stored["resolved"]["hyperparameters"] = {**hyper, "retired_option": 3}
    del stored["resolved"]["hyperparameters"]["rollout_segment"]
    plan_file.write_text(yaml.safe_dump(stored, sort_keys=False))
    again = _sweep(tmp_path)
    assert again.trained == 0 and again.skipped == 2
    kept = yaml.safe_load(plan_file.read_text())["resolved"]  # the dropped option stays
    assert kept["hyperparameters"] == {**hyper, "retired_option": 3}
    assert {**kept, "hyperparameters": hyper} == resolved

    stored = yaml.safe_load(plan_file.read_text())
    stored["resolved"]["hyperparameters"]["ent_coef"] = 0.0
    stored["resolved"]["grid"]["length"] = [0.5, 1.01]
    plan_file.write_text(yaml.safe_dump(stored, sort_keys=False))
    with pytest.raises(
        CtxrlError,
        match=r"\(grid\.length: \[0\.5, 1\.01\] there, \[0\.5, 1\.0\] now; "
        r"hyperparameters\.ent_coef: 0\.0 there, 0\.01 now\)",
    ):
        _sweep(tmp_path)

    del stored["resolved"]  # written before the record: resumes, records it
    plan_file.write_text(yaml.safe_dump(stored, sort_keys=False))
    assert _sweep(tmp_path).trained == 0
    assert yaml.safe_load(plan_file.read_text())["resolved"] == resolved


def test_an_intervention_whose_default_changed_is_named(tmp_path: Path) -> None:
    from ctxrl.errors import CtxrlError

    changes = {"algorithm": {**BASE["algorithm"], "interventions": ["redo"]}}
    first = _sweep(tmp_path, **changes)
    plan_file = first.run_dir / "plan.yaml"
    stored = yaml.safe_load(plan_file.read_text())
    (entry,) = stored["resolved"]["interventions"]
    option = next(name for name, value in entry["redo"].items() if isinstance(value, float))
    entry["redo"][option] += 1.0
    plan_file.write_text(yaml.safe_dump(stored, sort_keys=False))
    with pytest.raises(CtxrlError, match=rf"interventions\.0\.redo\.{option}: "):
        _sweep(tmp_path, **changes)


def test_options_another_option_decides_are_recorded_as_they_run() -> None:
    """A default of ``None`` that another option decides, and the defaults a wrapper gives
    what it forwards, are recorded as the plugin runs with them (its ``resolved_options()``),
    not as its signature's ``None`` or the wrapped plugin's own defaults."""
    from ctxrl.plugins import get_host
    from ctxrl.resolution import resolved_options

    registry = get_host().registry
    switch = resolved_options(registry, "intervention", "shrink-perturb", {"when": "switch"})
    assert (switch["shrink-perturb"]["shrink"], switch["shrink-perturb"]["perturb"]) == (0.5, 0.5)
    step = resolved_options(registry, "intervention", "shrink-perturb", {"perturb": 0.1})
    assert step["shrink-perturb"]["shrink"] == 1 - 1e-6 and step["shrink-perturb"]["perturb"] == 0.1
    # sd-mbtl's GP branch runs with signed slopes and a fixed noise, not mbtl-gp's defaults
    sd = resolved_options(registry, "strategy", "sd-mbtl", {})["sd-mbtl"]
    assert (sd["slopes"], sd["noise_std"], sd["best"], sd["structure"]) == (
        "signed",
        0.1,
        "observed",
        "auto",
    )
    m_mbtl = resolved_options(registry, "strategy", "m-mbtl", {})["m-mbtl"]
    assert m_mbtl == {"clustering": "reference"}  # its one option: no test, no GP branch runs
    gp = resolved_options(registry, "strategy", "mbtl-gp", {})["mbtl-gp"]
    assert gp["noise_std"] == "rows" and gp["theta_per_index"] is None  # None: theta is used
    reference = resolved_options(registry, "strategy", "mbtl-gp", {"gp": "reference"})
    assert reference["mbtl-gp"]["noise_std"] == "learned"
    # distill: what its mode uses, at the value it runs with; the rest stays null
    kickstart = resolved_options(
        registry, "transfer_method", "distill", {"steps": 1000, "mode": "kickstart"}
    )["distill"]
    assert (kickstart["coef"], kickstart["decay"], kickstart["half_life"]) == (1.0, "linear", None)
    assert (kickstart["weights"], kickstart["scale"], kickstart["proxy_steps"]) == (
        "distance",
        0.1,
        None,
    )
    proxy = resolved_options(
        registry, "transfer_method", "distill", {"steps": 1000, "mode": "proxy"}
    )
    assert proxy["distill"]["proxy_steps"] == 1000 and proxy["distill"]["weights"] is None
    assert proxy["distill"]["temperature"] is None  # left to the teachers


def test_a_record_of_the_first_format_is_compared_without_what_it_could_not_know(
    tmp_path: Path,
) -> None:
    """The first sweeps that kept a record wrote ``null`` for an option another option
    decides and ``mbtl-gp``'s defaults for ``sd-mbtl``'s GP branch (no format key): such a
    run directory resumes unchanged, and is still refused for a value it did record."""
    from ctxrl.errors import CtxrlError

    changes = {
        "algorithm": {**BASE["algorithm"], "interventions": ["shrink-perturb"]},
        "mode": "select",
        "strategy": {"name": "sd-mbtl", "budget": 2},
    }
    first = _sweep(tmp_path, **changes)
    plan_file = first.run_dir / "plan.yaml"
    stored = yaml.safe_load(plan_file.read_text())
    record = stored["resolved"]
    assert record["format"] == 2 and record["context_defaults"]["masscart"] == 1.0
    assert record["interventions"][0]["shrink-perturb"]["shrink"] == 1 - 1e-6
    assert record["strategy options"]["sd-mbtl"]["slopes"] == "signed"
    # as the first format wrote it
    del record["format"], record["context_defaults"]
    record["interventions"][0]["shrink-perturb"].update(shrink=None, perturb=None)
    record["strategy options"]["sd-mbtl"].update(slopes="floored", noise_std=None)
    plan_file.write_text(yaml.safe_dump(stored, sort_keys=False))
    assert _sweep(tmp_path, **changes).trained == 0  # resumed
    assert yaml.safe_load(plan_file.read_text())["resolved"]["format"] == 2  # and rewritten
    record["hyperparameters"]["gamma"] = 0.9  # what it did record is still compared
    plan_file.write_text(yaml.safe_dump(stored, sort_keys=False))
    with pytest.raises(CtxrlError, match=r"hyperparameters\.gamma: 0\.9 there, 0\.99 now"):
        _sweep(tmp_path, **changes)


def test_resolved_values_compare_by_value_and_keep_what_a_version_dropped() -> None:
    from ctxrl.resolution import merge_resolved, resolved_differences

    then = {
        "hyperparameters": {"max_grad_norm": 10, "hidden": [64, 64], "gone": 1.0},
        "interventions": [{"injection": {"at_steps": [], "roles": None, "rate": float("nan")}}],
    }
    same = {
        "hyperparameters": {"max_grad_norm": 10.0, "hidden": [64.0, 64], "added": 2},
        "interventions": [{"injection": {"at_steps": [], "roles": None, "rate": float("nan")}}],
    }
    assert resolved_differences(then, same) == []  # 10 and 10.0 are one value; NaN is NaN
    changed = {
        "hyperparameters": {"max_grad_norm": 10, "hidden": [64, 64, 64], "gone": {"a": 1}},
        "interventions": [
            {"injection": {"at_steps": [5000], "roles": ["actor"], "rate": float("nan")}}
        ],
    }
    assert resolved_differences(then, changed) == [
        'hyperparameters.gone: 1.0 there, {"a": 1} now',  # a value, then a group of values
        "hyperparameters.hidden: [64, 64] there, [64, 64, 64] now",
        "interventions.0.injection.at_steps: [] there, [5000] now",  # a list is one value
        'interventions.0.injection.roles: null there, ["actor"] now',
    ]
    # a value the new version does not have stays in the record, for the next to compare
    merged = merge_resolved(then, same)
    assert merged["hyperparameters"] == {
        "max_grad_norm": 10.0,
        "hidden": [64.0, 64],
        "added": 2,
        "gone": 1.0,
    }
    assert resolved_differences(merged, {"hyperparameters": {"gone": 3.0}}) == [
        "hyperparameters.gone: 1.0 there, 3.0 now"
    ]


def test_a_worker_that_resolves_the_config_otherwise_refuses_its_job(tmp_path: Path) -> None:
    from ctxrl.errors import CtxrlError
    from ctxrl.resolution import check_job_resolution

    plan = _plan(tmp_path)
    assert plan.resolved is not None
    job = {"resolved": json.loads(json.dumps(plan.resolved))}
    check_job_resolution(job, plan)  # the same install: nothing to say
    job["resolved"]["hyperparameters"]["gamma"] = 0.95
    with pytest.raises(CtxrlError, match=r"hyperparameters\.gamma: 0\.95 there, 0\.99 now"):
        check_job_resolution(job, plan)


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy" / run_dir.name
    shutil.copytree(run_dir, copy)
    return copy


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished full sweep (two pole lengths, one seed); tests work on copies of it."""
    return _sweep(tmp_path_factory.mktemp("finished")).run_dir


def _cli(*args: str) -> Any:
    """``ctxrl ARGS`` in this process: the click result (exit_code, stdout, stderr)."""
    from click.testing import CliRunner

    from ctxrl.cli import cli

    return CliRunner().invoke(cli, list(args))


# ----------------------------------------------------------- never replace results with nothing
def test_report_refuses_a_directory_without_a_store(finished: Path, tmp_path: Path) -> None:
    """A folder with only a copied plan.yaml (or an empty store) is refused, naming what is
    missing; no store is created and the summary and figures there are left alone."""
    folder = tmp_path / "copied"
    (folder / "figures").mkdir(parents=True)
    shutil.copy(finished / "plan.yaml", folder)
    (folder / "summary.md").write_text("results of an earlier machine\n")
    (folder / "figures" / "matrix.png").write_bytes(b"png")
    result = _cli("report", str(folder))
    assert result.exit_code == 2
    assert f"{folder} has no store.sqlite: no run was ever stored there" in result.stderr
    assert not (folder / "store.sqlite").exists() and not (folder / "exports").exists()
    assert (folder / "summary.md").read_text() == "results of an earlier machine\n"
    assert (folder / "figures" / "matrix.png").read_bytes() == b"png"
    selected = _cli("select", "--matrix", str(folder), "--strategy", "greedy", "-k", "1")
    assert selected.exit_code == 2 and "has no store.sqlite" in selected.stderr
    assert not (folder / "store.sqlite").exists()
    from ctxrl.store import Store

    Store(folder / "store.sqlite").close()  # a store in which nothing was ever recorded
    empty = _cli("report", str(folder))
    assert empty.exit_code == 2 and "its store holds no run yet" in empty.stderr
    assert (folder / "summary.md").read_text() == "results of an earlier machine\n"
    # a run directory whose store went missing (its policies are there) is not "never stored"
    run_dir = _copy(finished, tmp_path)
    (run_dir / "store.sqlite").unlink()
    moved = _cli("report", str(run_dir))
    assert moved.exit_code == 2
    assert "though its artifacts/ holds 2 saved policies" in " ".join(moved.stderr.split())
    (run_dir / "store.sqlite").write_bytes(b"")  # a store emptied: said so, not "not a store"
    emptied = _cli("report", str(run_dir))
    assert emptied.exit_code == 2
    assert "store.sqlite is empty (no tables)" in " ".join(emptied.stderr.split())
    # a store of no run beside saved policies (copied without its -wal file, which held the
    # runs): not "the sweep stopped before any run finished"
    (run_dir / "store.sqlite").unlink()
    Store(run_dir / "store.sqlite").close()
    summary = (run_dir / "summary.md").read_text()
    lost = _cli("report", str(run_dir))
    said = " ".join(lost.stderr.split())
    assert lost.exit_code == 2 and "stopped before" not in said
    assert "its store holds no run, though its artifacts/ holds 2 saved policies" in said
    assert "store.sqlite-wal" in said and (run_dir / "summary.md").read_text() == summary
    # the same beside a checkpoint: a sweep killed while storing its first group, which a
    # rerun resumes (the policies are saved before the runs are committed)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    (run_dir / "checkpoints" / "batch-0.safetensors").write_bytes(b"checkpoint")
    killed = _cli("report", str(run_dir))
    said = " ".join(killed.stderr.split())
    assert killed.exit_code == 2 and "stopped while storing its first group" in said
    assert "rerun `ctxrl sweep` on its config to resume it" in said
    assert "emptied or replaced" not in said


def test_report_json_prints_the_summary_alone_on_stdout(finished: Path, tmp_path: Path) -> None:
    """``ctxrl report --json``: one JSON object on stdout (the run directory, the exports
    written and their summary.json), for a script; ``--out`` names its own exports."""
    run_dir = _copy(finished, tmp_path)
    result = _cli("report", str(run_dir), "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["run_dir"] == str(run_dir.resolve())
    assert printed["exports"] == str((run_dir / "exports").resolve())
    assert printed["summary"] == json.loads((run_dir / "exports" / "summary.json").read_text())
    elsewhere = _cli("report", str(run_dir), "--json", "--out", str(tmp_path / "elsewhere"))
    assert elsewhere.exit_code == 0, elsewhere.output
    assert json.loads(elsewhere.stdout)["exports"] == str(
        (tmp_path / "elsewhere" / "exports").resolve()
    )


def test_report_on_the_output_dir_names_the_run_directories_in_it(finished: Path) -> None:
    """``ctxrl report runs`` (the output_dir, not a run directory in it) says which run
    directories it holds."""
    result = _cli("report", str(finished.parent))
    assert result.exit_code == 2
    assert f"{finished.parent} is not a run directory (no plan.yaml); it holds the run " in (
        result.stderr
    )
    assert finished.name in result.stderr


def test_report_on_a_run_directory_that_lost_its_plan_says_how_to_restore_it(
    finished: Path, tmp_path: Path
) -> None:
    run_dir = _copy(finished, tmp_path)
    (run_dir / "plan.yaml").unlink()
    result = _cli("report", str(run_dir))
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert "it holds a results store, so its plan.yaml was lost: rerun `ctxrl sweep`" in message


def test_report_removes_figures_it_no_longer_draws(finished: Path, tmp_path: Path) -> None:
    """Once a run is missing, the selection curves cannot be drawn: their old figures go too,
    rather than stay beside a summary that no longer shows them."""
    run_dir = _copy(finished, tmp_path)
    assert (run_dir / "figures" / "selection.png").is_file()
    with sqlite3.connect(run_dir / "store.sqlite") as db:
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("DELETE FROM runs WHERE run_id = (SELECT MAX(run_id) FROM runs)")
    result = _cli("report", str(run_dir))
    assert result.exit_code == 0, result.stderr
    assert (run_dir / "figures" / "matrix.png").is_file()
    assert not (run_dir / "figures" / "selection.png").exists()
    assert not (run_dir / "figures" / "selection.svg").exists()


def test_report_out_refuses_another_run_s_directory(finished: Path, tmp_path: Path) -> None:
    """``--out`` into another run's directory replaced its summary and left a mix of both
    runs' files; now only a new or empty directory, or an earlier report of the same run,
    is written."""
    victim = _copy(finished, tmp_path / "victim")
    before = (victim / "summary.md").read_text()
    refused = _cli("report", str(finished), "--out", str(victim))
    assert refused.exit_code == 2
    assert f"--out: {victim} is not empty and holds no earlier report of {finished}" in (
        " ".join(refused.stderr.split())
    )
    assert (victim / "summary.md").read_text() == before
    elsewhere = tmp_path / "elsewhere"
    for _ in range(2):  # a report again into the same place is fine
        written = _cli("report", str(finished), "--out", str(elsewhere))
        assert written.exit_code == 0, written.stderr
    assert (elsewhere / "summary.md").is_file()
    other = _copy(finished, tmp_path / "other")
    refused = _cli("report", str(other), "--out", str(elsewhere))
    assert refused.exit_code == 2 and f"(it reports {finished.resolve()})" in " ".join(
        refused.stderr.split()
    )


def test_a_diagnostic_that_was_never_finite_is_null_in_strict_json(
    finished: Path, tmp_path: Path
) -> None:
    """PPO's explained variance is NaN when the returns are constant (stored as NULL): the
    summary wrote a bare NaN, which strict JSON parsers refuse."""
    run_dir = _copy(finished, tmp_path)
    with sqlite3.connect(run_dir / "store.sqlite") as db:
        db.execute("UPDATE diagnostics SET value = NULL")
        (recorded,) = db.execute("SELECT COUNT(DISTINCT name) FROM diagnostics").fetchone()
    assert recorded > 0
    result = _cli("report", str(run_dir))
    assert result.exit_code == 0, result.stderr

    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON token {constant}")

    text = (run_dir / "exports" / "summary.json").read_text()
    diagnostics = json.loads(text, parse_constant=refuse)["diagnostics"]
    assert all(row["first"] is None and row["last"] is None for row in diagnostics.values())
    assert "| n/a | n/a |" in (run_dir / "summary.md").read_text()


def test_reading_commands_open_the_store_read_only(finished: Path, tmp_path: Path) -> None:
    """``select`` and ``report`` on a run directory nobody may write: select reads it, report
    says where it cannot write and writes elsewhere with --out."""
    run_dir = _copy(finished, tmp_path)
    for path in [run_dir, *run_dir.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        selected = _read_only_ctxrl(
            "select", "--matrix", str(run_dir), "--strategy", "greedy", "-k", "2", "--json"
        )
        assert selected.returncode == 0, selected.stderr
        assert json.loads(selected.stdout)["n"] == 2
        refused = _read_only_ctxrl("report", str(run_dir))
        assert refused.returncode == 2 and "readonly database" not in refused.stderr
        assert f"cannot write the report into {run_dir}" in refused.stderr
        assert "pass --out DIR" in refused.stderr
        elsewhere = tmp_path / "report"
        elsewhere.mkdir()
        elsewhere.chmod(0o777)
        written = _read_only_ctxrl("report", str(run_dir), "--out", str(elsewhere))
        assert written.returncode == 0, written.stderr
        assert (elsewhere / "summary.md").is_file()
        assert (elsewhere / "exports" / "matrix_seed0.csv").is_file()
    finally:
        for path in [run_dir, *run_dir.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)


def _read_only_ctxrl(*args: str) -> subprocess.CompletedProcess[str]:
    """``ctxrl ARGS`` in a process that file permissions apply to: as root, one without the
    capabilities that override them (setpriv)."""
    command = without_file_privileges([sys.executable, "-m", "ctxrl.cli", *args])
    environ = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200")
    return subprocess.run(command, capture_output=True, text=True, env=environ, timeout=600)


def test_a_plan_yaml_without_its_config_is_named(finished: Path, tmp_path: Path) -> None:
    run_dir = _copy(finished, tmp_path)
    stored = yaml.safe_load((run_dir / "plan.yaml").read_text())
    del stored["config"]
    (run_dir / "plan.yaml").write_text(yaml.safe_dump(stored))
    for args in (
        ["report", str(run_dir)],
        ["select", "--matrix", str(run_dir), "--strategy", "greedy", "-k", "1"],
    ):
        result = _cli(*args)
        assert result.exit_code == 2, result.output
        assert f"{run_dir / 'plan.yaml'} has no `config` mapping" in result.stderr
    from ctxrl.errors import CtxrlError

    plan = _plan(tmp_path)
    located = dataclasses.replace(plan, location=run_dir)
    with pytest.raises(CtxrlError, match="has no `config` mapping"):
        run_sweep(located)


def _fail_run(run_dir: Path, error: str) -> str:
    """Mark the last run of ``run_dir``'s store as failed with ``error``; return its id."""
    with sqlite3.connect(run_dir / "store.sqlite") as db:
        db.execute("PRAGMA foreign_keys=ON")
        (run_id,) = db.execute("SELECT MAX(run_id) FROM runs").fetchone()
        db.execute("DELETE FROM evaluations WHERE run_id = ?", (run_id,))
        db.execute(
            "UPDATE runs SET status = 'failed', artifact = NULL, error = ? WHERE run_id = ?",
            (error, run_id),
        )
    return str(run_id)


TRACEBACK = """Traceback (most recent call last):
  File "trainer.py", line 1, in train
    raise RuntimeError("diverged at length=1.0")
RuntimeError: diverged at length=1.0
"""


def test_failed_runs_are_shown_as_failed_and_curves_withheld(
    finished: Path, tmp_path: Path
) -> None:
    """A full sweep with a failed run: the summary says which run failed and why, and the
    selection curves, which need every row, are withheld with the reason (not drawn as 0)."""
    run_dir = _copy(finished, tmp_path)
    run_id = _fail_run(run_dir, TRACEBACK)
    result = _cli("report", str(run_dir))
    assert result.exit_code == 0, result.stderr
    summary = (run_dir / "summary.md").read_text()
    assert "1 of 2 runs failed" in summary
    assert f"`{run_id}` (length=1): RuntimeError: diverged at length=1.0" in summary
    assert "G_k along" not in summary and "0.000, 0.000" not in summary
    assert "Selection curves withheld: 1 of 2 source rows are missing" in summary
    data = json.loads((run_dir / "exports" / "summary.json").read_text())
    assert data["failed"] == [
        {"run_id": run_id, "source": "length=1", "error": "RuntimeError: diverged at length=1.0"}
    ]
    # the same keys as a complete sweep's file: what does not apply is null, not missing
    from ctxrl.summary import SUMMARY_KEYS

    complete = json.loads((finished / "exports" / "summary.json").read_text())
    assert set(data) == set(complete) == set(SUMMARY_KEYS)
    assert data["independent"] is None and isinstance(complete["independent"], float)
    assert data["withheld"] is not None and complete["withheld"] is None


def test_a_select_sweep_with_a_failed_source_draws_g_k_over_what_finished(
    tmp_path: Path,
) -> None:
    outcome = _sweep(tmp_path, mode="select", strategy={"name": "greedy", "budget": 2})
    order = json.loads((outcome.run_dir / "exports" / "summary.json").read_text())["order"]
    run_id = _fail_run(outcome.run_dir, "killed by signal 9 (SIGKILL)")
    (failed_source,) = [i for i in (0, 1) if _source_id(outcome, i) == run_id]
    result = _cli("report", str(outcome.run_dir))
    assert result.exit_code == 0, result.stderr
    data = json.loads((outcome.run_dir / "exports" / "summary.json").read_text())
    assert data["order"] == order and len(data["curve"]) == 1
    assert data["curve_left_out"] == [failed_source]
    summary = (outcome.run_dir / "summary.md").read_text()
    assert "1 of 2 runs failed" in summary and "killed by signal 9 (SIGKILL)" in summary
    assert "(failed sources left out: length = " in summary
    # each G_k beside the source whose row it adds, the failed one in none of them
    (trained,) = [i for i in order if i != failed_source]
    length = data["context_values"][trained][0]
    assert f"G_k along the trained order: length = {length:.3g}: {data['curve'][0]:.3f} (" in (
        summary
    )
    steps = json.loads((outcome.run_dir / "exports" / "selection.json").read_text())
    assert [s["failed"] for s in steps] == [[i] if i == failed_source else [] for i in order]


def _source_id(outcome: SweepOutcome, index: int) -> str:
    from ctxrl.context import Task

    plan = _plan(outcome.run_dir.parents[1])
    return f"{Task(plan.env.name, plan.grid.contexts[index]).id}-s0"


# --------------------------------------------------------------- one sweep per run directory
HOLDER = """
import sys, time
from pathlib import Path
from ctxrl.run_dirs import run_dir_lock

with run_dir_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _hold_lock(run_dir: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process holding ``run_dir``'s lock for ``seconds``."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_dir), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    return holder


def test_a_second_sweep_on_a_run_directory_is_refused_or_waits(tmp_path: Path) -> None:
    """Two sweeps never train into one run directory: the second names the process holding
    it and stops, or waits when asked; the lock goes with a killed holder."""
    from ctxrl.errors import CtxrlError

    plan = _plan(tmp_path)
    plan.run_dir.mkdir(parents=True)
    holder = _hold_lock(plan.run_dir, 600)
    try:
        with pytest.raises(CtxrlError, match=rf"in use by another ctxrl sweep \(pid {holder.pid} "):
            run_sweep(plan)
        assert not (plan.run_dir / "store.sqlite").exists()
    finally:
        holder.kill()  # SIGKILL: the OS releases its lock
        holder.wait()
    assert run_sweep(plan).trained == 2
    holder = _hold_lock(plan.run_dir, 600)  # a report meanwhile says what it shows
    try:
        reported = _cli("report", str(plan.run_dir))
        assert reported.exit_code == 0, reported.output
        printed_report = " ".join(reported.stderr.split())
        assert "a sweep is running in" in printed_report and f"pid {holder.pid}" in printed_report
    finally:
        holder.kill()
        holder.wait()
    quiet = _cli("report", str(plan.run_dir))
    assert "a sweep is running" not in quiet.stderr
    holder = _hold_lock(plan.run_dir, 2.0)
    printed = io.StringIO()
    outcome = run_sweep(plan, wait=True, console=Console(file=printed, width=200))
    assert holder.wait() == 0 and outcome.skipped == 2
    assert f"waiting for pid {holder.pid} " in printed.getvalue()


# ------------------------------------------------------------------- errors, not tracebacks
def _config_file(plan: SweepPlan, tmp_path: Path, output_dir: Path) -> Path:
    path = tmp_path / "sweep.yaml"
    data = plan.config.model_dump(mode="json")
    path.write_text(yaml.safe_dump({**data, "output_dir": str(output_dir)}))
    return path


def test_a_corrupt_store_is_named_by_sweep_report_and_select(
    finished: Path, tmp_path: Path
) -> None:
    run_dir = _copy(finished, tmp_path)
    with (run_dir / "store.sqlite").open("r+b") as handle:
        handle.seek(4096)  # the second page: SQLite opens the file, then reads garbage
        handle.write(bytes(range(256)) * 8)
    config = _config_file(_plan(tmp_path), tmp_path, run_dir.parent)
    for args in (
        ["sweep", str(config)],
        ["report", str(run_dir)],
        ["select", "--matrix", str(run_dir), "--strategy", "greedy", "-k", "1"],
    ):
        result = _cli(*args)
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), args
        message = result.stderr
        assert f"{run_dir / 'store.sqlite'} is damaged (" in message, message
        assert "move it aside" in message and "Traceback" not in message


def test_an_output_dir_that_cannot_be_created_is_named(tmp_path: Path) -> None:
    a_file = tmp_path / "not-a-directory"
    a_file.write_text("")
    dry = _cli("sweep", "--dry-run", "--set", f"output_dir={a_file / 'runs'}")
    assert dry.exit_code == 2, dry.output
    assert f"output_dir: {a_file} is a file, not a directory" in dry.stderr
    from ctxrl.errors import CtxrlError

    with pytest.raises(CtxrlError, match="output_dir: cannot create the run directory"):
        _sweep(tmp_path, output_dir=str(a_file / "runs"))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        denied = _read_only_ctxrl("sweep", "--dry-run", "--set", f"output_dir={locked}/runs")
        assert denied.returncode == 2, denied.stderr
        assert f"output_dir: cannot create directories in {locked}" in denied.stderr
    finally:
        locked.chmod(0o755)


def test_select_refuses_a_repeat_count_below_one(finished: Path) -> None:
    for repeats in ("0", "-3"):
        args = ["select", "--matrix", str(finished), "--strategy", "random", "-k", "1"]
        result = _cli(*args, "--repeats", repeats)
        assert result.exit_code == 2 and "Invalid value for '--repeats'" in result.stderr


def test_select_says_how_many_entries_it_clipped_or_refuses_with_strict(
    tmp_path: Path,
) -> None:
    path = tmp_path / "matrix.csv"
    path.write_text("400,inf,100\n300,450,-20\n10,20,480\n")
    args = ["select", "--matrix", str(path), "--strategy", "greedy", "-k", "2", "--env", "CartPole"]
    warned = _cli(*args)
    assert warned.exit_code == 0, warned.output
    assert (
        "2 of 9 matrix entries lie outside the normalisation bounds [0.0, 500.0] "
        "(1 of them infinite) and were clipped to them" in warned.stderr
    )
    strict = _cli(*args, "--strict")
    assert strict.exit_code == 2
    assert "2 of 9 matrix entries lie outside the normalisation bounds" in strict.stderr


def _truncate_artifact(run_dir: Path) -> Path:
    """Cut the first policy file of ``run_dir`` to 50 bytes (a copy stopped short); return it."""
    weights = sorted((run_dir / "artifacts").glob("*.safetensors"))[0]
    weights.write_bytes(weights.read_bytes()[:50])
    return weights


def test_a_truncated_policy_is_named_when_loaded(finished: Path, tmp_path: Path) -> None:
    from ctxrl.errors import CtxrlError
    from ctxrl.results import load_policies

    run_dir = _copy(finished, tmp_path)
    weights = _truncate_artifact(run_dir)
    with pytest.raises(CtxrlError, match=rf"artifact file {weights} is damaged \(.*header"):
        load_policies(run_dir)


def test_a_rerun_trains_again_the_runs_whose_policy_is_damaged(
    finished: Path, tmp_path: Path
) -> None:
    run_dir = _copy(finished, tmp_path)
    weights = _truncate_artifact(run_dir)
    printed = io.StringIO()
    plan = _plan(tmp_path, output_dir=str(run_dir.parent))
    outcome = run_sweep(plan, console=Console(file=printed, width=300))
    assert outcome.run_dir == run_dir and outcome.trained == 1 and outcome.skipped == 1
    assert f"{weights} is damaged (" in printed.getvalue()
    assert f"run {weights.stem} will be trained again" in printed.getvalue()
    from ctxrl.results import load_policies

    assert len(load_policies(run_dir)) == 2


def test_a_failed_retrain_of_a_damaged_policy_keeps_the_stored_results(
    finished: Path, tmp_path: Path
) -> None:
    """Batched path: a rerun retrains a run whose policy is damaged; when saving the new policy
    failed too (a full disk, here a folder where its file is written), the run's finished row
    was replaced by a failed one and its evaluations deleted with it. They are kept, and the
    failure is said; a later rerun tries again."""
    from ctxrl.store import Store

    run_dir = _copy(finished, tmp_path)
    weights = _truncate_artifact(run_dir)
    with Store(run_dir / "store.sqlite") as store:
        before = store.returns(weights.stem)
    (weights.parent / f".{weights.name}.partial").mkdir()  # the new file cannot be written
    printed = io.StringIO()
    plan = _plan(tmp_path, output_dir=str(run_dir.parent))
    outcome = run_sweep(plan, console=Console(file=printed, width=300))
    # counted as kept, not as trained (it counted as trained: "trained 1" for no new result)
    assert outcome.kept == [weights.stem] and outcome.trained == 0 and not outcome.failed
    assert (
        f"run {weights.stem}: retraining it failed (storing the trained agent failed: "
        "IsADirectoryError" in printed.getvalue()
    )
    assert "its stored results from an earlier run are kept" in " ".join(printed.getvalue().split())
    with Store(run_dir / "store.sqlite") as store:
        kept = store.run(weights.stem)
        assert kept is not None and kept.status == "finished"
        assert store.returns(weights.stem) == before and before


def test_a_missing_entry_is_reported_as_one(finished: Path, tmp_path: Path) -> None:
    """One evaluation missing from a row that is there: the summary said "0 of 2 source
    rows are missing" as its reason to replay no strategy."""
    run_dir = _copy(finished, tmp_path)
    with sqlite3.connect(run_dir / "store.sqlite") as db:
        run, target = db.execute("SELECT run_id, target_task FROM evaluations LIMIT 1").fetchone()
        db.execute("DELETE FROM evaluations WHERE run_id = ? AND target_task = ?", (run, target))
    result = _cli("report", str(run_dir))
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "1 entry of the observed rows is missing (a transfer that diverged there, or an" in text
    assert "evaluation not stored: length = " in text
    assert "0 of 2 source rows" not in text


def test_a_sweep_whose_retrain_failed_exits_1(finished: Path, tmp_path: Path) -> None:
    """The kept run's policy file is still damaged: a scheduler must not read the sweep as
    whole (it exited 0 with only a yellow line saying so)."""
    run_dir = _copy(finished, tmp_path)
    weights = _truncate_artifact(run_dir)
    (weights.parent / f".{weights.name}.partial").mkdir()  # the new file cannot be written
    config = _config_file(_plan(tmp_path), tmp_path, run_dir.parent)
    result = _cli("sweep", str(config))
    assert result.exit_code == 1, result.output
    printed = " ".join(result.stderr.split())
    assert "kept 1 whose retrain failed (their earlier results stand)" in printed
    assert f"results: {run_dir}" in result.stdout  # the summary is still printed


def test_a_failed_retrain_of_the_multitask_policy_keeps_its_stored_results(
    tmp_path: Path,
) -> None:
    """The multi-task baseline's damaged policy is retrained; when that training failed (its
    checkpoint could not be written), every seed was recorded failed over its finished row,
    and the Multi-task line left the summary."""
    from ctxrl.store import Store

    run_dir = _sweep(tmp_path, multitask=True).run_dir
    weights = run_dir / "artifacts" / "multitask-s0.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    key = hashlib.sha256(b"multitask|[0]").hexdigest()[:12]
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    (run_dir / "checkpoints" / f".multitask-{key}.safetensors.partial").mkdir()
    plan = _plan(tmp_path, multitask=True)
    where = {"env": "CartPole", "targets": plan.grid.contexts, "seeds": [0]}
    with Store(run_dir / "store.sqlite") as store:
        before = store.multitask_returns(**where)
    printed = io.StringIO()
    outcome = run_sweep(plan, console=Console(file=printed, width=300))
    assert outcome.kept == ["multitask-s0"] and not outcome.failed
    assert "multi-task training failed" in printed.getvalue()
    assert "multitask-s0: its stored results are kept" in printed.getvalue()
    with Store(run_dir / "store.sqlite") as store:
        kept = store.run("multitask-s0")
        assert kept is not None and kept.status == "finished"
        assert (
            np.array_equal(store.multitask_returns(**where), before) and np.isfinite(before).all()
        )
    assert "Multi-task" in (run_dir / "summary.md").read_text()


def test_a_policy_with_a_changed_byte_is_named_and_trained_again(
    finished: Path, tmp_path: Path
) -> None:
    """safetensors checks a file's header and length, not its data: a byte changed inside a
    weight was loaded (and the run kept) as if whole; the digest saved in the header says it
    is damaged, as a cut file is."""
    from ctxrl.errors import CtxrlError
    from ctxrl.results import load_policies

    run_dir = _copy(finished, tmp_path)
    weights = sorted((run_dir / "artifacts").glob("*.safetensors"))[0]
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x10  # a bit of the last tensor's data
    weights.write_bytes(bytes(data))
    with pytest.raises(CtxrlError, match=rf"{weights} is damaged \(its tensor data does not"):
        load_policies(run_dir)
    printed = io.StringIO()
    outcome = run_sweep(
        _plan(tmp_path, output_dir=str(run_dir.parent)), console=Console(file=printed, width=300)
    )
    assert outcome.trained == 1 and outcome.skipped == 1
    assert f"run {weights.stem} will be trained again" in printed.getvalue()
    assert len(load_policies(run_dir)) == 2


def test_a_run_directory_is_read_without_the_executor_that_ran_it(
    finished: Path, tmp_path: Path
) -> None:
    """A run directory copied off a Ray cluster names an executor this machine may not have:
    reading it (report, select, policies) needs none."""
    from ctxrl.results import load_policies

    run_dir = _copy(finished, tmp_path)
    plan_file = run_dir / "plan.yaml"
    plan_file.write_text(plan_file.read_text().replace("name: local", "name: elsewhere"))
    assert "name: elsewhere" in plan_file.read_text()
    assert _cli("report", str(run_dir)).exit_code == 0
    selected = _cli("select", "--matrix", str(run_dir), "--strategy", "greedy", "-k", "1")
    assert selected.exit_code == 0, selected.output
    assert len(load_policies(run_dir).policies) == 2


def test_report_names_damaged_policies(finished: Path, tmp_path: Path) -> None:
    run_dir = _copy(finished, tmp_path)
    weights = _truncate_artifact(run_dir)
    result = _cli("report", str(run_dir))
    assert result.exit_code == 0, result.output
    assert f"1 saved policy is damaged: {weights}" in " ".join(result.stderr.split())
    summary = (run_dir / "summary.md").read_text()
    assert f"- `{weights.stem}`: {weights} is damaged (" in summary


def test_report_names_source_rows_that_lack_a_seeds_run(tmp_path: Path) -> None:
    """A two-seed sweep killed before one (source, seed) run was stored: the report says which
    row averages fewer seeds and promises no interval over seeds it does not give."""
    from ctxrl.context import Task
    from ctxrl.sweep import run_id

    outcome = _sweep(tmp_path, seeds=[0, 1])
    plan = _plan(tmp_path, seeds=[0, 1])
    complete = _cli("report", str(outcome.run_dir))
    assert complete.exit_code == 0, complete.output
    assert "lack some seeds" not in (outcome.run_dir / "summary.md").read_text()
    gone = run_id(Task(plan.env.name, plan.grid.contexts[1]), 1)
    with sqlite3.connect(outcome.run_dir / "store.sqlite") as db:
        for table in ("evaluations", "curves", "diagnostics", "runs"):
            db.execute(f"DELETE FROM {table} WHERE run_id = ?", (gone,))
    assert _cli("report", str(outcome.run_dir)).exit_code == 0
    summary = (outcome.run_dir / "summary.md").read_text()
    assert "**1 source row(s) lack some seeds' runs**" in summary
    assert "- length=1: seed(s) [1]" in summary
    assert "| strategy | mean G_k | G_1 |" in summary  # no "+- 95% CI over seeds"


def test_a_damaged_checkpoint_is_set_aside_and_the_group_trained_from_the_start(
    tmp_path: Path,
) -> None:
    plan = _plan(tmp_path)
    checkpoint = _group_checkpoint(plan).with_suffix(".safetensors")
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")  # cut short mid-header
    printed = io.StringIO()
    outcome = run_sweep(plan, console=Console(file=printed, width=300))
    assert outcome.trained == 2 and not outcome.failed
    assert f"{checkpoint} is damaged (" in printed.getvalue()
    assert "training the group from the start" in printed.getvalue()


def test_a_checkpoint_that_cannot_be_restored_is_set_aside_and_the_group_trained_again(
    tmp_path: Path,
) -> None:
    """A whole checkpoint that does not fit the trainer (here one without its observations,
    as another version might write): the group failed on every rerun with a bare
    ``KeyError: 'obs'``; now the checkpoint is named, set aside and the group trained."""
    from ctxrl.artifacts import load_artifact, save_artifact

    plan = _plan(tmp_path, train_steps=2048)
    checkpoint = _train_into_checkpoint(plan, 2048)
    tensors, meta = load_artifact(checkpoint)
    del tensors["obs"]
    save_artifact(checkpoint, tensors, meta)
    printed = io.StringIO()
    outcome = run_sweep(plan, console=Console(file=printed, width=300))
    assert outcome.trained == 2 and not outcome.failed
    text = " ".join(printed.getvalue().split())
    assert f"checkpoint {checkpoint} cannot be restored (KeyError: 'obs')" in text
    assert "training the group from the start" in text


def test_running_out_of_memory_while_restoring_keeps_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of memory is not the checkpoint's fault: the error is raised and the checkpoint
    kept for the next try (it was set aside as "cannot be restored" and the group retrained)."""
    import torch

    import ctxrl_plugins.training.trainer as trainer_module

    plan = _plan(tmp_path, train_steps=2048)
    checkpoint = _train_into_checkpoint(plan, 2048)

    def out_of_memory(*args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer_module, "load_artifact", out_of_memory)
    outcome = run_sweep(plan, console=Console(file=io.StringIO()))
    assert outcome.failed and checkpoint.with_suffix(".safetensors").exists()
    monkeypatch.undo()
    printed = io.StringIO()
    again = run_sweep(plan, console=Console(file=printed, width=300))
    assert again.trained == 2 and not again.failed
    assert "resumed 2 agents from their final state" in printed.getvalue()


# ----------------------------------------------------------------------- say what happened
def test_a_resumed_batched_group_says_from_which_iteration(tmp_path: Path) -> None:
    """A group killed after its first checkpoint: the rerun says it resumed the group's
    agents from that iteration, not "resumed past 0"."""
    plan = _plan(tmp_path, train_steps=8192)  # 16 PPO iterations of 512 env steps per agent

    class Killed(Exception):
        pass

    def kill_in_iteration_nine(done: int, total: int) -> None:
        if done == 9:
            raise Killed

    with pytest.raises(Killed):  # what a sweep killed after its first checkpoint leaves behind
        _train_into_checkpoint(
            plan,
            8192,
            checkpoint_every=4096,  # the last checkpoint: after iteration 8
            progress=kill_in_iteration_nine,
        )
    config = _config_file(plan, tmp_path, plan.config.output_dir)
    result = _cli("sweep", str(config))
    assert result.exit_code == 0, result.output
    printed = " ".join(result.stderr.split())
    assert "resumed 2 agents from iteration 8 of 16" in printed
    assert "trained 2 (2 resumed from a checkpoint), already finished 0, failed 0" in printed
    again = _cli("sweep", str(config))
    assert "trained 0, already finished 2, failed 0" in again.stderr


def test_a_group_killed_after_training_resumes_from_its_final_state(tmp_path: Path) -> None:
    """A group killed while it evaluates (or transfers) its trained agents: the checkpoint of
    the last iteration holds them, so the rerun trains nothing and stores the same matrix as
    a sweep that was never killed (before, it retrained from the last periodic checkpoint)."""
    from ctxrl.context import Task
    from ctxrl.store import Store
    from ctxrl.summary import STORE_FILE
    from ctxrl.sweep import run_id

    plan = _plan(tmp_path / "killed", train_steps=2048)
    ids = [run_id(Task(plan.env.name, c), 0) for c in plan.grid.contexts]
    # the training done, then the kill: before anything was stored
    checkpoint = _train_into_checkpoint(plan, 2048, checkpoint_every=1_000_000)  # final only
    assert checkpoint.with_suffix(".safetensors").exists()
    printed = io.StringIO()
    outcome = run_sweep(plan, console=Console(file=printed, width=300))
    assert outcome.trained == 2 and not outcome.failed
    assert "resumed 2 agents from their final state (iteration 4, training done)" in (
        printed.getvalue()
    )
    assert not list((plan.run_dir / "checkpoints").iterdir())
    fresh = run_sweep(
        _plan(tmp_path / "fresh", train_steps=2048), console=Console(file=io.StringIO())
    )

    def returns(run_dir: Path) -> list[dict[str, list[float]]]:
        store = Store(run_dir / STORE_FILE)
        try:
            return [store.returns(i) for i in ids]
        finally:
            store.close()

    assert returns(outcome.run_dir) == returns(fresh.run_dir)


def test_a_group_killed_while_storing_stores_none_and_resumes_from_its_final_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill after the first of a group's runs was written: the group's runs are one
    transaction, so none is stored, and the rerun stores every run, each with its training
    log, from the final checkpoint without training (stored one by one, the first was kept
    and the checkpoint, named by the whole group, no longer matched the rest: they trained
    again from the start; and a run could be finished without its log)."""
    from ctxrl.store import Store
    from ctxrl.summary import STORE_FILE

    class Killed(BaseException):
        pass

    real = Store.record_run

    def killed_after_the_first(self: Store, run: Any, evaluations: Any = ()) -> None:
        real(self, run, evaluations)
        raise Killed

    plan = _plan(tmp_path, train_steps=2048)
    monkeypatch.setattr(Store, "record_run", killed_after_the_first)
    with pytest.raises(Killed):
        run_sweep(plan, console=Console(file=io.StringIO()))
    monkeypatch.undo()
    with Store(plan.run_dir / STORE_FILE) as store:
        assert store.runs() == []
    printed = io.StringIO()
    outcome = run_sweep(plan, console=Console(file=printed, width=300))
    assert outcome.trained == 2 and not outcome.failed
    assert "resumed 2 agents from their final state" in printed.getvalue()
    # the policies were saved and no run committed: nothing was lost; said so, not that
    # every run trains again
    text = " ".join(printed.getvalue().split())
    assert "groups killed while storing resume from checkpoints/" in text
    assert "every run trains again" not in text
    with Store(plan.run_dir / STORE_FILE) as store:
        logged = store.diagnostics()["approx_kl"]
        assert sorted(logged) == sorted(r.run_id for r in store.runs())
        assert all(len(points) == 4 for points in logged.values())  # one per iteration


def test_nothing_a_kill_left_behind_outlives_a_finished_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after the group's runs were stored and before its checkpoint was removed, the
    rerun found nothing to train and left the checkpoint (and its derived files) for good; a
    report killed while staging its exports left the staging folder."""
    import ctxrl.batched_programs as batched_programs

    class Killed(BaseException):
        pass

    def killed(*args: Any) -> None:
        raise Killed

    plan = _plan(tmp_path, transfer={"name": "fine-tune", "options": {"steps": 512}})
    monkeypatch.setattr(batched_programs, "remove_checkpoint", killed)
    with pytest.raises(Killed):
        run_sweep(plan, console=Console(file=io.StringIO()))
    monkeypatch.undo()
    folder = plan.run_dir / "checkpoints"
    assert any(folder.glob("*-transfer.safetensors"))
    (folder / ".batch-0123.json.partial").write_text("{")  # a save a kill cut short
    exited = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    host = socket.gethostname()
    stale = plan.run_dir / ".exports-killed"  # an earlier version's, two hours old
    dead = plan.run_dir / f".exports-{int(exited.stdout)}@{host}.k1ll3d"  # its writer is gone
    live = plan.run_dir / f".exports-{os.getpid()}@{host}.now"  # another report's, staging
    elsewhere = plan.run_dir / f".exports-{int(exited.stdout)}@not-{host}.x"  # another host's
    reused = plan.run_dir / f".exports-{os.getpid()}@{host}.old"  # its process id taken since
    for staging in (stale, dead, live, elsewhere, reused):
        staging.mkdir()
        (staging / "runs.csv").write_text("run_id\n")
    two_hours_ago = time.time() - 7200
    for old in (stale, reused):
        os.utime(old, (two_hours_ago, two_hours_ago))
    outcome = run_sweep(plan, console=Console(file=io.StringIO()))
    assert outcome.skipped == 2 and not outcome.failed
    assert list(folder.iterdir()) == []
    assert not stale.exists() and not dead.exists() and not reused.exists()
    assert live.exists() and elsewhere.exists()  # staging now, here and on another host


def test_the_multitask_baseline_resumes_from_its_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The multi-task baseline checkpoints itself as source groups do (it trained from the
    start after every kill): killed before its agents were stored, the rerun continues from
    their final state and stores the same returns as a sweep never killed."""
    import ctxrl.batched_programs as batched_programs
    from ctxrl.store import Store
    from ctxrl.summary import STORE_FILE

    class Killed(BaseException):
        pass

    real = batched_programs.store_trained

    def killed_at_the_multitask_runs(*args: Any) -> Any:
        records = args[4]
        if records[0].kind == "multitask":
            raise Killed
        return real(*args)

    plan = _plan(tmp_path / "killed", train_steps=2048, multitask=True)
    fresh = run_sweep(_plan(tmp_path / "fresh", train_steps=2048, multitask=True))
    monkeypatch.setattr(batched_programs, "store_trained", killed_at_the_multitask_runs)
    with pytest.raises(Killed):
        run_sweep(plan, console=Console(file=io.StringIO()))
    monkeypatch.undo()
    printed = io.StringIO()
    outcome = run_sweep(plan, console=Console(file=printed, width=300))
    assert not outcome.failed
    assert "resumed 1 multi-task agent from their final state" in printed.getvalue()
    assert not list((plan.run_dir / "checkpoints").iterdir())
    with Store(plan.run_dir / STORE_FILE) as killed, Store(fresh.run_dir / STORE_FILE) as never:
        assert killed.returns("multitask-s0") == never.returns("multitask-s0")


def test_a_checkpoint_of_another_kind_of_device_trains_the_group_again(tmp_path: Path) -> None:
    """A `device: auto` sweep killed on a GPU machine and rerun on a CPU one: a CUDA
    generator's state does not fit the CPU's, so restoring it failed the whole group; the
    checkpoint says where it was written and the group starts over."""
    from ctxrl.artifacts import load_artifact, save_artifact

    plan = _plan(tmp_path, train_steps=4096)
    checkpoint = _train_into_checkpoint(plan, 2048, checkpoint_every=1024)
    tensors, meta = load_artifact(checkpoint, device="cpu")
    assert meta["device"] == "cpu"
    save_artifact(checkpoint, tensors, {**meta, "device": "cuda"})  # as a GPU machine writes it
    printed = io.StringIO()
    outcome = run_sweep(plan, console=Console(file=printed, width=300))
    assert outcome.trained == 2 and not outcome.failed
    text = " ".join(printed.getvalue().split())
    assert f"checkpoint {checkpoint.name} was written on cuda, this sweep trains on cpu" in text
    assert "training the group from the start" in text and "resumed" not in text


def test_runs_csv_says_which_runs_trained_as_one_group(finished: Path) -> None:
    """Runs of one batched program share its start and split its time evenly: the columns
    batch_group and group_duration_s say so."""
    with (finished / "exports" / "runs.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and {"batch_group", "group_duration_s"} <= set(rows[0])
    assert rows[0]["batch_group"] == rows[1]["batch_group"] != ""
    assert rows[0]["started_at"] == rows[1]["started_at"]
    group_s = float(rows[0]["group_duration_s"])
    assert float(rows[0]["duration_s"]) == pytest.approx(group_s / 2)


# ---------------------------------------------------------- figures one can put in a paper
def test_figures_name_their_axes_bands_and_sources(finished: Path) -> None:
    """The heatmap is drawn on pole lengths in metres with the normalisation bounds; the
    selection figure says what its band is; the summary names chosen sources by value and
    has no CI column for one seed."""
    figures = finished / "figures"
    matrix = (figures / "matrix.svg").read_text()
    assert "length: half the pole's length (m)" in matrix
    assert "normalised return R / 500, clipped to [0, 1]" in matrix
    selection = (figures / "selection.svg").read_text()
    assert "shaded: ±1 std over 100 replays of each stochastic strategy" in selection
    generalization = (figures / "generalization.svg").read_text()
    assert "1: 1 m" in generalization and "2: 0.5 m" in generalization  # equidistant
    summary = (finished / "summary.md").read_text()
    assert "| strategy | mean G_k | G_1 | G_K | first 5 chosen sources |" in summary
    assert "| length = 1, 0.5 |" in summary
    assert "CI" not in summary


def test_the_generalization_figure_names_every_chosen_source(tmp_path: Path) -> None:
    """Ten chosen sources of twelve contexts: each drawn in its own panel and named in the
    legend by its value and unit, on an axis in the feature's unit."""
    from ctxrl.report import ContextAxis, plot_generalization

    n = 12
    values = np.geomspace(0.05, 5.0, n)
    index = np.arange(n)
    matrix = np.clip(0.9 - 0.15 * np.abs(index[:, None] - index[None, :]), 0, 1)
    coords = np.linspace(0, 1, n)[:, None]
    axis = ContextAxis(values, "length: half the pole's length (m)", log=True, unit="m")
    sources = [5, 0, 11, 2, 8, 3, 9, 1, 7, 10]
    plot_generalization(coords, matrix, sources, "CartPole", tmp_path / "g", axis=axis)
    svg = (tmp_path / "g.svg").read_text()
    for k, i in enumerate(sources, start=1):
        assert svg.count(f"{k}: {values[i]:.3g} m") == 2, (k, i)  # legend and panel title
    assert "length: half the pole's length (m)" in svg


def test_the_colour_bar_label_reads_right_with_a_negative_lower_bound() -> None:
    from ctxrl.report import bounds_label

    assert bounds_label((-2000.0, 0.0)) == "normalised return (R + 2000) / 2000, clipped to [0, 1]"
    assert bounds_label((0.0, 500.0)) == "normalised return R / 500, clipped to [0, 1]"
    assert bounds_label((8.0, 500.0)) == "normalised return (R - 8) / 492, clipped to [0, 1]"


def test_an_executor_option_value_it_refuses_is_named_before_anything_is_written(
    tmp_path: Path,
) -> None:
    """`executor.options: {gpus: []}` or `{start_method: bogus}` passed the check of names,
    then stopped the sweep with a bare ValueError after plan.yaml and the store were written."""
    from ctxrl.errors import ConfigError

    for options, message in (
        ({"gpus": []}, "gpus must be a non-empty list of GPU indices"),
        ({"start_method": "bogus"}, "cannot find context for 'bogus'"),
    ):
        plan = _plan(tmp_path, executor={"name": "local", "options": options})
        with pytest.raises(ConfigError, match=rf"executor\.options: 'local': .*{message}"):
            run_sweep(plan, console=Console(file=io.StringIO()))
        assert not (plan.run_dir / "plan.yaml").exists()
        assert not (plan.run_dir / "store.sqlite").exists()


def test_an_emptied_store_beside_saved_policies_is_said(tmp_path: Path) -> None:
    """A store lost beside the saved policies of a sweep that finished once (its exports are
    there): refused before anything trains, as retraining would replace the policies. Without
    exports (killed before it finished: nothing says which runs are) every run trains again,
    and the sweep says so instead of retraining silently."""
    from ctxrl.errors import CtxrlError

    plan = _plan(tmp_path)
    first = run_sweep(plan, console=Console(file=io.StringIO()))

    def lose_the_store() -> None:
        (first.run_dir / "store.sqlite").unlink()
        for leftover in first.run_dir.glob("store.sqlite-*"):
            leftover.unlink()

    lose_the_store()
    policies = {p: p.read_bytes() for p in (first.run_dir / "artifacts").iterdir()}
    with pytest.raises(CtxrlError, match="the store was lost, emptied or replaced"):
        run_sweep(plan, console=Console(file=io.StringIO()))
    assert {p: p.read_bytes() for p in (first.run_dir / "artifacts").iterdir()} == policies
    shutil.rmtree(first.run_dir / "exports")
    lose_the_store()
    printed = io.StringIO()
    again = run_sweep(plan, console=Console(file=printed, width=300))
    assert again.trained == 2
    assert "holds no run, but artifacts/ holds 2 saved policies" in printed.getvalue()


class _RepeatsItself:
    """A compared strategy with a bug: it proposes the first context at every step."""

    def propose(self, state: Any) -> list[int]:
        return [0]


class _RepeatingPlugin:
    from ctxrl import hookimpl

    @hookimpl
    def ctxrl_register_strategies(self, register: Any) -> None:
        from ctxrl.registry import StrategySpec

        register(StrategySpec("repeats-itself", _RepeatsItself))


def test_a_compared_strategy_that_fails_is_left_out_of_the_report(
    tmp_path: Path, ctxrl_inline_plugin: Any
) -> None:
    """A plugin strategy in `compare` that raises (here a source proposed twice) stopped the
    finished sweep before its summary, and `ctxrl report` failed the same way: it is left out,
    with why, and the rest of the report is written."""
    ctxrl_inline_plugin(_RepeatingPlugin(), "repeating")
    plan = _plan(
        tmp_path,
        features={"length": {"values": [0.5, 1.0, 1.5]}},
        compare=["greedy", "repeats-itself"],
    )
    outcome = run_sweep(plan, console=Console(file=io.StringIO()))
    assert outcome.trained == 3 and not outcome.failed
    summary = " ".join((outcome.run_dir / "summary.md").read_text().split())
    assert "**Strategy repeats-itself failed and is left out**" in summary
    assert "already chosen" in summary and "| greedy |" in summary


class _Explodes:
    """A selection strategy whose own code raises at its first proposal."""

    def propose(self, state: Any) -> list[int]:
        raise RuntimeError("boom")


class _ExplodingPlugin:
    from ctxrl import hookimpl

    @hookimpl
    def ctxrl_register_strategies(self, register: Any) -> None:
        from ctxrl.registry import StrategySpec

        register(StrategySpec("explodes", _Explodes))
        register(StrategySpec("repeats-itself", _RepeatsItself))


def test_a_selection_strategy_that_fails_is_named_and_what_it_trained_reported(
    tmp_path: Path, ctxrl_inline_plugin: Any
) -> None:
    """In mode: select a strategy that raised ended the sweep with a traceback and no summary
    of the steps it had trained: the error names the strategy and the step, and the exports
    and summary of what was trained are written first."""
    from ctxrl.errors import PluginError

    ctxrl_inline_plugin(_ExplodingPlugin(), "exploding")
    features = {"length": {"values": [0.5, 1.0, 1.5]}}
    plan = _plan(
        tmp_path,
        features=features,
        mode="select",
        strategy={"name": "repeats-itself", "budget": 2},
    )
    with pytest.raises(
        PluginError,
        match=r"(?s)strategy 'repeats-itself' failed at selection step 2 \(k = 1 of 2 sources "
        r"trained\): strategy 'repeats-itself' proposed index 0 .*once the strategy is fixed, "
        r"a rerun continues",
    ):
        run_sweep(plan, console=Console(file=io.StringIO()))
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "summary.md").is_file() and (run_dir / "exports" / "summary.json").is_file()
    explodes = _plan(
        tmp_path / "second",
        features=features,
        mode="select",
        strategy={"name": "explodes", "budget": 2},
    )
    with pytest.raises(
        PluginError,
        match=r"(?s)'explodes' failed at selection step 1 .*RuntimeError: boom\n.*in propose",
    ):
        run_sweep(explodes, console=Console(file=io.StringIO()))


class _BrokenTransfer:
    def transfer(self, problem: Any) -> Any:
        return {"no": "episodes"}["episodes"]  # a KeyError in the plugin's own code


class _BareArrayTransfer:
    def transfer(self, problem: Any) -> Any:
        from ctxrl.transfer import evaluate_sources

        return evaluate_sources(problem)  # the returns, not a TransferResult


class _ArrayDetailsTransfer:
    def transfer(self, problem: Any) -> Any:
        from ctxrl.transfer import TransferResult, evaluate_sources

        return TransferResult(evaluate_sources(problem), 0, {"weights": np.ones(3)})


def _refuse(token: str) -> None:
    raise ValueError(f"not JSON: {token}")


class _DivergesOnTheLastTarget:
    """Zero-shot, but NaN on the last target: a transfer that diverged there."""

    def transfer(self, problem: Any) -> Any:
        from ctxrl.transfer import TransferResult, evaluate_sources

        returns = evaluate_sources(problem)
        returns[:, -1] = np.nan
        return TransferResult(returns, 0, {"spread": np.std(returns, axis=2).tolist()})


class _BrokenTransferPlugin:
    from ctxrl import hookimpl

    @hookimpl
    def ctxrl_register_transfer_methods(self, register: Any) -> None:
        from ctxrl.registry import TransferMethodSpec

        register(TransferMethodSpec("broken-transfer", _BrokenTransfer))
        register(TransferMethodSpec("diverges-last", _DivergesOnTheLastTarget, batched_only=False))
        register(TransferMethodSpec("bare-array", _BareArrayTransfer, batched_only=False))
        register(TransferMethodSpec("array-details", _ArrayDetailsTransfer, batched_only=False))


@pytest.mark.parametrize("algorithm", ["batched-ppo", pytest.param("sb3-ppo", marks=requires_sb3)])
def test_a_transfer_that_diverges_on_a_target_names_it(
    tmp_path: Path, ctxrl_inline_plugin: Any, algorithm: str
) -> None:
    """Returns a transfer left NaN on one target: the batched path said only "the sources'
    training or the transfer diverged", naming neither the target nor which of the two; the
    per-run path stored them as a finished run (inf) or failed on the store's NOT NULL. The
    batched path, which sees that the source's weights are finite, keeps the row's other
    entries (the whole row failed); the per-run path cannot tell and fails the run."""
    ctxrl_inline_plugin(_BrokenTransferPlugin(), "broken-transfer")
    params = {"n_steps": 64, "batch_size": 32} if algorithm == "sb3-ppo" else {}
    plan = _plan(
        tmp_path,
        transfer={"name": "diverges-last"},
        algorithm={"name": algorithm, "preset": "CartPole", "params": params},
        train_steps=512 if algorithm == "batched-ppo" else 64,
        executor={"name": "inline"},  # per-run jobs in this process, where the plugin is
    )
    printed = io.StringIO()
    outcome = run_sweep(plan, console=Console(file=printed, width=400))
    text = " ".join(printed.getvalue().split())
    assert "not finite (NaN or inf) on 1 of 2 targets" in text
    summary = " ".join((outcome.run_dir / "summary.md").read_text().split())
    if algorithm == "batched-ppo":
        assert not outcome.failed and outcome.trained == 2
        assert "(length=1)" in text and "the source's weights are finite" in text
        assert "its other 1 entries are kept" in text
        matrix = np.loadtxt(outcome.run_dir / "exports" / "matrix_seed0.csv", delimiter=",")
        assert np.isfinite(matrix[:, 0]).all() and np.isnan(matrix[:, 1]).all()
        assert "2 entries of the observed rows are missing (a transfer that diverged" in summary
    else:
        assert len(outcome.failed) == 2 and outcome.trained == 0
        assert "(first: length=1)" in text and "transfer method 'diverges-last' diverged" in text
        assert "with the same ones it diverges again" in summary
    # its record keeps the details, NaN as null (a bare NaN token is not JSON)
    for record in (outcome.run_dir / "transfer").glob("*.json"):
        details = json.loads(record.read_text(), parse_constant=_refuse)["details"]
        assert details["spread"][0][-1] is None


def test_a_failing_transfer_method_is_named(tmp_path: Path, ctxrl_inline_plugin: Any) -> None:
    """The sources trained, the transfer method raised: the runs' errors said only
    `KeyError: 'episodes'` under "batched training failed", naming no method."""
    from ctxrl.store import Store
    from ctxrl.summary import STORE_FILE

    ctxrl_inline_plugin(_BrokenTransferPlugin(), "broken-transfer")
    plan = _plan(tmp_path, transfer={"name": "broken-transfer"})
    printed = io.StringIO()
    outcome = run_sweep(plan, console=Console(file=printed, width=300))
    assert len(outcome.failed) == 2
    text = " ".join(printed.getvalue().split())
    assert "transfer method 'broken-transfer' failed after the sources trained: KeyError" in text
    with Store(plan.run_dir / STORE_FILE) as store:
        assert all("transfer method 'broken-transfer'" in (r.error or "") for r in store.runs())
    # results it cannot store: the method named (the errors named only numpy's complaint)
    for name, message in [
        ("bare-array", "returned ndarray, not a ctxrl.transfer.TransferResult"),
        ("array-details", "returned a result that cannot be stored"),
    ]:
        plan = _plan(tmp_path / name, transfer={"name": name})
        printed = io.StringIO()
        assert len(run_sweep(plan, console=Console(file=printed, width=300)).failed) == 2
        assert f"transfer method '{name}' {message}" in " ".join(printed.getvalue().split())
    from ctxrl.errors import PluginError
    from ctxrl.registry import TransferMethodSpec

    with pytest.raises(PluginError, match="joint must be True or False, got 'false'"):
        TransferMethodSpec("flags", _BrokenTransfer, joint="false")  # type: ignore[arg-type]


class _DroppingExecutor:
    """Runs and reports the first job; reports the second done without running it, and never
    reports the third."""

    def __init__(self, workers: int = 1, timeout_s: Any = None, log_dir: Any = None) -> None:
        del workers, timeout_s, log_dir

    def map(self, fn: Any, jobs: Any) -> Any:
        jobs = list(jobs)
        fn(jobs[0])
        yield jobs[0], None
        if len(jobs) > 2:
            yield jobs[1], None  # claimed done, never run
        # the last one: never reported


class _SwallowingExecutor(_DroppingExecutor):
    """Runs every job and reports each done, whatever it raised."""

    def map(self, fn: Any, jobs: Any) -> Any:
        for job in jobs:
            with contextlib.suppress(Exception):
                fn(job)
            yield job, None


class _DoublingExecutor(_DroppingExecutor):
    """Runs every job once and reports each twice."""

    def map(self, fn: Any, jobs: Any) -> Any:
        for job in jobs:
            fn(job)
            yield job, None
            yield job, None


class _LateTimeoutExecutor(_DroppingExecutor):
    """Runs every job, then reports it killed at its time limit (after it stored its run)."""

    def map(self, fn: Any, jobs: Any) -> Any:
        from ctxrl.errors import JobFailed

        for job in jobs:
            fn(job)
            yield job, JobFailed("job exceeded its 6.5 s limit and was killed", "")


class _NarrowExecutor:
    def __init__(self, workers: int = 1) -> None:  # without timeout_s and log_dir
        pass


class _QueuedExecutor(_DroppingExecutor):
    def __init__(self, workers: int, timeout_s: Any, log_dir: Any, queue: str) -> None:
        super().__init__(workers, timeout_s, log_dir)  # an option of its own, required


class _ExecutorsPlugin:
    from ctxrl import hookimpl

    @hookimpl
    def ctxrl_register_executors(self, register: Any) -> None:
        from ctxrl.registry import ExecutorSpec

        register(ExecutorSpec("dropping", _DroppingExecutor))
        register(ExecutorSpec("narrow", _NarrowExecutor))
        register(ExecutorSpec("queued", _QueuedExecutor))
        register(ExecutorSpec("swallowing", _SwallowingExecutor))
        register(ExecutorSpec("doubling", _DoublingExecutor))
        register(ExecutorSpec("late-timeout", _LateTimeoutExecutor))


@requires_sb3
def test_jobs_an_executor_drops_or_claims_are_failed_by_name(
    tmp_path: Path, ctxrl_inline_plugin: Any
) -> None:
    """The host trusted an executor's reports: a job never reported was silently missing
    ("trained 1, failed 0"), and one reported done but never run counted as trained. A
    factory without timeout_s and log_dir was refused as "has no option []"."""
    from ctxrl.errors import ConfigError

    ctxrl_inline_plugin(_ExecutorsPlugin(), "executors")
    changes: dict[str, Any] = {
        "features": {"length": {"values": [0.5, 1.0, 1.5]}},
        "algorithm": {"name": "sb3-ppo", "preset": "CartPole"},
        "train_steps": 256,
        "executor": {"name": "dropping"},
    }
    printed = io.StringIO()
    outcome = run_sweep(_plan(tmp_path, **changes), console=Console(file=printed, width=300))
    assert outcome.trained == 1 and len(outcome.failed) == 2
    text = printed.getvalue()
    assert "executor 'dropping' reported the job done, but its run is not stored" in text
    assert "executor 'dropping' never reported this job" in text
    narrow = {**changes, "executor": {"name": "narrow"}}
    with pytest.raises(ConfigError, match="factory must take workers, timeout_s and log_dir"):
        _plan(tmp_path / "narrow", **narrow)
    queued = {**changes, "executor": {"name": "queued", "options": {"queue": "gpu"}}}
    assert _plan(tmp_path / "queued", **queued).config.executor.options == {"queue": "gpu"}
    # a job's own error, swallowed by its executor, stays the run's error
    from ctxrl.store import Store
    from ctxrl.summary import STORE_FILE

    failing = {
        **changes,
        "features": {"length": {"values": [0.5]}},
        "algorithm": {"name": "sb3-ppo", "preset": "CartPole", "params": {"policy": "CnnPolicy"}},
        "executor": {"name": "swallowing"},
    }
    plan = _plan(tmp_path / "swallowed", **failing)
    printed = io.StringIO()
    assert len(run_sweep(plan, console=Console(file=printed, width=300)).failed) == 1
    assert "(executor 'swallowing' reported it done)" in printed.getvalue()
    with Store(plan.run_dir / STORE_FILE) as store:
        (run,) = store.runs()
        assert "Traceback" in (run.error or "") and "CnnPolicy" in (run.error or "")
    # a job killed at its time limit after storing its run: kept, and counted as trained (it
    # was counted nowhere: "trained 5, already finished 0, failed 0" for 6 runs)
    late = {**changes, "executor": {"name": "late-timeout"}}
    printed = io.StringIO()
    outcome = run_sweep(_plan(tmp_path / "late", **late), console=Console(file=printed, width=300))
    assert outcome.trained == 3 and not outcome.failed
    assert printed.getvalue().count("its stored evaluations are kept") == 3


def test_shards_an_executor_drops_or_reports_twice_are_counted_once(
    tmp_path: Path, ctxrl_inline_plugin: Any
) -> None:
    """Sharded batched groups trusted the executor's reports: a shard never reported left its
    runs missing with no failure ("failed 0", exit code 0), and a shard reported twice counted
    its runs twice ("trained 4" of 3) and told the hooks twice."""
    ctxrl_inline_plugin(_ExecutorsPlugin(), "executors")
    changes: dict[str, Any] = {
        "features": {"length": {"values": [0.5, 1.0, 1.5]}},
        "algorithm": {
            "name": "batched-ppo",
            "params": {"num_envs": 2, "num_steps": 32, "hidden": 16},
        },
        "train_steps": 256,
    }
    printed = io.StringIO()
    dropping = {**changes, "executor": {"name": "dropping", "shards": 3}}
    outcome = run_sweep(_plan(tmp_path / "d", **dropping), console=Console(file=printed))
    assert outcome.trained == 1 and len(outcome.failed) == 2, printed.getvalue()
    assert "executor 'dropping' never reported this job" in printed.getvalue()
    printed = io.StringIO()
    doubling = {**changes, "executor": {"name": "doubling", "shards": 2}}
    outcome = run_sweep(_plan(tmp_path / "t", **doubling), console=Console(file=printed))
    assert outcome.trained == 3 and not outcome.failed
    assert "twice; the second report is ignored" in " ".join(printed.getvalue().split())


def test_a_joint_transfer_retrains_its_whole_group_when_one_source_is_pending(
    tmp_path: Path,
) -> None:
    """Distillation teaches every row from all sources: with one policy damaged, the group of
    the pending agent alone was trained and its row taught by that source alone. The whole
    group trains again, and every row is what a sweep never damaged stored."""
    from ctxrl.store import Store
    from ctxrl.summary import STORE_FILE

    plan = _plan(tmp_path, transfer={"name": "distill", "options": {"steps": 1024}})
    outcome = run_sweep(plan, console=Console(file=io.StringIO()))
    with Store(outcome.run_dir / STORE_FILE) as store:
        before = {r.run_id: store.returns(r.run_id) for r in store.runs()}
        damaged = next(iter(before))
    artifact = outcome.run_dir / "artifacts" / f"{damaged}.safetensors"
    artifact.write_bytes(artifact.read_bytes()[: artifact.stat().st_size // 2])
    printed = io.StringIO()
    again = run_sweep(plan, console=Console(file=printed, width=300))
    assert again.trained == 2 and not again.failed
    assert "transfers from all sources together: 1 of 2 agents are pending" in printed.getvalue()
    with Store(outcome.run_dir / STORE_FILE) as store:
        assert {r.run_id: store.returns(r.run_id) for r in store.runs()} == before


def test_a_sweep_says_the_steps_it_trained_and_shows_a_transfer_that_trains(
    tmp_path: Path,
) -> None:
    """``train_steps: 100`` trained one whole iteration (512 steps) and printed "x 100
    steps"; a fine-tuning phase ran without a word or a bar."""
    printed = io.StringIO()
    plan = _plan(
        tmp_path,
        train_steps=100,
        transfer={"name": "fine-tune", "options": {"steps": 1024}},
    )
    run_sweep(plan, console=Console(file=printed, width=300))
    text = printed.getvalue()
    assert f"trained {len(plan.grid)} agents x 512 steps in " in text
    assert f"fine-tune: {len(plan.grid)} source(s) x {len(plan.grid)} targets" in text


def test_a_runs_stored_returns_come_back_from_its_policy_and_the_evaluation_seed(
    tmp_path: Path,
) -> None:
    """The evaluation seed was a number inside the sweep (a reviewer found it by trying):
    ``EVALUATION_SEED`` with a loaded policy gives the store's returns, as the README says."""
    from ctxrl import load_policies, open_store, sweep_matrix
    from ctxrl.runs import EVALUATION_SEED

    outcome = _sweep(tmp_path, eval_episodes=2)
    plan = _plan(tmp_path, eval_episodes=2)
    with open_store(outcome.run_dir) as store:
        stored = sweep_matrix(plan, store).values[:, :, 0]
    sources = load_policies(outcome.run_dir)
    targets = [c.as_dict() for c in plan.grid.contexts]
    for row, policy in enumerate(sources.policies):
        returns = sources.algorithm.evaluate_many(
            policy, plan.env, targets, episodes=2, seed=EVALUATION_SEED
        )
        np.testing.assert_array_equal(returns[0].mean(axis=-1), stored[row])


EXPORTS_HOLDER = """
import sys, time
from pathlib import Path
from ctxrl.run_dirs import exports_lock

run_dir = Path(sys.argv[1])
with exports_lock(run_dir):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    (run_dir / "summary.md").write_text("written by the holder\\n")
    print(time.time(), flush=True)  # when it wrote, just before it lets go
"""


def test_a_report_beside_a_sweep_never_replaces_its_final_exports(
    finished: Path, tmp_path: Path
) -> None:
    """A report and a sweep's final exports take turns (``exports.lock``): a report that
    starts while the other holds it writes after it, from the store as it is then; without
    the turn, the one that finished first (here the holder, standing in for a sweep ending)
    would be replaced by what the other read earlier, or the reverse."""
    plan = _plan(tmp_path)
    run_dir = plan.run_dir
    shutil.copytree(finished, run_dir)
    for write in (lambda: _cli("report", str(run_dir)), lambda: run_sweep(plan)):
        holder = subprocess.Popen(
            [sys.executable, "-c", EXPORTS_HOLDER, str(run_dir), "3"],
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
        )
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        write()  # waits for the holder, then reads the store and writes
        released = float(holder.stdout.readline())
        assert holder.wait() == 0
        assert "written by the holder" not in (run_dir / "summary.md").read_text()
        # written after the holder let go (not merely written slowly enough to come last)
        assert (run_dir / "exports" / "summary.json").stat().st_mtime >= released
