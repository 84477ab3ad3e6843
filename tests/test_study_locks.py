"""One process at a time trains a transfer study: ``ctxrl plasticity`` (env and
shifting-target studies) and ``ctxrl transfer dqn`` hold their run directory's lock (the lock
``ctxrl sweep`` holds, :func:`ctxrl.run_dirs.run_dir_lock`) while they train and write. A second
run of the same study stops with an error naming the directory and the process holding it,
before it trains or writes anything; once the holder is gone (killed here: the OS releases an
``flock``) the study runs, and a rerun resumes from what is stored."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ctxrl.errors import CtxrlError
from ctxrl.plugins import get_host
from ctxrl_plugins.transfer.studies import open_run_dir

HOLDER = """
import sys, time
from pathlib import Path
from ctxrl.run_dirs import run_dir_lock

with run_dir_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def hold() -> Iterator[Any]:
    """``hold(run_dir)``: another process holding ``run_dir``'s lock (created) until it is
    killed (the returned process; killed at the end of the test in any case)."""
    holders: list[subprocess.Popen[str]] = []

    def start(run_dir: Path) -> subprocess.Popen[str]:
        run_dir.mkdir(parents=True, exist_ok=True)
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(run_dir)],
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
        )
        holders.append(holder)
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        return holder

    yield start
    for holder in holders:
        holder.kill()
        holder.wait()


def _release(holder: subprocess.Popen[str]) -> None:
    holder.kill()  # SIGKILL: the OS releases its lock
    holder.wait()


def _config_file(tmp_path: Path, study: dict[str, Any]) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**study, "output_dir": str(tmp_path / "runs")}))
    return path


def _refused(run_dir: Path, holder: subprocess.Popen[str], command: str) -> str:
    """The error a run of the study refused by ``holder`` must raise (a regex)."""
    return (
        rf"{run_dir} is in use by another {command} run of this study \(pid {holder.pid} on .*\); "
        r"wait for it to finish$"
    )


def _untouched(run_dir: Path) -> None:
    """Nothing trained, stored or written into ``run_dir`` but the lock file."""
    assert sorted(p.name for p in run_dir.iterdir()) == ["sweep.lock"]


def _stored(run_dir: Path, folder: str) -> dict[Path, int]:
    """The files under ``run_dir / folder`` and their modification times."""
    return {p: p.stat().st_mtime_ns for p in (run_dir / folder).rglob("*") if p.is_file()}


def _refused_then_run(
    hold: Any,
    run_dir: Path,
    command: str,
    run: Callable[[], Path],
    report: Callable[[], Any],
    opened: Callable[[], None],
    folder: str,
) -> None:
    """With ``run_dir`` held by another process, ``run`` is refused before it writes anything
    and ``report`` (once ``opened`` wrote the study's plan there) says the study is running;
    once the holder is gone the study runs, and a rerun trains nothing again (the files
    under ``run_dir / folder`` unchanged)."""
    holder = hold(run_dir)
    with pytest.raises(CtxrlError, match=_refused(run_dir, holder, command)):
        run()
    _untouched(run_dir)
    opened()
    with pytest.raises(CtxrlError, match=rf"the study is running there \(pid {holder.pid} "):
        report()
    _release(holder)
    assert run() == run_dir
    stored = _stored(run_dir, folder)
    assert stored and (run_dir / "summary.md").is_file()
    report()
    run()  # a rerun resumes: nothing trained again
    assert _stored(run_dir, folder) == stored


# ----------------------------------------------------------------- plasticity: env studies
ENV_STUDY: dict[str, Any] = {
    "env": "CartPole",
    "algorithm": "batched-ppo",
    "params": {
        "num_envs": 2,
        "num_steps": 64,
        "update_epochs": 2,
        "num_minibatches": 2,
        "hidden": 8,
        "activation": "relu",
    },
    "schedule": {"kind": "sequence", "every": 512, "contexts": [{"length": 0.5}, {"length": 2.0}]},
    "arms": [{"name": "redo", "options": {"every": 4, "tau": 0.5}}],
    "seeds": [0],
    "total_steps": 1024,
    "curve_every": 256,
    "curve_episodes": 1,
}


def test_a_second_env_study_on_its_run_directory_is_refused(tmp_path: Path, hold: Any) -> None:
    from ctxrl_plugins.transfer.plasticity_plan import STUDY
    from ctxrl_plugins.transfer.plasticity_study import (
        load_study_config,
        report_study,
        resolve_study,
        run_study,
    )

    config = load_study_config(_config_file(tmp_path, ENV_STUDY))
    registry = get_host().registry
    run_dir = resolve_study(config, registry).run_dir
    _refused_then_run(
        hold,
        run_dir,
        "ctxrl plasticity",
        run=lambda: run_study(config, registry),
        report=lambda: report_study(run_dir),
        opened=lambda: open_run_dir(run_dir, STUDY, config),
        folder="programs",
    )


# ------------------------------------------------------ plasticity: shifting-target studies
TARGETS_STUDY: dict[str, Any] = {
    "shifting_targets": {
        "tasks": 2,
        "steps_per_task": 10,
        "points": 16,
        "hidden": [8],
        "batch_size": 8,
        "eval_every": 5,
        "window": 1,
    },
    "arms": [{"name": "redo", "options": {"every": 5, "tau": 0.5}}],
    "seeds": [0],
}


def test_a_second_targets_study_on_its_run_directory_is_refused(tmp_path: Path, hold: Any) -> None:
    from ctxrl_plugins.transfer.plasticity_study import report_study
    from ctxrl_plugins.transfer.plasticity_targets import (
        STUDY,
        load_targets_config,
        run_dir_of,
        run_targets_study,
    )

    config = load_targets_config(_config_file(tmp_path, TARGETS_STUDY))
    registry = get_host().registry
    run_dir = run_dir_of(config)
    _refused_then_run(
        hold,
        run_dir,
        "ctxrl plasticity",
        run=lambda: run_targets_study(config, registry),
        report=lambda: report_study(run_dir),
        opened=lambda: open_run_dir(run_dir, STUDY, config),
        folder="programs",
    )


# ---------------------------------------------------------------------- DQN transferability
DQN_STUDY: dict[str, Any] = {
    "env": "CartPole",
    "contexts": [
        {"name": "short", "context": {"length": 0.3}},
        {"name": "long", "context": {"length": 1.5}},
    ],
    "algorithm": {
        "learning_starts": 100,
        "train_frequency": 2,
        "target_network_frequency": 100,
        "exploration_fraction": 0.3,
        "buffer_size": 2000,
        "hidden": [16],
    },
    "pairs": "self",
    "arms": ["fine-tune"],
    "seeds": [0],
    "train_steps": 300,
    "curve_every": 100,
    "curve_episodes": 1,
}


def test_a_second_dqn_study_on_its_run_directory_is_refused(tmp_path: Path, hold: Any) -> None:
    from ctxrl_plugins.transfer.dqn_transferability import (
        STUDY,
        load_study_config,
        report_study,
        resolve_study,
        run_study,
    )

    config = load_study_config(_config_file(tmp_path, DQN_STUDY))
    registry = get_host().registry
    run_dir = resolve_study(config, registry).run_dir
    _refused_then_run(
        hold,
        run_dir,
        "ctxrl transfer dqn",
        run=lambda: run_study(config, registry),
        report=lambda: report_study(run_dir),
        opened=lambda: open_run_dir(run_dir, STUDY, config),
        folder="arms",
    )
    assert "# DQN transferability: CartPole" in report_study(run_dir)
