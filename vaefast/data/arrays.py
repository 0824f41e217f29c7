"""NumPy sources: ``.npy`` (memory-mapped) and ``.npz`` image arrays.

Clips are arrays of rank 5, ``[N, T, H, W, C]`` (or ``[N, C, T, H, W]``), kept as ``[N, C, T, H, W]``.
Layout resolution, for an array of rank 4: channels-last ``[N, H, W, C]`` when the last axis has 1, 3 or 4 entries
and axis 1 does not; channels-first ``[N, C, H, W]`` when axis 1 has 1, 3 or 4 entries and the last does not;
when both could be channels (e.g. ``[N, 3, 4, 3]``) the array is ambiguous and refused with a message. Rank 3 is
``[N, H, W]`` (one channel). uint8 images are used as they are; float images must lie in [0, 1] and are scaled to
uint8 (the in-memory loader stores bytes, a quarter of the memory).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import DataError

CHANNEL_COUNTS = (1, 3, 4)
# Above this many bytes an .npy file is memory-mapped rather than read, and converted batch by batch.
MMAP_BYTES = 512 * 2**20


def to_nchw(array: np.ndarray, origin: str) -> np.ndarray:
    """Images to ``[N, C, H, W]``; clips (rank 5, ``[N, T, H, W, C]`` or ``[N, C, T, H, W]``) to
    ``[N, C, T, H, W]``."""
    if array.ndim == 5:
        last_is_c, first_is_c = array.shape[4] in CHANNEL_COUNTS, array.shape[1] in CHANNEL_COUNTS
        if last_is_c and not first_is_c:
            return array.transpose(0, 4, 1, 2, 3)
        if first_is_c and not last_is_c:
            return array
        raise DataError(f"{origin}: cannot tell whether clips of shape {array.shape} are [N, T, H, W, C] or "
                        "[N, C, T, H, W]; save them channels-last with W different from 1, 3 and 4")
    if array.ndim == 3:
        return array[:, None]
    if array.ndim != 4:
        raise DataError(f"{origin}: expected images of rank 3 [N, H, W] or rank 4 ([N, H, W, C] or [N, C, H, W]), "
                        f"got shape {array.shape}")
    last_is_c, first_is_c = array.shape[3] in CHANNEL_COUNTS, array.shape[1] in CHANNEL_COUNTS
    if last_is_c and not first_is_c:
        return array.transpose(0, 3, 1, 2)
    if first_is_c and not last_is_c:
        return array
    raise DataError(f"{origin}: cannot tell whether shape {array.shape} is [N, H, W, C] or [N, C, H, W]; "
                    "save it channels-last or channels-first with H and W different from 1, 3 and 4")


def to_uint8(array: np.ndarray, origin: str, chunk: int = 4096) -> np.ndarray:
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if not np.issubdtype(array.dtype, np.floating):
        raise DataError(f"{origin}: expected uint8 or float images, got dtype {array.dtype}")
    out = np.empty(array.shape, dtype=np.uint8)
    for start in range(0, len(array), chunk):  # chunked, so that a memory-mapped array is never loaded whole
        part = np.asarray(array[start:start + chunk], dtype=np.float32)
        if not np.isfinite(part).all() or part.min() < 0.0 or part.max() > 1.0:
            raise DataError(f"{origin}: float images must lie in [0, 1] (images {start}..{start + len(part) - 1} "
                            f"span [{np.nanmin(part):.3g}, {np.nanmax(part):.3g}] or hold NaN)")
        out[start:start + chunk] = np.rint(part * 255.0)
    return out


def load_array(path: str | Path, key: str | None = None) -> np.ndarray:
    """The image array in ``path`` (``.npy``, or ``.npz`` with ``key`` or its only/first 'images'/'x' array)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"NumPy file not found: {path}")
    try:
        if path.suffix == ".npz":
            with np.load(path) as archive:
                names = list(archive.files)
                name = key or next((n for n in ("images", "x", "arr_0") if n in names), names[0] if names else None)
                if name is None or name not in names:
                    raise DataError(f"{path}: no array {key or 'images'!r}; it holds {names}")
                return archive[name]
        mmap = "r" if path.stat().st_size > MMAP_BYTES else None
        return np.load(path, mmap_mode=mmap, allow_pickle=False)
    except (DataError, MemoryError):
        raise
    except Exception as exc:  # any failure to decode (a corrupt header, zlib, zip), with the original as cause
        raise DataError(f"cannot read NumPy file {path}: {type(exc).__name__}: {exc}") from exc


def numpy_images(path: str | Path) -> torch.Tensor:
    array = load_array(path)
    return torch.from_numpy(to_uint8(to_nchw(array, str(path)), str(path)))
