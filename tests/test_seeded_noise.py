"""Seeded in-kernel noise: reparameterize_kl(mu, logvar, seed=s) draws eps from Philox4x32-10 keyed by s and counted
by the element index, on every backend, and regenerates it in the backward instead of storing it.

The integer stream is checked bit-exactly (Random123's known-answer vectors for the reference; Triton's own
tl.randint4x, and the native kernel's words, against the reference), the normals for their moments and against each
other, and the op's values and gradients against the reference with the same seed."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vaefast
from vaefast.ops.reference import philox4x32_10, seed_words, seeded_normal

# Random123 kat_vectors, philox4x32 with 10 rounds: (counter, key, output).
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]
SEEDS = [0, 1, 1234, 2**40 + 77, -5, 2**63 - 1]
# The normal transform's float32 math (log, cos) differs in its last bits between backends.
NORMAL_ATOL = 2e-5

try:
    import triton
    import triton.language as tl

    from vaefast.ops.triton_backend import _seeded_normal
except ImportError:
    _draw = None
else:
    @triton.jit
    def _draw(words_ptr, normals_ptr, kernel_normals_ptr, seed, first, N: tl.constexpr):
        offs = tl.arange(0, N)
        w0, w1, _, _ = tl.randint4x(seed, offs)
        tl.store(words_ptr + offs, w0.to(tl.int64) & 0xFFFFFFFF)
        tl.store(words_ptr + N + offs, w1.to(tl.int64) & 0xFFFFFFFF)
        tl.store(normals_ptr + offs, tl.randn(seed, offs))
        tl.store(kernel_normals_ptr + offs, _seeded_normal(seed, first + offs.to(tl.int64)))
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2e-2), torch.float16: (2e-3, 2e-3)}


def _words(seed, first, n):
    index = torch.arange(first, first + n, dtype=torch.int64)
    zero = torch.zeros_like(index)
    return philox4x32_10((index & 0xFFFFFFFF, index >> 32, zero, zero), seed_words(torch.tensor(seed)))


@pytest.mark.parametrize("counter, key, expected", PHILOX_KAT)
def test_reference_philox_known_answers(counter, key, expected):
    out = philox4x32_10(tuple(torch.tensor([c]) for c in counter), tuple(torch.tensor([k]) for k in key))
    assert tuple(int(w) for w in out) == expected


def test_native_words_are_the_reference_stream():
    native = pytest.importorskip("vaefast.ops.native_backend")
    if native.load_error():
        pytest.skip(native.load_error())
    for seed in SEEDS:
        for first in (0, 2**31 - 5, 2**32 - 3, 3 * 2**32 + 11):  # the counter's high word included
            reference = _words(seed, first, 64)
            got = native.philox_words(seed, first, 64)
            assert torch.equal(got[:, 0], reference[0]) and torch.equal(got[:, 1], reference[1]), (seed, first)
            expected = seeded_normal(torch.tensor(seed), (64,), first_index=first)
            assert (native.seeded_normal(seed, first, 64) - expected).abs().max() <= NORMAL_ATOL


def test_triton_words_are_the_reference_stream():
    """Triton's tl.randint4x / tl.randn at int32 offsets are the reference stream, and the kernels' own draw
    (_seeded_normal) continues it past 2**32, under the interpreter here and compiled on a GPU."""
    if _draw is None or vaefast.unavailable_backends("cpu").get("triton") is not None:
        pytest.skip("the triton backend is unavailable here")
    n = 64
    for seed in SEEDS:
        for first in (0, 2**32 - 3, 3 * 2**32 + 11):
            words, normals, kernel_normals = torch.zeros(2 * n, dtype=torch.int64), torch.zeros(n), torch.zeros(n)
            _draw[(1,)](words, normals, kernel_normals, seed, first, N=n)
            reference = _words(seed, 0, n)
            assert torch.equal(words[:n], reference[0]) and torch.equal(words[n:], reference[1])
            assert (normals - seeded_normal(torch.tensor(seed), (n,))).abs().max() <= NORMAL_ATOL
            expected = seeded_normal(torch.tensor(seed), (n,), first_index=first)
            assert (kernel_normals - expected).abs().max() <= NORMAL_ATOL, (seed, first)


@pytest.mark.parametrize("backend", ["torch", "native", "triton"])
def test_normals_have_standard_moments(backend):
    """Mean 0, variance 1, skewness 0, kurtosis 3 over 2**18 draws (several standard errors of slack), and the
    eps the op used is exactly what z - mu reveals at logvar = 0."""
    if backend != "torch" and vaefast.unavailable_backends("cpu").get(backend) is not None:
        pytest.skip(vaefast.unavailable_backends("cpu").get(backend))
    n = 2**18 if backend != "triton" else 2**14  # the interpreter is slow
    mu, logvar = torch.zeros(4, n // 4), torch.zeros(4, n // 4)
    z, _ = vaefast.reparameterize_kl(mu, logvar, seed=2024, backend=backend)
    x = z.double().flatten()
    se = 1 / math.sqrt(x.numel())
    assert abs(x.mean()) < 5 * se
    assert abs(x.var() - 1) < 5 * math.sqrt(2) * se
    assert abs(((x - x.mean()) ** 3).mean() / x.std() ** 3) < 5 * math.sqrt(6) * se
    assert abs(((x - x.mean()) ** 4).mean() / x.var() ** 2 - 3) < 5 * math.sqrt(24) * se
    assert x.abs().max() <= math.sqrt(-2 * math.log(1e-7)) + 1e-4  # Box-Muller's bound at u1 = 1e-7


def _inputs(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(shape, generator=g).to(dtype).requires_grad_()
    logvar = (torch.randn(shape, generator=g) * 3).to(dtype).requires_grad_()
    return mu, logvar


@settings(max_examples=20, deadline=None)
@given(shape=st.sampled_from([(1, 1), (3, 20), (5, 300), (2, 2100), (2, 4, 5, 5)]),
       dtype=st.sampled_from(list(TOLERANCE)), seed=st.sampled_from(SEEDS), per_dim=st.booleans(),
       clamp=st.sampled_from([(-10.0, 10.0), (-2.0, 2.0), None]))
def test_seeded_op_matches_the_reference(fused_backend, shape, dtype, seed, per_dim, clamp):
    """Values and gradients of every fused backend with seed=s equal the reference with seed=s (which draws
    reference.seeded_normal), for short rows, long rows that span column chunks, and spatial latents."""
    if dtype == torch.float16 and fused_backend == "native" and not vaefast.ops.native_backend.library() \
            .vf_has_float16():
        pytest.skip("no float16 in this build")
    results = []
    for backend in (fused_backend, "torch"):
        mu, logvar = _inputs(shape, dtype, 0)
        out = vaefast.reparameterize_kl(mu, logvar, seed=seed, clamp=clamp, backend=backend,
                                        return_kl_per_dim=per_dim)
        g = torch.Generator().manual_seed(1)
        loss = (out[0].float() * torch.randn(shape, generator=g)).sum() + (out[1] * 0.7).sum()
        if per_dim:
            loss = loss + (out[2] * 0.3).sum()
        loss.backward()
        results.append([t.detach().float() for t in out] + [mu.grad.float(), logvar.grad.float()])
    rtol, atol = TOLERANCE[dtype]
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, rtol=rtol, atol=atol * max(1.0, math.prod(shape[1:]) ** 0.5))


def test_seeded_noise_is_reproducible_and_keyed(fused_backend):
    mu, logvar = torch.zeros(4, 50), torch.zeros(4, 50)
    a, _ = vaefast.reparameterize_kl(mu, logvar, seed=5, backend=fused_backend)
    b, _ = vaefast.reparameterize_kl(mu, logvar, seed=torch.tensor(5), backend=fused_backend)
    c, _ = vaefast.reparameterize_kl(mu, logvar, seed=6, backend=fused_backend)
    d, _ = vaefast.reparameterize_kl(mu, logvar, seed=2**64 - 1, backend=fused_backend)  # the bits of -1
    e, _ = vaefast.reparameterize_kl(mu, logvar, seed=-1, backend=fused_backend)
    assert torch.equal(a, b) and torch.equal(d, e)
    assert not torch.equal(a, c) and (a - c).abs().mean() > 0.5


def test_no_eps_is_saved_for_backward(fused_backend):
    """With a seed, autograd keeps mu, logvar and the 8-byte seed: two latent-sized tensors, not three."""
    mu, logvar = torch.randn(8, 256, requires_grad=True), torch.randn(8, 256, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    for kwargs in ({"seed": 3}, {"eps": torch.randn(8, 256)}):
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            z, kl = vaefast.reparameterize_kl(mu, logvar, backend=fused_backend, **kwargs)
        latent_sized = [t for t in saved if t.numel() == mu.numel()]
        assert len(latent_sized) == (2 if "seed" in kwargs else 3), kwargs.keys()
        if "seed" in kwargs:
            assert sum(t.numel() * t.element_size() for t in saved if t.numel() != mu.numel()) == 8


def test_a_device_seed_changes_the_noise_without_recompiling(fused_backend):
    """Under torch.compile the seed is a graph input: a new value gives new noise, the same as eager, with one
    compilation."""
    torch._dynamo.reset()
    frames = []

    def counting_backend(gm, example_inputs):
        frames.append(gm)
        return gm.forward

    def latent(mu, logvar, seed):
        return vaefast.reparameterize_kl(mu, logvar, seed=seed, backend=fused_backend)

    compiled = torch.compile(latent, backend=counting_backend, fullgraph=True)
    mu, logvar = torch.randn(4, 30), torch.randn(4, 30)
    seed = torch.tensor(10)
    outputs = []
    for _ in range(3):
        z, kl = compiled(mu, logvar, seed)
        eager_z, eager_kl = latent(mu, logvar, seed)
        assert torch.equal(z, eager_z) and torch.equal(kl, eager_kl)
        outputs.append(z)
        seed.add_(1)  # advanced in place, as the trainer does on the device
    assert len(frames) == 1
    assert not torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[1], outputs[2])


@pytest.mark.parametrize("kwargs, error, match", [
    ({"seed": 1, "eps": torch.zeros(2, 3)}, ValueError, "eps or seed, not both"),
    ({"seed": 1.5}, TypeError, "seed must be a Python int"),
    ({"seed": True}, TypeError, "seed must be a Python int"),
    ({"seed": 2**64}, ValueError, "does not fit in 64 bits"),
    ({"seed": torch.tensor([1, 2])}, ValueError, "one element"),
    ({"seed": torch.tensor(1.0)}, ValueError, "int64 tensor"),
    ({"seed": torch.tensor(1, device="meta")}, ValueError, "device mismatch"),
])
def test_bad_seeds_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        vaefast.reparameterize_kl(torch.zeros(2, 3), torch.zeros(2, 3), **kwargs)
