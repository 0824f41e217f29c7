"""Clips (``--data SPEC --frames T``): a folder of video files (decoded with PyAV, ``pip install 'vaefast[video]'``)
or of subfolders of frames (PNG/JPEG, in name order), one clip each; or WebDataset shards whose samples hold a video
component (``.mp4``, ``.webm``, ...).

PyAV is the decoder because it bundles FFmpeg in its wheel: torchcodec loads the system's FFmpeg libraries, which a
cluster node or this project's CI may not have. Every frame goes through the image path's resize and center crop
(``--resize`` / ``--image-size``), so the spatial crops of training apply to every frame of a clip alike. The clips
are decoded into memory as uint8 ``[N, C, T, H, W]``, each cut to the length of the shortest (the training loaders
take windows of ``--frames`` from it); a clip shorter than the window, frames of mixed sizes without
``--image-size``, or an unreadable file is a ``DataError`` naming the file.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from .errors import DataError
from .folders import IMAGE_SUFFIXES, square
from .shards import ShardMember

VIDEO_SUFFIXES = {".mp4", ".webm", ".mkv", ".avi", ".mov", ".gif"}
VIDEO_EXTENSIONS = tuple(sorted(suffix[1:] for suffix in VIDEO_SUFFIXES))  # a WebDataset sample's video component


def list_clips(root: Path) -> list[Path]:
    """The clips of ``root``: its video files, or its subfolders of frames (not both)."""
    if not root.is_dir():
        raise DataError(f"clip folder not found: {root}")
    videos = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and any(
        f.suffix.lower() in IMAGE_SUFFIXES for f in p.iterdir()))
    if videos and folders:
        raise DataError(f"{root} holds both video files and folders of frames; keep one kind of clip per folder")
    if len(videos) + len(folders) < 2:
        raise DataError(f"{root} holds {len(videos) + len(folders)} clip(s) (video files "
                        f"{', '.join(sorted(VIDEO_SUFFIXES))} or subfolders of PNG/JPEG frames); need at least 2 for "
                        "a train/test split")
    return videos or folders


def read_clip(path: Path | ShardMember, channels: int, size: int | None) -> np.ndarray:
    """One clip as uint8 ``[T, C, H, W]``: a video file's frames or a folder's images, each resized and
    center-cropped to ``size`` x ``size`` when given."""
    from PIL import Image

    if isinstance(path, Path) and path.is_dir():
        frames = []
        for frame in sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES):
            try:
                with Image.open(frame) as img:
                    frames.append(img.convert("L" if channels == 1 else "RGB"))
                    frames[-1].load()
            except Exception as exc:  # a truncated or foreign file, whatever the decoder raises
                raise DataError(f"cannot decode frame {frame}: {type(exc).__name__}: {exc}") from None
    else:
        frames = [Image.fromarray(array).convert("L" if channels == 1 else "RGB") for array in _video_frames(path)]
    if not frames:
        raise DataError(f"clip {path} has no frames")
    arrays = [np.array(square(frame, size), dtype=np.uint8) for frame in frames]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DataError(f"clip {path} has frames of mixed sizes ({', '.join(map(str, sorted(shapes)))}); pass "
                        "--image-size to resize and center-crop every frame to one size")
    clip = np.stack(arrays)
    return clip[:, None] if clip.ndim == 3 else clip.transpose(0, 3, 1, 2)


def _video_frames(path: Path | ShardMember) -> list[np.ndarray]:
    try:
        import av
    except ImportError as exc:
        raise DataError(f"reading video files needs PyAV: pip install 'vaefast[video]' ({exc})") from None
    source = io.BytesIO(path.read()) if isinstance(path, ShardMember) else str(path)
    try:
        with av.open(source) as container:
            return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    except Exception as exc:  # av.error.InvalidDataError and kin: a file that is not a readable video
        raise DataError(f"cannot decode video {path}: {type(exc).__name__}: {exc}") from None


def clip_folder(root: str | Path, *, frames: int, frame_stride: int = 1, size: int | None = None,
                channels: int = 3) -> torch.Tensor:
    """Every clip of ``root`` as uint8 ``[N, C, L, H, W]``, L the shortest clip's length (at least the window of
    ``frames`` at ``frame_stride``)."""
    return decode_clips(list_clips(Path(root)), frames=frames, frame_stride=frame_stride, size=size,
                        channels=channels)


def decode_clips(paths: list[Path | ShardMember], *, frames: int, frame_stride: int = 1, size: int | None = None,
                 channels: int = 3) -> torch.Tensor:
    """The clips of ``paths`` (clip folders, video files or video members of shards) as uint8 ``[N, C, L, H, W]``,
    L the shortest clip's length (at least the window of ``frames`` at ``frame_stride``)."""
    clips = [read_clip(path, channels, size) for path in paths]
    shapes = {clip.shape[1:] for clip in clips}
    if len(shapes) > 1:
        first = next(p for p, c in zip(paths, clips) if c.shape[1:] != clips[0].shape[1:])
        raise DataError(f"clip {first} has frames of {clips[paths.index(first)].shape[2:]} where {paths[0]} has "
                        f"{clips[0].shape[2:]}; pass --image-size to resize every frame to one size")
    span = (frames - 1) * frame_stride + 1
    shortest = min(range(len(clips)), key=lambda i: len(clips[i]))
    if len(clips[shortest]) < span:
        raise DataError(f"clip {paths[shortest]} has {len(clips[shortest])} frames, fewer than --frames {frames} at "
                        f"--frame-stride {frame_stride} ({span} frames)")
    length = len(clips[shortest])
    return torch.from_numpy(np.stack([clip[:length] for clip in clips])).transpose(1, 2).contiguous()
