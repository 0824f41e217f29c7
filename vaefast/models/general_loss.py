"""``vaefast.GeneralLPIPSWithDiscriminator``: generative-models' ``GeneralLPIPSWithDiscriminator`` (Stability's
``sgm.modules.autoencoding.losses``), its constructor and its call, on vaefast's single-pass gradients
(vaefast.models.ldm_signature)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ldm_loss import LPIPSWithDiscriminator
from .ldm_signature import discriminator_pass, generator_pass
from .recipe_parts import as_frames


class GeneralLPIPSWithDiscriminator(LPIPSWithDiscriminator):
    """generative-models' ``GeneralLPIPSWithDiscriminator``: its constructor arguments and its forward,
    ``(inputs, reconstructions, *, regularization_log, optimizer_idx, global_step, last_layer, split, weights)``,
    with its values, gradients and log keys; LPIPS and the discriminator run backward once. ``dims=3`` takes clips
    ``[B, C, T, H, W]`` as frames (``(b t) c h w``), the discriminator included, as generative-models does;
    ``pixel_loss`` "l1" (its default) or "l2"; ``logvar`` fixed unless ``learn_logvar``; the regularization's terms
    (``regularization_log["kl_loss"]`` from its ``DiagonalGaussianRegularizer``) added with
    ``regularization_weights``."""

    def __init__(self, disc_start: int, logvar_init: float = 0.0, disc_num_layers: int = 3,
                 disc_in_channels: int = 3, disc_factor: float = 1.0, disc_weight: float = 1.0,
                 perceptual_weight: float = 1.0, disc_loss: str = "hinge", scale_input_to_tgt_size: bool = False,
                 dims: int = 2, learn_logvar: bool = False, regularization_weights: dict | None = None,
                 additional_log_keys: list | None = None, discriminator_config: dict | None = None,
                 pixel_loss: str = "l1", *, perceptual: nn.Module | None = None,
                 discriminator: nn.Module | None = None, lpips_weights: str | None = None, exact_logs: bool = False):
        if discriminator is None and discriminator_config is not None:
            discriminator = _discriminator_from_config(discriminator_config)
        super().__init__(perceptual, discriminator, kl_weight=0.0, perceptual_weight=perceptual_weight,
                         disc_weight=disc_weight, disc_factor=disc_factor, disc_start=disc_start, disc_loss=disc_loss,
                         logvar_init=logvar_init, disc_layers=disc_num_layers, disc_in_channels=disc_in_channels,
                         lpips_weights=lpips_weights, pixel_loss="mse" if pixel_loss == "l2" else pixel_loss,
                         learn_logvar=learn_logvar, exact_logs=exact_logs)
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 (images) or 3 (clips), got {dims}")
        self.dims, self.scale_input_to_tgt_size = dims, scale_input_to_tgt_size
        self.regularization_weights = dict(regularization_weights or {})
        self.additional_log_keys = set(additional_log_keys or []) | set(self.regularization_weights)

    def get_trainable_parameters(self):
        return self.discriminator.parameters()

    def get_trainable_autoencoder_parameters(self):
        if self.logvar.requires_grad:
            yield self.logvar

    def forward(self, inputs: torch.Tensor, reconstructions: torch.Tensor, *, regularization_log: dict,
                optimizer_idx: int, global_step: int, last_layer: torch.Tensor, split: str = "train",
                weights=None):
        if self.scale_input_to_tgt_size:
            inputs = F.interpolate(inputs, reconstructions.shape[2:], mode="bicubic", antialias=True)
        if self.dims > 2:
            inputs, reconstructions = as_frames(inputs), as_frames(reconstructions)
        started = global_step >= self.disc_start
        if optimizer_idx == 0:
            graph = torch.is_grad_enabled() and reconstructions.requires_grad
            run_disc = self.discriminator is not None and (started or not self.training or self.exact_logs)
            loss, parts = generator_pass(
                self, inputs, reconstructions, 0.0, weights=weights, last_layer=last_layer, run_disc=run_disc,
                factor=self.disc_factor if started or not self.training else 0.0, cond=None,
                fixed_d_weight=None if self.training and graph and started else (1.0 if not self.training else 0.0))
            for k, v in regularization_log.items():  # after the GAN term, in the log's order, as generative-models
                if k in self.regularization_weights:
                    loss = loss + self.regularization_weights[k] * v
            log = {f"{split}/{k}": v.detach().float().mean() for k, v in regularization_log.items()
                   if k in self.additional_log_keys}
            log.update({f"{split}/loss/total": loss.clone().detach(), f"{split}/loss/nll": parts["nll"].detach(),
                        f"{split}/loss/rec": parts["rec"].detach(), f"{split}/loss/g": parts["g_loss"],
                        f"{split}/scalars/logvar": self.logvar.detach(),
                        f"{split}/scalars/d_weight": parts["d_weight"].detach()})
            return loss, log
        if optimizer_idx == 1:
            active = started or not self.training
            loss, real, fake = discriminator_pass(self, inputs, reconstructions, active=active,
                                                  factor=self.disc_factor, cond=None, exact_logs=self.exact_logs,
                                                  zero_gradients=False)
            return loss, {f"{split}/loss/disc": loss.clone().detach(), f"{split}/logits/real": real,
                          f"{split}/logits/fake": fake}
        raise ValueError(f"optimizer_idx must be 0 (the autoencoder) or 1 (the discriminator), got {optimizer_idx}")


def _discriminator_from_config(config: dict) -> nn.Module:
    """generative-models' default ``discriminator_config`` (its NLayerDiscriminator, pix2pix's PatchGAN) as vaefast's
    PatchGAN; another target is refused (a class path from a config file is not imported here)."""
    from .patchgan import PatchGAN

    target, params = config.get("target", ""), dict(config.get("params", {}))
    if not target.endswith("NLayerDiscriminator") or params.get("use_actnorm"):
        raise ValueError(f"discriminator_config target {target!r}: vaefast builds generative-models' "
                         "NLayerDiscriminator (without ActNorm) itself; pass any other one as discriminator=module")
    return PatchGAN(params.get("input_nc", 3), ndf=params.get("ndf", 64), layers=params.get("n_layers", 3))
