"""Negative ELBO, bits per dimension and active units on a held-out set."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch

from ..data.convert import to_unit_float
from ..models.objective import NegativeELBO

ACTIVE_UNIT_NATS = 0.1  # a latent dimension whose average KL exceeds this is "active" (Burda et al., NVAE)


def collapse_level(kl_nats: float, active: int, latent_dim: int, mean_distance: float = math.inf) -> str:
    """"collapsed" (the posterior ignores the input), "partial" (most units inactive) or "healthy"."""
    if kl_nats < ACTIVE_UNIT_NATS or active == 0 or mean_distance < 1e-3:
        return "collapsed"
    return "partial" if active < 0.5 * latent_dim else "healthy"


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
    objective = NegativeELBO(model)
    for start in range(0, len(images), batch_size):
        x = to_unit_float(images[start:start + batch_size], device)
        with autocast or nullcontext():
            nll, out = objective.terms(x)
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
