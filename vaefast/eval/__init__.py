"""Evaluation: ELBO, bits/dim, IWAE, active units, and pictures."""

from .elbo import ACTIVE_UNIT_NATS, bits_per_dim, evaluate_elbo
from .iwae import iwae_log_likelihood

__all__ = ["ACTIVE_UNIT_NATS", "bits_per_dim", "evaluate_elbo", "iwae_log_likelihood"]
