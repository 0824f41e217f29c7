"""The native CPU kernel: that it loaded where it must, its clean fallback, determinism, and each ISA copy."""

import os
import platform
import subprocess
import sys
import textwrap

import pytest
import torch

import vaefast


def test_backends_required_by_ci_are_loaded():
    """CI lists the backends it built in VAEFAST_REQUIRE_BACKENDS, so a silent fallback cannot pass as success."""
    required = [b for b in os.environ.get("VAEFAST_REQUIRE_BACKENDS", "").split(",") if b]
    if not required:
        pytest.skip("VAEFAST_REQUIRE_BACKENDS is not set")
    unavailable = vaefast.unavailable_backends("cpu")
    for name in required:
        if name in vaefast.ops.BACKENDS:  # the data loaders ('dali') are checked in test_data.py
            assert name not in unavailable, f"backend {name!r} is required but unavailable: {unavailable[name]}"
            assert name in vaefast.available_backends("cpu")


def _run(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, timeout=120)


def test_missing_library_falls_back_with_one_warning(tmp_path):
    """A failed load leaves 'native' unavailable with the reason, and 'auto' warns once and uses the reference."""
    out = _run(
        """
        import warnings, torch, vaefast
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            x, t = torch.randn(4, 10), torch.rand(4, 10)
            a = vaefast.bce_with_logits(x, t)
            b = vaefast.bce_with_logits(x, t)
            z, kl = vaefast.reparameterize_kl(torch.zeros(2, 3), torch.zeros(2, 3))
        ref = vaefast.bce_with_logits(x, t, backend="torch")
        print("WARNINGS", len([w for w in caught if "falls back" in str(w.message)]))
        print("EQUAL", torch.equal(a, ref) and torch.equal(b, ref))
        print("REASON", vaefast.unavailable_backends("cpu").get("native"))
        try:
            vaefast.bce_with_logits(x, t, backend="native")
        except vaefast.BackendUnavailable as e:
            print("ERROR", e)
        """,
        VAEFAST_NATIVE_LIBRARY=str(tmp_path / "libvaefast_kernels.so"),
    )
    assert out.returncode == 0, out.stderr
    assert "WARNINGS 1" in out.stdout, out.stdout
    assert "EQUAL True" in out.stdout
    assert f"REASON the native CPU kernel library could not be loaded; tried: {tmp_path}" in out.stdout
    assert "ERROR backend='native' is unavailable" in out.stdout


def test_corrupt_library_file_is_reported(tmp_path):
    bogus = tmp_path / "libvaefast_kernels.so"
    bogus.write_bytes(b"not an ELF file")
    out = _run("import vaefast; print(vaefast.unavailable_backends('cpu').get('native'))",
               VAEFAST_NATIVE_LIBRARY=str(bogus))
    assert out.returncode == 0, out.stderr
    assert str(bogus) in out.stdout, out.stdout
    assert "invalid ELF header" in out.stdout or "file too short" in out.stdout, out.stdout


@pytest.fixture
def native():
    reason = vaefast.unavailable_backends("cpu").get("native")
    if reason is not None:
        pytest.skip(reason)
    return "native"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bit_identical_across_runs(native, dtype):
    g = torch.Generator().manual_seed(5)
    mu, logvar, eps = (torch.randn(100, 3000, generator=g).to(dtype) for _ in range(3))
    logits, target = torch.randn(100, 3000, generator=g).to(dtype), torch.rand(100, 3000, generator=g)
    first = vaefast.reparameterize_kl(mu, logvar, eps, backend=native, return_kl_per_dim=True)
    first_recon = vaefast.bce_with_logits(logits, target, backend=native)
    for _ in range(5):
        again = vaefast.reparameterize_kl(mu, logvar, eps, backend=native, return_kl_per_dim=True)
        for a, b in zip(first, again):
            assert torch.equal(a, b)
        assert torch.equal(first_recon, vaefast.bce_with_logits(logits, target, backend=native))


@pytest.mark.parametrize("batch, width", [(64, 5000), (4096, 20)])  # row by row; flat runs of short rows
def test_same_result_with_one_and_two_threads(native, batch, width):
    """The tiling fixes the summation order, so even the thread count does not change a bit."""
    g = torch.Generator().manual_seed(6)
    mu, logvar, eps = (torch.randn(batch, width, generator=g) for _ in range(3))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = vaefast.reparameterize_kl(mu, logvar, eps, backend=native, return_kl_per_dim=True)
        torch.set_num_threads(2)
        two = vaefast.reparameterize_kl(mu, logvar, eps, backend=native, return_kl_per_dim=True)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


