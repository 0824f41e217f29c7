"""IDX files (the MNIST format), plain or gzip-compressed, parsed from their header.

Header: two zero bytes, a dtype code, the number of dimensions, then one big-endian uint32 per dimension.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from .errors import DataError

# dtype code -> numpy dtype (big-endian, as the format stores multi-byte values)
IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise DataError(f"IDX file not found: {path}")
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            return gzip.decompress(raw)
        return raw
    except MemoryError:
        raise
    except Exception as exc:  # any failure to decompress, with the original as cause
        raise DataError(f"corrupt or truncated gzip file {path}: {type(exc).__name__}: {exc}") from exc


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file, in native byte order. Raises DataError naming the file and the problem."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0:
        raise DataError(
            f"{path}: wrong magic number 0x{int.from_bytes(data[:4], 'big'):08x}; an IDX file starts with two zero "
            "bytes, a dtype code and the number of dimensions (e.g. 0x00000803 for uint8 images)"
        )
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        raise DataError(f"{path}: unknown IDX dtype code 0x{code:02x}; expected one of "
                        + ", ".join(f"0x{c:02x}" for c in IDX_DTYPES))
    header_end = 4 + 4 * ndim
    if len(data) < header_end:
        raise DataError(f"{path}: truncated header: {ndim} dimensions need {header_end} bytes, file has {len(data)}")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    payload = len(data) - header_end
    if payload != expected:
        raise DataError(f"{path}: header says shape {shape} of {dtype.name} ({expected} bytes) but the file holds "
                        f"{payload} bytes of data: truncated or corrupt")
    return np.frombuffer(data, dtype=dtype, offset=header_end).reshape(shape).astype(dtype.newbyteorder("="))
