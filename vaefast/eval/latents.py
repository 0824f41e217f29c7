"""The statistics of a model's latents: what a diffusion model trained on them scales and shifts by."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..data.convert import to_unit_float


@dataclass
class LatentStatistics:
    """Of posterior samples z over ``images`` images: the mean and standard deviation of every element, and of each
    channel; accumulated in float64."""

    images: int
    mean: float
    std: float
    channel_mean: list[float] = field(default_factory=list)
    channel_std: list[float] = field(default_factory=list)


@torch.no_grad()
def measure_latents(model: nn.Module, images: torch.Tensor, *, batch_size: int = 32, seed: int = 0,
                    device: torch.device | str = "cpu", sample: bool = True,
                    patch: tuple[int, int] | None = None) -> LatentStatistics:
    """Statistics of ``z = mu + sigma * eps`` (the posterior samples a diffusion model is trained on, as LDM's
    ``scale_by_std`` measures them) of a vaefast model over uint8 ``images``; ``sample=False``: of the posterior
    means (what FLUX.2's pipeline encodes with). ``patch``: the channel statistics of the latents folded into
    ``C * ph * pw`` channels (FLUX.2's patchified layout, channel-major)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    total = total_sq = None
    count = 0
    for start in range(0, len(images), batch_size):
        mu, logvar = model.encode(to_unit_float(images[start:start + batch_size], device))
        if model.clamp is not None:
            logvar = logvar.clamp(*model.clamp)
        eps = torch.randn(mu.shape, generator=generator).to(mu.device, mu.dtype)
        z = (mu + torch.exp(0.5 * logvar) * eps if sample else mu).double()
        if patch is not None:
            b, c, h, w = z.shape
            ph, pw = patch
            z = z.view(b, c, h // ph, ph, w // pw, pw).permute(0, 1, 3, 5, 2, 4).reshape(b, c * ph * pw, h // ph,
                                                                                        w // pw)
        per_channel = z.transpose(0, 1).flatten(1)  # [C, B * H * W]
        total = per_channel.sum(1) if total is None else total + per_channel.sum(1)
        total_sq = per_channel.square().sum(1) if total_sq is None else total_sq + per_channel.square().sum(1)
        count += per_channel.shape[1]
    channel_mean = total / count
    channel_var = (total_sq / count - channel_mean.square()).clamp_min(0)
    mean = float(total.sum() / (count * len(total)))
    var = float(total_sq.sum() / (count * len(total))) - mean ** 2
    return LatentStatistics(len(images), mean, max(var, 0.0) ** 0.5, channel_mean.tolist(),
                            channel_var.sqrt().tolist())
