"""The Latent-Diffusion autoencoder loss (CompVis ``LPIPSWithDiscriminator``): L1 + LPIPS with a learned scalar
log-variance, the KL, and a PatchGAN with LDM's adaptive weight; the same gradients, each backward run once.

The recipe, as LDM computes it (``ldm/modules/losses/contperceptual.py``):
- ``rec = |x - x̂| + perceptual_weight · LPIPS(x, x̂)`` (LPIPS's per-image value broadcast over the pixels);
  ``pixel_loss="mse"`` takes ``(x - x̂)²`` instead, as generative-models' ``GeneralLPIPSWithDiscriminator`` does
  with ``pixel_loss: l2``;
- ``nll = Σ (rec / exp(logvar) + logvar) / B`` with one learned scalar ``logvar`` (``learn_logvar=False``: fixed at
  ``logvar_init``, generative-models' default); ``kl = Σ kl / B``;
- ``g = -mean(D(x̂))``, weighted by ``d_w = clamp(‖∇_L nll‖ / (‖∇_L g‖ + 1e-4), 0, 1e4) · disc_weight`` with ``L``
  the decoder's last layer weight, and by ``disc_factor``, which is 0 before ``disc_start``;
- generator loss ``nll + kl_weight · kl + d_w · disc_factor · g``; discriminator loss
  ``disc_factor · hinge(D(x), D(x̂))`` (or "vanilla": softplus).

How LDM runs it costs two of everything: Lightning calls the step once per optimizer (two autoencoder forwards, two
LPIPS), the adaptive weight takes two ``autograd.grad`` through LPIPS and D to the last layer, and the final
``backward`` runs through LPIPS and D again. ``backward_generator`` takes ``∂nll/∂x̂`` and ``∂g/∂x̂`` once each
(LPIPS and D backward once), the two last-layer gradients from those through the last layer alone, and one
backward through decoder and encoder with their weighted sum: the gradients LDM's ``loss.backward()`` leaves.
D's parameters are frozen meanwhile, so no weight gradient is computed for them; ``backward_discriminator`` then
steps on the detached reconstruction of the same forward.
"""

from __future__ import annotations

import torch
from torch import nn

from .ldm_signature import ldm_forward
from .patchgan import DISC_LOSSES, PatchGAN, sees_clips
from .recipe_parts import PIXEL_LOSSES, as_frames, frame_count, frozen, wide_dtype


