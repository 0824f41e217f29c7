"""Count what one call of the fused ops launches: Triton kernels, and the aten ops that compute (allocations and
views launch nothing). Works under the Triton interpreter, so the launch count of a step is checked on a CPU."""

from __future__ import annotations

import contextlib
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# aten ops that allocate, alias or describe memory without running a kernel.
_NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "view", "_unsafe_view",
              "reshape", "_reshape_alias", "squeeze", "unsqueeze", "as_strided", "expand", "detach", "alias",
              "t", "transpose", "permute", "lift_fresh", "slice", "select", "split", "split_with_sizes"}


class _ComputeOps(TorchDispatchMode):
    """Counts aten ops that run a kernel: not allocations or views, not ops on empty tensors, and not the copies
    the Triton interpreter makes around a launch (``paused``)."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        outputs = out if isinstance(out, (tuple, list)) else (out,)
        empty = all(isinstance(t, torch.Tensor) and t.numel() == 0 for t in outputs)
        if not self.paused and name not in _NO_KERNEL and not empty:
            self.ops[name] += 1
        return out


class _CountingKernel:
    """Stands in for a Triton kernel in its module: ``kernel[grid](...)`` counts, then launches the real one."""

    def __init__(self, kernel, counts: Counter, name: str, mode: _ComputeOps):
        self.kernel, self.counts, self.name, self.mode = kernel, counts, name, mode

    def __getitem__(self, grid):
        self.counts[self.name] += 1
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            self.mode.paused = True
            try:
                return launch(*args, **kwargs)
            finally:
                self.mode.paused = False
        return run

    def __getattr__(self, attr):
        return getattr(self.kernel, attr)


@contextlib.contextmanager
def _counting_triton_kernels(counts: Counter, mode: _ComputeOps):
    from ..ops import triton_backend

    names = [n for n in vars(triton_backend) if n.endswith("_kernel")]
    originals = {n: getattr(triton_backend, n) for n in names}
    try:
        for n, kernel in originals.items():
            setattr(triton_backend, n, _CountingKernel(kernel, counts, n, mode))
        yield
    finally:
        for n, kernel in originals.items():
            setattr(triton_backend, n, kernel)


def count_launches(step, *, triton: bool = True) -> dict:
    """Run ``step()`` once to warm up (backend resolution, first calls), then once counted; returns
    ``{"triton_kernels": Counter, "aten_ops": Counter, "total": int}``."""
    step()
    kernels: Counter = Counter()
    mode = _ComputeOps()
    with (_counting_triton_kernels(kernels, mode) if triton else contextlib.nullcontext()), mode:
        step()
    return {"triton_kernels": kernels, "aten_ops": mode.ops,
            "total": sum(kernels.values()) + sum(mode.ops.values())}


def fused_loss_step(backend: str, batch: int, latent: int, pixels: int, *, seeded: bool = False):
    """One forward+backward of reparameterize_kl and bce_with_logits on ``backend``, as bench_loss times it."""
    from .. import ops as vaefast  # the public loss API, as users call it

    g = torch.Generator().manual_seed(0)
    mu = torch.randn(batch, latent, generator=g).requires_grad_()
    logvar = torch.randn(batch, latent, generator=g).requires_grad_()
    eps = None if seeded else torch.randn(batch, latent, generator=g)
    seed = torch.tensor([1]) if seeded else None
    logits = torch.randn(batch, pixels, generator=g).requires_grad_()
    target = torch.rand(batch, pixels, generator=g)
    upstream = (torch.randn(batch, latent, generator=g), torch.randn(batch, generator=g),
                torch.randn(batch, generator=g))

    def step():
        z, kl = vaefast.reparameterize_kl(mu, logvar, eps, seed=seed, backend=backend)
        recon = vaefast.bce_with_logits(logits, target, backend=backend)
        return torch.autograd.grad((z, kl, recon), (mu, logvar, logits), upstream)

    return step
