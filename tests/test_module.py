"""FusedVAELoss: the drop-in module over the functional ops."""

import pytest
import torch
import torch.nn.functional as F

import vaefast


def _classic_loss(logits, x, mu, logvar):
    """The pytorch/examples VAE loss (BCE summed over pixels + analytic KL), written independently."""
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_matches_the_classic_recipe(backend):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 784, generator=g)
    mu, logvar = torch.randn(16, 20, generator=g), torch.randn(16, 20, generator=g)
    eps = torch.randn(16, 20, generator=g)
    logits = torch.randn(16, 784, generator=g)
    criterion = vaefast.FusedVAELoss(reduction="sum", clamp=None, backend=backend)
    z, kl = criterion.reparameterize(mu, logvar, eps)
    torch.testing.assert_close(z, mu + torch.exp(0.5 * logvar) * eps)
    out = criterion(logits, x, kl)
    expected = _classic_loss(logits, x, mu, logvar)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert (out.recon + out.kl).item() == pytest.approx(out.loss.item(), rel=1e-6)


def test_beta_and_reductions():
    recon_in = torch.randn(4, 10), torch.rand(4, 10)
    kl = torch.tensor([1.0, 2.0, 3.0, 4.0])
    per_sample = vaefast.bce_with_logits(*recon_in) + 0.5 * kl
    none = vaefast.FusedVAELoss(beta=0.5, reduction="none")(*recon_in, kl)
    torch.testing.assert_close(none.loss, per_sample)
    mean = vaefast.FusedVAELoss(beta=0.5, reduction="mean")(*recon_in, kl)
    assert mean.loss.item() == pytest.approx(per_sample.mean().item())
    assert mean.kl.item() == pytest.approx(2.5)
    total = vaefast.FusedVAELoss(beta=0.5, reduction="sum")(*recon_in, kl)
    assert total.loss.item() == pytest.approx(per_sample.sum().item())


def test_bad_arguments():
    with pytest.raises(ValueError, match="reduction must be one of"):
        vaefast.FusedVAELoss(reduction="avg")
    with pytest.raises(ValueError, match=r"kl has shape \(3,\) but the batch gives recon shape \(4,\)"):
        vaefast.FusedVAELoss()(torch.zeros(4, 5), torch.zeros(4, 5), torch.zeros(3))


def test_gradients_reach_the_model():
    torch.manual_seed(0)
    enc, dec = torch.nn.Linear(30, 8), torch.nn.Linear(4, 30)
    criterion = vaefast.FusedVAELoss()
    x = torch.rand(5, 30)
    mu, logvar = enc(x).chunk(2, dim=1)
    z, kl = criterion.reparameterize(mu, logvar)
    criterion(dec(z), x, kl).loss.backward()
    for p in list(enc.parameters()) + list(dec.parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0
