"""Run directories: where a sweep's results lie (its output directory, the directory of a
plan, one an earlier ctxrl named differently), what a run directory's ``plan.yaml`` records,
and its locks (one sweep or study trains there at a time; a report and a sweep's final exports
take turns). Used by ``ctxrl sweep`` to continue a run, and by ``report``, ``select`` and
``export`` to read one back."""

from __future__ import annotations

import dataclasses
import fcntl
import os
import platform
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ctxrl.config import SweepConfig, SweepPlan, validate_config
from ctxrl.errors import ConfigError, CtxrlError
from ctxrl.yaml12 import parse_yaml

if TYPE_CHECKING:
    from rich.console import Console


def check_output_dir(output_dir: Path) -> None:
    """``output_dir`` can hold run directories: it is, or can be created in, a directory
    this process may write. Checked by ``--dry-run`` too."""
    existing = output_dir.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    hint = "choose another output_dir (--set output_dir=PATH)"
    if not existing.is_dir():
        raise ConfigError(f"output_dir: {existing} is a file, not a directory; {hint}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"output_dir: cannot create directories in {existing} (permission denied); {hint}"
        )


PLAN_FILE = "plan.yaml"


def _store_file() -> str:
    from ctxrl.summary import STORE_FILE  # the results' module, imported when a plan is lost

    return STORE_FILE


