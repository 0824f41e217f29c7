"""VAE models and their likelihoods."""

from .likelihoods import (LIKELIHOODS, Bernoulli, ContinuousBernoulli, DiscretizedLogistic, Gaussian, Laplace,
                          make_likelihood)
from .protocol import ModuleVAE
from ..config import ModelConfig
from .factory import build_model
from .vae import VAE, VAEOutput, split_moments

__all__ = ["LIKELIHOODS", "VAE", "Bernoulli", "ContinuousBernoulli", "DiscretizedLogistic", "Gaussian", "Laplace",
           "ModelConfig", "ModuleVAE", "VAEOutput", "build_model", "make_likelihood", "split_moments"]
