"""Tolerances for comparing a fused backend with the reference, and the magnitudes they scale with.

Every backend computes in float32 from the same inputs, so two sources of difference remain:
- float32 arithmetic: exp/log1p implementations within about 2 ulp and a different order of operations and of
  summation. That error is relative to the magnitude of the *terms* (which can cancel), not of the result, so the
  tests pass a magnitude tensor built from absolute values of the terms. 2e-5 leaves a margin of about 100x over
  float32's 1.2e-7 epsilon for a handful of rounded operations and blocked sums of up to ~5k elements.
- rounding the float32 result to a low-precision output: at most one unit in the last place, which relative to the
  value is 2**-7 for bfloat16 (8 significant bits) and 2**-10 for float16 (11 bits). The Triton interpreter may
  round bfloat16 by truncation, which is still within one ulp.

Whole computations (a network's forward and backward) compared across orders of summation — DDP against one process,
micro-batches against one batch, compiled against eager, channels-last against the default layout, one CPU's GEMM
kernels against another's — are held to a norm-wise bound from the probabilistic rounding-error model of Higham and
Mary ("A new approach to probabilistic rounding error analysis", SIAM J. Sci. Comput. 41(5), 2019): a float32 sum of
n terms is within lambda * sqrt(n) * u * sum|terms| of the exact value with probability at least
1 - 2 exp(-lambda^2 / 2), u = 2**-24. Through a chain of layers the independent errors add in quadrature, so a
result is within lambda * u * sqrt(sum of the chain's reduction lengths) of exact, relative to its scale (the
largest magnitude of the tensor, standing in for sum|terms| / n, which a deep computation does not expose); two
evaluations are within twice that of each other. ``reordered_bound`` is that bound; ``assert_reordered_close``
applies it per tensor, and ``mutation_is_caught`` shows that the bound still fails a real bug (one element perturbed
by 1e-3 of the tensor's largest magnitude).
"""

import math

import torch

FP32_RTOL = 2e-5
OUTPUT_ULP = {torch.float32: 0.0, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}


def assert_close_scaled(actual, expected, magnitude, out_dtype, name):
    actual, expected, magnitude = actual.double(), expected.double(), magnitude.double()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    same = (actual == expected) | (actual.isnan() & expected.isnan())
    # Within a small factor of the largest finite value, a different order of float32 operations may overflow
    # where the reference did not (or the reverse); an infinity of the same sign there is agreement.
    edge = torch.finfo(out_dtype).max / 8
    same |= (actual.abs() >= edge) & (expected.abs() >= edge) & (actual.sign() == expected.sign())
    tol = FP32_RTOL * magnitude + OUTPUT_ULP[out_dtype] * expected.abs() + 1e-30
    bad = ~same & ~((actual - expected).abs() <= tol)
    if bad.any():
        idx = bad.nonzero()[0].tolist()
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {bad.numel()} elements out of tolerance; first at {idx}: "
            f"actual {actual[tuple(idx)].item()!r}, expected {expected[tuple(idx)].item()!r}, "
            f"tolerance {tol[tuple(idx)].item()!r}"
        )


def latent_magnitudes(mu, logvar, eps, gz, w, lo, hi):
    """Absolute-value bounds of the terms summed in each latent output, in float64."""
    mu, logvar, eps, gz, w = (t.double() for t in (mu, logvar, eps, gz, w))
    lv = logvar.clamp(lo, hi) if lo is not None else logvar
    std = torch.exp(0.5 * lv)
    kl_terms = 0.5 * (mu * mu + std * std + 1.0 + lv.abs())
    return {
        "z": mu.abs() + std * eps.abs(),
        "kl": kl_terms.flatten(1).sum(1),
        "kl_per_dim": kl_terms.sum(0),
        "dmu": gz.abs() + (w * mu).abs(),
        "dlogvar": 0.5 * ((gz * eps * std).abs() + w.abs() * (std * std + 1.0)),
    }


def bce_magnitudes(logits, target, g):
    x, t, g = logits.double(), target.double(), g.double()
    bshape = (-1,) + (1,) * (x.dim() - 1)
    return {
        "recon": (x.abs() * (1.0 + t.abs()) + 1.0).flatten(1).sum(1),
        "dx": g.view(bshape).abs() * (1.0 + t.abs()),
    }


FP32_UNIT_ROUNDOFF = 2.0**-24
# lambda = 6: each element fails the probabilistic bound with probability below 2 exp(-18) = 3e-8.
REORDER_LAMBDA = 6.0


def reduction_lengths(*modules: torch.nn.Module) -> list[int]:
    """The number of terms each output element of every Linear and Conv layer sums (its fan-in), in module order."""
    lengths = []
    for module in modules:
        for layer in module.modules():
            if isinstance(layer, torch.nn.Linear):
                lengths.append(layer.in_features)
            elif isinstance(layer, torch.nn.modules.conv._ConvNd):
                lengths.append(layer.in_channels // layer.groups * math.prod(layer.kernel_size))
    return lengths


def reordered_bound(lengths, scale: float, lam: float = REORDER_LAMBDA) -> float:
    """The largest difference expected between two float32 evaluations, in different orders of summation, of a
    quantity of magnitude ``scale`` computed through reductions of ``lengths`` terms (module docstring)."""
    return 2.0 * lam * FP32_UNIT_ROUNDOFF * math.sqrt(sum(lengths)) * scale


def assert_reordered_close(actual: torch.Tensor, expected: torch.Tensor, lengths, name: str,
                           lam: float = REORDER_LAMBDA) -> None:
    """max|actual - expected| <= reordered_bound(lengths, max|expected|): a per-tensor norm-wise comparison."""
    actual, expected = actual.double(), expected.double()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    bound = reordered_bound(lengths, scale, lam)
    err = float((actual - expected).abs().max()) if expected.numel() else 0.0
    assert err <= bound, (f"{name}: max|a - b| = {err:.3e} exceeds 2*{lam:g}*u*sqrt({sum(lengths)})*max|b| = "
                          f"{bound:.3e} (max|b| = {scale:.3e}, {err / max(scale, 1e-300):.2e} of it)")


def mutation_is_caught(check, actual: torch.Tensor, expected: torch.Tensor, relative: float = 1e-3) -> bool:
    """Whether ``check(actual', expected)`` fails when the largest-magnitude element of ``actual`` is moved by
    ``relative`` times its value: the tolerance still catches a one-element bug of that size."""
    mutated = actual.clone()
    flat = mutated.view(-1)
    i = int(flat.abs().argmax())
    flat[i] = flat[i] * (1.0 + relative)
    try:
        check(mutated, expected)
    except AssertionError:
        return True
    return False
