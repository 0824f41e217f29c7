"""Bring your own autoencoder: any ``nn.Module`` with ``encode(x)`` and ``decode(z)`` trains with vaefast.

- ``encode(x)`` returns the posterior moments, either packed as one ``[B, 2C, ...]`` tensor (mean channels first,
  log-variance second, the Latent-Diffusion convention) or as a ``(mu, logvar)`` pair;
- ``decode(z)`` returns what the chosen likelihood reads (logits for Bernoulli, the mean for Gaussian).

vaefast applies the fused ``reparameterize_kl`` between the two (the packed halves are read in place) and the
likelihood and objective after, so the module needs no sampling or loss code of its own.
"""

from __future__ import annotations

import torch
from torch import nn

from .likelihoods import Likelihood
from .vae import VAE, split_moments


class ModuleVAE(VAE):
    """A user's encode/decode module as a vaefast VAE. The latent shape is read from one encode of a blank image."""

    def __init__(self, module: nn.Module, likelihood: Likelihood, image_shape, clamp, backend,
                 architecture: str | None = None):
        """``architecture``: what checkpoints record; by default the module's class name, which tells eval that it
        cannot rebuild the model from the config."""
        for method in ("encode", "decode"):
            if not callable(getattr(module, method, None)):
                raise TypeError(f"{type(module).__name__} has no {method}() method; a VAE module needs "
                                "encode(x) -> moments [B, 2C, ...] or (mu, logvar), and decode(z)")
        latent_shape = _latent_shape(module, tuple(image_shape))
        super().__init__(None, None, likelihood, image_shape, latent_shape, clamp, backend)
        self.module = module
        self.architecture = architecture or type(module).__qualname__

    def enable_activation_checkpointing(self, decoder: bool = True) -> None:
        """The module's own block-level checkpointing where it has one (diffusers' models do), else the encoder and
        (``decoder``) the decoder as wholes."""
        own = getattr(self.module, "enable_gradient_checkpointing", None)
        if not callable(own) or own() is False:  # False: the module has none after all
            super().enable_activation_checkpointing(decoder)

    def decoder_parts(self) -> list[nn.Module]:
        """The module's own ``decoder_parts()`` (diffusers' models: decoder and post_quant_conv), else its
        ``decoder``; with the likelihood's parameters."""
        if callable(getattr(self.module, "decoder_parts", None)):
            return [*self.module.decoder_parts(), self.likelihood]
        if isinstance(getattr(self.module, "decoder", None), nn.Module):
            return [self.module.decoder, self.likelihood]
        raise ValueError(f"--train decoder: {type(self.module).__name__} has no decoder (a 'decoder' submodule or a "
                         "decoder_parts() method naming what to train)")

    def last_layer(self) -> nn.Parameter:
        """The module's own ``last_layer()`` (the decoder's last weight; diffusers' models: ``decoder.conv_out``)."""
        if not callable(getattr(self.module, "last_layer", None)):
            raise TypeError(f"{type(self.module).__name__} has no last_layer() method; the LDM recipe's adaptive "
                            "weight needs one that returns the decoder's last layer weight")
        return self.module.last_layer()

    def moments(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self.module.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.module.decode(z)


@torch.no_grad()
def _latent_shape(module: nn.Module, image_shape: tuple) -> tuple:
    parameter = next(module.parameters(), None)
    device = parameter.device if parameter is not None else "cpu"
    was_training = module.training
    module.eval()
    try:
        mu, _ = split_moments(module.encode(torch.zeros(1, *image_shape, device=device)), type(module).__name__)
    finally:
        module.train(was_training)
    return tuple(mu.shape[1:])


def as_vae(model: nn.Module, likelihood: Likelihood, image_shape, clamp, backend) -> VAE:
    """``model`` itself if it is a vaefast VAE, else the module wrapped by the protocol."""
    return model if isinstance(model, VAE) else ModuleVAE(model, likelihood, image_shape, clamp, backend)