def read_plan_file(run_dir: Path) -> dict[str, Any]:
    """The contents of ``run_dir``'s plan.yaml (a mapping), or a :class:`CtxrlError` saying
    what is missing or damaged."""
    plan_file = run_dir / PLAN_FILE
    if not plan_file.is_file():
        held = [p.parent.name for p in run_dir.glob(f"*/{PLAN_FILE}")] if run_dir.is_dir() else []
        hint = ""
        if held:
            held.sort()
            listed = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
            hint = f"; it holds the run directories {listed}"
        elif run_dir.is_dir() and (run_dir / _store_file()).is_file():
            hint = (
                f"; it holds a results store, so its {PLAN_FILE} was lost: rerun `ctxrl sweep` "
                "with the config that made it (it writes the file again and resumes)"
            )
        raise CtxrlError(f"{run_dir} is not a run directory (no {PLAN_FILE}){hint}")
    try:
        stored = yaml.safe_load(plan_file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise CtxrlError(f"{plan_file} is not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise CtxrlError(f"{plan_file} is not UTF-8 text (damaged?): {exc}") from None
    if not isinstance(stored, dict):
        raise CtxrlError(f"{plan_file} is not a mapping (not written by ctxrl, or damaged)")
    return stored


def stored_config(stored: Mapping[str, Any], plan_file: Path) -> SweepConfig:
    """The sweep config a run directory's plan.yaml (``stored``) records."""
    config = stored.get("config")
    if not isinstance(config, dict):
        raise CtxrlError(
            f"{plan_file} has no `config` mapping (not written by ctxrl sweep, or damaged); "
            "restore it, or write the sweep's config under a `config:` key"
        )
    checked = validate_config(as_configured_now(config), str(plan_file))
    edited = fields_unlike_the_plan(stored, checked)
    if edited:
        raise CtxrlError(
            f"{plan_file}: its config no longer says what its runs trained on ("
            f"{', '.join(edited)} differ from the plan recorded beside it: edited by hand?); "
            "restore the file (its `plan` section holds what trained), or run the changed "
            "config as a sweep of its own (another output_dir)"
        )
    return checked


def fields_unlike_the_plan(stored: Mapping[str, Any], config: SweepConfig) -> list[str]:
    """The fields (dotted paths) where a plan.yaml's ``config`` (validated: ``config``) and
    the ``plan`` recorded with it disagree on what trained the runs: a config edited by hand
    after the sweep wrote both. Both are read through this version's plan (fields only one of
    them has, as an earlier ctxrl hashed them, are not compared); none for a plan.yaml
    without a ``plan`` section, or one this version cannot read."""
    from ctxrl.resolution import dotted_leaves

    written = stored.get("plan")
    if not isinstance(written, Mapping):
        return []
    try:
        recorded = validate_config(as_configured_now(written)).plan_data()
    except CtxrlError:
        return []
    now = config.plan_data()
    shared = recorded.keys() & now.keys()
    old = dotted_leaves({key: recorded[key] for key in shared})
    new = dotted_leaves({key: now[key] for key in shared})
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def as_configured_now(config: Mapping[str, Any]) -> dict[str, Any]:
    """A plan.yaml's config as this version takes it: ``m-mbtl`` accepted the options of
    sd-mbtl's detection and GP branch and ignored them (it runs neither) until it took
    ``clustering`` only, so a stored config keeps its ``clustering`` alone. Its runs are read
    and reported, and the same config without those options resumes the run directory
    (:func:`locate_run_dir`: the hash of the config as configured now)."""
    strategy = config.get("strategy")
    if not isinstance(strategy, Mapping) or strategy.get("name") != "m-mbtl":
        return dict(config)
    options = strategy.get("options")
    if not isinstance(options, Mapping) or set(options) <= {"clustering"}:
        return dict(config)
    kept = {key: value for key, value in options.items() if key == "clustering"}
    return {**config, "strategy": {**strategy, "options": kept}}


def stored_plan_hash(stored: Mapping[str, Any]) -> str | None:
    """The plan hash, as this version defines it, of a run directory's plan.yaml contents
    (None when its config no longer validates)."""
    try:
        config = validate_config(as_configured_now(stored["config"]))
    except (CtxrlError, KeyError, TypeError, AttributeError):
        return None
    return None if fields_unlike_the_plan(stored, config) else config.plan_hash()


def locate_run_dir(plan: SweepPlan) -> SweepPlan:
    """``plan`` in its existing run directory: the one named by its hash, or else one of the
    same plan named by the hash an earlier ctxrl gave it (before the hash left out fields
    that do not change the trained runs), so those runs are continued, not trained again."""
    if plan.location is not None or plan.run_dir.exists():
        return plan
    prefix = plan.run_name[: -len(plan.plan_hash[:10])]
    candidates = sorted(plan.config.output_dir.glob(f"{prefix}*/plan.yaml"))
    for plan_file in candidates:
        try:
            stored = parse_yaml(plan_file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            continue
        if isinstance(stored, dict) and stored_plan_hash(stored) == plan.plan_hash:
            return dataclasses.replace(plan, location=plan_file.parent)
    return plan


# ------------------------------------------------------------------------- locks
LOCK_FILE = "sweep.lock"


def _flock_now(handle: Any) -> None:
    """Take the lock without waiting on a sweep, but through a report's momentary look
    (:func:`sweep_holding` holds a shared lock for microseconds): three tries 50 ms apart
    before ``BlockingIOError``."""
    for attempt in range(3):
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == 2:
                raise
            time.sleep(0.05)


@contextmanager
def run_dir_lock(
    run_dir: Path,
    *,
    wait: bool = False,
    console: Console | None = None,
    what: str = "ctxrl sweep",
    can_wait: bool = True,
) -> Iterator[None]:
    """Hold ``run_dir``'s lock: one sweep (or transfer study) at a time trains into a run
    directory.

    An OS file lock (``flock`` on ``sweep.lock``), so the kernel releases it when the holding
    process ends, however it ends. Taken by another process: raise a :class:`CtxrlError`
    naming it (``what`` says what runs there; ``can_wait``: the command has ``--wait``), or
    with ``wait`` block until it is released."""
    handle = (run_dir / LOCK_FILE).open("a+")
    try:
        try:
            _flock_now(handle)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "a process that has not said which"
            if not wait:
                raise CtxrlError(
                    f"{run_dir} is in use by another {what} ({holder}); wait for it to finish"
                    + (", or pass --wait to start when it does" if can_wait else "")
                ) from None
            if console is not None:
                console.print(f"waiting for {holder} to release {run_dir}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        handle.write(f"pid {os.getpid()} on {platform.node()}, since {started}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


EXPORTS_LOCK_FILE = "exports.lock"


@contextmanager
def exports_lock(run_dir: Path, console: Console | None = None) -> Iterator[None]:
    """Hold ``run_dir``'s exports lock (``flock`` on ``exports.lock``, waiting for it, said on
    ``console``) while reading the store and writing the exports from it: a sweep's final
    exports and a report run beside it take turns, so whichever writes last has read the
    store after the other wrote, and a report that began before the sweep ended cannot
    replace its final exports with the runs it saw."""
    with (run_dir / EXPORTS_LOCK_FILE).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if console is not None:
                console.print(f"waiting for a report writing {run_dir}'s exports to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def sweep_holding(run_dir: Path) -> str | None:
    """Who holds ``run_dir``'s lock (``pid 123 on host, since ...``): a sweep running there
    now; None when none does. Takes no lock and creates nothing."""
    try:
        handle = (run_dir / LOCK_FILE).open("r")
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "a process that has not said which"
        except OSError:
            return None
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None
