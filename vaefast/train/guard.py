"""The NaN/Inf guard: skip non-finite updates, and stop with a diagnosis after too many in a row."""

from __future__ import annotations

import torch

HINTS = (
    "Hints: lower the learning rate (--lr) or clip gradients (--clip-grad 1.0); keep the logvar clamp on "
    "(clamp (-10, 10) stops exp(logvar) from overflowing, above logvar ~ 11 in fp16); with --precision fp16 try "
    "bf16, whose range does not overflow; check the data for NaN or values outside [0, 1]."
)


class NonFiniteTraining(RuntimeError):
    """Training produced only non-finite steps for too long; the message says where it went wrong."""


class NaNGuard:
    def __init__(self, max_consecutive: int):
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.skipped = 0

    def record(self, finite: bool, diagnose) -> None:
        """Count a step; after ``max_consecutive`` bad steps in a row, raise with ``diagnose()``'s findings."""
        if finite:
            self.consecutive = 0
            return
        self.consecutive += 1
        self.skipped += 1
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteTraining(
                f"{self.consecutive} consecutive steps had a non-finite loss or gradient; training stopped. "
                f"{diagnose()}. {HINTS}"
            )


def non_finite_report(named_tensors: dict[str, torch.Tensor | None], model: torch.nn.Module) -> str:
    """Which tensors and which parameters' gradients hold NaN or Inf (slow path: only after bad steps)."""
    bad = [name for name, t in named_tensors.items() if t is not None and not torch.isfinite(t).all()]
    bad_params = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    bad_grads = [name for name, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    parts = [f"non-finite tensors: {', '.join(bad) or 'none'}"]
    if bad_grads:
        parts.append(f"non-finite gradients: {', '.join(bad_grads[:8])}{' ...' if len(bad_grads) > 8 else ''}")
    if bad_params:
        parts.append(f"non-finite parameters: {', '.join(bad_params[:8])}")
    return "; ".join(parts)
