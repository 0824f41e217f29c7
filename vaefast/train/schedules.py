"""KL weight schedules: linear warm-up and cyclical annealing."""

from __future__ import annotations

import torch


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


class KLWeight:
    """The same schedule computed on the device from a device step counter.

    A weight that changes every step (warm-up, cycles) would otherwise be a new host-to-device copy each step,
    which on CUDA waits for the stream, and a value a captured step could not see change. Computed from the counter
    it is a few tensor ops with no host involvement; a constant weight is one cached tensor.
    """

    def __init__(self, total_steps: int, beta: float, warmup_steps: int = 0, cycles: int = 0, *, device,
                 ramp_fraction: float = 0.5):
        self.beta, self.warmup_steps, self.cycles, self.ramp_fraction = beta, warmup_steps, cycles, ramp_fraction
        self.period = max(1, total_steps // cycles) if cycles > 0 else 0
        self.step = torch.zeros((), dtype=torch.float64, device=device)
        self._constant = torch.tensor(beta, device=device) if cycles <= 0 and warmup_steps <= 0 else None

    def set_step(self, step: int) -> None:
        self.step.fill_(step)

    def advance(self) -> None:
        if self._constant is None:
            self.step.add_(1)

    def value(self) -> torch.Tensor:
        """The weight at the counter's step, as a float32 device tensor."""
        if self._constant is not None:
            return self._constant
        if self.cycles > 0:
            ramp = torch.remainder(self.step, self.period) / (self.period * self.ramp_fraction)
        else:
            ramp = self.step / self.warmup_steps
        return (ramp.clamp(max=1.0) * self.beta).float()
