"""Evaluation: ELBO, bits/dim, active units."""

from .elbo import ACTIVE_UNIT_NATS, bits_per_dim, evaluate_elbo

__all__ = ["ACTIVE_UNIT_NATS", "bits_per_dim", "evaluate_elbo"]
