"""The two loss classes that LDM codebases train with, written out here from their formulas, and the Lightning loop
that calls them: what ``vaefast.LPIPSWithDiscriminator``'s LDM signature and ``vaefast.GeneralLPIPSWithDiscriminator``
are held to (tests/test_ldm_signature.py) and timed against (benchmarks/bench_ldm_recipe.py --loop lightning).

- ``ReferenceLDMLoss``: CompVis' ``ldm.modules.losses.contperceptual.LPIPSWithDiscriminator`` as its code computes
  it: in both optimizer passes the L1 (+ LPIPS) NLL with its learned scalar logvar, the weighted NLL, the KL from
  ``posteriors.kl()``; in the generator pass the discriminator on the reconstruction, the adaptive weight by two
  ``autograd.grad`` to the last layer with ``retain_graph`` whenever ``disc_factor > 0`` (0 when that raises, in
  evaluation), ``disc_factor`` zeroed before ``disc_start``; in the discriminator pass ``disc_factor · hinge`` of
  its logits on the detached inputs and reconstructions (``cond`` concatenated on the channels when conditional).
- ``ReferenceGeneralLoss``: generative-models' ``GeneralLPIPSWithDiscriminator``: with ``dims=3`` clips as frames
  first; the discriminator and the adaptive weight from ``disc_start`` on (and in evaluation, with weight 1); the
  regularization terms of ``regularization_log`` times ``regularization_weights``; before ``disc_start`` the
  discriminator pass returns a constant that requires grad.
- ``TamingLPIPS``: LPIPS in taming-transformers' module layout (``net.sliceK.I``, ``linK.model.1``,
  ``scaling_layer``), the keys of LDM's checkpoints, computing vaefast's LPIPS with the same tensors.
- ``lightning_step``: Lightning's automatic optimization with two optimizers: per optimizer, the other's parameters
  toggled off, ``training_step`` (a forward of the autoencoder and the loss with that ``optimizer_idx``), zero_grad,
  ``loss.backward()``, ``step``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

VGG_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))  # taming's LPIPS slices of VGG16's features


def hinge(logits_real, logits_fake):
    return 0.5 * (torch.mean(F.relu(1.0 - logits_real)) + torch.mean(F.relu(1.0 + logits_fake)))


def vanilla(logits_real, logits_fake):
    return 0.5 * (torch.mean(F.softplus(-logits_real)) + torch.mean(F.softplus(logits_fake)))


def nll_losses(loss, inputs, reconstructions, weights, pixel_loss):
    """(rec_loss, nll_loss, weighted_nll_loss) as both classes compute them, in both passes: the pixel loss plus the
    weighted LPIPS, the NLL with the scalar logvar, summed and divided by the batch (weighted by ``weights``)."""
    difference = inputs.contiguous() - reconstructions.contiguous()
    rec_loss = torch.abs(difference) if pixel_loss == "l1" else difference ** 2
    if loss.perceptual_weight > 0:
        rec_loss = rec_loss + loss.perceptual_weight * loss.perceptual_loss(inputs.contiguous(),
                                                                            reconstructions.contiguous())
    nll_loss = rec_loss / torch.exp(loss.logvar) + loss.logvar
    weighted_nll_loss = nll_loss if weights is None else weights * nll_loss
    weighted_nll_loss = torch.sum(weighted_nll_loss) / weighted_nll_loss.shape[0]
    return rec_loss, torch.sum(nll_loss) / nll_loss.shape[0], weighted_nll_loss


class _NetLin(nn.Module):
    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), conv)


class TamingLPIPS(nn.Module):
    def __init__(self, lpips: nn.Module):
        super().__init__()
        self._lpips = [lpips]  # not a submodule: its tensors appear under taming's names only
        self.scaling_layer = nn.Module()
        self.scaling_layer.register_buffer("shift", lpips.shift.clone())
        self.scaling_layer.register_buffer("scale", lpips.scale.clone())
        self.net = nn.Module()
        for k, (start, end) in enumerate(VGG_SLICES, 1):
            part = nn.Sequential()
            for i in range(start, end):
                part.add_module(str(i), lpips.features[i])
            setattr(self.net, f"slice{k}", part)
        for k, conv in enumerate(lpips.lins):
            setattr(self, f"lin{k}", _NetLin(conv))
        self.requires_grad_(False)
        self.eval()

    def forward(self, x, y):
        return self._lpips[0](x, y)


class ReferenceLDMLoss(nn.Module):
    def __init__(self, lpips, discriminator, *, disc_start, logvar_init=0.0, kl_weight=1.0, disc_factor=1.0,
                 disc_weight=1.0, perceptual_weight=1.0, disc_conditional=False, disc_loss="hinge"):
        super().__init__()
        self.kl_weight, self.perceptual_weight = kl_weight, perceptual_weight
        self.perceptual_loss = TamingLPIPS(lpips)
        self.logvar = nn.Parameter(torch.ones(size=()) * logvar_init)
        self.discriminator = discriminator
        self.disc_start, self.disc_factor, self.disc_weight = disc_start, disc_factor, disc_weight
        self.disc_conditional = disc_conditional
        self.disc_loss = hinge if disc_loss == "hinge" else vanilla

    def adaptive_weight(self, nll_loss, g_loss, last_layer):
        nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
        g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        return torch.clamp(torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4), 0.0, 1e4).detach() * self.disc_weight

    def _disc(self, images, cond):
        return self.discriminator(images if cond is None else torch.cat((images, cond), dim=1))

    def forward(self, inputs, reconstructions, posteriors, optimizer_idx, global_step, last_layer=None, cond=None,
                split="train", weights=None):
        rec_loss, nll_loss, weighted_nll_loss = nll_losses(self, inputs, reconstructions, weights, "l1")
        kl_loss = posteriors.kl()
        kl_loss = torch.sum(kl_loss) / kl_loss.shape[0]
        disc_factor = self.disc_factor if global_step >= self.disc_start else 0.0
        if optimizer_idx == 0:
            g_loss = -torch.mean(self._disc(reconstructions.contiguous(), cond))
            d_weight = torch.tensor(0.0)
            if self.disc_factor > 0.0:
                try:
                    d_weight = self.adaptive_weight(nll_loss, g_loss, last_layer)
                except RuntimeError:  # no graph: evaluation
                    assert not self.training
            loss = weighted_nll_loss + self.kl_weight * kl_loss + d_weight * disc_factor * g_loss
            log = {"total_loss": loss.clone().detach().mean(), "logvar": self.logvar.detach(),
                   "kl_loss": kl_loss.detach().mean(), "nll_loss": nll_loss.detach().mean(),
                   "rec_loss": rec_loss.detach().mean(), "d_weight": d_weight.detach(),
                   "disc_factor": torch.tensor(disc_factor), "g_loss": g_loss.detach().mean()}
            return loss, {f"{split}/{k}": v for k, v in log.items()}
        logits_real = self._disc(inputs.contiguous().detach(), cond)
        logits_fake = self._disc(reconstructions.contiguous().detach(), cond)
        d_loss = disc_factor * self.disc_loss(logits_real, logits_fake)
        log = {"disc_loss": d_loss.clone().detach().mean(), "logits_real": logits_real.detach().mean(),
               "logits_fake": logits_fake.detach().mean()}
        return d_loss, {f"{split}/{k}": v for k, v in log.items()}


class ReferenceGeneralLoss(nn.Module):
    def __init__(self, lpips, discriminator, *, disc_start, logvar_init=0.0, disc_factor=1.0, disc_weight=1.0,
                 perceptual_weight=1.0, dims=2, learn_logvar=False, regularization_weights=None, pixel_loss="l1"):
        super().__init__()
        self.dims, self.perceptual_weight, self.pixel_loss = dims, perceptual_weight, pixel_loss
        self.perceptual_loss = TamingLPIPS(lpips)
        self.logvar = nn.Parameter(torch.full((), logvar_init), requires_grad=learn_logvar)
        self.discriminator = discriminator
        self.disc_start, self.disc_factor, self.disc_weight = disc_start, disc_factor, disc_weight
        self.regularization_weights = dict(regularization_weights or {})

    def forward(self, inputs, reconstructions, *, regularization_log, optimizer_idx, global_step, last_layer,
                split="train", weights=None):
        if self.dims > 2:
            inputs, reconstructions = (t.transpose(1, 2).flatten(0, 1) for t in (inputs, reconstructions))
        rec_loss, nll_loss, weighted_nll_loss = nll_losses(self, inputs, reconstructions, weights, self.pixel_loss)
        active = global_step >= self.disc_start or not self.training
        if optimizer_idx == 0:
            if active:
                g_loss = -torch.mean(self.discriminator(reconstructions.contiguous()))
                if self.training:
                    nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
                    g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
                    d_weight = torch.clamp(torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4), 0.0, 1e4).detach()
                    d_weight = d_weight * self.disc_weight
                else:
                    d_weight = torch.tensor(1.0)
            else:
                d_weight, g_loss = torch.tensor(0.0), torch.tensor(0.0, requires_grad=True)
            loss = weighted_nll_loss + d_weight * self.disc_factor * g_loss
            log = {}
            for k, v in regularization_log.items():
                if k in self.regularization_weights:
                    loss = loss + self.regularization_weights[k] * v
                    log[f"{split}/{k}"] = v.detach().float().mean()
            log.update({f"{split}/loss/total": loss.clone().detach().mean(),
                        f"{split}/loss/nll": nll_loss.detach().mean(), f"{split}/loss/rec": rec_loss.detach().mean(),
                        f"{split}/loss/g": g_loss.detach().mean(), f"{split}/scalars/logvar": self.logvar.detach(),
                        f"{split}/scalars/d_weight": d_weight.detach()})
            return loss, log
        logits_real = self.discriminator(inputs.contiguous().detach())
        logits_fake = self.discriminator(reconstructions.contiguous().detach())
        if active:
            d_loss = self.disc_factor * hinge(logits_real, logits_fake)
        else:
            d_loss = torch.tensor(0.0, requires_grad=True)
        return d_loss, {f"{split}/loss/disc": d_loss.clone().detach().mean(),
                        f"{split}/logits/real": logits_real.detach().mean(),
                        f"{split}/logits/fake": logits_fake.detach().mean()}


def lightning_step(forward, loss_fn, optimizers, x, global_step, *, last_layer, noise_seed, general=False,
                   keep_grads=True, **loss_kwargs) -> tuple[dict, list[dict]]:
    """One step of Lightning's automatic optimization over (autoencoder, discriminator) optimizers. ``forward(x)``
    gives (reconstruction, posterior); the posterior's noise is seeded by ``noise_seed`` and the pass. Returns the
    merged log and, per pass, the gradients it left (parameter -> a copy; nothing without ``keep_grads``)."""
    logs, grads = {}, []
    for idx, optimizer in enumerate(optimizers):
        others = [p for o in optimizers if o is not optimizer for g in o.param_groups for p in g["params"]]
        toggled = [p for p in others if p.requires_grad]
        for p in toggled:
            p.requires_grad_(False)
        torch.manual_seed(noise_seed * 2 + idx)
        reconstruction, posterior = forward(x)
        if general:
            kl = posterior.kl()
            loss, log = loss_fn(x, reconstruction, regularization_log={"kl_loss": kl.sum() / kl.shape[0]},
                                optimizer_idx=idx, global_step=global_step, last_layer=last_layer, **loss_kwargs)
        else:
            loss, log = loss_fn(x, reconstruction, posterior, idx, global_step, last_layer=last_layer, **loss_kwargs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads.append({p: p.grad.detach().clone() for g in optimizer.param_groups for p in g["params"]
                      if p.grad is not None} if keep_grads else {})
        optimizer.step()
        for p in toggled:
            p.requires_grad_(True)
        logs.update(log)
    return logs, grads
