"""Input checks shared by every backend, so that bad input fails the same way whichever kernel would run."""

from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _describe(name: str, t: torch.Tensor) -> str:
    return f"{name} (shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device})"


def check_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{_describe(name, t)}: expected a floating dtype, one of float32, bfloat16, float16, float64")
    if t.dim() < 2:
        raise ValueError(f"{_describe(name, t)}: expected shape [B, ...] with at least one non-batch dimension")


def check_same(names_tensors: list[tuple[str, torch.Tensor]], *, dtype: bool) -> None:
    """All tensors must share shape and device (and dtype when asked)."""
    first_name, first = names_tensors[0]
    for name, t in names_tensors[1:]:
        if t.shape != first.shape:
            raise ValueError(f"shape mismatch: {_describe(first_name, first)} vs {_describe(name, t)}")
        if t.device != first.device:
            raise ValueError(f"device mismatch: {_describe(first_name, first)} vs {_describe(name, t)}")
        if dtype and t.dtype != first.dtype:
            raise ValueError(f"dtype mismatch: {_describe(first_name, first)} vs {_describe(name, t)}")


def resolve_clamp(clamp) -> tuple[float, float]:
    """clamp=None means no clamp, which the kernels express as (-inf, inf): the values and gradients agree."""
    if clamp is None:
        return -math.inf, math.inf
    try:
        lo, hi = (float(c) for c in clamp)
    except (TypeError, ValueError):
        raise ValueError(f"clamp must be None or a pair (lo, hi) of numbers, got {clamp!r}") from None
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise ValueError(f"clamp must satisfy lo <= hi, got ({lo}, {hi})")
    return lo, hi


def check_latent_inputs(mu, logvar, eps=None, samples: int = 1) -> None:
    """logvar and eps (unless the noise is seeded) against mu, which the caller has checked already; with K > 1
    samples eps is [K, *mu.shape]."""
    check_tensor("logvar", logvar)
    check_same([("mu", mu), ("logvar", logvar)], dtype=True)
    if eps is None:
        return
    check_tensor("eps", eps)
    if samples > 1:
        if tuple(eps.shape) != (samples, *mu.shape):
            raise ValueError(f"shape mismatch: with samples={samples}, eps must have shape {(samples, *mu.shape)}, "
                             f"got {_describe('eps', eps)}")
        check_same([("mu", mu[None].expand(eps.shape)), ("eps", eps)], dtype=True)
    else:
        check_same([("mu", mu), ("eps", eps)], dtype=True)


def sample_shape(mu: torch.Tensor, samples: int) -> tuple[int, ...]:
    """The shape of z: mu's, with a leading dimension of ``samples`` when there is more than one."""
    return (samples, *mu.shape) if samples > 1 else tuple(mu.shape)


def check_samples(samples) -> int:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    return samples


def seed_tensor(seed, device: torch.device) -> torch.Tensor:
    """The Philox key of seeded noise as a one-element int64 tensor on ``device``: a Python int (any value that fits
    in 64 bits, as two's complement) or an integer tensor of one element. A tensor stays where it is, so a device
    seed advanced on the device is read by the kernel, never by the host."""
    if isinstance(seed, torch.Tensor):
        if seed.dtype not in (torch.int64, torch.int32) or seed.numel() != 1:
            raise ValueError(f"seed must be a Python int or an int64 tensor of one element, got a tensor of shape "
                             f"{tuple(seed.shape)} and dtype {seed.dtype}")
        if seed.device != device:
            raise ValueError(f"device mismatch: seed is on {seed.device} but mu is on {device}")
        if seed.requires_grad:
            raise ValueError("seed must not require grad")
        if seed.dtype == torch.int64 and seed.dim() == 1:
            return seed  # already the kernel's key (the trainer's): no view and no cast to dispatch
        return seed.reshape(1).to(torch.int64)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be a Python int or an int64 tensor, got {type(seed).__name__}")
    if not -2**63 <= seed < 2**64:
        raise ValueError(f"seed {seed} does not fit in 64 bits")
    if seed >= 2**63:  # the same 64 bits as an int64
        seed -= 2**64
    return torch.tensor([seed], dtype=torch.int64, device=device)


def check_bce_inputs(logits, target) -> None:
    check_tensor("logits", logits)
    check_tensor("target", target)
    # The target may have its own float dtype: under autocast the logits are bf16 while the data stays float32,
    # and rounding the target to bf16 would change the loss.
    check_same([("logits", logits), ("target", target)], dtype=False)
    if target.requires_grad:
        raise ValueError(
            "target requires grad, but bce_with_logits does not differentiate with respect to the target; "
            "pass target.detach() if that is intended"
        )
