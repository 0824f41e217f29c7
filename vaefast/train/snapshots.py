"""Reconstructions to look at while a run trains: a fixed set of held-out images, their reconstructions and, with
the LDM recipe, the discriminator's verdict on both, as a TensorBoard image and a PNG in the run folder
(``images/step000001000.png``), every ``--image-every`` steps or at each evaluation. Computed and read on those steps
only, on rank 0; the steps between read nothing from the device."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.convert import to_unit_float
from ..eval.images import grid_png
from ..models.recipe_parts import as_frames
from ..models.patchgan import sees_clips

SHOWN = 8  # images per row


class Snapshots:
    def __init__(self, monitor, test_images: torch.Tensor, every: int, plan, recipe=None):
        """``recipe``: the LDM recipe (vaefast.train.recipe), whose discriminator's verdict is shown, or None."""
        self.monitor, self.every, self.plan = monitor, every, plan
        self.discriminator = getattr(recipe, "disc", None)
        self.images = test_images[:SHOWN]  # the same images at every snapshot

    def after_step(self, step: int, model) -> None:
        if self.every and step % self.every == 0:
            self.write(step, model)

    def at_evaluation(self, step: int, model) -> None:
        """At each evaluation: the reconstructions when no ``--image-every`` is set, and samples from the prior."""
        if not self.monitor.enabled:
            return
        if not self.every:
            self.write(step, model)
        if self.monitor.writer is not None:
            z = torch.randn((SHOWN, *model.latent_shape), device=self.plan.device)
            with self._eval(model), self.plan.autocast():
                samples = model.likelihood.mean(model.decode(z)).float()
            self.monitor.images("samples", samples, step)

    @torch.no_grad()
    def write(self, step: int, model) -> None:
        if not self.monitor.enabled:
            return
        clips = self.images.dim() == 5
        x = to_unit_float(self.images[:1] if clips else self.images, self.plan.device)
        with self._eval(model), self.plan.autocast():
            mu, _ = model.encode(x)  # the posterior mean: the same picture of the same weights every time
            reconstruction = model.likelihood.mean(model.decode(mu)).float().clamp(0, 1)
        rows = [x, reconstruction]
        if self.discriminator is not None:
            rows += [self._verdict(x), self._verdict(reconstruction)]
        if clips:  # one clip, its frames along the row
            rows = [row[0].transpose(0, 1)[:SHOWN] for row in rows]
        grid = torch.cat(rows)
        self.monitor.images("reconstructions", grid, step)
        title = f"step {step}: held-out images, reconstructions" + (
            ", D's P(real) on each (white: real)" if self.discriminator is not None else "")
        grid_png(grid, self.monitor.out / "images" / f"step{step:09d}.png", title=title)

    def _verdict(self, images: torch.Tensor) -> torch.Tensor:
        """The PatchGAN's sigmoid(logit) per patch, upsampled onto the image (each frame of a clip): where it
        believes the image real."""
        seen = images if images.dim() == 4 or sees_clips(self.discriminator) else as_frames(images)
        with self._eval(self.discriminator), self.plan.autocast():
            logits = self.discriminator(seen * 2 - 1).float()
        size = images.shape[-3:] if logits.dim() == 5 else images.shape[-2:]
        maps = torch.sigmoid(F.interpolate(logits, size=size, mode="nearest"))
        if images.dim() == 5 and maps.dim() == 4:  # frames back into their clips
            maps = maps.view(images.shape[0], images.shape[2], *maps.shape[1:]).transpose(1, 2)
        return maps.expand(-1, images.shape[1], *maps.shape[2:])

    @staticmethod
    def _eval(module):
        """``module`` in eval mode inside (BatchNorm reads its statistics, dropout is off), as it was after."""
        class Mode:
            def __enter__(self):
                self.was = module.training
                module.eval()

            def __exit__(self, *exc):
                module.train(self.was)

        return Mode()
