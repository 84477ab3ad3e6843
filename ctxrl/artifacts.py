"""Saved policies: tensors in safetensors, everything else in JSON. Never pickle.

An artifact at ``stem`` is two files: ``stem.safetensors`` (named tensors) and ``stem.json``
(metadata: algorithm, hyperparameters, spaces, ...). Loading reads tensors with safetensors, which
cannot execute code.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctxrl.errors import CtxrlError

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 1
_HEADER_KEY = "ctxrl_metadata"
_DIGEST_KEY = "ctxrl_sha256"
"""The header's SHA-256 of the tensor data (the bytes after the header): a byte changed on
disk is caught when the artifact is verified or loaded (safetensors checks the header's
offsets, not the data)."""


ARTIFACT_SUFFIXES = (".safetensors", ".json")
"""The two files of an artifact: its tensors (with the metadata in the header) and a readable
copy of the metadata."""


def artifact_file(stem: str | Path, suffix: str = ".safetensors") -> Path:
    """The file of the artifact ``stem`` with ``suffix`` (``.safetensors`` or ``.json``),
    appended to the stem's name: ``runs/sp-0.8`` gives ``runs/sp-0.8.safetensors`` (a
    suffix in place of ``.8`` made ``sp-0.8`` and ``sp-0.9`` one file). A stem given with
    either suffix already is the artifact it names."""
    stem = Path(stem)
    if stem.suffix in ARTIFACT_SUFFIXES:
        stem = stem.with_suffix("")
    return stem.with_name(stem.name + suffix)


def save_artifact(
    stem: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]
) -> Path:
    """Write ``stem.safetensors`` and ``stem.json``; return the ``.safetensors`` path.

    Crash-safe: each file is written under a temporary name and moved into place, and the
    metadata also travels inside the safetensors header, so a process killed at any moment
    leaves either the old artifact or the new one, never a torn or mismatched pair (the JSON
    file is a readable copy; loading trusts the header)."""
    weights, meta_path = artifact_file(stem), artifact_file(stem, ".json")
    weights.parent.mkdir(parents=True, exist_ok=True)
    contiguous = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    meta_text = json.dumps(
        {"format_version": FORMAT_VERSION, **metadata}, indent=2, sort_keys=True, default=str
    )
    header = {
        "format": "ctxrl",
        "version": str(FORMAT_VERSION),
        _HEADER_KEY: meta_text,
        _DIGEST_KEY: "0" * 64,  # a placeholder of the digest's length, filled in below
    }
    partial_meta = meta_path.with_name(f".{meta_path.name}.partial")
    partial = weights.with_name(f".{weights.name}.partial")
    with _partials_removed_on_failure(weights, partial_meta, partial):
        partial_meta.write_text(meta_text)
        partial.write_bytes(_serialize(contiguous, header))
        # safetensors creates its file owner-only (0600) whatever the umask: give it the mode
        # the umask gave the JSON file, so that a run directory shared by a group stays readable
        os.chmod(partial, stat.S_IMODE(partial_meta.stat().st_mode))
        os.replace(partial, weights)
        os.replace(partial_meta, meta_path)
    return weights


@contextmanager
def _partials_removed_on_failure(target: Path, *partials: Path) -> Iterator[None]:
    """A write that fails (a full disk, a file-size limit) leaves no half-written
    ``partials`` taking space, and its error names ``target`` (a failed ``write`` names no
    file)."""
    try:
        yield
    except BaseException as exc:
        for partial in partials:
            partial.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from exc
        raise


def _serialize(tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """The safetensors file of ``tensors`` with ``metadata`` in its header, the same bytes
    every time: safetensors writes the metadata from a hash map, in an order that changes
    from call to call, so the header is written again with the metadata's keys sorted (the same
    JSON, the same length; were it ever longer, the file is kept as safetensors wrote it)."""
    from safetensors.torch import save

    data = save(dict(tensors), metadata=metadata)
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    if _DIGEST_KEY in header["__metadata__"]:
        header["__metadata__"][_DIGEST_KEY] = hashlib.sha256(data[8 + length :]).hexdigest()
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > length:
        return data
    return data[:8] + text.ljust(length) + data[8 + length :]


def _digest_problem(weights: Path, header: Mapping[str, str]) -> str | None:
    """Why the tensor data of ``weights`` does not match its header's digest (None when it
    does, or when an earlier ctxrl wrote no digest)."""
    expected = header.get(_DIGEST_KEY)
    if expected is None:
        return None
    with weights.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        handle.seek(8 + length)
        actual = hashlib.file_digest(handle, "sha256").hexdigest()
    if actual != expected:
        return f"{weights} is damaged (its tensor data does not match the checksum saved with it)"
    return None


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` under a temporary name and move it into place: a process
    killed meanwhile leaves the old file or the new one, never a truncated one."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    with _partials_removed_on_failure(path, partial):
        partial.write_text(text)
        os.replace(partial, path)


def remove_artifact(stem: str | Path, *, derived: bool = False) -> None:
    """Delete the artifact ``stem`` (its ``.safetensors`` and ``.json``) and, with
    ``derived``, the artifacts named after it (``{stem}-...``: a group's transfer checkpoint, a
    transfer's second training). Nothing there is fine."""
    for suffix in ARTIFACT_SUFFIXES:
        artifact_file(stem, suffix).unlink(missing_ok=True)
    if derived:
        stem = artifact_file(stem, "")
        for suffix in ARTIFACT_SUFFIXES:
            for file in stem.parent.glob(f"{stem.name}-*{suffix}"):
                file.unlink()


def verify_artifact(stem: str | Path) -> str | None:
    """What is wrong with the artifact at ``stem``, or None when it is whole: its tensors file
    exists, its header parses and covers the file to its last byte (safetensors checks both
    when it opens a file, so a file cut short by a full disk or an interrupted copy is
    caught) and its tensor data matches the digest it was saved with (a changed byte)."""
    from safetensors import SafetensorError, safe_open

    weights = artifact_file(stem)
    if not weights.is_file():
        return f"{weights} is missing"
    try:
        with safe_open(str(weights), framework="numpy") as handle:
            header = handle.metadata() or {}
        return _digest_problem(weights, header)
    except (SafetensorError, OSError) as exc:
        return f"{weights} is damaged ({exc})"


def artifact_metadata(stem: str | Path) -> dict[str, Any]:
    """The metadata of the artifact at ``stem`` (its safetensors header copy), without reading
    its tensors; ``{}`` when it has none."""
    from safetensors import safe_open

    weights = artifact_file(stem)
    with safe_open(str(weights), framework="numpy") as handle:
        header = handle.metadata() or {}
    return dict(json.loads(header[_HEADER_KEY])) if _HEADER_KEY in header else {}


def load_artifact(
    stem: str | Path, device: str = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read an artifact written by :func:`save_artifact`: ``(tensors, metadata)``. A missing
    or damaged file is a :class:`CtxrlError` naming it."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    weights, meta_path = artifact_file(stem), artifact_file(stem, ".json")
    if not weights.is_file():
        raise CtxrlError(f"artifact file {weights} is missing")
    try:
        with safe_open(str(weights), framework="pt") as handle:
            header = handle.metadata() or {}
        damage = _digest_problem(weights, header)
        if damage is not None:
            raise CtxrlError(f"artifact file {damage}; a rerun of its sweep trains it again")
        tensors = load_file(str(weights), device=device)
    except SafetensorError as exc:
        raise CtxrlError(
            f"artifact file {weights} is damaged ({exc}); a rerun of its sweep trains it again"
        ) from None
    if _HEADER_KEY in header:
        metadata: dict[str, Any] = json.loads(header[_HEADER_KEY])
    elif meta_path.is_file():  # artifacts from before the header copy
        metadata = json.loads(meta_path.read_text())
    else:
        raise CtxrlError(f"artifact file {meta_path} is missing")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise CtxrlError(
            f"{meta_path}: format_version {metadata.get('format_version')!r} "
            f"is not {FORMAT_VERSION}"
        )
    return tensors, metadata
