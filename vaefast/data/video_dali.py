"""DALI's video reader for clips of video files (``--loader dali --frames T``).

``fn.experimental.readers.video`` decodes with FFmpeg on the CPU and with NVDEC on a GPU, then the frames go
through the image pipeline's resize, central square and training crop, one window for every frame of a clip. Its
CPU backend decodes VP8, VP9 and MJPEG only (H.264 and HEVC are left to NVDEC), so a CPU run on other codecs falls
back to PyAV and says so (:func:`dali_video_unsupported`).

An epoch is DALI's: every window of ``--frames`` at ``--frame-stride`` that starts at a multiple of the window's span
in each file, shuffled and sharded across ranks by DALI with its own seed. The PyAV loaders instead take one window
per clip at a start seeded by the run's key, drawn again alike on resume; DALI's windows and crops are not.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .errors import DataError
from .sampling import Crop, Transforms
from .streaming import dali_square_and_crop, dali_unavailable_reason

# What the CPU variant of the reader decodes (its documentation, and its refusal of the rest).
CPU_CODECS = {"vp8", "vp9", "mjpeg"}


def video_codec(path: Path) -> str:
    """The codec of a video file's first video stream, from its header (PyAV)."""
    import av

    try:
        with av.open(str(path)) as container:
            return container.streams.video[0].codec_context.name
    except Exception as exc:  # not a video container, or no video stream
        raise DataError(f"cannot read video {path}: {type(exc).__name__}: {exc}") from None


def dali_video_unsupported(files: list, device: torch.device) -> str | None:
    """None when DALI's video reader can read ``files`` on ``device``, else why not."""
    reason = dali_unavailable_reason()
    if reason:
        return reason
    if any(not isinstance(f, Path) or f.is_dir() for f in files):
        return "DALI's video reader reads video files, not folders of frames or tar shards"
    if device.type != "cuda":
        codecs = {video_codec(f) for f in files}
        if not codecs <= CPU_CODECS:
            return (f"DALI decodes {', '.join(sorted(codecs - CPU_CODECS))} on a GPU only (its CPU reader takes "
                    f"{', '.join(sorted(CPU_CODECS))})")
    return None


class DALIClipLoader:
    """Batches of clips ``[B, C, T, H, W]`` in [0, 1] on the training device, from video files."""

    def __init__(self, files: list[Path], frames: int, batch_size: int, *, frame_stride: int = 1,
                 size: int | None = None, out_size: int, crop: Crop | None = None, device="cpu", seed: int = 0,
                 rank: int = 0, world_size: int = 1, num_threads: int = 2, flip: bool = False,
                 transform: Transforms | None = None):
        """``transform``: applied to each batch DALI gives (--image-ratio's one-frame batches)."""
        reason = dali_video_unsupported(files, torch.device(device))
        if reason:
            raise DataError(reason)
        from nvidia.dali import fn, pipeline_def
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        self.device, self.transform, self.epoch = torch.device(device), transform, 0
        gpu = self.device.type == "cuda"
        span = (frames - 1) * frame_stride + 1

        @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=(self.device.index or 0) if gpu else None,
                      seed=seed, prefetch_queue_depth=2)
        def pipeline():
            clips = fn.experimental.readers.video(
                filenames=[str(f) for f in files], sequence_length=frames, stride=frame_stride, step=span,
                device="gpu" if gpu else "cpu", shard_id=rank, num_shards=world_size, random_shuffle=True,
                pad_last_batch=True, name="reader", seed=seed)
            if size is not None:
                clips = fn.resize(clips, resize_shorter=size, antialias=True)
            return dali_square_and_crop(clips, (out_size, out_size), 3, flip, crop, "CFHW")

        self.pipe = pipeline()
        try:
            self.pipe.build()
        except RuntimeError as exc:
            raise DataError(f"DALI cannot read the clips of {files[0].parent}: {_first_reason(exc)}") from None
        self.iterator = DALIGenericIterator([self.pipe], ["clips"], reader_name="reader",
                                            last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=True)
        windows = self.pipe.reader_meta("reader")["epoch_size_padded"]
        self._steps = math.ceil(windows / world_size / batch_size)

    def __len__(self) -> int:
        return self._steps

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch  # for the transform's draws; DALI's reader reshuffles itself every epoch (seeded)

    def batches(self, start_batch: int = 0):
        try:
            for i, data in enumerate(self.iterator):
                if i >= start_batch:
                    clips = data[0]["clips"].to(self.device, non_blocking=True)
                    yield self.transform(clips, self.epoch, i) if self.transform else clips
        except RuntimeError as exc:
            raise DataError(f"DALI failed while reading clips: {_first_reason(exc)}") from None


def _first_reason(exc: Exception) -> str:
    """The line of a DALI error that says what went wrong (its message starts with the pipeline's traceback)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    said = [line for line in lines if "not supported" in line or "Assert" in line or "rror" in line]
    return (said[-1] if said else lines[0] if lines else type(exc).__name__)[:300]
