"""vaefast: a performance-first training engine for variational autoencoders."""

from .ops import (
    BackendUnavailable,
    FusedVAELoss,
    VAELossOutput,
    available_backends,
    bce_with_logits,
    reparameterize_kl,
)

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailable",
    "FusedVAELoss",
    "VAELossOutput",
    "__version__",
    "available_backends",
    "bce_with_logits",
    "reparameterize_kl",
]
