"""VAE models and their likelihoods."""

from .likelihoods import LIKELIHOODS, Bernoulli, DiscretizedLogistic, Gaussian, make_likelihood
from .vae import VAE, ModelConfig, VAEOutput, build_model

__all__ = ["LIKELIHOODS", "VAE", "Bernoulli", "DiscretizedLogistic", "Gaussian", "ModelConfig", "VAEOutput",
           "build_model", "make_likelihood"]
