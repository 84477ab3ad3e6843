"""What the tests of each study command check of its ``--dry-run``."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any


def assert_dry_run_prints_the_study(
    run_ctxrl: Callable[..., subprocess.CompletedProcess[str]],
    command: list[str],
    study: Path,
    load: Callable[[Path], Any],
) -> None:
    """``ctxrl COMMAND STUDY --dry-run`` prints the validated study, defaults filled in, as YAML
    on standard output (as ``ctxrl sweep --dry-run`` prints its plan), then what it resolves to
    with the installed plugins as YAML comments, and its summary line on standard error; it
    writes no run directory (the study's ``output_dir`` is ``runs`` beside the study file)."""
    result = run_ctxrl(*command, str(study), "--dry-run", check=True)
    printed = study.parent / "printed.yaml"
    printed.write_text(result.stdout)
    assert load(printed) == load(study)
    # then, as comments, what it resolves to with the installed plugins (plan.yaml's record)
    record = result.stdout.split("\n# resolved:\n")[1]
    assert record.startswith("#   ") and all(line.startswith("# ") for line in record.splitlines())
    assert "->" in result.stderr
    assert str(study.parent / "runs") in result.stderr  # on one line, not folded mid-path
    assert not (study.parent / "runs").exists()
