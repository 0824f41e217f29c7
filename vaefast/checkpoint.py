"""Atomic, self-pruning, verified checkpoints that load without running code.

A checkpoint is written to a temporary file in the same folder, fsynced, then renamed over its final name (an
atomic replace on POSIX), and the folder is fsynced so the rename survives a crash. Only then are checkpoints
beyond the newest ``keep`` removed, so a crash at any moment leaves the last good checkpoint intact. A write that
fails (a full or read-only disk) removes its temporary file and raises one CheckpointError naming the folder and
the space needed.

Format 2 holds tensors and plain Python data only (dicts, lists, tuples, numbers, strings), so it loads with
``torch.load(weights_only=True)``: nothing in the file is executed. It carries a SHA-256 over its contents
(every tensor's bytes, dtype and shape, and every other value, in order), recomputed on every load, so a flipped
byte anywhere in the tensor data, or a changed value, is a CheckpointError naming the file rather than silently
different weights. Format 1 checkpoints (pickled numpy RNG state, no checksum) load only with ``trust=True``
(``--trust-checkpoint``), which unpickles them: only for files you wrote yourself.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import pickle
import re
import shutil
import tempfile
import threading
from pathlib import Path

import torch

CHECKPOINT_GLOB = "ckpt-step*.pt"
_STEP = re.compile(r"ckpt-step(\d+)\.pt$")
FORMAT_VERSION = 2
LEGACY_FORMAT = 1  # pickled, unverified: loads only when trusted
DIGEST_KEY = "sha256"
_DISK_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                errno.EPERM: "permission denied"}
log = logging.getLogger("vaefast.checkpoint")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read: missing, truncated, corrupt or of another format."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening a directory; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def content_digest(state) -> str:
    """SHA-256 over a checkpoint's contents in order: each tensor's dtype, shape and bytes, and every other value's
    type and repr (floats repr exactly). Raises TypeError for anything a weights-only load could not restore."""
    digest = hashlib.sha256()

    def walk(obj) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous().reshape(-1)
            digest.update(f"T{t.dtype}{tuple(obj.shape)}".encode())
            if t.numel():
                digest.update(t.view(torch.uint8).numpy())  # the buffer itself, not a copy of it
        elif isinstance(obj, dict):
            digest.update(f"D{len(obj)}".encode())
            for key, value in obj.items():
                walk(key)
                walk(value)
        elif isinstance(obj, (list, tuple)):
            digest.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}".encode())
            for value in obj:
                walk(value)
        elif obj is None or isinstance(obj, (bool, int, float, str, bytes)):
            digest.update(f"{type(obj).__name__}:{obj!r};".encode())
        else:
            raise TypeError(f"a checkpoint holds tensors and plain data only, not {type(obj).__name__}")

    walk(state)
    return digest.hexdigest()


def _to_host(state):
    """A copy of ``state`` that the training thread no longer touches: every tensor copied to CPU memory."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {key: _to_host(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_to_host(value) for value in state)
    return state


def _state_bytes(state) -> int:
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(_state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_state_bytes(v) for v in state)
    return 0


def atomic_save(state: dict, path: Path) -> Path:
    """Write ``state`` to ``path`` atomically; a failed write leaves no temporary file and the old file intact."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        reason = disk_error(exc)
        if reason is None:
            raise
        try:
            free = f"{shutil.disk_usage(path.parent).free / 2**20:,.1f} MiB free there"
        except OSError:
            free = "free space unknown"
        raise CheckpointError(f"cannot write checkpoint {path.name} in {path.parent}: {reason} ({free}; the "
                              f"checkpoint needs about {_state_bytes(state) / 2**20:,.1f} MiB). The previous "
                              "checkpoint is intact; free space or pass another --out, then --resume") from None
    _fsync_dir(path.parent)
    return path


def ensure_writable(folder: Path) -> None:
    """Fail before training, not at the first checkpoint, when ``folder`` cannot be written (read-only file system,
    permissions, a full disk)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".vaefast-write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = disk_error(exc)
        if reason is None:
            raise
        raise CheckpointError(f"cannot write in {folder}: {reason}; pass another --out") from None


