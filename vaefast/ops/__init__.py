"""The fused VAE loss: reference, backends, dispatch and the public API."""

from .backends import BACKENDS, BackendUnavailable, available_backends, unavailable_backends
from .functional import bce_with_logits, continuous_bernoulli_nll, reparameterize_kl
from .module import FusedVAELoss, VAELossOutput

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "FusedVAELoss",
    "VAELossOutput",
    "available_backends",
    "bce_with_logits",
    "continuous_bernoulli_nll",
    "reparameterize_kl",
    "unavailable_backends",
]
