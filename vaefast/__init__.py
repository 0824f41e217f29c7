"""vaefast: a performance-first training engine for variational autoencoders."""

from .ops import (
    BackendUnavailable,
    FusedVAELoss,
    VAELossOutput,
    available_backends,
    bce_with_logits,
    continuous_bernoulli_nll,
    reparameterize_kl,
    unavailable_backends,
)

__version__ = "0.1.0"


def __getattr__(name):
    # The training engine is imported on first use, so that `import vaefast` for the loss alone stays light.
    if name in ("Trainer", "TrainConfig"):
        from . import train

        return getattr(train, name)
    if name == "LossTerm":
        from .models.loss_terms import LossTerm

        return LossTerm
    if name == "LPIPSWithDiscriminator":
        from .models.ldm_loss import LPIPSWithDiscriminator

        return LPIPSWithDiscriminator
    if name == "GeneralLPIPSWithDiscriminator":
        from .models.general_loss import GeneralLPIPSWithDiscriminator

        return GeneralLPIPSWithDiscriminator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "BackendUnavailable",
    "FusedVAELoss",
    "GeneralLPIPSWithDiscriminator",
    "LPIPSWithDiscriminator",
    "LossTerm",
    "TrainConfig",
    "Trainer",
    "VAELossOutput",
    "__version__",
    "available_backends",
    "bce_with_logits",
    "continuous_bernoulli_nll",
    "reparameterize_kl",
    "unavailable_backends",
]
