"""The result store of a sweep: one file per result, named safely, fingerprinted, locked.

Rules (documented in ``docs/faithfulness.rst``, "Result store"):

- **Names.** Every name (mode, method, run) becomes one path component by an injective
  escaping: ASCII letters, digits and ``-_.=`` stay, every other character becomes ``%XX``
  (its UTF-8 bytes), and a leading dot becomes ``%2E``. ``..``, separators and absolute
  paths therefore cannot leave the store, and ``"a b"`` and ``"a_b"`` get different files.
  Every path is resolved and checked to lie under the store's root before it is used.
- **Fingerprints.** Each record carries the fingerprint of everything that determines it
  (:mod:`xai_feedback.evaluation.fingerprint`). A record whose fingerprint differs from the
  one asked for is never reused: ``on_mismatch="raise"`` raises :class:`StoreError` naming the
  file and what differs, ``"recompute"`` moves it to ``<root>/_stale/`` and recomputes.
- **Corruption.** A record that cannot be read is moved to ``<root>/_corrupt/`` and
  recomputed (``on_corrupt="recompute"``, with a warning naming it) or raises
  :class:`StoreError` naming it (``"raise"``).
- **Locking.** Reads, writes and moves take the store's file lock (``<root>/.lock``, from
  :mod:`filelock`), so two sweeps can share one store: the first finished record of a run
  is kept, the second sweep reads it. Writes are atomic (temporary file + rename); a
  temporary file seen while holding the lock was left by a killed writer and is removed.
"""

from __future__ import annotations

import json
import os
import shutil
import string
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from filelock import FileLock, Timeout

from xai_feedback._checks import check_choice
from xai_feedback._io import load_tensor, read_json, save_tensor_atomic, write_json_atomic
from xai_feedback.errors import DTypeError, RangeError, StoreError
from xai_feedback.evaluation.fingerprint import Fingerprint, canonical_json

__all__ = [
    "ON_CORRUPT",
    "ON_MISMATCH",
    "RunStore",
    "StoreError",
    "check_json_object",
    "check_run_record",
    "escape_name",
]

OnMismatch = Literal["raise", "recompute"]
OnCorrupt = Literal["raise", "recompute"]
ON_MISMATCH = ("raise", "recompute")
"""What a store does with a record made from other inputs."""
ON_CORRUPT = ("raise", "recompute")
"""What a store does with a record it cannot read."""

_SAFE = frozenset(string.ascii_letters + string.digits + "-_.=")
_MAX_NAME = 200


def escape_name(name: str) -> str:
    """The file-name component of ``name``: injective, never a separator, ``.`` or ``..``.

    Example:
        >>> escape_name("a b"), escape_name("a_b"), escape_name(".."), escape_name("/etc")
        ('a%20b', 'a_b', '%2E.', '%2Fetc')
    """
    if not isinstance(name, str):
        raise DTypeError(f"a store name must be a str, got {type(name).__name__}.")
    if not name:
        raise RangeError("a store name must not be empty, got ''.")
    out = "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in name)
    out = "%2E" + out[1:] if out.startswith(".") else out
    if len(out) > _MAX_NAME:
        raise RangeError(
            f"a store name must escape to at most {_MAX_NAME} characters, got {len(out)} "
            f"for {name[:40]!r}..."
        )
    return out


def _differences(stored: Any, expected: Mapping[str, Any]) -> list[str]:
    if not isinstance(stored, Mapping):
        return ["(no fingerprint: made by an older version)"]
    keys = sorted(set(stored) | set(expected))
    return [k for k in keys if stored.get(k) != expected.get(k)]


def check_json_object(record: Any) -> dict[str, Any]:
    """``record`` if it is a JSON object (``ValueError`` otherwise): any benchmark's record."""
    if not isinstance(record, dict):
        raise ValueError(f"not a JSON object, got {type(record).__name__}")
    return record


def check_run_record(record: Any) -> dict[str, Any]:
    """``record`` if it is a sweep's run record (``ValueError`` otherwise)."""
    if not isinstance(record, dict) or record.get("status") not in ("ok", "failed"):
        raise ValueError("not a run record (no 'status' of 'ok' or 'failed')")
    value = record.get("value")
    if record["status"] == "ok" and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ValueError(f"an 'ok' record needs a numeric 'value', got {value!r}")
    return record


