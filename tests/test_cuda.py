"""The GPU paths on a real CUDA device: compiled Triton kernels under torch.compile and autocast, and training.

Skipped without a GPU (CI has none). Run on a GPU machine with the interpreter off:
    TRITON_INTERPRET=0 python -m pytest tests/test_cuda.py tests/test_fused_ops.py -k "cuda"
The property tests of tests/test_fused_ops.py cover the Triton kernels on CUDA against the reference there.
"""

import pytest
import torch

import vaefast
from vaefast.ops.dispatch import select

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDA = torch.device("cuda")


@pytest.fixture(scope="module", autouse=True)
def compiled_triton():
    reason = vaefast.unavailable_backends(CUDA).get("triton")
    if reason is not None:
        pytest.skip(reason)


def _inputs(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu, logvar, eps = ((torch.randn(32, 4, 8, 8, generator=g) * s).to(CUDA, dtype) for s in (1.0, 4.0, 1.0))
    logits, target = (torch.randn(32, 3, 16, 16, generator=g) * 3).to(CUDA, dtype), torch.rand(32, 3, 16, 16,
                                                                                             generator=g).to(CUDA)
    return mu.requires_grad_(), logvar.requires_grad_(), eps, logits.requires_grad_(), target


def _loss(mu, logvar, eps, logits, target, backend):
    z, kl, kl_dim = vaefast.reparameterize_kl(mu, logvar, eps, backend=backend, return_kl_per_dim=True)
    recon = vaefast.bce_with_logits(logits * z.float().mean().tanh(), target, backend=backend)
    return (recon + kl).mean() + 0.01 * kl_dim.sum()


def test_auto_picks_triton_on_cuda():
    assert select("auto", CUDA, torch.float32).name == "triton"


def test_opcheck_on_cuda():
    ops = select("triton", CUDA, torch.float32)
    mu, logvar, eps, logits, target = _inputs()
    torch.library.opcheck(ops.latent_op, (mu, logvar, eps, -4.0, 4.0, True, False, 1))
    torch.library.opcheck(ops.bce_op, (logits, target, False))


def test_inductor_fullgraph_matches_eager_on_cuda():
    torch._dynamo.reset()
    args = _inputs()
    eager = _loss(*args, "triton")
    eager_grads = torch.autograd.grad(eager, (args[0], args[1], args[3]))
    counters = torch._dynamo.utils.counters
    counters.clear()
    compiled = torch.compile(_loss, fullgraph=True)(*args, "triton")
    compiled_grads = torch.autograd.grad(compiled, (args[0], args[1], args[3]))
    assert sum(counters["graph_break"].values()) == 0
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
def test_autocast_on_cuda_matches_reference(amp_dtype):
    """Under CUDA autocast the fused loss sees low-precision activations and fp32 targets, like the reference."""
    results = {}
    for backend in ("torch", "triton"):
        mu, logvar, eps, logits, target = _inputs(seed=3)
        torch.manual_seed(0)
        latent_lin, pixel_lin = torch.nn.Linear(8, 8).to(CUDA), torch.nn.Linear(16, 16).to(CUDA)
        with torch.autocast("cuda", dtype=amp_dtype):
            z, kl = vaefast.reparameterize_kl(latent_lin(mu), latent_lin(logvar), eps.to(amp_dtype), backend=backend)
            recon = vaefast.bce_with_logits(pixel_lin(logits), target, backend=backend)
        loss = (recon + kl).mean() + z.float().square().mean()
        results[backend] = (loss.detach(), *torch.autograd.grad(loss, (mu, logvar, logits)))
    for a, b in zip(results["triton"], results["torch"]):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-3)


# compile_: False, True (the CUDA default mode: reduce-overhead, CUDA graphs) or a torch.compile mode.
@pytest.mark.parametrize("precision, compile_", [("bf16", False), ("bf16", "default"), ("bf16", True),
                                                ("fp16", False), ("fp32", False)])
def test_training_on_cuda(tmp_path, precision, compile_):
    from vaefast.data import ImageDataset, load_dataset
    from vaefast.train import TrainConfig, Trainer

    full = load_dataset(None)
    data = ImageDataset("small", full.train[:2048], full.test[:512], full.train_labels[:2048], full.test_labels[:512])
    cfg = TrainConfig.from_options(out=str(tmp_path), batch_size=128, epochs=2, progress=False, tensorboard=False,
                      precision=precision, compile=bool(compile_),
                      compile_mode=compile_ if isinstance(compile_, str) else None,
                      device="cuda", log_every=3)  # metrics kept across steps: CUDA-graph outputs must be copied
    trainer = Trainer(cfg, data)
    assert next(trainer.model.parameters()).is_cuda and not trainer.master_weights
    assert trainer.plan.cuda_graphs == (compile_ is True)
    summary = trainer.fit()
    assert summary.device.startswith("cuda") and summary.precision == precision
    assert summary.skipped_steps <= 2
    assert 150 < summary.test_neg_elbo_nats < 500
