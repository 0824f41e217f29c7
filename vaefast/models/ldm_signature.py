"""``vaefast.LPIPSWithDiscriminator`` called as LDM calls its loss, and ``vaefast.GeneralLPIPSWithDiscriminator``
called as generative-models calls its own: a one-line config change (``target:``) for the codebases that copied
them, with their values, gradients and logs, and LPIPS and the discriminator run backward once.

Their Lightning loops call the loss once per optimizer and then ``loss.backward()``. The generator pass here takes
``∂nll/∂x̂`` (LPIPS's one backward) and ``∂g/∂x̂`` (D's one backward, to its input only), the adaptive weight from
those through the last layer alone, and returns ``value + (s - s.detach())``: ``value`` is the loss's value, computed
as the original computes it, and ``s = Σ x̂ · G + logvar · g_logvar`` a surrogate whose gradient is the combined
gradient ``G``, so that ``loss.backward()`` leaves the original's gradients in the autoencoder and ``logvar`` with one
backward through the decoder and encoder. The regularization (LDM's ``kl_weight · kl``) is added as it is, with its
graph.

The weighted NLL (``weights``) needs another gradient than the plain one of the adaptive weight; both come from the
same LPIPS backward: LPIPS is one number per image, so its gradient, scaled per image by the sum of that image's
weights, is the weighted one.

Before ``disc_start`` nothing of the discriminator runs (``exact_logs=True`` runs it for the logged values alone:
LDM logs ``g_loss``, ``d_weight`` and the logits there, all multiplied by 0 in its losses). LDM's discriminator pass
still returns ``0 · hinge(...)``, whose backward gives every discriminator parameter a zero gradient, so that its
Adam's step count (and bias correction) advances; the pass here returns a loss with the same zero gradients without
running D. generative-models returns a constant there (no gradient, no Adam step); so does its form here.
"""

from __future__ import annotations

import torch

from .recipe_parts import PIXEL_GRADIENTS, PIXEL_LOSSES, frozen, wide_dtype


def generator_pass(crit, x: torch.Tensor, xr: torch.Tensor, regularization, *, weights,
                   last_layer, run_disc: bool, factor: float, cond, fixed_d_weight: float | None):
    """The generator's loss of LDM's form on images ``[N, C, H, W]``: (loss, parts). ``regularization``: the term
    added as it is (with its graph); ``factor``: the discriminator term's factor (0 before ``disc_start``);
    ``run_disc``: whether D runs at all; ``fixed_d_weight``: the weight used instead of the adaptive one (evaluation),
    or None. Without a graph to ``xr`` only the values are computed."""
    n, wide = x.shape[0], wide_dtype(xr)
    graph = torch.is_grad_enabled() and xr.requires_grad
    logvar = crit.logvar.detach().to(wide)
    diff = (x.detach() - xr.detach()).to(wide)
    pixel = PIXEL_LOSSES[crit.pixel_loss](diff)
    rec = pixel
    lpips = None
    if crit.perceptual is not None and crit.perceptual_weight > 0:
        lpips = crit.perceptual(x.detach().contiguous(), xr.contiguous() if graph else xr.detach().contiguous())
        rec = pixel + crit.perceptual_weight * lpips.detach().to(wide)
    nll_elements = rec / torch.exp(logvar) + logvar
    nll = nll_elements.sum() / n
    weighted = nll if weights is None else (weights * nll_elements).sum() / n
    zero = torch.zeros((), dtype=wide, device=x.device)
    d_weight, g_loss, grad_g = zero, zero, None
    if run_disc:
        fake = xr if graph else xr.detach()
        with frozen(crit.discriminator):
            logits = crit.discriminator(fake.contiguous() if cond is None else torch.cat((fake.contiguous(), cond), 1))
        g_loss = -logits.to(wide).mean()
        if graph and (fixed_d_weight is None or (fixed_d_weight and factor)):
            grad_g, = torch.autograd.grad(g_loss * n, xr)  # D's one backward, to its input only
    parts = {"rec": rec.mean(), "nll": nll, "g_loss": g_loss.detach()}
    if not graph:
        d_weight = torch.full((), float(fixed_d_weight or 0.0), dtype=wide, device=x.device) if run_disc else zero
        value = weighted + regularization + d_weight * factor * g_loss
        return value, {**parts, "d_weight": d_weight}
    # ∂(n · nll)/∂x̂ and ∂(n · weighted)/∂x̂, from LPIPS's one backward
    grad_pixel = PIXEL_GRADIENTS[crit.pixel_loss](diff)
    grad_lpips = torch.autograd.grad(lpips.sum(), xr)[0].to(wide) * crit.perceptual_weight if lpips is not None \
        else None
    scale = torch.exp(logvar)
    per_image = pixel[0].numel()
    grad_nll = (grad_pixel + (grad_lpips * per_image if grad_lpips is not None else 0)) / scale
    if weights is None:
        grad_weighted, grad_logvar = grad_nll, (1 - rec / scale).sum()
    else:
        full = torch.broadcast_to(torch.as_tensor(weights, dtype=wide, device=x.device), pixel.shape)
        image_weights = full.flatten(1).sum(1).view(-1, *([1] * (pixel.dim() - 1)))
        grad_weighted = (full * grad_pixel + (grad_lpips * image_weights if grad_lpips is not None else 0)) / scale
        grad_logvar = (full * (1 - rec / scale)).sum()
    if grad_g is not None and fixed_d_weight is None:
        d_weight = crit.adaptive_weight(xr, grad_nll, grad_g, last_layer, n)
    elif run_disc:
        d_weight = torch.full((), float(fixed_d_weight), dtype=wide, device=x.device)
    grad_xr = grad_weighted / n
    if grad_g is not None and factor:
        grad_xr = grad_xr + (d_weight * factor / n) * grad_g.to(wide)
    surrogate = (xr * grad_xr.to(xr.dtype)).sum()
    if crit.logvar.requires_grad:
        surrogate = surrogate + crit.logvar * (grad_logvar / n).to(crit.logvar.dtype)
    value = weighted + regularization + (d_weight * factor * g_loss).detach()
    return value + (surrogate - surrogate.detach()), {**parts, "d_weight": d_weight}


