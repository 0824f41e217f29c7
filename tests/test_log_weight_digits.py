"""Importance log-weights keep their digits on large images: a 256x256x3 image's log-likelihood is of order 1e6
nats, where float32 steps by 0.06-0.125, so the per-image sums (and the discretization constant D log 256) are
taken in float64 and the importance weights built in it (issue #26)."""

from __future__ import annotations

import math

import pytest
import torch

from vaefast.models.likelihoods import make_likelihood
from vaefast.models.objective import importance_log_weights

K, B, SHAPE = 4, 2, (3, 256, 256)


def _iwae_bound(likelihood, decoded, x, z, mu, logvar):
    nll = likelihood.nll(decoded.flatten(0, 1), x.expand(K, *x.shape).flatten(0, 1)).view(K, B)
    log_w = importance_log_weights(nll, z, mu, logvar, None)
    return torch.logsumexp(log_w, dim=0) - math.log(K)


@pytest.mark.parametrize("name", ["logistic", "gaussian", "laplace"])
def test_a_large_image_bound_matches_float64_to_a_thousandth_of_a_nat(name):
    torch.manual_seed(0)
    likelihood = make_likelihood(name, sigma=0.1)
    x = torch.randint(0, 256, (B, *SHAPE)).float() / 255
    decoded = (x + 0.05 * torch.randn(K, B, *SHAPE)).clamp(0, 1) if name != "logistic" else \
        torch.atanh((x * 2 - 1).clamp(-0.99, 0.99)) + 0.1 * torch.randn(K, B, *SHAPE)
    mu, logvar = torch.randn(B, 16), torch.randn(B, 16) - 1
    z = mu + torch.exp(0.5 * logvar) * torch.randn(K, B, 16)
    bound32 = _iwae_bound(likelihood, decoded, x, z, mu, logvar)
    bound64 = _iwae_bound(likelihood.double(), decoded.double(), x.double(), z.double(), mu.double(),
                          logvar.double())
    assert bound64.dtype == torch.float64 and abs(float(bound64[0])) > 1e5  # large enough to matter
    assert (bound32.double() - bound64).abs().max() < 1e-3, (bound32.double() - bound64).tolist()
