"""Pieces of the Latent-Diffusion recipe's loss that its call forms share (vaefast.models.ldm_loss's own API and
vaefast.models.ldm_signature's LDM and generative-models signatures): the pixel losses and their gradients, clips as
frames, the dtype the losses are summed in, and a network frozen for the other's pass."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

# The pixel term of the difference x - x̂: LDM's L1, or generative-models' "l2" (sd-vae-ft-mse's MSE)...
PIXEL_LOSSES = {"l1": torch.abs, "mse": torch.square}
# ...and its derivative in x̂, as autograd computes it (|d|' is sign(d), 0 at 0).
PIXEL_GRADIENTS = {"l1": lambda d: -torch.sign(d), "mse": lambda d: -2 * d}


def frame_count(x: torch.Tensor) -> int:
    """T of a clip batch ``[B, C, T, H, W]``, 1 for images."""
    return x.shape[2] if x.dim() == 5 else 1


def as_frames(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, T, H, W]`` as ``[B·T, C, H, W]`` (generative-models' ``(b t) c h w``); images unchanged."""
    return x.transpose(1, 2).flatten(0, 1) if x.dim() == 5 else x


def wide_dtype(t: torch.Tensor) -> torch.dtype:
    """float32 for bf16/fp16 activations (the losses and norms are summed in it), float64 stays float64."""
    return torch.promote_types(t.dtype, torch.float32)


@contextmanager
def frozen(module: nn.Module):
    """``module``'s parameters take no gradient inside (Lightning's ``toggle_optimizer`` for the other network)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