def discriminator_pass(crit, x: torch.Tensor, xr: torch.Tensor, *, active: bool,
                       factor: float, cond, exact_logs: bool, zero_gradients: bool):
    """The discriminator's loss of LDM's form: (loss, logits_real, logits_fake). Inactive (before ``disc_start``),
    D runs only for ``exact_logs``, and the loss is 0 with zero gradients for every parameter (``zero_gradients``,
    LDM's ``0 · hinge``) or a constant (generative-models')."""
    def run(images):
        images = images.detach().contiguous()
        return crit.discriminator(images if cond is None else torch.cat((images, cond), 1))

    zero = torch.zeros((), device=x.device)
    if active:
        logits_real, logits_fake = run(x), run(xr)
        wide = wide_dtype(logits_fake)
        loss = factor * crit.disc_loss(logits_real.to(wide), logits_fake.to(wide)).mean()
        return loss, logits_real.detach().mean(), logits_fake.detach().mean()
    logits_real = logits_fake = zero
    if exact_logs:
        with torch.no_grad():
            logits_real, logits_fake = run(x).mean(), run(xr).mean()
    if zero_gradients:
        loss = sum((p * 0).sum() for p in crit.discriminator.parameters() if p.requires_grad)
        loss = loss if isinstance(loss, torch.Tensor) else zero
    else:
        loss = torch.zeros((), device=x.device, requires_grad=True)
    return loss, logits_real, logits_fake


def ldm_forward(crit, inputs, reconstructions, posteriors, optimizer_idx, global_step,
                last_layer=None, cond=None, split="train", weights=None):
    """LDM's ``LPIPSWithDiscriminator.forward``: (loss, log) with its keys and values."""
    if inputs.dim() != 4:
        raise ValueError(f"LDM's loss takes images [B, C, H, W], got {tuple(inputs.shape)}; for clips use "
                         "vaefast.GeneralLPIPSWithDiscriminator(dims=3) (generative-models' form)")
    _check_cond(crit, cond)
    factor = crit.disc_factor if global_step >= crit.disc_start else 0.0
    if optimizer_idx == 0:
        kl = posteriors if isinstance(posteriors, torch.Tensor) else posteriors.kl()
        kl_loss = kl.sum() / kl.shape[0]
        graph = torch.is_grad_enabled() and reconstructions.requires_grad
        if graph and crit.disc_factor > 0 and last_layer is None:
            raise ValueError("the adaptive weight needs the decoder's last layer: pass last_layer=self.get_last_layer()")
        run_disc = crit.discriminator is not None and (bool(factor) or crit.exact_logs or not graph)
        adaptive_off = crit.disc_factor <= 0 or not graph
        loss, parts = generator_pass(crit, inputs, reconstructions, crit.kl_weight * kl_loss, weights=weights,
                                     last_layer=last_layer, run_disc=run_disc, factor=factor, cond=cond,
                                     fixed_d_weight=0.0 if adaptive_off else None)
        log = {"total_loss": loss.clone().detach(), "logvar": crit.logvar.detach(), "kl_loss": kl_loss.detach(),
               "nll_loss": parts["nll"].detach(), "rec_loss": parts["rec"].detach(),
               "d_weight": parts["d_weight"].detach(), "disc_factor": torch.tensor(factor),
               "g_loss": parts["g_loss"]}
        return loss, {f"{split}/{k}": v for k, v in log.items()}
    if optimizer_idx == 1:
        if crit.discriminator is None:
            raise ValueError("optimizer_idx=1 is the discriminator's pass; this loss was built without one")
        loss, real, fake = discriminator_pass(crit, inputs, reconstructions, active=bool(factor), factor=factor,
                                              cond=cond, zero_gradients=True,
                                              exact_logs=crit.exact_logs or not torch.is_grad_enabled())
        log = {"disc_loss": loss.clone().detach(), "logits_real": real, "logits_fake": fake}
        return loss, {f"{split}/{k}": v for k, v in log.items()}
    raise ValueError(f"optimizer_idx must be 0 (the autoencoder) or 1 (the discriminator), got {optimizer_idx}")


def _check_cond(crit, cond) -> None:
    if (cond is not None) != crit.disc_conditional:
        raise ValueError("disc_conditional=True needs cond= in every call" if crit.disc_conditional else
                         "cond= was given to a loss built with disc_conditional=False")
