"""Fuzzing the public ops and FusedVAELoss: random shapes (matching or not), dtypes (integer and float64 too),
strided views, and NaN / ±Inf / extreme values in random places. The only outcomes allowed: the reference's values
(NaN and Inf exactly where the reference has them), or a ValueError / TypeError / BackendUnavailable whose message
names the problem. Never another exception, and never a result for invalid input."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vaefast
from vaefast.ops.backends import BackendUnavailable
from vaefast.ops.reference import bce_with_logits_reference, reparameterize_kl_reference

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                      HealthCheck.too_slow])
FLOATS = (torch.float32, torch.bfloat16, torch.float16)
DTYPES = st.sampled_from([*FLOATS, torch.float64, torch.int64])
SHAPES = st.sampled_from([(3, 5), (2, 1), (4, 2, 3, 3), (1, 7), (3, 6)])
SPECIALS = st.lists(st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 0.0, 60.0, -60.0]),
                    max_size=3)
# Infinite logits (also float16 overflowing) are checked in test_infinite_logits against the limits, since the
# reference (torch's formula) gives NaN at -Inf.
FINITE_SPECIALS = st.lists(st.sampled_from([float("nan"), 3e4, -3e4, 0.0, 60.0, -60.0, 1e4, -1e4]), max_size=3)
ALLOWED = (ValueError, TypeError, BackendUnavailable)
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 4e-3, torch.float64: 1e-6}


def _tensor(shape, dtype, strided, specials, seed):
    generator = torch.Generator().manual_seed(seed)
    wide = torch.randn(*shape[:-1], 2 * shape[-1], generator=generator) * 3
    t = wide[..., ::2] if strided else wide[..., :shape[-1]].contiguous()
    flat = t.reshape(-1) if t.is_contiguous() else None
    for i, value in enumerate(specials):
        index = (seed + 7 * i) % t.numel()
        if flat is not None:
            flat[index] = value
        else:
            t[torch.unravel_index(torch.tensor(index), t.shape)] = value
    return t.to(dtype) if dtype.is_floating_point else t.round().to(dtype)


def _same_special_positions(got, expected):
    for check in (torch.isnan, torch.isposinf, torch.isneginf):
        assert torch.equal(check(got.float()), check(expected.float())), check.__name__


def _close(got, expected, dtype):
    got, expected = got.double(), expected.double()
    _same_special_positions(got, expected)
    finite = torch.isfinite(expected)
    tolerance = TOLERANCE[dtype] * (1 + expected[finite].abs())
    assert ((got[finite] - expected[finite]).abs() <= tolerance).all()


@FUZZ
@given(shapes=st.tuples(SHAPES, SHAPES, SHAPES), dtypes=st.tuples(DTYPES, DTYPES, DTYPES),
       strided=st.tuples(st.booleans(), st.booleans()), specials=st.tuples(SPECIALS, SPECIALS),
       backend=st.sampled_from(["auto", "torch", "native", "triton"]), seed=st.integers(0, 2**16))
def test_reparameterize_kl(reliability, shapes, dtypes, strided, specials, backend, seed):
    reliability.case("fuzzed ops: reparameterize_kl")
    mu = _tensor(shapes[0], dtypes[0], strided[0], specials[0], seed)
    logvar = _tensor(shapes[1], dtypes[1], strided[1], specials[1], seed + 1)
    eps = _tensor(shapes[2], dtypes[2], False, [], seed + 2)
    valid = len({*shapes}) == 1 and len({*dtypes}) == 1 and dtypes[0] in (*FLOATS, torch.float64)
    try:
        z, kl = vaefast.reparameterize_kl(mu, logvar, eps, backend=backend)
    except ALLOWED as exc:
        assert str(exc)
        if valid:  # only an unavailable backend may refuse valid input, and it says why
            assert isinstance(exc, BackendUnavailable) and ("float64" in str(exc) or "unavailable" in str(exc))
        return
    assert valid, "invalid input gave a result"
    z_ref, kl_ref = reparameterize_kl_reference(mu, logvar, eps, -10.0, 10.0)
    assert z.dtype == mu.dtype and z.shape == mu.shape and kl.shape == (mu.shape[0],)
    _close(z, z_ref, dtypes[0])
    _close(kl, kl_ref, dtypes[0])


@FUZZ
@given(shapes=st.tuples(SHAPES, SHAPES), dtypes=st.tuples(DTYPES, DTYPES), strided=st.booleans(),
       specials=FINITE_SPECIALS, beta=st.sampled_from([0.0, 1e-6, 1.0, 4.0]),
       reduction=st.sampled_from(["mean", "sum", "none"]), backend=st.sampled_from(["auto", "native", "triton"]),
       seed=st.integers(0, 2**16))
def test_fused_vae_loss(reliability, shapes, dtypes, strided, specials, beta, reduction, backend, seed):
    reliability.case("fuzzed ops: FusedVAELoss")
    logits = _tensor(shapes[0], dtypes[0], strided, specials, seed)
    target = _tensor(shapes[1], dtypes[1], False, [], seed + 1)
    if target.dtype.is_floating_point:
        target = torch.sigmoid(target.float()).to(target.dtype)
    kl = torch.rand(shapes[0][0]) * 10
    criterion = vaefast.FusedVAELoss(beta=beta, reduction=reduction, backend=backend)
    valid = (shapes[0] == shapes[1] and dtypes[0] in (*FLOATS, torch.float64)
             and dtypes[1] in (*FLOATS, torch.float64))
    try:
        out = criterion(logits, target, kl)
    except ALLOWED as exc:
        assert str(exc)
        if valid:
            assert isinstance(exc, (BackendUnavailable, ValueError)) and str(exc)
        return
    assert valid, "invalid input gave a result"
    recon = bce_with_logits_reference(logits, target)
    per_sample = recon + beta * kl
    expected = {"none": per_sample, "sum": per_sample.sum(), "mean": per_sample.mean()}[reduction]
    _close(out.loss, expected, dtypes[0] if dtypes[0] in TOLERANCE else torch.float32)


@pytest.mark.parametrize("backend", ["native", "triton"])
def test_infinite_logits(reliability, backend):
    """BCE-with-logits tends to +Inf as x -> +Inf (t < 1) and as x -> -Inf (t > 0), and to 0 at the matching end
    (t = 1 at +Inf, t = 0 at -Inf). Found by this fuzzing: max(x, 0) - x*t gave inf - inf = NaN at +Inf; torch's
    own formula, which the reference uses, gives NaN at -Inf, so these values are checked against the limits."""
    x = torch.tensor([[float("inf")], [-float("inf")], [float("inf")], [-float("inf")], [float("nan")]])
    target = torch.tensor([[0.3], [0.3], [1.0], [0.0], [0.3]])
    reliability.case("fused BCE at ±Inf logits")
    got = vaefast.bce_with_logits(x, target, backend=backend)
    assert torch.isposinf(got[:2]).all() and (got[2:4].abs() < 1e-6).all() and got[4].isnan(), got


def test_the_oracle_is_not_vacuous():
    """Valid input succeeds and matches; a shape mismatch is refused by name."""
    mu, logvar, eps = (torch.randn(3, 5) for _ in range(3))
    z, _ = vaefast.reparameterize_kl(mu, logvar, eps)
    _close(z, reparameterize_kl_reference(mu, logvar, eps, -10.0, 10.0)[0], torch.float32)
    with pytest.raises(ValueError, match="shape mismatch"):
        vaefast.reparameterize_kl(mu, logvar[:, :4], eps)
