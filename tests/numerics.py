"""Tolerances for comparing a fused backend with the reference, and the magnitudes they scale with.

Every backend computes in float32 from the same inputs, so two sources of difference remain:
- float32 arithmetic: exp/log1p implementations within about 2 ulp and a different order of operations and of
  summation. That error is relative to the magnitude of the *terms* (which can cancel), not of the result, so the
  tests pass a magnitude tensor built from absolute values of the terms. 2e-5 leaves a margin of about 100x over
  float32's 1.2e-7 epsilon for a handful of rounded operations and blocked sums of up to ~5k elements.
- rounding the float32 result to a low-precision output: at most one unit in the last place, which relative to the
  value is 2**-7 for bfloat16 (8 significant bits) and 2**-10 for float16 (11 bits). The Triton interpreter may
  round bfloat16 by truncation, which is still within one ulp.
"""

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