def disk_error(exc: BaseException) -> str | None:
    """Why a write failed, when the cause is the disk; torch.save reports ENOSPC as a RuntimeError from its zip
    writer without an errno, so its message is read too."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in _DISK_ERRORS:
            return _DISK_ERRORS[exc.errno]
        if isinstance(exc, RuntimeError) and ("unexpected pos" in str(exc) or "No space left" in str(exc)):
            return "the disk is full"
        exc = exc.__cause__ or exc.__context__
    return None


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints in ``folder``, oldest first by step."""
    found = [(int(m.group(1)), p) for p in folder.glob(CHECKPOINT_GLOB) if (m := _STEP.search(p.name))]
    return [p for _, p in sorted(found)]


class Checkpointer:
    """Writes checkpoints when it is told to (``save``) and says when its interval comes round (``is_due``); on every
    rank but 0 it is disabled and writes nothing, so callers never ask which rank they are.

    The stateful parts of a run register themselves (``register``), as in torchtitan: a checkpoint holds each
    part's ``state_dict()`` under its name, and ``restore`` hands each its state back in registration order (so a
    part that depends on another, such as a schedule on its optimizer, registers after it).

    Writes are asynchronous: ``save`` waits only for the state's copy to host memory, then a background thread
    hashes, writes (atomically, as above) and prunes, with at most one write in flight. A failed write (a full disk)
    raises its one-line CheckpointError at the next step boundary (``is_due``) or at ``wait``, which the end of
    training and a stop on a signal call; a kill mid-write leaves the previous checkpoint and, once the run folder is
    opened again, no temporary file.
    """

    def __init__(self, folder: str | Path, keep: int = 3, enabled: bool = True, every: int = 0,
                 background: bool = True):
        self.folder = Path(folder)
        self.keep = keep
        self.enabled = enabled
        self.every = every  # steps between checkpoints; 0: only when saved explicitly
        self.background = background
        self.parts: list[tuple[str | None, object]] = []
        self._writer: threading.Thread | None = None
        self._failure: BaseException | None = None
        if enabled:  # what a write killed halfway left behind: never a checkpoint, only its temporary file
            for stale in self.folder.glob(".ckpt-step*.pt.*.tmp"):
                stale.unlink(missing_ok=True)

    def register(self, name: str | None, part) -> None:
        """``part`` has ``state_dict()`` and ``load_state_dict(state)``; ``name`` None puts its keys at the top level
        of the checkpoint. A registered part absent from an older checkpoint is left as it is."""
        self.parts.append((name, part))

    def state(self) -> dict:
        state = {}
        for name, part in self.parts:
            state.update(part.state_dict() if name is None else {name: part.state_dict()})
        return state

    def restore(self, state: dict) -> None:
        for name, part in self.parts:
            if name is None:
                part.load_state_dict(state)
            elif name in state:
                part.load_state_dict(state[name])

    def is_due(self, step: int) -> bool:
        """Whether ``step`` ends with a checkpoint; at this step boundary a background write that failed raises."""
        if self._writer is not None and not self._writer.is_alive():
            self.wait()
        return bool(self.every) and step % self.every == 0

    def save(self, state: dict, step: int) -> Path | None:
        """Start writing ``state`` as the checkpoint of ``step`` and return its path (written once ``wait`` returns)."""
        if not self.enabled:
            return None
        self.wait()
        path = checkpoint_path(self.folder, step)
        snapshot = _to_host(state)  # the step loop waits for this copy only
        if not self.background:
            self._write(snapshot, path)
            return path
        self._writer = threading.Thread(target=self._write_in_background, args=(snapshot, path),
                                        name="vaefast-checkpoint")  # not a daemon: an exit waits for the write
        self._writer.start()
        return path

    def wait(self) -> None:
        """Wait for the write in flight; raise its error if it failed."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def _write_in_background(self, state: dict, path: Path) -> None:
        try:
            self._write(state, path)
        except BaseException as exc:  # raised in the training thread by wait()
            self._failure = exc

    def _write(self, state: dict, path: Path) -> None:
        state = {"format_version": FORMAT_VERSION, **state}
        state[DIGEST_KEY] = content_digest(state)
        atomic_save(state, path)
        for old in list_checkpoints(self.folder)[:-self.keep]:
            old.unlink(missing_ok=True)

    def latest(self) -> Path | None:
        """The newest checkpoint in the folder, the one being written included (this waits for it)."""
        self.wait()
        found = list_checkpoints(self.folder)
        return found[-1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the newest checkpoint in a run folder."""
    return _candidates(path)[0]


