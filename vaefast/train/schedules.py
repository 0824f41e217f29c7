"""KL weight schedules and the free-bits KL objective."""

from __future__ import annotations

import torch

from ..ops.reference import clamp_with_inclusive_gradient


def kl_weight(step: int, total_steps: int, beta: float, warmup_steps: int = 0, cycles: int = 0,
              ramp_fraction: float = 0.5) -> float:
    """The weight of the KL term at ``step``.

    - cycles > 0: cyclical annealing (Fu et al., 2019): the run is cut into ``cycles`` equal cycles; in each the
      weight rises linearly from 0 to beta over the first ``ramp_fraction`` of the cycle, then stays at beta.
    - otherwise warmup_steps > 0: linear warm-up from 0 to beta, then constant.
    - otherwise: beta.
    """
    if cycles > 0:
        period = max(1, total_steps // cycles)
        position = (step % period) / period
        return beta * min(1.0, position / ramp_fraction)
    if warmup_steps > 0:
        return beta * min(1.0, step / warmup_steps)
    return beta


def kl_objective(kl: torch.Tensor, kl_per_dim: torch.Tensor, batch_size: int, free_bits: float) -> torch.Tensor:
    """The KL summed over the batch as the loss sees it.

    With free bits (Kingma et al., 2016) each latent dimension's batch-mean KL is floored at ``free_bits`` nats,
    so the optimizer gains nothing by pushing a dimension below it; the per-dim KL comes from the fused op.
    """
    if free_bits <= 0:
        return kl.sum()
    floored = clamp_with_inclusive_gradient(kl_per_dim / max(batch_size, 1), free_bits, None)
    return floored.sum() * batch_size
