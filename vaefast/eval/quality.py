"""Reconstruction quality of image autoencoders: PSNR always, and SSIM from pytorch-msssim (an optional extra).

Images are reconstructed from the posterior mean (z = mu, no sampling), so the figures are deterministic, and
compared in [0, 1] with data_range 1: PSNR = 10 log10(1 / MSE) per image; SSIM as Wang et al. define it (an 11x11
Gaussian window, sigma 1.5, k1 0.01, k2 0.03, over the window positions inside the image), which is also
scikit-image's Gaussian SSIM. torchmetrics' SSIM reflect-pads the borders and reads lower (0.781 vs 0.803 on the
test photograph), so its figures are not comparable with papers'. Both are averaged over the images.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from ..data.convert import to_unit_float
from ..models.recipe_parts import as_frames
from .fid import frechet_distance, inception_features

INSTALL_HINT = "SSIM needs pytorch-msssim: pip install 'vaefast[metrics]'"


def ssim_available() -> str | None:
    """None when SSIM can be computed here, else why not."""
    try:
        import pytorch_msssim  # noqa: F401
    except ImportError as exc:
        return f"{INSTALL_HINT} ({exc})"
    return None


def psnr_ssim(reconstruction: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-image PSNR (dB) and SSIM (None without pytorch-msssim) of [N, C, H, W] images in [0, 1]."""
    reconstruction, target = reconstruction.float().clamp(0, 1), target.float()
    mse = (reconstruction - target).square().flatten(1).mean(1)
    psnr = 10.0 * torch.log10(1.0 / mse)
    if ssim_available() is not None:
        return psnr, None
    from pytorch_msssim import ssim

    return psnr, ssim(reconstruction, target, data_range=1.0, size_average=False)


@torch.no_grad()
def reconstruction_quality(model, images: torch.Tensor, batch_size: int = 500, device="cpu", autocast=None,
                           lpips=None, inception=None) -> dict:
    """Mean PSNR and SSIM (None, with ``quality_note`` saying why, without pytorch-msssim) of uint8 ``images``
    [N, C, H, W] reconstructed from their posterior means; with an ``lpips`` module (vaefast.models.lpips) also the
    mean LPIPS of RGB images, compared in [-1, 1] as LPIPS expects; with the FID ``inception`` network
    (vaefast.eval.fid) also ``rfid``, the Fréchet distance between the images' and the reconstructions' features."""
    if lpips is not None and images.shape[1] != 3:
        raise ValueError(f"LPIPS compares RGB images; this data has {images.shape[1]} channel(s)")
    was_training = model.training
    model.eval()
    psnr, ssim, perceptual, real_features, fake_features, temporal = [], [], [], [], [], []
    for start in range(0, len(images), batch_size):
        x = to_unit_float(images[start:start + batch_size], device)
        with autocast or nullcontext():
            mu, _ = model.encode(x)
            reconstruction = model.likelihood.mean(model.decode(mu))
        if x.dim() == 5:  # clips: every figure over their frames, and how the error moves between frames
            if x.shape[2] > 1:
                temporal.append(temporal_flicker(reconstruction.float().clamp(0, 1), x))
            x, reconstruction = as_frames(x), as_frames(reconstruction)
        batch_psnr, batch_ssim = psnr_ssim(reconstruction, x)
        psnr.append(batch_psnr.double())
        if batch_ssim is not None:
            ssim.append(batch_ssim.double())
        if lpips is not None:
            rec = reconstruction.float().clamp(0, 1)
            perceptual.append(lpips.to(x.device)(x * 2 - 1, rec * 2 - 1).flatten().double())
        if inception is not None:
            rec = reconstruction.float().clamp(0, 1)
            real_features.append(inception_features(inception.to(x.device), x, device=x.device))
            fake_features.append(inception_features(inception, rec, device=x.device))
    model.train(was_training)
    extra = {"lpips": float(torch.cat(perceptual).mean())} if perceptual else {}
    if real_features:
        extra["rfid"] = frechet_distance(torch.cat(real_features), torch.cat(fake_features))
    if temporal:
        extra["temporal"] = float(torch.cat(temporal).mean())
    if not ssim:
        return {"psnr": float(torch.cat(psnr).mean()), "ssim": None, "quality_note": ssim_available(), **extra}
    return {"psnr": float(torch.cat(psnr).mean()), "ssim": float(torch.cat(ssim).mean()), **extra}


def temporal_flicker(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per clip ``[B, C, T, H, W]``: the mean absolute change of the reconstruction error from one frame to the next,
    in [0, 1] pixel units (0 when the error is constant in time; a decoder that flickers scores high even where
    each frame alone looks right)."""
    residual = reconstruction.float() - target.float()
    return (residual[:, :, 1:] - residual[:, :, :-1]).abs().flatten(1).mean(1).double()


QUALITY_KEYS = ("psnr", "ssim", "lpips", "rfid", "temporal")


def quality_text(psnr: float | None, ssim: float | None, lpips: float | None, rfid: float | None = None) -> str:
    """", PSNR 24.1 dB, SSIM 0.801, LPIPS 0.1234, rFID 0.69" for what was measured, else ""."""
    parts = [f"PSNR {psnr:.2f} dB" if psnr is not None else None, f"SSIM {ssim:.4f}" if ssim is not None else None,
             f"LPIPS {lpips:.4f}" if lpips is not None else None, f"rFID {rfid:.4g}" if rfid is not None else None]
    return "".join(f", {part}" for part in parts if part)