@pytest.mark.parametrize("isa", ["baseline", "x86-64-v3"])
def test_lower_isa_copies_match_reference(native, isa):
    """Each compiled copy of the loops (chosen at load time by CPU features) is correct, not only the best one: the
    eps and seeded-noise latent paths (the x86-64-v3 copy draws Philox with AVX2, the baseline one in scalar code)
    and the BCE and continuous Bernoulli passes."""
    if platform.machine() not in ("x86_64", "AMD64") and isa != "baseline":
        pytest.skip("only the baseline copy is built off x86-64")
    out = _run(
        """
        import torch, vaefast
        from vaefast.ops import native_backend
        g = torch.Generator().manual_seed(7)
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            mu, lv, eps = (torch.randn(9, 777, generator=g) * 4 for _ in range(3))
            mu, lv, eps = mu.to(dtype).requires_grad_(), lv.to(dtype).requires_grad_(), eps.to(dtype)
            res = {}
            for b in ("torch", "native"):
                z, kl = vaefast.reparameterize_kl(mu, lv, eps, backend=b)
                x = (mu * 3).detach().requires_grad_()
                r = vaefast.bce_with_logits(x, torch.rand(9, 777, generator=g.manual_seed(1)), backend=b)
                zs, kls = vaefast.reparameterize_kl(mu, lv, seed=5, backend=b)  # seeded noise (Philox)
                cb = vaefast.continuous_bernoulli_nll(x, torch.rand(9, 777, generator=g.manual_seed(2)), backend=b)
                loss = z.float().sum() + kl.sum() + r.sum() + (zs.float() ** 2).sum() + kls.sum() + cb.sum()
                grads = torch.autograd.grad(loss, (mu, lv, x))
                res[b] = [z.float(), kl, r, zs.float(), cb] + [t.float() for t in grads]
            for a, b in zip(res["native"], res["torch"]):
                torch.testing.assert_close(a, b, rtol=1e-2 if dtype != torch.float32 else 1e-5, atol=1e-3)
        print("ISA", native_backend.isa())
        """,
        VAEFAST_NATIVE_ISA=isa,
    )
    assert out.returncode == 0, out.stderr
    assert f"ISA {isa}" in out.stdout, out.stdout


@pytest.mark.parametrize("n", [1, 20, 255, 256, 777])
def test_short_and_long_rows_match_reference(native, n):
    """Rows under 256 elements run as flat runs of whole rows, longer ones row by row; both against the reference,
    with a batch that is not a multiple of the 8-row tile, the per-dim KL in the loss (its gradient feeds the
    backward) and one clamped element per row."""
    g = torch.Generator().manual_seed(n)
    mu, logvar, eps = (torch.randn(13, n, generator=g) * 3 for _ in range(3))
    logvar[:, 0] = 12.0
    res = {}
    for backend in ("torch", native):
        m, lv = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
        z, kl, kl_dim = vaefast.reparameterize_kl(m, lv, eps, backend=backend, return_kl_per_dim=True)
        weights = torch.linspace(-1, 1, n)
        loss = (z * z.detach()).sum() + (kl * torch.arange(13.0)).sum() + (kl_dim * weights).sum()
        res[backend] = [z, kl, kl_dim, *torch.autograd.grad(loss, (m, lv))]
    for name, a, b in zip(("z", "kl", "kl_per_dim", "dmu", "dlogvar"), res[native], res["torch"]):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-4, msg=lambda m: f"{name}: {m}")


class _CopyCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the ops that copy a tensor (clone, contiguous copies, cat) run under it."""

    COPIES = ("aten.clone", "aten.copy_", "aten._to_copy", "aten.cat")

    def __init__(self):
        super().__init__()
        self.copies = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).startswith(self.COPIES):
            self.copies.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("shape", [(13, 40), (13, 600), (5, 8, 3, 7)])  # flat runs; row by row; spatial
def test_halves_of_a_packed_encoder_output_are_read_in_place(native, shape):
    """mu and logvar as the two chunks of one [B, 2N, ...] tensor (how the models produce them) are read with their
    row stride, in both passes, without a copy, and the gradient of kl.sum() (one value broadcast over the batch)
    is read with stride 0: values and gradients against the reference."""
    g = torch.Generator().manual_seed(sum(shape))
    packed = torch.randn(*shape, generator=g) * 3
    packed[:, shape[1] // 2] = 12.0  # logvar's first element: clamped in every row
    eps = torch.randn(shape[0], shape[1] // 2, *shape[2:], generator=g)
    res = {}
    for backend in ("torch", native):
        h = packed.clone().requires_grad_()
        mu, logvar = h.chunk(2, dim=1)
        assert not mu.is_contiguous()
        counter = _CopyCounter()
        with counter:
            z, kl = vaefast.reparameterize_kl(mu, logvar, eps, backend=backend)
            # Gradients of the two halves themselves: joining them into dh would be autograd's copy, not the op's.
            dmu, dlogvar = torch.autograd.grad((z * z.detach()).sum() + kl.sum(), (mu, logvar))
        if backend == native:
            assert counter.copies == [], counter.copies
        res[backend] = [z, kl, dmu, dlogvar]
    for name, a, b in zip(("z", "kl", "dmu", "dlogvar"), res[native], res["torch"]):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-4, msg=lambda m: f"{name}: {m}")


def test_an_unknown_isa_cap_is_refused_with_the_names_it_takes(monkeypatch):
    """The library reads a name it does not know as no cap at all: a typo would test the best copy silently."""
    from vaefast import native

    monkeypatch.setenv("VAEFAST_NATIVE_ISA", "avx512")
    native._load.cache_clear()
    try:
        with pytest.raises(ValueError, match="VAEFAST_NATIVE_ISA must be one of baseline, x86-64-v3, x86-64-v4, "
                                             "got 'avx512'"):
            native.load_error()
    finally:
        monkeypatch.undo()  # the suite's own cap, if it runs under one, before the library is looked up again
        native._load.cache_clear()
