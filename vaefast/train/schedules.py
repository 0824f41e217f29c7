"""KL weight and learning-rate schedules, computed on the device from device step counters."""

from __future__ import annotations

import math

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


def step_counter(device) -> torch.Tensor:
    """A device step count that a step advances in place. int64: torch.compile (2.13, CPU) dropped the in-place
    update of a 0-dim float64 CPU tensor (tests/test_whole_step.py caught it through the learning rate)."""
    return torch.zeros((), dtype=torch.int64, device=device)


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
        self.step = step_counter(device)
        self._constant = torch.tensor(beta, device=device) if cycles <= 0 and warmup_steps <= 0 else None

    @classmethod
    def for_run(cls, objective, total_steps: int, device, encoder_frozen: bool = False) -> "KLWeight":
        """The schedule an ``ObjectiveConfig`` asks for; 0 throughout when the encoder is frozen (--train decoder),
        where the KL reaches no weight that trains."""
        beta = 0.0 if encoder_frozen else objective.beta
        return cls(total_steps, beta, objective.kl_warmup_steps, objective.kl_cycles, device=device)

    def set_step(self, step: int) -> None:
        self.step.fill_(step)

    def advance(self) -> None:
        if self._constant is None:
            self.step.add_(1)

    def value(self) -> torch.Tensor:
        """The weight at the counter's step, as a float32 device tensor."""
        if self._constant is not None:
            return self._constant
        step = self.step.double()
        if self.cycles > 0:
            ramp = torch.remainder(step, self.period) / (self.period * self.ramp_fraction)
        else:
            ramp = step / self.warmup_steps
        return (ramp.clamp(max=1.0) * self.beta).float()


class LearningRate:
    """The optimizer's learning rate as a float32 device tensor in its param groups, set in place on the device from
    a device step counter: ``constant``, or ``cosine`` annealing to 0 over ``total_steps`` (CosineAnnealingLR's
    closed form), either after a linear warm-up over ``warmup_steps``.

    torch's fused Adam reads a tensor lr on the device, but torch's LR schedulers compute each new value on the
    host from that tensor (an ``.item()`` per step), and a float lr would be frozen into a captured step. Here the
    value is a few tensor ops on the counter, inside the step, so neither a plain step nor a replayed CUDA graph
    reads or writes it from the host. The state is the step count, under the key torch's schedulers use, so older
    checkpoints load.
    """

    KINDS = ("constant", "cosine")

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str, total_steps: int, *, device,
                 warmup_steps: int = 0):
        if kind not in self.KINDS:
            raise ValueError(f"learning-rate schedule must be one of {self.KINDS}, got {kind!r}")
        if warmup_steps < 0:
            raise ValueError(f"warm-up steps must be >= 0, got {warmup_steps}")
        self.kind, self.total_steps, self.optimizer = kind, max(total_steps, 1), optimizer
        self.warmup_steps = warmup_steps
        self.base = [float(group["lr"]) for group in optimizer.param_groups]
        self.step = step_counter(device)
        # float32: what torch's fused Adam kernels read through a tensor lr on CUDA.
        self.values = [torch.tensor(base, dtype=torch.float32, device=device) for base in self.base]
        self.attach(optimizer)
        self._set()

    @classmethod
    def for_run(cls, optimizer: torch.optim.Optimizer, optim, total_steps: int, device) -> "LearningRate":
        """The schedule an ``OptimConfig`` (``optim``) asks for."""
        return cls(optimizer, optim.lr_schedule, total_steps, device=device, warmup_steps=optim.warmup_steps)

    @property
    def changes(self) -> bool:
        return self.kind != "constant" or self.warmup_steps > 0

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Put the value tensors into ``optimizer``'s param groups (again after ``optimizer.load_state_dict``, which
        replaces the groups with the saved ones)."""
        for group, value in zip(optimizer.param_groups, self.values):
            group["lr"] = value

    def advance(self) -> None:
        if not self.changes:
            return
        self.step.add_(1)
        self._set()

    def _set(self) -> None:
        """The value of the coming step: the schedule's, times ``(step + 1) / warmup_steps`` during the warm-up (the
        first update already moves the weights, by a ``1 / warmup_steps`` share of the rate)."""
        if not self.changes:
            return
        step = self.step.double()
        fraction = torch.ones_like(step)
        if self.kind == "cosine":
            fraction = (torch.cos(step * (math.pi / self.total_steps)) + 1.0) * 0.5
        if self.warmup_steps > 0:
            fraction = fraction * ((step + 1.0) / self.warmup_steps).clamp(max=1.0)
        for value, base in zip(self.values, self.base):
            value.copy_(fraction * base)

    def state_dict(self) -> dict:
        return {"last_epoch": int(self.step)}  # read on the host only when a checkpoint is written

    def load_state_dict(self, state: dict) -> None:
        """After the optimizer's own load, which brought the saved lr values into new param groups."""
        self.attach(self.optimizer)
        self.step.fill_(state["last_epoch"])
        self._set()
