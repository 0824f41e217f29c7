"""Edge cases every backend (the reference included) must get right, and the errors bad input must raise."""

import math

import pytest
import torch

import vaefast
from vaefast.ops import BackendUnavailable

ALL_BACKENDS = ["torch", "triton", "native"]


@pytest.fixture(params=ALL_BACKENDS)
def backend(request):
    reason = vaefast.unavailable_backends("cpu").get(request.param)
    if reason is not None:
        pytest.skip(reason)
    return request.param


def test_clamp_boundaries_are_inclusive(backend):
    logvar = torch.tensor([[-10.0, 10.0, -10.0001, 10.0001, 0.0]], requires_grad=True)
    mu = torch.zeros(1, 5, requires_grad=True)
    eps = torch.ones(1, 5)
    z, kl = vaefast.reparameterize_kl(mu, logvar, eps, clamp=(-10.0, 10.0), backend=backend)
    (z.sum() + kl.sum()).backward()
    grad = logvar.grad[0]
    assert grad[0] != 0 and grad[1] != 0, "the gradient passes on the bounds, as torch.clamp's does"
    assert grad[2] == 0 and grad[3] == 0, "and is zero outside them"
    assert z[0, 3].item() == pytest.approx(math.exp(5.0), rel=1e-6)


def test_diffusers_clamp_range(backend):
    logvar = torch.tensor([[-35.0, -30.0, 20.0, 25.0]])
    z, kl = vaefast.reparameterize_kl(torch.zeros(1, 4), logvar, torch.ones(1, 4), clamp=(-30.0, 20.0),
                                      backend=backend)
    lv = torch.tensor([-30.0, -30.0, 20.0, 20.0], dtype=torch.float64)
    torch.testing.assert_close(z[0].double(), torch.exp(0.5 * lv), rtol=1e-5, atol=1e-12)
    assert kl.item() == pytest.approx(0.5 * float((lv.exp() - 1 - lv).sum()), rel=1e-5)


def test_clamp_none_disables_the_clamp(backend):
    logvar = torch.tensor([[40.0, -40.0]], requires_grad=True)
    z, kl = vaefast.reparameterize_kl(torch.zeros(1, 2), logvar, torch.ones(1, 2), clamp=None, backend=backend)
    assert z[0, 0].item() == pytest.approx(math.exp(20.0), rel=1e-5)
    kl.sum().backward()
    assert logvar.grad[0, 0].item() == pytest.approx(0.5 * (math.exp(40.0) - 1), rel=1e-5)


@pytest.mark.parametrize("shape", [(0, 8), (0, 2, 3, 3), (3, 0)])
def test_empty_inputs_give_empty_outputs(backend, shape):
    mu = torch.zeros(shape, requires_grad=True)
    z, kl, kl_dim = vaefast.reparameterize_kl(mu, torch.zeros(shape), torch.zeros(shape), backend=backend,
                                              return_kl_per_dim=True)
    assert z.shape == shape and kl.shape == (shape[0],) and kl_dim.shape == shape[1:]
    assert (kl == 0).all()
    (z.sum() + kl.sum()).backward()
    assert mu.grad.shape == shape
    recon = vaefast.bce_with_logits(torch.zeros(shape), torch.zeros(shape), backend=backend)
    assert recon.shape == (shape[0],) and (recon == 0).all()


def test_nan_propagates(backend):
    mu = torch.tensor([[0.0, 1.0], [float("nan"), 1.0], [0.0, 1.0]])
    logvar = torch.tensor([[0.0, 0.0], [0.0, 0.0], [float("nan"), 0.0]])
    z, kl = vaefast.reparameterize_kl(mu, logvar, torch.ones(3, 2), backend=backend)
    assert not kl[0].isnan() and kl[1].isnan() and kl[2].isnan(), "a NaN logvar must not be clamped away"
    assert z[1, 0].isnan() and z[2, 0].isnan() and not z[0].isnan().any()
    logits = torch.tensor([[0.0, 1.0], [float("nan"), 1.0]])
    recon = vaefast.bce_with_logits(logits, torch.full((2, 2), 0.5), backend=backend)
    assert not recon[0].isnan() and recon[1].isnan()


