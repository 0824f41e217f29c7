"""Atomic, self-pruning checkpoints.

A checkpoint is written to a temporary file in the same folder, fsynced, then renamed over its final name (an
atomic replace on POSIX), and the folder is fsynced so the rename survives a crash. Only then are checkpoints
beyond the newest ``keep`` removed, so a crash at any moment leaves the last good checkpoint intact.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import torch

CHECKPOINT_GLOB = "ckpt-step*.pt"
_STEP = re.compile(r"ckpt-step(\d+)\.pt$")
FORMAT_VERSION = 1


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


def atomic_save(state: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints in ``folder``, oldest first by step."""
    found = [(int(m.group(1)), p) for p in folder.glob(CHECKPOINT_GLOB) if (m := _STEP.search(p.name))]
    return [p for _, p in sorted(found)]


class Checkpointer:
    """Writes checkpoints when it is told to (``save``) or when its interval comes round (``maybe_save``); on every
    rank but 0 it is disabled and writes nothing, so callers never ask which rank they are."""

    def __init__(self, folder: str | Path, keep: int = 3, enabled: bool = True, every: int = 0):
        self.folder = Path(folder)
        self.keep = keep
        self.enabled = enabled
        self.every = every  # steps between checkpoints; 0: only when saved explicitly

    def is_due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def maybe_save(self, step: int, state: Callable[[], dict]) -> Path | None:
        """Save ``state()`` if ``step`` is on the interval (the state is only built then)."""
        if self.is_due(step):
            return self.save(state(), step)
        return None

    def save(self, state: dict, step: int) -> Path | None:
        if not self.enabled:
            return None
        path = atomic_save({"format_version": FORMAT_VERSION, **state}, self.folder / f"ckpt-step{step:09d}.pt")
        for old in list_checkpoints(self.folder)[:-self.keep]:
            old.unlink(missing_ok=True)
        return path

    def latest(self) -> Path | None:
        found = list_checkpoints(self.folder)
        return found[-1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the newest checkpoint in a run folder."""
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise CheckpointError(f"no checkpoint ({CHECKPOINT_GLOB}) in {path}")
        return found[-1]
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: it is truncated or corrupt ({exc})") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a vaefast checkpoint (format version {FORMAT_VERSION})")
    return state
