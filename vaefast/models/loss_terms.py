"""Extra terms of the ELBO's loss: the hook for a frozen network of your own beside the likelihood and KL.

The Latent-Diffusion recipe itself (L1 + LPIPS + KL + PatchGAN with its adaptive weight and a discriminator with its
own optimizer) is ``vaefast train --recipe ldm`` (vaefast.train.recipe) and the drop-in
``vaefast.LPIPSWithDiscriminator``. A loss term adds something else, e.g. a frozen feature network:

    class Perceptual(vaefast.LossTerm):
        def __init__(self, net):
            super().__init__("lpips", weight=1.0)
            self.net = net.requires_grad_(False)   # frozen: the trainer's optimizer only steps the VAE

        def forward(self, x, reconstruction, out):
            return self.net(x * 2 - 1, reconstruction * 2 - 1).flatten(1).sum(1)   # one value per image

    Trainer(cfg, loss_terms=[Perceptual(lpips.LPIPS(net="vgg"))]).fit()

A term returns one loss per image, ``[B]``; the trainer adds ``weight`` times its batch sum to the loss with the
same normalization as the reconstruction NLL (the global batch mean), so gradient accumulation and DDP stay exact.
``start_step`` switches the term on later (the recipe's ``disc_start``); its weight is a device tensor that
changes without recompiling. Each term's per-image mean is logged as ``train/<name>``.

Terms must not hold trainable parameters: the trainer's optimizer steps the VAE only, so a discriminator (which
needs its own optimizer and update) is stepped by the caller, for example from ``Trainer.run(on_step=...)``.
"""

from __future__ import annotations

import torch
from torch import nn

from .vae import VAEOutput


class LossTerm(nn.Module):
    """Base class of an extra loss term; subclasses implement ``forward(x, reconstruction, out) -> [B]``."""

    def __init__(self, name: str, weight: float = 1.0, start_step: int = 0):
        super().__init__()
        if not name.isidentifier():
            raise ValueError(f"loss term name {name!r}: use a plain identifier, it names the logged metric")
        if weight < 0 or start_step < 0:
            raise ValueError(f"loss term {name}: weight ({weight}) and start_step ({start_step}) must be >= 0")
        self.name, self.weight, self.start_step = name, float(weight), int(start_step)

    def weight_at(self, step: int) -> float:
        return self.weight if step >= self.start_step else 0.0

    def forward(self, x: torch.Tensor, reconstruction: torch.Tensor, out: VAEOutput) -> torch.Tensor:
        """``x``: the batch in [0, 1]; ``reconstruction``: the likelihood's mean image; ``out``: z, mu, logvar,
        KL. Returns one loss per image."""
        raise NotImplementedError


def check_loss_terms(terms) -> list[LossTerm]:
    """The terms as a list, each checked to be a LossTerm with a unique name and no trainable parameters."""
    terms = list(terms or ())
    names = [getattr(term, "name", None) for term in terms]
    for term in terms:
        if not isinstance(term, LossTerm):
            raise TypeError(f"loss_terms takes vaefast.LossTerm modules, got {type(term).__name__}")
        trainable = [name for name, p in term.named_parameters() if p.requires_grad]
        if trainable:
            raise ValueError(f"loss term {term.name} has trainable parameters ({', '.join(trainable[:3])}...); the "
                             "trainer's optimizer steps the VAE only: freeze them (requires_grad_(False)) and step "
                             "a discriminator yourself, e.g. from Trainer.run(on_step=...)")
    duplicates = {name for name in names if names.count(name) > 1}
    if duplicates:
        raise ValueError(f"loss terms need distinct names; {sorted(duplicates)} repeat")
    return terms


def per_image(term: LossTerm, value: torch.Tensor, batch: int) -> torch.Tensor:
    """The term's value, checked to be one loss per image (a shape check: no host sync)."""
    if value.shape != (batch,):
        raise ValueError(f"loss term {term.name} returned shape {tuple(value.shape)}; it must return one loss per "
                         f"image, shape ({batch},) (reduce over every other dimension with .flatten(1).sum(1))")
    return value
