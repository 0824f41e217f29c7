"""Decoder likelihoods p(x | z): each returns the per-sample negative log-likelihood in nats.

Conventions for 8-bit images scaled to [0, 1] (x = k / 255), which decide what "nats per image" and bits/dim mean:
- Bernoulli: the classic VAE objective on gray-scale intensities, BCE-with-logits summed over pixels (fused). For
  non-binary targets it is a cross-entropy, not a normalized likelihood; its bpd is reported by the same formula
  as in the VAE literature that uses it.
- Continuous Bernoulli (Loaiza-Ganem & Cunningham, 2019): the BCE made a normalized density on [0, 1]^D by its
  log-normalizer, fused into the BCE pass; like the Gaussian, dequantized (+ D log 256) for nats and bpd.
- Gaussian: a density on [0, 1]^D. To turn it into a probability of the 8-bit value we use uniform dequantization
  with bins of width 1/256: -log P(x) = -log p(x) + D * log(256). The reported NLL includes that term, so bpd is
  comparable across likelihoods.
- Discretized logistic (PixelCNN++ style, one component): the probability mass of the bin [x - 1/255, x + 1/255]
  in the [-1, 1] rescaling, with the edge bins extended to -inf / +inf. It is a true discrete likelihood.
"""

from __future__ import annotations

import abc
import math
from typing import get_args

import torch
import torch.nn.functional as F
from torch import nn

from ..config.sections import Likelihood as LikelihoodName
from ..ops import bce_with_logits, continuous_bernoulli_nll
from ..ops.reference import clamp_with_inclusive_gradient

LIKELIHOODS = get_args(LikelihoodName)  # the choices of --likelihood, declared once in vaefast.config


class Likelihood(nn.Module, abc.ABC):
    @abc.abstractmethod
    def nll(self, decoded: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-sample negative log-likelihood in nats, float32 [B]."""

    @abc.abstractmethod
    def mean(self, decoded: torch.Tensor) -> torch.Tensor:
        """The expected image in [0, 1], for pictures."""


class Bernoulli(Likelihood):
    def __init__(self, backend: str = "auto"):
        super().__init__()
        self.backend = backend

    def nll(self, logits, x):
        return bce_with_logits(logits, x, backend=self.backend)

    def mean(self, logits):
        return torch.sigmoid(logits.float())


class ContinuousBernoulli(Likelihood):
    """The continuous Bernoulli on the decoder's logits (the current pytorch/examples VAE), fused: the BCE and the
    log-normalizer in one pass. Its mean is not sigmoid(logits) but
    lambda / (2 lambda - 1) + 1 / (2 atanh(1 - 2 lambda))."""

    def __init__(self, backend: str = "auto"):
        super().__init__()
        self.backend = backend

    def nll(self, logits, x):
        return continuous_bernoulli_nll(logits, x, backend=self.backend) + x[0].numel() * math.log(256.0)

    def mean(self, logits):
        # float64: the distribution's closed form cancels near lambda = 1/2, and this runs for pictures only.
        distribution = torch.distributions.ContinuousBernoulli(logits=logits.double(), validate_args=False)
        return distribution.mean.float()


class _LocationScale(Likelihood):
    """A density on [0, 1]^D centred on the decoder's output, with one scalar scale, fixed or learned (stored as its
    log, ``log_sigma``), made a probability of the 8-bit value by uniform dequantization (+ D log 256)."""

    def __init__(self, sigma: float = 0.1, learn_sigma: bool = False):
        super().__init__()
        log_sigma = torch.tensor(math.log(sigma))
        if learn_sigma:
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)

    @staticmethod
    @abc.abstractmethod
    def per_pixel(residual: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
        """-log density of each pixel given x - mean and the log-scale."""

    def nll(self, mean, x):
        per_pixel = self.per_pixel(x - mean.float(), self.log_sigma.float())
        return per_pixel.flatten(1).sum(1) + x[0].numel() * math.log(256.0)

    def mean(self, mean):
        return mean.float().clamp(0, 1)


class Gaussian(_LocationScale):
    """N(x; mean, sigma^2): the L2 reconstruction loss as a likelihood."""

    @staticmethod
    def per_pixel(residual, log_scale):
        return 0.5 * (residual * torch.exp(-log_scale)) ** 2 + log_scale + 0.5 * math.log(2 * math.pi)


class Laplace(_LocationScale):
    """Laplace(x; mean, b) with b = sigma: the L1 reconstruction loss of autoencoder training as a likelihood."""

    @staticmethod
    def per_pixel(residual, log_scale):
        return residual.abs() * torch.exp(-log_scale) + log_scale + math.log(2.0)


class DiscretizedLogistic(Likelihood):
    """One logistic per pixel, mean from the decoder, a learned scalar log-scale, discretized to 256 bins."""

    def __init__(self, init_log_scale: float = -3.0):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(init_log_scale))

    def nll(self, mean, x):
        # Rescale [0, 1] -> [-1, 1], where the bins are 2/255 wide.
        x = x * 2.0 - 1.0
        mu = torch.tanh(mean.float())
        inv_s = torch.exp(-clamp_with_inclusive_gradient(self.log_scale.float(), -7.0, None))
        plus = inv_s * (x - mu + 1.0 / 255.0)
        minus = inv_s * (x - mu - 1.0 / 255.0)
        # log(sigmoid(plus) - sigmoid(minus)) computed stably, with the edge bins open-ended.
        log_cdf_plus = plus - F.softplus(plus)              # log sigmoid(plus): the lowest bin, x = 0
        log_one_minus_cdf_minus = -F.softplus(minus)        # log(1 - sigmoid(minus)): the highest bin, x = 255
        mid = inv_s * (x - mu)
        log_pdf_mid = mid - self.log_scale.float() - 2.0 * F.softplus(mid)
        cdf_delta = torch.sigmoid(plus) - torch.sigmoid(minus)
        # Where the bin mass underflows, approximate it by density * bin width (2/255).
        log_inner = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)),
                                log_pdf_mid + math.log(2.0 / 255.0))
        log_prob = torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_minus, log_inner))
        return -log_prob.flatten(1).sum(1)

    def mean(self, mean):
        return (torch.tanh(mean.float()) + 1.0) * 0.5


def make_likelihood(name: str, *, backend: str = "auto", sigma: float = 0.1, learn_sigma: bool = False):
    if name == "bernoulli":
        return Bernoulli(backend)
    if name == "continuous_bernoulli":
        return ContinuousBernoulli(backend)
    if name == "gaussian":
        return Gaussian(sigma, learn_sigma)
    if name == "laplace":
        return Laplace(sigma, learn_sigma)
    if name == "logistic":
        return DiscretizedLogistic()
    raise ValueError(f"unknown likelihood {name!r}; choose one of {', '.join(LIKELIHOODS)}")
