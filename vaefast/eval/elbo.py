"""Negative ELBO, bits per dimension and active units on a held-out set."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch

ACTIVE_UNIT_NATS = 0.1  # a latent dimension whose average KL exceeds this is "active" (Burda et al., NVAE)


def bits_per_dim(neg_elbo_nats: float, dims: int) -> float:
    """bpd = nelbo / (D ln 2), D the number of image dimensions (pixels x channels)."""
    return neg_elbo_nats / (dims * math.log(2.0))


@torch.no_grad()
def evaluate_elbo(model, images: torch.Tensor, batch_size: int = 500, device="cpu", autocast=None) -> dict:
    """One-sample ELBO over uint8 ``images`` [N, C, H, W]: nats per image, its parts, bpd and active units."""
    was_training = model.training
    model.eval()
    device = torch.device(device)
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # nll, kl, count
    kl_per_dim = None
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device).float().div_(255.0)
        with autocast or nullcontext():
            out = model(x)
            nll = model.nll(out.decoded, x)
        totals += torch.stack([nll.double().sum(), out.kl.double().sum(), torch.tensor(len(x), device=device)])
        kl_per_dim = out.kl_per_dim.double() if kl_per_dim is None else kl_per_dim + out.kl_per_dim.double()
    model.train(was_training)
    nll, kl, n = totals.tolist()
    avg_kl_per_dim = (kl_per_dim / n).float().cpu()
    neg_elbo = (nll + kl) / n
    dims = math.prod(images.shape[1:])
    return {
        "neg_elbo_nats": neg_elbo,
        "recon_nats": nll / n,
        "kl_nats": kl / n,
        "bpd": bits_per_dim(neg_elbo, dims),
        "active_units": int((avg_kl_per_dim > ACTIVE_UNIT_NATS).sum()),
        "latent_dim": avg_kl_per_dim.numel(),
        "kl_per_dim": avg_kl_per_dim,
    }