class LPIPSWithDiscriminator(nn.Module):
    """The drop-in loss for a loop of your own::

        crit = LPIPSWithDiscriminator(kl_weight=1e-6, disc_start=50001)
        logs = crit.backward_generator(x, reconstruction, kl, last_layer=vae.decoder.conv_out.weight, step=step)
        opt_g.step()        # over the autoencoder's parameters and crit.logvar
        logs_d = crit.backward_discriminator(x, reconstruction, step=step)
        opt_d.step()        # over crit.discriminator's parameters

    ``x`` and ``reconstruction`` are in the autoencoder's pixel convention ([-1, 1] for diffusers and LDM), images
    ``[B, C, H, W]`` or clips ``[B, C, T, H, W]`` (then as generative-models' ``dims: 3``: the pixel and LPIPS terms
    per frame, the NLL divided by B·T, a 2D discriminator on the frames or a 3D one, told apart by its first
    convolution, on the clips), ``kl`` is the KL per image or clip ``[B]``, ``step`` an int (before ``disc_start``
    the discriminator is skipped entirely) or a device tensor (then nothing is read on the host, and D runs with a
    factor of 0 before ``disc_start``).
    ``perceptual`` is any module called as ``perceptual(x, x̂) -> [B, 1, 1, 1]`` (default: LPIPS-VGG16 from local
    weights, vaefast.models.lpips); ``discriminator`` any module mapping images to logits (default: a PatchGAN).
    The logs are detached device tensors, to read on log steps only.
    """

    def __init__(self, perceptual: nn.Module | None = None, discriminator: nn.Module | None = None, *,
                 kl_weight: float = 1e-6, perceptual_weight: float = 1.0, disc_weight: float = 0.5,
                 disc_factor: float = 1.0, disc_start: int = 50001, disc_loss: str = "hinge",
                 logvar_init: float = 0.0, disc_layers: int = 3, disc_in_channels: int = 3,
                 lpips_weights: str | None = None, use_discriminator: bool = True, pixel_loss: str = "l1",
                 learn_logvar: bool = True, exact_logs: bool = False, disc_num_layers: int | None = None,
                 pixelloss_weight: float = 1.0, use_actnorm: bool = False, disc_conditional: bool = False):
        """LDM's argument names are taken too (``disc_num_layers``, ``pixelloss_weight``, which LDM stores and never
        uses, ``use_actnorm``, ``disc_conditional``), and ``LPIPSWithDiscriminator(50001, ...)`` reads its first
        number as LDM's positional ``disc_start``. ``exact_logs``: before ``disc_start``, run the discriminator for
        the values LDM logs there (its logits, ``g_loss`` and ``d_weight``, which change no gradient)."""
        super().__init__()
        if isinstance(perceptual, (int, float)) and not isinstance(perceptual, bool):
            perceptual, disc_start = None, int(perceptual)
        if use_actnorm:
            raise ValueError("use_actnorm=True (LDM's ActNorm discriminator) is not supported: LDM's configs use "
                             "BatchNorm (use_actnorm=False); pass discriminator=module for another one")
        disc_layers = disc_layers if disc_num_layers is None else disc_num_layers
        self.pixel_weight, self.exact_logs, self.disc_conditional = pixelloss_weight, exact_logs, disc_conditional
        if disc_loss not in DISC_LOSSES:
            raise ValueError(f"disc_loss must be one of {', '.join(DISC_LOSSES)}, got {disc_loss!r}")
        if pixel_loss not in PIXEL_LOSSES:
            raise ValueError(f"pixel_loss must be one of {', '.join(PIXEL_LOSSES)}, got {pixel_loss!r}")
        self.pixel_loss = pixel_loss
        if perceptual is None and perceptual_weight > 0:
            from .lpips import LPIPS

            perceptual = LPIPS.from_files(lpips_weights)
        self.perceptual = perceptual
        if discriminator is None and use_discriminator:
            discriminator = PatchGAN(disc_in_channels, layers=disc_layers)
        self.discriminator = discriminator  # None: the pixel, perceptual and KL terms only
        self.kl_weight, self.perceptual_weight = kl_weight, perceptual_weight
        self.disc_weight, self.disc_factor, self.disc_start = disc_weight, disc_factor, disc_start
        self.disc_loss = DISC_LOSSES[disc_loss]
        self.logvar = nn.Parameter(torch.full((), float(logvar_init)), requires_grad=learn_logvar)

    def forward(self, inputs: torch.Tensor, reconstructions: torch.Tensor, posteriors, optimizer_idx: int,
                global_step: int, last_layer: torch.Tensor | None = None, cond: torch.Tensor | None = None,
                split: str = "train", weights=None):
        """LDM's call, ``loss, log = crit(inputs, reconstructions, posteriors, optimizer_idx, global_step,
        last_layer=..., split="train")``: LDM's loss value and log, and ``loss.backward()`` leaves LDM's gradients,
        with LPIPS and the discriminator run backward once (vaefast.models.ldm_signature). ``posteriors``: LDM's or
        diffusers' ``DiagonalGaussianDistribution`` (its ``kl()``), or the KL per image."""
        return ldm_forward(self, inputs, reconstructions, posteriors, optimizer_idx, global_step, last_layer, cond,
                           split, weights)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """A state dict saved from LDM's or generative-models' class loads: their LPIPS (taming's layout,
        ``perceptual_loss.net.sliceK.I`` and ``perceptual_loss.linK.model.1``) is renamed to this one's; the
        discriminator's and ``logvar``'s keys are the same."""
        for key in [k for k in state_dict if k.startswith(prefix + "perceptual_loss.")]:
            value, rest = state_dict.pop(key), key[len(prefix + "perceptual_loss."):]
            parts = rest.split(".")
            if parts[0] == "net" and parts[1].startswith("slice"):
                state_dict[f"{prefix}perceptual.features.{'.'.join(parts[2:])}"] = value
            elif parts[0].startswith("lin") and parts[1:] == ["model", "1", "weight"]:
                state_dict[f"{prefix}perceptual.lins.{parts[0][3:]}.weight"] = value
            # scaling_layer.shift/scale: LPIPS's constants, not state here
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def factor(self, step) -> torch.Tensor | float:
        """``disc_factor`` from ``disc_start`` on, 0 before: a float for an int step, a device tensor for a tensor."""
        if isinstance(step, torch.Tensor):
            return (step >= self.disc_start).to(torch.float32) * self.disc_factor
        return self.disc_factor if step >= self.disc_start else 0.0

    def uses_discriminator(self, step) -> bool:
        if self.discriminator is None:
            return False
        return isinstance(step, torch.Tensor) or (step >= self.disc_start and self.disc_factor > 0)

    def nll_sum(self, x: torch.Tensor, reconstruction: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(nll summed over pixels and images, mean pixel loss, mean LPIPS): LDM's nll times the batch size."""
        wide = wide_dtype(reconstruction)
        rec = PIXEL_LOSSES[self.pixel_loss](x - reconstruction).to(wide)
        l1 = rec.detach().mean()
        lpips = torch.zeros((), device=x.device)
        if self.perceptual is not None and self.perceptual_weight > 0:
            per_image = self.perceptual(x.detach(), reconstruction).to(wide)
            rec = rec + self.perceptual_weight * per_image
            lpips = per_image.detach().mean()
        return (rec / torch.exp(self.logvar) + self.logvar).sum(), l1, lpips

    def backward_generator(self, x: torch.Tensor, reconstruction: torch.Tensor, kl: torch.Tensor, *,
                           last_layer: torch.Tensor, step, scale: float | torch.Tensor = 1.0) -> dict:
        """Leave in ``.grad`` (autoencoder parameters and ``logvar``) what LDM's generator ``loss.backward()`` leaves,
        times ``scale`` (e.g. a gradient-accumulation or loss-scaling factor)."""
        return self.generator_backward(x, reconstruction, kl, last_layer=last_layer, step=step,
                                       per_image_scale=scale / x.shape[0])

    def generator_backward(self, x: torch.Tensor, reconstruction: torch.Tensor, kl: torch.Tensor, *,
                           last_layer: torch.Tensor, step, per_image_scale, kl_weight=None, reduce=None) -> dict:
        """The generator's backward with every loss summed over the images and then multiplied by
        ``per_image_scale``: 1/B gives LDM's batch means; a trainer passes its share of a global batch spread over
        ranks and micro-batches. ``reduce(nll_grad, g_grad, count)`` sums the last-layer gradients and the image
        count over ranks (a collective), so that the adaptive weight is the one of the whole batch. ``kl_weight``
        overrides the constructor's (a device tensor from a KL schedule)."""
        kl_weight = self.kl_weight if kl_weight is None else kl_weight
        frames = frame_count(x)
        nll, rec, lpips = self.nll_sum(as_frames(x), as_frames(reconstruction))
        zero = torch.zeros((), device=x.device)
        d_weight, g_loss, factor = zero, zero, self.factor(step)
        # LPIPS's one backward (and logvar's gradient, when it learns)
        grad_nll, *grad_logvar = torch.autograd.grad(nll, [reconstruction, self.logvar][:1 + self.logvar.requires_grad])
        grad_logvar = grad_logvar[0] if grad_logvar else torch.zeros_like(self.logvar)
        grad_x = grad_nll
        if self.uses_discriminator(step):
            clips = sees_clips(self.discriminator)
            with frozen(self.discriminator):
                logits = self.discriminator(reconstruction if clips else as_frames(reconstruction))
            # Both losses as sums over the frames: a 3D discriminator's mean is over clips, T times fewer items.
            g_sum = -logits.to(wide_dtype(reconstruction)).flatten(1).mean(1).sum() * (frames if clips else 1)
            grad_g, = torch.autograd.grad(g_sum, reconstruction)  # D's one backward, to its input only
            d_weight = self.adaptive_weight(reconstruction, grad_nll, grad_g, last_layer, x.shape[0] * frames,
                                            reduce)
            grad_x = grad_nll + (d_weight * factor) * grad_g.to(grad_nll.dtype)
            g_loss = g_sum.detach() / (x.shape[0] * frames)
        per_frame_scale = per_image_scale / frames
        grad_x = (grad_x * per_frame_scale).to(reconstruction.dtype)
        kl_sum = kl.sum()
        # logvar's gradient goes through autograd as well (a leaf as a root), so that DDP's hooks see it. A frozen
        # encoder's KL and a fixed logvar reach nothing that trains: they are left out.
        roots = [(reconstruction, grad_x), (kl_sum, torch.ones_like(kl_sum) * (kl_weight * per_image_scale)),
                 (self.logvar, grad_logvar * per_frame_scale)]
        roots = [(t, g) for t, g in roots if t.requires_grad]
        torch.autograd.backward([t for t, _ in roots], [g for _, g in roots])
        batch = x.shape[0]
        nll_mean = nll.detach() / (batch * frames)
        total = nll_mean + kl_weight * kl_sum.detach() / batch + d_weight * factor * g_loss
        return {"total": total, "nll": nll_mean, "rec": rec, "lpips": lpips, "kl": kl_sum.detach() / batch,
                "d_weight": d_weight, "disc_factor": torch.as_tensor(factor, device=x.device), "g_loss": g_loss,
                "logvar": self.logvar.detach()}

    def adaptive_weight(self, reconstruction: torch.Tensor, grad_nll: torch.Tensor, grad_g: torch.Tensor,
                        last_layer: torch.Tensor, count: int, reduce=None) -> torch.Tensor:
        """LDM's ``d_w``, from the gradients of the losses summed over ``count`` images, carried back from the
        reconstruction through the last layer alone (autograd computes only that layer's weight gradient); the norms
        in float32, detached."""
        nll_l, = torch.autograd.grad(reconstruction, last_layer, grad_nll.to(reconstruction.dtype), retain_graph=True)
        g_l, = torch.autograd.grad(reconstruction, last_layer, grad_g.to(reconstruction.dtype), retain_graph=True)
        wide = wide_dtype(reconstruction)
        nll_l, g_l = nll_l.to(wide), g_l.to(wide)
        count = torch.full((), float(count), dtype=wide, device=nll_l.device)
        if reduce is not None:
            nll_l, g_l, count = reduce(nll_l, g_l, count)
        ratio = (nll_l / count).norm() / ((g_l / count).norm() + 1e-4)
        return ratio.clamp(0.0, 1e4).detach() * self.disc_weight

    def backward_discriminator(self, x: torch.Tensor, reconstruction: torch.Tensor, *, step,
                               scale: float | torch.Tensor = 1.0) -> dict:
        """Leave LDM's discriminator gradients (times ``scale``) in the discriminator's ``.grad``; the
        reconstruction is detached here. Before ``disc_start`` (an int step) nothing runs."""
        return self.discriminator_backward(x, reconstruction, step=step, per_image_scale=scale / x.shape[0])

    def discriminator_backward(self, x: torch.Tensor, reconstruction: torch.Tensor, *, step, per_image_scale,
                               discriminate=None) -> dict:
        """The discriminator's backward with its loss summed over the images times ``per_image_scale``;
        ``discriminate(real, fake) -> (logits_real, logits_fake)`` runs the discriminator (a trainer passes its
        DDP-wrapped pair; by default ``self.discriminator`` on each)."""
        zero = torch.zeros((), device=x.device)
        if not self.uses_discriminator(step):
            return {"disc_loss": zero, "logits_real": zero, "logits_fake": zero}
        discriminate = discriminate or (lambda real, fake: (self.discriminator(real), self.discriminator(fake)))
        wide = wide_dtype(reconstruction)
        # A 2D discriminator judges clips frame by frame: its loss is the mean over the frames.
        items = 1 if sees_clips(self.discriminator) else frame_count(x)
        real, fake = (x, reconstruction) if items == 1 else (as_frames(x), as_frames(reconstruction))
        logits_real, logits_fake = discriminate(real.detach(), fake.detach())
        logits_real, logits_fake = logits_real.to(wide), logits_fake.to(wide)
        d_sum = self.factor(step) * self.disc_loss(logits_real, logits_fake).sum()
        (d_sum * (per_image_scale / items)).backward()
        return {"disc_loss": d_sum.detach() / (x.shape[0] * items), "logits_real": logits_real.detach().mean(),
                "logits_fake": logits_fake.detach().mean()}
