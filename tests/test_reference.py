"""The reference itself: autograd-exact in float64, and equal to the closed-form math written independently."""

import numpy as np
import pytest
import torch

from vaefast.ops.reference import bce_with_logits_reference, reparameterize_kl_reference


@pytest.mark.parametrize("clamp", [(-2.0, 1.5), None])
@pytest.mark.parametrize("per_dim", [False, True])
def test_latent_gradcheck_float64(clamp, per_dim):
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(3, 2, 5, generator=g, dtype=torch.float64, requires_grad=True)
    # Keep logvar away from the clamp bounds, where the derivative is discontinuous and finite differences lie.
    logvar = (torch.rand(3, 2, 5, generator=g, dtype=torch.float64) * 6 - 3)
    if clamp is not None:
        near = ((logvar - clamp[0]).abs() < 1e-3) | ((logvar - clamp[1]).abs() < 1e-3)
        logvar = torch.where(near, logvar + 0.01, logvar)
    logvar.requires_grad_()
    eps = torch.randn(3, 2, 5, generator=g, dtype=torch.float64)
    lo, hi = clamp if clamp else (None, None)
    assert torch.autograd.gradcheck(
        lambda m, lv: reparameterize_kl_reference(m, lv, eps, lo, hi, per_dim), (mu, logvar)
    )


def test_bce_gradcheck_float64():
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(4, 7, generator=g, dtype=torch.float64) * 5).requires_grad_()
    t = torch.rand(4, 7, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: bce_with_logits_reference(x, t), (x,))


def _latent_closed_form(mu, logvar, eps, lo, hi):
    """The issue's formulas in numpy float64, with hand-derived gradients for gz = 1 and gk = 1."""
    lv = np.clip(logvar, lo, hi)
    s = np.exp(0.5 * lv)
    z = mu + s * eps
    kl = 0.5 * (mu**2 + np.exp(lv) - 1 - lv).reshape(len(mu), -1).sum(1)
    mask = (logvar >= lo) & (logvar <= hi)
    dmu = 1.0 + mu
    dlogvar = np.where(mask, 0.5 * eps * s + 0.5 * (s * s - 1), 0.0)
    return z, kl, dmu, dlogvar


def test_latent_reference_matches_closed_form():
    rng = np.random.default_rng(3)
    mu = rng.normal(size=(8, 3, 4, 4)) * 2
    logvar = rng.normal(size=(8, 3, 4, 4)) * 12
    logvar.flat[:5] = [-10.0, 10.0, -10.0, 10.0, 0.0]  # exactly on the bounds: the gradient passes
    eps = rng.normal(size=(8, 3, 4, 4))
    z_np, kl_np, dmu_np, dlv_np = _latent_closed_form(mu, logvar, eps, -10.0, 10.0)

    m = torch.tensor(mu, requires_grad=True)
    lv = torch.tensor(logvar, requires_grad=True)
    z, kl = reparameterize_kl_reference(m, lv, torch.tensor(eps), -10.0, 10.0)
    (z.sum() + kl.sum()).backward()
    np.testing.assert_allclose(z.detach().numpy(), z_np, rtol=1e-12)
    np.testing.assert_allclose(kl.detach().numpy(), kl_np, rtol=1e-12)
    np.testing.assert_allclose(m.grad.numpy(), dmu_np, rtol=1e-12)
    np.testing.assert_allclose(lv.grad.numpy(), dlv_np, rtol=1e-12, atol=1e-300)


def test_bce_reference_matches_closed_form():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(5, 30)) * 20
    x[0, :3] = [0.0, 700.0, -700.0]
    t = rng.uniform(size=(5, 30))
    # log(1 + exp(x)) - x t, written with logaddexp, which numpy evaluates stably.
    expected = (np.logaddexp(0.0, x) - x * t).sum(1)
    grad_expected = 1.0 / (1.0 + np.exp(-x)) - t
    xt = torch.tensor(x, requires_grad=True)
    recon = bce_with_logits_reference(xt, torch.tensor(t))
    recon.sum().backward()
    np.testing.assert_allclose(recon.detach().numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(xt.grad.numpy(), grad_expected, rtol=1e-12, atol=1e-300)
    assert xt.grad[0, 0].item() == pytest.approx(0.5 - t[0, 0], abs=1e-15)