def _candidates(path: str | Path) -> list[Path]:
    """The file itself, or a run folder's checkpoints newest first."""
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise CheckpointError(f"no checkpoint ({CHECKPOINT_GLOB}) in {path}")
        return found[::-1]
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return [path]


def checkpoint_path(folder: str | Path, step: int) -> Path:
    """The file of a run folder's checkpoint of ``step``."""
    return Path(folder) / f"ckpt-step{step:09d}.pt"


def load_checkpoint(path: str | Path, map_location="cpu", *, trust: bool = False, fallback: bool = False) -> dict:
    """Load and verify a checkpoint file, or the newest in a run folder.

    ``fallback``: when the newest in a folder is corrupt, warn naming it and load the newest good one instead.
    ``trust``: also accept format-1 checkpoints, which must be unpickled (this runs code from the file)."""
    candidates = _candidates(path)
    first_error = None
    for candidate in candidates if fallback else candidates[:1]:
        try:
            state = _load_verified(candidate, map_location, trust)
        except CheckpointError as exc:
            first_error = first_error or exc
            continue
        if candidate != candidates[0]:
            log.warning("checkpoint %s is unreadable (%s); resuming from %s, the newest good one", candidates[0],
                        first_error, candidate)
            state["_loaded_from"] = str(candidate)
        return state
    raise first_error


def _load_verified(path: Path, map_location, trust: bool) -> dict:
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower() and "weights_only" not in str(exc):
            raise CheckpointError(f"cannot read checkpoint {path}: it is truncated or corrupt ({exc})") from None
        if not trust:
            raise CheckpointError(
                f"{path} holds Python objects that only unpickling can restore, which runs code from the file; "
                f"vaefast's own checkpoints since format {FORMAT_VERSION} hold tensors and plain data only. If this "
                "is a checkpoint you wrote with an older vaefast and you trust it, pass --trust-checkpoint "
                "(load_checkpoint(..., trust=True))") from None
        state = _load_trusted(path, map_location)
    except Exception as exc:  # noqa: BLE001 - a weights-only load of a damaged file can fail in many ways
        raise CheckpointError(f"cannot read checkpoint {path}: it is truncated or corrupt "
                              f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format_version") not in (FORMAT_VERSION, LEGACY_FORMAT):
        raise CheckpointError(f"{path} is not a vaefast checkpoint (format version {FORMAT_VERSION})")
    if state["format_version"] == LEGACY_FORMAT:
        if not trust:
            raise CheckpointError(f"{path} is a format-{LEGACY_FORMAT} checkpoint, which carries no checksum; pass "
                                  "--trust-checkpoint to load it unverified")
        log.warning("%s: format %d checkpoint loaded unverified (it has no checksum)", path, LEGACY_FORMAT)
        return state
    expected = state.pop(DIGEST_KEY, None)
    try:
        actual = content_digest(state)
    except TypeError as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt: {exc}") from None
    if expected != actual:
        raise CheckpointError(f"checkpoint {path} is corrupt: its contents do not match the SHA-256 stored in it "
                              "(a damaged copy or disk); use an earlier checkpoint")
    return state


def _load_trusted(path: Path, map_location) -> dict:
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - unpickling can raise anything; it is reported as unreadable
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
