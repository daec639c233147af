"""Files that survive pre-emption: atomic writes, integrity-checked checkpoints, and job locks.

Every file a later step reads is written to a temporary file in the same directory, fsynced, and
renamed over the target, so a reader sees either the old complete file or the new complete one, never
half of one. Checkpoints and masks are wrapped in an envelope that records the SHA-256 of their body
and the hash of the run configuration that made them; loading verifies both, so a corrupted file or a
checkpoint copied into the wrong run directory is refused with a message instead of being trained on.
"""

from __future__ import annotations

import copy
import errno
import fcntl
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

from . import layout

FORMAT = "ticketbench-checkpoint-v1"


class CheckpointError(RuntimeError):
    """A stored file is corrupt or belongs to another configuration. The message says what to do."""


class WriteError(RuntimeError):
    """A file could not be written (disk full, read-only directory)."""


def atomic_write(path: str | Path, data: bytes | str) -> None:
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        reason = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only",
                  errno.EACCES: "permission denied", errno.EDQUOT: "the disk quota is exceeded"}.get(e.errno, e.strerror)
        fix = "free space, or choose another results directory" if full else "choose a writable results directory"
        raise WriteError(f"cannot write {path}: {reason}; {fix}, then rerun to resume (everything written before "
                         f"is intact)") from None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(path: str | Path, payload: dict[str, Any], *, kind: str, config_hash: str) -> str:
    """Write ``payload`` (tensors and plain data) atomically; returns the body's SHA-256.

    Tensors are stored as CPU tensors, whatever device they are on: the same weights then make the same
    bytes (and hash) on a CPU and a GPU, and a file loads on a machine without a GPU. A CPU tensor is
    stored as it is (``Tensor.cpu`` returns it unchanged), so files written on the CPU keep their bytes."""
    buf = io.BytesIO()
    torch.save(on_cpu(payload), buf)
    body = buf.getvalue()
    digest = hashlib.sha256(body).hexdigest()
    envelope = {"format": FORMAT, "kind": kind, "config_hash": config_hash, "sha256": digest, "body": body}
    out = io.BytesIO()
    torch.save(envelope, out)
    atomic_write(path, out.getvalue())
    return digest


def on_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in its dicts, lists and tuples moved to the CPU (layout kept). What holds
    only CPU tensors is returned as it is, and a dict keeps its type and attributes (a state dict's
    ``OrderedDict`` and ``_metadata``), so that a file is the same bytes whichever device its tensors were on."""
    if torch.is_tensor(obj):
        return obj.cpu()
    if isinstance(obj, dict):
        moved = {k: on_cpu(v) for k, v in obj.items()}
        if all(moved[k] is v for k, v in obj.items()):
            return obj
        out = copy.copy(obj)
        out.update(moved)
        return out
    if isinstance(obj, (list, tuple)):
        moved_items = [on_cpu(v) for v in obj]
        if all(a is b for a, b in zip(moved_items, obj)):
            return obj
        return moved_items if isinstance(obj, list) else tuple(moved_items)
    return obj


def load(path: str | Path, *, kind: str, config_hash: str | None) -> dict[str, Any]:
    """Load and verify a file written by :func:`save`, onto the CPU. ``config_hash=None`` skips the ownership
    check (for tools such as the audit that read files of any run)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; rerun the step that produces it")
    try:
        envelope = torch.load(path, map_location="cpu", weights_only=True)
        ok = isinstance(envelope, dict) and envelope.get("format") == FORMAT
    except Exception:  # torch.load raises many types on garbage input
        ok = False
    if not ok:
        raise CheckpointError(f"{path}: corrupt or not a ticketbench checkpoint; delete it and rerun the step that made it")
    if hashlib.sha256(envelope["body"]).hexdigest() != envelope["sha256"]:
        raise CheckpointError(f"{path}: content hash mismatch (the file was modified or damaged); delete it and rerun")
    if envelope["kind"] != kind:
        raise CheckpointError(f"{path}: holds a {envelope['kind']!r}, expected a {kind!r}")
    if config_hash is not None and envelope["config_hash"] != config_hash:
        raise CheckpointError(f"{path}: made by config {envelope['config_hash']}, not this run's {config_hash}; "
                              f"it is in the wrong run directory (use a fresh --run-dir or delete it)")
    return torch.load(io.BytesIO(envelope["body"]), map_location="cpu", weights_only=True)


def sha256_of(path: str | Path) -> str:
    """The body hash recorded in a checkpoint envelope (what the audit and summaries cite)."""
    return torch.load(path, map_location="cpu", weights_only=True)["sha256"]


def remove_stale_temporaries(folder: Path, name: str = "*") -> None:
    """Delete temporary files of writes that a killed process never finished. Only call it while
    holding the lock of the job that writes them: a live writer's temporary file must not vanish."""
    for tmp in folder.glob(f".{name}.tmp-*"):
        tmp.unlink(missing_ok=True)


class JobLock:
    """An exclusive, non-blocking lock on a job directory, so two processes (two workflow invocations,
    or a workflow and a manual CLI call) never train into the same directory at once. The kernel drops
    the lock when the process dies, so a killed job never leaves a stale lock behind."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / layout.LOCK
        self._fd: int | None = None

    def __enter__(self) -> "JobLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise WriteError(f"cannot create {self.path}: {e.strerror}; choose a writable results directory") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            holder = self.path.read_text().strip() or "another process"
            raise CheckpointError(f"{self.path.parent}: already being trained by {holder}; wait for it or kill it") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"pid {os.getpid()} on {os.uname().nodename}".encode())
        remove_stale_temporaries(self.path.parent)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
