"""KL weight schedules: linear warm-up and cyclical annealing."""

from __future__ import annotations


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
