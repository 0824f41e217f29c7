"""torch.library registration: opcheck, and torch.compile(fullgraph=True) with no graph break."""

import pytest
import torch

import vaefast
from vaefast.ops.dispatch import select


def _latent_args(dtype=torch.float32, per_dim=True):
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(5, 2, 3, 4, generator=g).to(dtype).requires_grad_()
    logvar = (torch.randn(5, 2, 3, 4, generator=g) * 6).to(dtype).requires_grad_()
    eps = torch.randn(5, 2, 3, 4, generator=g).to(dtype)
    return (mu, logvar, eps, -4.0, 4.0, per_dim, False, 1)


@pytest.mark.parametrize("per_dim", [False, True])
@pytest.mark.parametrize("seeded", [False, True])
@pytest.mark.parametrize("samples", [1, 3])
def test_opcheck_latent(fused_backend, per_dim, seeded, samples):
    ops = select(fused_backend, torch.device("cpu"), torch.float32)
    mu, logvar, eps, *rest = _latent_args(per_dim=per_dim)
    # the noise input: the one-element int64 seed, or eps of z's shape
    noise = torch.tensor([11]) if seeded else (eps.expand(samples, *eps.shape).contiguous() if samples > 1 else eps)
    torch.library.opcheck(ops.latent_op, (mu, logvar, noise, *rest[:3], seeded, samples))


@pytest.mark.parametrize("continuous", [False, True])
def test_opcheck_bce(fused_backend, continuous):
    ops = select(fused_backend, torch.device("cpu"), torch.float32)
    x = (torch.randn(4, 37) * 3).requires_grad_()
    torch.library.opcheck(ops.bce_op, (x, torch.rand(4, 37), continuous))


def _loss(mu, logvar, eps, logits, target, backend):
    z, kl, kl_dim = vaefast.reparameterize_kl(mu, logvar, eps, backend=backend, return_kl_per_dim=True)
    recon = vaefast.bce_with_logits(logits * z.mean(dim=1, keepdim=True), target, backend=backend)
    return (recon + kl).mean() + 0.01 * kl_dim.sum()


@pytest.mark.parametrize("backend_name", ["torch", "triton", "native"])
def test_fullgraph_compile_matches_eager(backend_name):
    reason = vaefast.unavailable_backends("cpu").get(backend_name)
    if reason is not None:
        pytest.skip(reason)
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(1)
    args = [torch.randn(8, 16, generator=g) for _ in range(3)] + [torch.randn(8, 20, generator=g),
                                                                 torch.rand(8, 20, generator=g)]
    args[0].requires_grad_()
    args[1].requires_grad_()
    eager = _loss(*args, backend_name)
    eager_grads = torch.autograd.grad(eager, args[:2])

    counters = torch._dynamo.utils.counters
    counters.clear()
    compiled_fn = torch.compile(_loss, fullgraph=True, backend="aot_eager")
    compiled = compiled_fn(*args, backend_name)
    compiled_grads = torch.autograd.grad(compiled, args[:2])
    assert sum(counters["graph_break"].values()) == 0
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_inductor_compile_of_native_ops():
    """Inductor (the default compiler) keeps the custom op whole and agrees with eager."""
    if vaefast.unavailable_backends("cpu").get("native") is not None:
        pytest.skip("native backend not built")
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(2)
    mu, logvar, eps = (torch.randn(4, 32, generator=g) for _ in range(3))
    logits, target = torch.randn(4, 50, generator=g), torch.rand(4, 50, generator=g)
    mu.requires_grad_()
    fn = torch.compile(_loss, fullgraph=True)
    out = fn(mu, logvar, eps, logits, target, "native")
    (grad,) = torch.autograd.grad(out, mu)
    ref = _loss(mu, logvar, eps, logits, target, "native")
    (ref_grad,) = torch.autograd.grad(ref, mu)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend_name", ["torch", "native"])
def test_cpu_autocast_bf16(backend_name):
    """Under CPU bf16 autocast the loss stays float32 and close to the float32 result."""
    if vaefast.unavailable_backends("cpu").get(backend_name) is not None:
        pytest.skip("backend unavailable")
    g = torch.Generator().manual_seed(3)
    x = torch.rand(16, 64, generator=g)
    enc = torch.nn.Linear(64, 2 * 8)
    dec = torch.nn.Linear(8, 64)
    eps = torch.randn(16, 8, generator=g)

    def loss():
        mu, logvar = enc(x).chunk(2, dim=1)
        z, kl = vaefast.reparameterize_kl(mu, logvar, eps.to(mu.dtype), backend=backend_name)
        return (vaefast.bce_with_logits(dec(z), x, backend=backend_name) + kl).mean(), z

    full, _ = loss()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed, z = loss()
    assert z.dtype == torch.bfloat16 and mixed.dtype == torch.float32
    assert mixed.item() == pytest.approx(full.item(), rel=2e-2)
    mixed.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in enc.parameters())
