"""Property tests: every fused backend equals the PyTorch reference in values and gradients."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numerics import assert_close_scaled, bce_magnitudes, latent_magnitudes

import vaefast

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
CLAMPS = [(-10.0, 10.0), (-30.0, 20.0), None, (-2.0, 3.0)]


@st.composite
def shapes(draw, max_channels: int, max_side: int):
    """Flat [B, D] and spatial [B, C, H, W] tensors, B in 1..64, up to about 5k elements per sample."""
    batch = draw(st.integers(1, 64))
    if draw(st.booleans()):
        return (batch, draw(st.integers(1, 5000 // max(1, batch // 8))))
    return (batch, draw(st.integers(1, max_channels)), draw(st.integers(1, max_side)), draw(st.integers(1, max_side)))


def latent_shapes():
    return shapes(max_channels=4, max_side=24)


def pixel_shapes():
    return shapes(max_channels=3, max_side=32)


def _make(shape, scale, dtype, generator, noncontiguous, device="cpu"):
    """A tensor of the given shape on ``device``. ``noncontiguous``: "elements", a view of every other element of
    a larger buffer; "rows", each sample contiguous but the samples apart, as the first half of a packed
    [B, 2 * dim 1, ...] tensor (how mu and logvar come out of an encoder); else contiguous."""
    if noncontiguous == "elements":
        wide = torch.randn(*shape[:-1], 2 * shape[-1], generator=generator) * scale
        return wide.to(device, dtype)[..., ::2]
    if noncontiguous == "rows":
        packed = torch.randn(shape[0], 2 * shape[1], *shape[2:], generator=generator) * scale
        return packed.to(device, dtype)[:, :shape[1]]
    return (torch.randn(*shape, generator=generator) * scale).to(device, dtype)


def _plant(t, values, generator):
    """Overwrite a few random positions with exact special values (clamp bounds, zeros), in place, views too."""
    for v in values:
        idx = torch.randint(0, t.numel(), (max(1, t.numel() // 50),), generator=generator).to(t.device)
        t[torch.unravel_index(idx, t.shape)] = v
    return t


# Drawn by both property tests: the input dtype, strided views, and the seed of the tensors' values.
COMMON = dict(dtype=st.sampled_from(DTYPES), noncontiguous=st.sampled_from(["no", "elements", "rows"]),
              seed=st.integers(0, 2**31 - 1))
# 30 examples per property test and backend, or the profile's count where it asks for more (HYPOTHESIS_PROFILE=
# thorough, tests/conftest.py): the suite's time does not hang on which profile is loaded.
EXAMPLES = settings(max_examples=max(30, settings().max_examples), deadline=None)


@EXAMPLES
@given(
    shape=latent_shapes(),
    clamp=st.sampled_from(CLAMPS),
    logvar_scale=st.sampled_from([1.0, 8.0, 25.0]),
    per_dim=st.booleans(),
    **COMMON,
)
def test_reparameterize_kl_matches_reference(fused_target, shape, dtype, clamp, logvar_scale, noncontiguous,
                                             per_dim, seed):
    fused_backend, device = fused_target
    g = torch.Generator().manual_seed(seed)
    mu = _make(shape, 3.0, dtype, g, noncontiguous, device)
    logvar = _make(shape, logvar_scale, dtype, g, noncontiguous, device)
    eps = _make(shape, 1.0, dtype, g, noncontiguous, device)
    if clamp is not None:
        # Values exactly on the clamp bounds, where torch.clamp's gradient still passes.
        _plant(logvar, [clamp[0], clamp[1]], g)
    _plant(mu, [0.0], g)
    if dtype == torch.float16 and clamp is None:
        logvar = logvar.clamp(-20, 20)  # exp(lv) of float16 overflows above ~11: inf in both, tested elsewhere

    outs, grads = {}, {}
    gz = torch.randn(shape, generator=g).to(device, dtype)
    gk = torch.randn(shape[0], generator=g).to(device)
    gd = torch.randn(shape[1:], generator=g).to(device)
    for backend in ("torch", fused_backend):
        m = mu.detach().clone().requires_grad_()
        lv = logvar.detach().clone().requires_grad_()
        out = vaefast.reparameterize_kl(m, lv, eps, clamp=clamp, backend=backend, return_kl_per_dim=per_dim)
        assert out[0].dtype == dtype and out[0].shape == mu.shape
        assert out[1].dtype == torch.float32 and out[1].shape == (shape[0],)
        grad_outputs = (gz, gk, gd) if per_dim else (gz, gk)
        grads[backend] = torch.autograd.grad(out, (m, lv), grad_outputs)
        outs[backend] = out

    lo, hi = clamp if clamp is not None else (None, None)
    w = gk.view((-1,) + (1,) * (len(shape) - 1)) + (gd if per_dim else 0.0)
    mag = latent_magnitudes(mu, logvar, eps, gz, w, lo, hi)
    ref, got = outs["torch"], outs[fused_backend]
    assert_close_scaled(got[0], ref[0], mag["z"], dtype, "z")
    assert_close_scaled(got[1], ref[1], mag["kl"], torch.float32, "kl")
    if per_dim:
        assert got[2].shape == shape[1:]
        assert_close_scaled(got[2], ref[2], mag["kl_per_dim"], torch.float32, "kl_per_dim")
    assert_close_scaled(grads[fused_backend][0], grads["torch"][0], mag["dmu"], dtype, "d mu")
    assert_close_scaled(grads[fused_backend][1], grads["torch"][1], mag["dlogvar"], dtype, "d logvar")


@EXAMPLES
@given(
    shape=pixel_shapes(),
    target_dtype=st.sampled_from([None, torch.float32]),
    logit_scale=st.sampled_from([1.0, 10.0, 1e4]),
    binary_target=st.booleans(),
    **COMMON,
)
def test_bce_with_logits_matches_reference(fused_target, shape, dtype, target_dtype, logit_scale, binary_target,
                                           noncontiguous, seed):
    fused_backend, device = fused_target
    g = torch.Generator().manual_seed(seed)
    logits = _make(shape, logit_scale, dtype, g, noncontiguous, device)
    _plant(logits, [0.0], g)  # the derivative at exactly 0 is 0.5 - t
    target = torch.rand(shape, generator=g)
    if binary_target:
        target = target.round()
    target = target.to(device, target_dtype or dtype)
    upstream = torch.randn(shape[0], generator=g).to(device)

    results = {}
    for backend in ("torch", fused_backend):
        x = logits.detach().clone().requires_grad_()
        recon = vaefast.bce_with_logits(x, target, backend=backend)
        assert recon.dtype == torch.float32 and recon.shape == (shape[0],)
        (dx,) = torch.autograd.grad(recon, x, upstream)
        assert dx.dtype == dtype
        results[backend] = (recon, dx)

    mag = bce_magnitudes(logits, target, upstream)
    assert torch.isfinite(results[fused_backend][0]).all(), "BCE overflowed"
    assert_close_scaled(results[fused_backend][0], results["torch"][0], mag["recon"], torch.float32, "recon")
    assert_close_scaled(results[fused_backend][1], results["torch"][1], mag["dx"], dtype, "d logits")


def test_bce_extreme_logits_are_exact(fused_target):
    fused_backend, device = fused_target
    x = torch.tensor([[1e4, -1e4, 0.0, 30.0, -30.0]], device=device)
    t = torch.tensor([[1.0, 0.0, 0.3, 1.0, 0.0]], device=device)
    recon = vaefast.bce_with_logits(x, t, backend=fused_backend)
    expected = 0.0 + 0.0 + math.log(2.0) + math.log1p(math.exp(-30.0)) * 2
    assert recon.item() == pytest.approx(expected, rel=1e-6)
    xr = x.clone().requires_grad_()
    vaefast.bce_with_logits(xr, t, backend=fused_backend).sum().backward()
    assert xr.grad[0, 2].item() == pytest.approx(0.5 - 0.3, abs=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_per_dim_gradient_flows(fused_target, dtype):
    """Free bits differentiate through the per-dim KL; its gradient must match the reference."""
    fused_backend, device = fused_target
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(6, 40, generator=g).to(device, dtype)
    logvar = torch.randn(6, 40, generator=g).to(device, dtype)
    eps = torch.randn(6, 40, generator=g).to(device, dtype)
    results = []
    for backend in ("torch", fused_backend):
        m, lv = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
        _, _, kl_dim = vaefast.reparameterize_kl(m, lv, eps, backend=backend, return_kl_per_dim=True)
        torch.clamp(kl_dim / 6, min=0.5).sum().backward()
        results.append((m.grad.float(), lv.grad.float()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=2**-7, atol=1e-3)


@pytest.mark.parametrize("backend", ["torch", "fused"])
def test_kl_near_the_prior_is_never_negative_and_keeps_its_digits(fused_target, backend):
    """The KL's log-variance term e^lv - 1 - lv cancels near lv = 0: formed as exp(lv) - 1 - lv it came out
    negative for 37,688 of 262,144 elements at lv ~ 1e-3 (down to -6e-8). Every backend gives each element, its
    per-sample sum and its per-dim sum within 4e-6 relative of float64, never below 0 (the series' float32 rounding
    below |lv| = 0.5; above it, a few ulp of exp(lv) against e^lv - 1 - lv >= 0.15).
    """
    fused_backend, device = fused_target
    g = torch.Generator().manual_seed(3)
    lv = torch.randn(64, 4096, generator=g) * 1e-3
    lv[:, :100] = torch.randn(64, 100, generator=g) * 1e-7
    lv[0, :8] = torch.tensor([0.0, 1e-30, -1e-30, 0.4999, -0.4999, 0.5, -0.5, 3.0])
    exact = 0.5 * (torch.expm1(lv.double()) - lv.double())  # float64: its own cancellation is far below 1e-6
    mu = torch.zeros_like(lv)
    name = "torch" if backend == "torch" else fused_backend
    _, kl, kl_dim = vaefast.reparameterize_kl(mu.to(device), lv.to(device), torch.zeros_like(lv).to(device),
                                              backend=name, clamp=None, return_kl_per_dim=True)
    kl, kl_dim = kl.cpu().double(), kl_dim.cpu().double()
    assert (kl_dim >= 0).all() and (kl >= 0).all()
    torch.testing.assert_close(kl, exact.sum(1), rtol=4e-6, atol=0)
    torch.testing.assert_close(kl_dim, exact.sum(0), rtol=4e-6, atol=0)
    # One element per row shows each element's own value (zero mu, one column).
    _, kl_one = vaefast.reparameterize_kl(torch.zeros(8, 1, device=device), lv[0, :8, None].to(device),
                                          torch.zeros(8, 1, device=device), backend=name, clamp=None)
    assert (kl_one >= 0).all()
    torch.testing.assert_close(kl_one.cpu().double(), exact[0, :8], rtol=4e-6, atol=1e-45)
