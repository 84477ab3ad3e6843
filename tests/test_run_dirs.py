"""Run directories kept safe: the plan hash and what the directory records, reruns and
reports that never replace results with nothing, one sweep at a time, damaged files named."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
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


def test_a_different_plan_in_the_same_directory_is_refused_naming_the_fields(
    tmp_path: Path,
) -> None:
    first = _sweep(tmp_path)
    plan_file = first.run_dir / "plan.yaml"
    stored = yaml.safe_load(plan_file.read_text())
    stored["config"]["train_steps"] = 1024
    plan_file.write_text(yaml.safe_dump(stored, sort_keys=False))
    from ctxrl.errors import CtxrlError

    with pytest.raises(CtxrlError, match=r"plan\.yaml holds a different plan \(train_steps"):
        _sweep(tmp_path)


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy" / run_dir.name
    shutil.copytree(run_dir, copy)
    return copy
