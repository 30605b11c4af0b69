"""Atomic result files: a temporary file in the same folder, then a rename.

A reader (or a restarted sweep) sees either the previous file or the complete new one, never
a half-written one. Used by the evaluators' run stores and by the benchmarks.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

__all__ = ["load_tensor", "read_json", "save_tensor_atomic", "write_json_atomic"]


def _write_atomic(path: Path, write: Callable[[IO[Any]], None], mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (POSIX); best effort where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as JSON to ``path`` atomically (temporary file + rename)."""
    _write_atomic(path, lambda h: json.dump(payload, h, indent=2, sort_keys=True), "w")


def save_tensor_atomic(path: Path, tensor: torch.Tensor | dict[str, Any]) -> None:
    """``torch.save`` a tensor (or a dict of tensors and strings) atomically."""
    _write_atomic(path, lambda h: torch.save(tensor, h), "wb")


def load_tensor(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers, no code."""
    return torch.load(path, map_location="cpu", weights_only=True)


def read_json(path: Path) -> dict[str, Any] | None:
    """Return the JSON object at ``path``, or ``None`` if it does not exist."""
    if not path.exists():
        return None
    with path.open() as handle:
        data: dict[str, Any] = json.load(handle)
    return data
