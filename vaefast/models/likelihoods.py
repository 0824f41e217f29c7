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


def discretization(x: torch.Tensor) -> float:
    """D log 256 nats: a density on [0, 1]^D made a probability of the 8-bit image (bins of width 1/256)."""
    return x[0].numel() * math.log(256.0)


def _wide(t: torch.Tensor) -> torch.dtype:
    """float32 for bf16/fp16/float32 decoder outputs, float64 stays float64."""
    return torch.promote_types(t.dtype, torch.float32)


class ContinuousBernoulli(Likelihood):
    """The continuous Bernoulli on the decoder's logits (the current pytorch/examples VAE), fused: the BCE and the
    log-normalizer in one pass. Its mean is not sigmoid(logits) but
    lambda / (2 lambda - 1) + 1 / (2 atanh(1 - 2 lambda))."""

    def __init__(self, backend: str = "auto"):
        super().__init__()
        self.backend = backend

    def nll(self, logits, x):
        return continuous_bernoulli_nll(logits, x, backend=self.backend).double() + discretization(x)

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

    power = 1  # the residual's exponent: -log p = Σ distance(r) / sigma^power + D log_normalizer(log sigma)

    @staticmethod
    @abc.abstractmethod
    def distance(residual: torch.Tensor) -> torch.Tensor:
        """Each pixel's residual term at unit scale."""

    @staticmethod
    @abc.abstractmethod
    def log_normalizer(log_scale: torch.Tensor) -> torch.Tensor:
        """The part of each pixel's -log density that the residual does not change."""

    def nll(self, mean, x):
        # Summed per image in float64, with the scale and the constants applied once per image rather than rounded
        # into every pixel's term: a large image's -log p is of order 1e6 nats, where float32 steps by 0.06.
        wide = _wide(mean)
        distance = self.distance(x.to(wide) - mean.to(wide)).flatten(1).sum(1, dtype=torch.float64)
        log_scale = self.log_sigma.double()
        constant = x[0].numel() * self.log_normalizer(log_scale) + discretization(x)
        return distance * torch.exp(-self.power * log_scale) + constant

    def mean(self, mean):
        return mean.float().clamp(0, 1)


class Gaussian(_LocationScale):
    """N(x; mean, sigma^2): the L2 reconstruction loss as a likelihood."""

    power = 2

    @staticmethod
    def distance(residual):
        return 0.5 * residual.square()

    @staticmethod
    def log_normalizer(log_scale):
        return log_scale + 0.5 * math.log(2 * math.pi)


class Laplace(_LocationScale):
    """Laplace(x; mean, b) with b = sigma: the L1 reconstruction loss of autoencoder training as a likelihood."""

    @staticmethod
    def distance(residual):
        return residual.abs()

    @staticmethod
    def log_normalizer(log_scale):
        return log_scale + math.log(2.0)


class DiscretizedLogistic(Likelihood):
    """One logistic per pixel, mean from the decoder, a learned scalar log-scale, discretized to 256 bins."""

    def __init__(self, init_log_scale: float = -3.0):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(init_log_scale))

    def nll(self, mean, x):
        # In float64: a bin's mass is a difference of two sigmoids that cancels in float32, a bias that adds up over
        # a large image's pixels (tests/test_log_weight_digits.py). Rescale [0, 1] -> [-1, 1], bins 2/255 wide.
        wide = torch.float64
        x = x.to(wide) * 2.0 - 1.0
        mu = torch.tanh(mean.to(wide))
        log_scale = self.log_scale.to(wide)
        inv_s = torch.exp(-clamp_with_inclusive_gradient(log_scale, -7.0, None))
        plus = inv_s * (x - mu + 1.0 / 255.0)
        minus = inv_s * (x - mu - 1.0 / 255.0)
        # log(sigmoid(plus) - sigmoid(minus)) computed stably, with the edge bins open-ended.
        log_cdf_plus = plus - F.softplus(plus)              # log sigmoid(plus): the lowest bin, x = 0
        log_one_minus_cdf_minus = -F.softplus(minus)        # log(1 - sigmoid(minus)): the highest bin, x = 255
        mid = inv_s * (x - mu)
        log_pdf_mid = mid - log_scale - 2.0 * F.softplus(mid)
        cdf_delta = torch.sigmoid(plus) - torch.sigmoid(minus)
        # Where the bin mass underflows, approximate it by density * bin width (2/255).
        log_inner = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)),
                                log_pdf_mid + math.log(2.0 / 255.0))
        log_prob = torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_minus, log_inner))
        return -log_prob.flatten(1).sum(1, dtype=torch.float64)

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