class _Folder:
    """The file-system layer of a store: safe paths under ``root``, its lock, atomic writes.

    Args:
        root: The folder (created when first locked).
        lock_timeout: Seconds to wait for the lock before :class:`StoreError`.
    """

    def __init__(self, root: str | os.PathLike[str], lock_timeout: float) -> None:
        self.root = Path(root)
        self.lock_timeout = float(lock_timeout)
        self._lock: FileLock | None = None

    # -- paths ---------------------------------------------------------------------------
    def path(self, parts: Sequence[str], suffix: str = ".json") -> Path:
        """File of the record named by ``parts`` (each part escaped by :func:`escape_name`)."""
        if isinstance(parts, str) or not parts:
            raise RangeError(f"`parts` must be a non-empty sequence of names, got {parts!r}.")
        names = [escape_name(p) for p in parts]
        return self._inside(self.root.joinpath(*names[:-1], names[-1] + suffix))

    def _inside(self, path: Path) -> Path:
        root = self.root.resolve()
        resolved = path.resolve()
        if resolved != root and root not in resolved.parents:
            raise StoreError(f"refusing to use {path}: it resolves outside the store {root}.")
        return path

    # -- locking -------------------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's file lock (re-entrant); :class:`StoreError` after the timeout."""
        if self._lock is None:
            self.root.mkdir(parents=True, exist_ok=True)
            self._lock = FileLock(str(self.root / ".lock"), timeout=self.lock_timeout)
        try:
            with self._lock:
                yield
        except Timeout as error:
            raise StoreError(
                f"could not lock the store {self.root} within {self.lock_timeout:g} s "
                f"(lock file {error.lock_file}): another sweep holds it."
            ) from error

    def clean_temporary(self) -> list[Path]:
        """Remove temporary files left by a killed writer (only while holding the lock)."""
        with self.locked():
            stale = [p for p in self.root.rglob("*.tmp") if p.is_file()]
            for p in stale:
                p.unlink(missing_ok=True)
        return stale

    def _write(self, path: Path, write: Any) -> None:
        try:
            write()
        except OSError as error:
            raise StoreError(
                f"could not write {path}: {error}. Records written before are intact; "
                "free the space (or fix the permissions) and run the sweep again to resume."
            ) from error

    def _set_aside(self, path: Path, folder: str) -> Path:
        target = self._inside(self.root / folder / path.relative_to(self.root))
        target = target.with_name(f"{target.name}.{time.time_ns()}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), str(target))
        return target


class RunStore(_Folder):
    """One JSON file per finished run under ``root`` (rules in the module docs).

    Args:
        root: The store's folder (created when first written).
        on_mismatch: ``"raise"`` or ``"recompute"`` for a record with another fingerprint.
        on_corrupt: ``"recompute"`` or ``"raise"`` for a record that cannot be read.
        lock_timeout: Seconds to wait for the store's lock before :class:`StoreError`.
        record_check: What a readable record must look like (raises ``ValueError``
            otherwise, and the record counts as corrupt): a sweep's run record
            (:func:`check_run_record`, the default) or any JSON object
            (:func:`check_json_object`, for benchmarks' own records).

    Example:
        >>> import tempfile
        >>> store = RunStore(tempfile.mkdtemp())
        >>> key = Fingerprint.of({"fill": "zero"})
        >>> store.put(["roar", "a b", "f0.5_r0"], {"status": "ok", "value": 1.0}, key)["value"]
        1.0
        >>> store.path(["roar", "a b", "f0.5_r0"]).relative_to(store.root).as_posix()
        'roar/a%20b/f0.5_r0.json'
        >>> store.get(["roar", "a b", "f0.5_r0"], key)["status"]
        'ok'
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        on_mismatch: OnMismatch = "raise",
        on_corrupt: OnCorrupt = "recompute",
        lock_timeout: float = 120.0,
        record_check: Callable[[Any], dict[str, Any]] = check_run_record,
    ) -> None:
        super().__init__(root, lock_timeout)
        self.record_check = record_check
        self.on_mismatch = check_choice(on_mismatch, "on_mismatch", ON_MISMATCH)
        self.on_corrupt = check_choice(on_corrupt, "on_corrupt", ON_CORRUPT)

    # -- records -------------------------------------------------------------------------
    def get(
        self, parts: Sequence[str], expected: Fingerprint | None = None
    ) -> dict[str, Any] | None:
        """The stored record if it is readable and (when ``expected`` is given) matches it."""
        path = self.path(parts)
        with self.locked():
            try:
                raw = read_json(path)
                record = None if raw is None else self.record_check(raw)
            except (ValueError, AttributeError) as error:
                self._corrupt(path, error)
                return None
            if record is None or expected is None:
                return record
            if record.get("fingerprint") == expected.digest:
                return record
            self._mismatch(path, record.get("identity"), expected)
            return None

    def put(
        self, parts: Sequence[str], record: dict[str, Any], expected: Fingerprint | None = None
    ) -> dict[str, Any]:
        """Store ``record``; returns it, or the matching successful record another sweep wrote."""
        path = self.path(parts)
        with self.locked():
            if expected is not None:
                current = self._peek(path)
                same = current is not None and current.get("fingerprint") == expected.digest
                if same and current is not None and current.get("status") == "ok":
                    return current  # another sweep finished this run first
                record = {**record, "fingerprint": expected.digest, "identity": expected.document}
            self._write(path, lambda: write_json_atomic(path, record))
        return record

    def _peek(self, path: Path) -> dict[str, Any] | None:
        try:
            return read_json(path)
        except (ValueError, OSError):
            return None

    def _corrupt(self, path: Path, error: Exception) -> None:
        if self.on_corrupt == "raise":
            raise StoreError(
                f"the record {path} cannot be read ({type(error).__name__}: {error}); delete it, "
                "or use RunStore(..., on_corrupt='recompute') to set it aside and recompute it."
            ) from error
        kept = self._set_aside(path, "_corrupt")
        warnings.warn(
            f"the record {path} cannot be read ({type(error).__name__}: {error}); "
            f"moved to {kept} and recomputing it.",
            RuntimeWarning,
            stacklevel=4,
        )

    def _mismatch(self, path: Path, stored: Any, expected: Fingerprint) -> None:
        if self.on_mismatch == "raise":
            differing = ", ".join(_differences(stored, expected.document))
            raise StoreError(
                f"the record {path} was made from other inputs (differs in: {differing}); it is "
                "never reused: use another store, delete it, or "
                "RunStore(..., on_mismatch='recompute')."
            )
        self._set_aside(path, "_stale")

    # -- settings and tensors ------------------------------------------------------------
    def check_settings(self, settings: dict[str, Any]) -> None:
        """Refuse (:class:`RangeError`) a store made with other settings, or adopt them."""
        path = self._inside(self.root / "sweep.json")
        with self.locked():
            try:
                stored = read_json(path)
            except ValueError as error:
                self._corrupt(path, error)
                stored = None
            if stored == settings:
                return
            if stored is not None and self.on_mismatch == "raise":
                raise RangeError(
                    f"the store {self.root} holds runs made with {stored}, but this sweep "
                    f"uses {settings}: use another `store` (or delete it, or "
                    "RunStore(..., on_mismatch='recompute'))."
                )
            self._write(path, lambda: write_json_atomic(path, settings))

    def get_tensor(self, parts: Sequence[str], expected: Fingerprint) -> torch.Tensor | None:
        """A cached tensor stored with ``expected``'s fingerprint, or ``None``."""
        path = self.path(parts, ".pt")
        with self.locked():
            if not path.exists():
                return None
            try:
                entry = load_tensor(path)
                if not isinstance(entry, dict) or not isinstance(entry["tensor"], torch.Tensor):
                    raise ValueError("not a cached tensor entry")
            except Exception as error:  # any unpickling failure is corruption
                self._corrupt(path, error)
                return None
            if entry.get("fingerprint") == expected.digest:
                tensor: torch.Tensor = entry["tensor"]
                return tensor
            stored = (
                json.loads(entry["identity"]) if isinstance(entry.get("identity"), str) else None
            )
            self._mismatch(path, stored, expected)
            return None

    def put_tensor(self, parts: Sequence[str], tensor: torch.Tensor, expected: Fingerprint) -> None:
        """Cache ``tensor`` with ``expected``'s fingerprint (loaded with ``weights_only=True``)."""
        path = self.path(parts, ".pt")
        entry = {
            "tensor": tensor,
            "fingerprint": expected.digest,
            "identity": canonical_json(expected.document),
        }
        with self.locked():
            self._write(path, lambda: save_tensor_atomic(path, entry))
