"""The Latent-Diffusion recipe in ``vaefast train --recipe ldm``: the parts a run adds to the ELBO step.

The loss itself is ``vaefast.models.ldm_loss.LPIPSWithDiscriminator`` (the drop-in); here it meets the trainer:
- ``RecipeObjective``: the autoencoder and the recipe's learned logvar as one module, so that DDP wraps and
  all-reduces both; its forward gives the batch and the reconstruction in [-1, 1] and the KL per image.
- ``LDMRecipe``: each micro-batch's backward (the generator's, then the discriminator's on the detached
  reconstruction of the same forward, both summed over the images and scaled to the step's share of the global
  batch, the adaptive weight taken from the last-layer gradients of the whole global micro-batch), and after the
  autoencoder's update the discriminator's own: its NaN decision and skip on the device, its fused Adam, its LR
  schedule and guard. Its state (logvar, discriminator, optimizer, schedule, skipped steps) is one checkpoint entry.

What LDM's Lightning loop does differently, on purpose: LDM runs the autoencoder forward again for the discriminator
step, after the generator's update; here the discriminator steps on the reconstruction of the step's one forward,
as most GAN trainers do (the generator's gradients are LDM's, tests/test_ldm_loss.py).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..config import TrainConfig
from ..eval.fid import load_inception
from ..eval.quality import reconstruction_quality
from ..models.ldm_loss import LPIPSWithDiscriminator
from ..models.objective import ObjectiveOutput
from ..models.patchgan import PatchGAN, PatchGAN3D
from .distributed import DistContext
from .guard import NaNGuard, SkipDecision, nonfinite_flag
from .optim import make_optimizer
from .schedules import LearningRate
from .sync_norm import synchronize_batch_norm


QUALITY_IMAGES = 1000  # per-epoch reconstruction quality: LPIPS's VGG on every test image would dominate an epoch


class RecipeForward(NamedTuple):
    images: torch.Tensor  # the batch in [-1, 1]
    reconstruction: torch.Tensor  # the likelihood's mean in [-1, 1]
    kl: torch.Tensor
    kl_per_dim: torch.Tensor


class RecipeObjective(nn.Module):
    """The autoencoder and the recipe's scalar logvar, one module for DDP; the recipe's backward runs outside."""

    def __init__(self, model: nn.Module, logvar: nn.Parameter):
        super().__init__()
        self.model, self.logvar = model, logvar
        self.loss_terms = nn.ModuleList()  # the ELBO objective's extra terms; the recipe has its own
        self.metric_names = list(LDMRecipe.LOG_NAMES)  # what its backward's term sums hold

    def forward(self, x: torch.Tensor, kl_w=None, scale=None, term_weights=None, noise_seed=None) -> RecipeForward:
        out = self.model(x, seed=noise_seed)
        return RecipeForward(x * 2 - 1, self.model.likelihood.mean(out.decoded) * 2 - 1, out.kl, out.kl_per_dim)


class LDMRecipe:
    LOG_NAMES = ("rec", "lpips", "g_loss", "d_weight", "disc_factor", "disc_loss", "logits_real", "logits_fake",
                 "logvar")

    def __init__(self, cfg: TrainConfig, model: nn.Module, image_shape: tuple, dist: DistContext,
                 device: torch.device, total_steps: int):
        r, o = cfg.recipe, cfg.optim
        if r.disc == "patchgan3d" and len(image_shape) != 4:
            raise ValueError("--disc patchgan3d judges clips [C, T, H, W]; this data holds images: use --disc patchgan")
        image_channels = image_shape[0]
        self.dist, self.device = dist, device
        with torch.random.fork_rng(devices=[]):  # the same initial discriminator on every rank and run
            torch.manual_seed(cfg.runtime.seed)
            kinds = {"patchgan": PatchGAN, "patchgan3d": PatchGAN3D}
            disc = kinds[r.disc](image_channels, layers=r.disc_layers) if r.disc in kinds else None
        if disc is not None and dist.enabled:
            disc = synchronize_batch_norm(disc)
        self.criterion = LPIPSWithDiscriminator(
            discriminator=disc, use_discriminator=disc is not None, kl_weight=cfg.objective.beta,
            perceptual_weight=r.perceptual_weight if r.perceptual == "lpips" else 0.0, disc_weight=r.disc_weight,
            disc_factor=r.disc_factor, disc_start=r.disc_start, disc_loss=r.disc_loss, logvar_init=r.logvar_init,
            lpips_weights=r.lpips_weights, pixel_loss=r.pixel_loss, learn_logvar=r.learn_logvar).to(device)
        self.last_layer = model.last_layer()
        self.disc = disc
        self.optimizer = self.schedule = self.pair = None
        if disc is not None:
            self.optimizer = make_optimizer(o.optimizer, disc, lr=r.disc_lr or o.lr, weight_decay=o.weight_decay,
                                            device=device, betas=o.betas)
            self.schedule = LearningRate.for_run(self.optimizer, o, total_steps, device)
            self.skip_decision = SkipDecision(disc, self.optimizer, device, scaler_enabled=False, dist=dist)
            # One DDP forward for both images (their BatchNorm statistics stay separate, as in LDM).
            pair = DiscriminatorPair(disc)
            self.pair = DDP(pair, device_ids=[device.index] if device.type == "cuda" else None) if dist.enabled \
                else pair
        self.guard = NaNGuard(cfg.optim.max_bad_steps, device)
        self._bad = None
        self.inception = load_inception(r.fid_weights)

    @property
    def logvar(self) -> nn.Parameter:
        return self.criterion.logvar

    def trained_parameters(self) -> tuple[nn.Parameter, ...]:
        """What the autoencoder's optimizer steps besides the model: the logvar, when it learns."""
        return (self.logvar,) if self.logvar.requires_grad else ()

    def objective(self, model: nn.Module) -> RecipeObjective:
        return RecipeObjective(model, self.criterion.logvar)

    def zero_grad(self) -> None:
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        self._bad = None

    def backward(self, out: RecipeForward, kl_weight: torch.Tensor, scale: torch.Tensor, step: int) -> ObjectiveOutput:
        """One micro-batch: the generator's backward, then the discriminator's. Returns what the trainer's metrics
        read: the recipe's nll and KL sums, the per-dim KL and the logs (times the image count, as sums)."""
        c, batch, scale = self.criterion, out.images.shape[0], scale.reshape(())  # DDP's scale is [1]
        logs = c.generator_backward(out.images, out.reconstruction, out.kl, last_layer=self.last_layer, step=step,
                                    per_image_scale=scale, kl_weight=kl_weight, reduce=self._reduce)
        if self.pair is not None:
            logs.update(c.discriminator_backward(out.images, out.reconstruction, step=step, per_image_scale=scale,
                                                 discriminate=self.pair))
            bad = nonfinite_flag(logs["disc_loss"])
            self._bad = bad if self._bad is None else torch.maximum(self._bad, bad)
        zero = torch.zeros((), device=self.device)
        values = torch.stack([logs.get(name, zero).float() for name in self.LOG_NAMES]) * batch
        return ObjectiveOutput(logs["total"], logs["nll"] * batch, logs["kl"] * batch, out.kl_per_dim.detach(), values)

    def _reduce(self, nll_grad: torch.Tensor, g_grad: torch.Tensor, count: torch.Tensor):
        """Sum the last-layer gradients and the image count over the ranks: the adaptive weight of the global batch."""
        if not self.dist.enabled:
            return nll_grad, g_grad, count
        packed = self.dist.all_reduce_(torch.cat([nll_grad.flatten(), g_grad.flatten(), count.view(1)]))
        n = nll_grad.numel()
        return packed[:n].view_as(nll_grad), packed[n:2 * n].view_as(g_grad), packed[-1]

    def update(self, step: int) -> None:
        """After the autoencoder's update: the discriminator's, skipped on the device when its loss or a gradient is
        not finite (on every rank alike). Before ``disc_start`` nothing ran, yet the optimizer steps with zero
        gradients, as in LDM (whose discriminator pass returns ``0 · hinge``): its step count and bias correction
        advance, the parameters stay, and the first updates after ``disc_start`` are LDM's."""
        if self.optimizer is None or self._bad is None:
            return
        if not self.criterion.uses_discriminator(step):
            for p in self.disc.parameters():
                p.grad = torch.zeros_like(p)
            self.optimizer.found_inf = torch.zeros((), device=self.device)
            self.optimizer.step()
            return
        skip = self.skip_decision(self._bad, None)
        self.optimizer.found_inf = skip
        self.optimizer.step()
        self.schedule.advance()
        self.guard.record(skip, lambda: "the discriminator's loss or gradients were not finite")

    def quality(self, model: nn.Module, test: torch.Tensor, device: torch.device, autocast) -> dict:
        """PSNR, SSIM and, for RGB data, the recipe's own LPIPS of the first QUALITY_IMAGES test reconstructions;
        rFID too where the FID Inception weights are (--fid-weights, or pytorch-fid's download in torch's cache)."""
        lpips = self.criterion.perceptual if test.shape[1] == 3 else None
        return reconstruction_quality(model, test[:QUALITY_IMAGES], batch_size=100, device=device, autocast=autocast,
                                      lpips=lpips, inception=self.inception)

    def state_dict(self) -> dict:
        state = {"logvar": self.logvar.detach().clone(), "disc_skipped_steps": self.guard.skipped}
        if self.disc is not None:
            state.update(discriminator=self.disc.state_dict(), disc_optimizer=self.optimizer.state_dict(),
                         disc_scheduler=self.schedule.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.logvar.copy_(state["logvar"])
        self.guard.skipped = state.get("disc_skipped_steps", 0)
        if self.disc is not None:
            if "discriminator" not in state:
                raise ValueError("the checkpoint has no discriminator: it was trained with --disc none")
            self.disc.load_state_dict(state["discriminator"])
            self.optimizer.load_state_dict(state["disc_optimizer"])
            self.schedule.load_state_dict(state["disc_scheduler"])


class DiscriminatorPair(nn.Module):
    """The discriminator on the real and the reconstructed batch in one forward (one DDP forward per backward)."""

    def __init__(self, discriminator: nn.Module):
        super().__init__()
        self.discriminator = discriminator

    def forward(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.discriminator(real), self.discriminator(fake)
