"""Saved policies: tensors in safetensors, everything else in JSON. Never pickle.

An artifact at ``stem`` is two files: ``stem.safetensors`` (named tensors) and ``stem.json``
(metadata: algorithm, hyperparameters, spaces, ...). Loading reads tensors with safetensors, which
cannot execute code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctxrl.errors import CtxrlError

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 1


def save_artifact(
    stem: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]
) -> Path:
    """Write ``stem.safetensors`` and ``stem.json``; return the ``.safetensors`` path."""
    from safetensors.torch import save_file

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    weights = stem.with_suffix(".safetensors")
    contiguous = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    save_file(
        contiguous, str(weights), metadata={"format": "ctxrl", "version": str(FORMAT_VERSION)}
    )
    meta = {"format_version": FORMAT_VERSION, **metadata}
    stem.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return weights


def load_artifact(
    stem: str | Path, device: str = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read an artifact written by :func:`save_artifact`: ``(tensors, metadata)``."""
    from safetensors.torch import load_file

    stem = Path(stem)
    weights, meta_path = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    for path in (weights, meta_path):
        if not path.is_file():
            raise CtxrlError(f"artifact file {path} is missing")
    metadata: dict[str, Any] = json.loads(meta_path.read_text())
    if metadata.get("format_version") != FORMAT_VERSION:
        raise CtxrlError(
            f"{meta_path}: format_version {metadata.get('format_version')!r} "
            f"is not {FORMAT_VERSION}"
        )
    return load_file(str(weights), device=device), metadata
