"""The PatchGAN discriminator of pix2pix (Isola et al., 2017), as taming-transformers and Latent Diffusion use it
(``NLayerDiscriminator``), and the two discriminator losses of the LDM recipe.

Layout: a 4×4 stride-2 convolution to ``ndf`` channels and a LeakyReLU(0.2); ``layers - 1`` more stride-2
convolutions, each doubling the channels up to 8·ndf, without bias, with BatchNorm and LeakyReLU; one stride-1
convolution with BatchNorm and LeakyReLU; a stride-1 convolution to one channel: a map of logits, one per patch.
Initialization as taming's ``weights_init``: convolution weights normal(0, 0.02) (their biases keep PyTorch's
default), BatchNorm scales normal(1, 0.02) and shifts 0. The module keys (``main.{i}.*``) are taming's, so its
discriminator checkpoints load.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchGAN(nn.Module):
    def __init__(self, in_channels: int = 3, ndf: int = 64, layers: int = 3):
        super().__init__()
        if layers < 1:
            raise ValueError(f"a PatchGAN needs at least one stride-2 layer, got layers={layers}")
        seq: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < layers else 1
            seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False), nn.BatchNorm2d(ndf * mult),
                    nn.LeakyReLU(0.2, True)]
        seq.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*seq)
        self.apply(_pix2pix_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class PatchGAN3D(nn.Module):
    """The same PatchGAN on clips ``[B, C, T, H, W]``, with ``Conv3d`` and ``BatchNorm3d``, as video autoencoder
    trainers use it (Open-Sora-Plan's and MAGVIT's 3D discriminators): every convolution spans 3 frames with
    padding 1 and strides only in space, so a clip of any length gives a logit per (frame, patch)."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, layers: int = 3):
        super().__init__()
        if layers < 1:
            raise ValueError(f"a PatchGAN needs at least one stride-2 layer, got layers={layers}")
        seq: list[nn.Module] = [nn.Conv3d(in_channels, ndf, (3, 4, 4), (1, 2, 2), 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = (1, 2, 2) if n < layers else 1
            seq += [nn.Conv3d(ndf * prev, ndf * mult, (3, 4, 4), stride, 1, bias=False), nn.BatchNorm3d(ndf * mult),
                    nn.LeakyReLU(0.2, True)]
        seq.append(nn.Conv3d(ndf * mult, 1, (3, 4, 4), 1, 1))
        self.main = nn.Sequential(*seq)
        self.apply(_pix2pix_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def sees_clips(discriminator: nn.Module) -> bool:
    """Whether a discriminator takes clips (its first convolution is 3D) or frames."""
    first = next((m for m in discriminator.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))), None)
    return isinstance(first, nn.Conv3d)


def _pix2pix_init(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.Conv3d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm3d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def _per_image_mean(values: torch.Tensor) -> torch.Tensor:
    return values.flatten(1).mean(1)


def hinge_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """LDM's ``hinge_d_loss`` per image, [B]: its mean over the batch is LDM's value; the per-image form lets a
    batch split across ranks or micro-batches add up to the whole batch's loss."""
    return 0.5 * (_per_image_mean(F.relu(1.0 - logits_real)) + _per_image_mean(F.relu(1.0 + logits_fake)))


def vanilla_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """LDM's ``vanilla_d_loss`` per image, [B]."""
    return 0.5 * (_per_image_mean(F.softplus(-logits_real)) + _per_image_mean(F.softplus(logits_fake)))


DISC_LOSSES = {"hinge": hinge_loss, "vanilla": vanilla_loss}
