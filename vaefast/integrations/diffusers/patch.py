"""``patch()``: diffusers' own ``DiagonalGaussianDistribution.sample()`` and ``.kl()`` run the fused op, for people
who keep their own diffusers training loop; ``unpatch()`` restores them. Values and gradients match unpatched
diffusers for the same ``generator``."""

from __future__ import annotations

import torch

from ...config.sections import DIFFUSERS_CLAMP
from ...ops import reparameterize_kl

_ORIGINAL: dict[str, object] = {}


def _fused_sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
    if self.deterministic:
        return _ORIGINAL["sample"](self, generator)
    from diffusers.utils.torch_utils import randn_tensor

    # The same draw as diffusers' own sample(), so that a generator gives the same z.
    eps = randn_tensor(self.mean.shape, generator=generator, device=self.parameters.device,
                       dtype=self.parameters.dtype)
    z, kl = reparameterize_kl(self.mean, self.logvar, eps, clamp=DIFFUSERS_CLAMP)
    self._vaefast_kl = kl  # the KL does not depend on eps: kl() reuses this pass
    return z


def _fused_kl(self, other=None) -> torch.Tensor:
    if self.deterministic or other is not None:
        return _ORIGINAL["kl"](self, other)
    kl = getattr(self, "_vaefast_kl", None)
    if kl is None:
        _, kl = reparameterize_kl(self.mean, self.logvar, torch.zeros_like(self.mean), clamp=DIFFUSERS_CLAMP)
    return kl.to(self.mean.dtype)


def patch() -> None:
    """Route ``DiagonalGaussianDistribution.sample()`` and ``.kl()`` through the fused op (idempotent)."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    if not _ORIGINAL:
        _ORIGINAL.update(sample=DiagonalGaussianDistribution.sample, kl=DiagonalGaussianDistribution.kl)
        DiagonalGaussianDistribution.sample = _fused_sample
        DiagonalGaussianDistribution.kl = _fused_kl


def unpatch() -> None:
    """Restore diffusers' own ``sample()`` and ``kl()``."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    if _ORIGINAL:
        DiagonalGaussianDistribution.sample = _ORIGINAL.pop("sample")
        DiagonalGaussianDistribution.kl = _ORIGINAL.pop("kl")
