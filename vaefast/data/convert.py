"""The one conversion from stored uint8 images to the [0, 1] floats that models see."""

from __future__ import annotations

import torch


def to_unit_float(images: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 images (0..255) -> float32 in [0, 1] on ``device``; always a new tensor, the input is never written."""
    if images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype} (shape {tuple(images.shape)})")
    return images.to(device, non_blocking=True).float().div_(255.0)