def test_inputs_are_never_modified(backend):
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(4, 33, generator=g) for _ in range(3)]
    copies = [t.clone() for t in tensors]
    mu, logvar = tensors[0].requires_grad_(), tensors[1].requires_grad_()
    z, kl = vaefast.reparameterize_kl(mu, logvar, tensors[2], backend=backend)
    x = torch.randn(4, 33, generator=g, requires_grad=True)
    x_copy, t = x.detach().clone(), torch.rand(4, 33, generator=g)
    t_copy = t.clone()
    (z.sum() + kl.sum() + vaefast.bce_with_logits(x, t, backend=backend).sum()).backward()
    for a, b in zip(tensors, copies):
        assert torch.equal(a.detach(), b)
    assert torch.equal(x.detach(), x_copy) and torch.equal(t, t_copy)


def test_eps_defaults_to_standard_normal(backend):
    torch.manual_seed(0)
    mu, logvar = torch.full((512, 64), 2.0), torch.full((512, 64), math.log(9.0))
    z, _ = vaefast.reparameterize_kl(mu, logvar, backend=backend)
    assert z.mean().item() == pytest.approx(2.0, abs=0.05)
    assert z.std().item() == pytest.approx(3.0, rel=0.03)


@pytest.mark.parametrize(
    "mu_shape, logvar_shape, eps_shape, match",
    [
        ((4, 8), (4, 9), (4, 8), r"shape mismatch: mu \(shape \(4, 8\).*logvar \(shape \(4, 9\)"),
        ((4, 8), (4, 8), (3, 8), r"shape mismatch: mu .* eps \(shape \(3, 8\)"),
        ((8,), (8,), (8,), r"mu \(shape \(8,\).*at least one non-batch dimension"),
    ],
)
def test_shape_errors_name_the_tensors(mu_shape, logvar_shape, eps_shape, match):
    with pytest.raises(ValueError, match=match):
        vaefast.reparameterize_kl(torch.zeros(mu_shape), torch.zeros(logvar_shape), torch.zeros(eps_shape))


def test_dtype_errors():
    with pytest.raises(ValueError, match=r"dtype mismatch: mu .*float32.* logvar .*bfloat16"):
        vaefast.reparameterize_kl(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bfloat16), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"logits .*int64.*floating dtype"):
        vaefast.bce_with_logits(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"shape mismatch: logits \(shape \(2, 3\).* target \(shape \(2, 4\)"):
        vaefast.bce_with_logits(torch.zeros(2, 3), torch.zeros(2, 4))


def test_device_mismatch_is_named():
    with pytest.raises(ValueError, match=r"device mismatch: mu .*cpu.* logvar .*meta"):
        vaefast.reparameterize_kl(torch.zeros(2, 3), torch.zeros(2, 3, device="meta"), torch.zeros(2, 3))


def test_target_gradient_is_refused_clearly():
    with pytest.raises(ValueError, match="target requires grad"):
        vaefast.bce_with_logits(torch.zeros(2, 3), torch.zeros(2, 3, requires_grad=True))


def test_bad_clamp_and_backend_names():
    with pytest.raises(ValueError, match="lo <= hi"):
        vaefast.reparameterize_kl(torch.zeros(2, 3), torch.zeros(2, 3), clamp=(5.0, -5.0))
    with pytest.raises(BackendUnavailable, match="unknown backend 'cuda-fast'"):
        vaefast.reparameterize_kl(torch.zeros(2, 3), torch.zeros(2, 3), backend="cuda-fast")


def test_fused_backends_refuse_float64_with_a_reason(fused_backend):
    with pytest.raises(BackendUnavailable, match="float64"):
        vaefast.bce_with_logits(torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 3), backend=fused_backend)


def test_auto_keeps_float64_exact():
    x = torch.randn(3, 5, dtype=torch.float64)
    t = torch.rand(3, 5, dtype=torch.float64)
    recon = vaefast.bce_with_logits(x, t)
    assert recon.dtype == torch.float64


def test_native_backend_refuses_other_devices():
    reason = vaefast.unavailable_backends("meta").get("native")
    assert reason is not None and ("meta" in reason or "could not be loaded" in reason)


def test_triton_on_cpu_without_interpreter_says_so():
    import subprocess
    import sys

    code = (
        "import os; os.environ.pop('TRITON_INTERPRET', None)\n"
        "import torch, vaefast\n"
        "try:\n"
        "    vaefast.bce_with_logits(torch.zeros(2, 3), torch.zeros(2, 3), backend='triton')\n"
        "except vaefast.BackendUnavailable as e:\n"
        "    print('ERR', e)\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    if "not importable" in out.stdout:
        pytest.skip("triton is not installed")
    assert "TRITON_INTERPRET=1" in out.stdout, out.stdout + out.stderr
