"""torch.library registration of a fused backend's kernels as custom ops.

A backend module supplies four launchers (latent forward/backward, BCE forward/backward); ``register_backend``
turns them into ``vaefast::<side>_<backend>`` custom ops with fake (meta) and autograd registrations. The ops
are opaque to torch.compile, so a compiled function that calls them has no graph break, and the backward is
itself a custom op: autograd never traces into a kernel launch.

The namespace is the package's name: a second copy imported under another name (benchmarks/bench_step_ab.py imports
an older checkout as ``vaefast_before``) registers ops of its own. Under one namespace the copy redefined this
package's ops, and a later torch.compile in the same process crashed (torch 2.13, a clean-clone CI run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .validation import sample_shape

OP_NAMESPACE = __name__.split(".")[0]


@dataclass(frozen=True)
class FusedOps:
    """The two public ops of one backend, as callables that autograd and torch.compile understand."""

    name: str
    latent: Callable  # (mu, logvar, noise, lo, hi, per_dim, seeded, samples) -> (z, kl, kl_per_dim)
    bce: Callable  # (logits, target, continuous) -> recon: BCE, or the continuous Bernoulli's NLL
    latent_op: Callable  # the same as torch.library custom ops, which the two above use under torch.compile
    bce_op: Callable


def register_backend(name: str, latent_forward, latent_backward, bce_forward, bce_backward) -> FusedOps:
    """Wrap a backend's launchers twice over the same launchers and the same gradient code:

    - as ``torch.library`` custom ops with fake and autograd registrations, for torch.compile and export, which
      see one opaque node per kernel;
    - as plain ``autograd.Function``s for eager mode, where the custom-op machinery (schema checks, dynamo
      guards, a Python autograd wrapper) measured 0.1-0.4 ms per step on CPU, as much as the kernels themselves.

    ``torch.compiler.is_compiling()`` chooses between them; the tests run both.
    """
    lib = f"{OP_NAMESPACE}::{{}}_{name}"

    @torch.library.custom_op(lib.format("latent_fwd"), mutates_args=())
    def latent_fwd(
        mu: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor, lo: float, hi: float, per_dim: bool,
        seeded: bool, samples: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return latent_forward(mu, logvar, noise, lo, hi, per_dim, seeded, samples)

    @latent_fwd.register_fake
    def _(mu, logvar, noise, lo, hi, per_dim, seeded, samples):
        kl_dim_shape = mu.shape[1:] if per_dim else (0,)
        return (
            mu.new_empty(sample_shape(mu, samples)),
            mu.new_empty(mu.shape[0], dtype=torch.float32),
            mu.new_empty(kl_dim_shape, dtype=torch.float32),
        )

    @torch.library.custom_op(lib.format("latent_bwd"), mutates_args=())
    def latent_bwd(
        gz: torch.Tensor,
        gk: torch.Tensor,
        gd: torch.Tensor | None,
        mu: torch.Tensor,
        logvar: torch.Tensor,
        noise: torch.Tensor,
        lo: float,
        hi: float,
        seeded: bool,
        samples: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return latent_backward(gz, gk, gd, mu, logvar, noise, lo, hi, seeded, samples)

    @latent_bwd.register_fake
    def _(gz, gk, gd, mu, logvar, noise, lo, hi, seeded, samples):
        return (
            torch.empty_like(mu, memory_format=torch.contiguous_format),
            torch.empty_like(logvar, memory_format=torch.contiguous_format),
        )

    def latent_setup_context(ctx, inputs, output):
        mu, logvar, noise, lo, hi, per_dim, seeded, samples = inputs
        # mu and logvar are the caller's tensors, alive anyway: saving them costs no memory, and std is recomputed
        # in backward because an exp is cheaper than a stored tensor's round trip. The noise is eps, or with
        # seeded noise the one-element seed from which the backward regenerates eps.
        ctx.save_for_backward(mu, logvar, noise)
        ctx.lo, ctx.hi, ctx.per_dim, ctx.seeded, ctx.samples = lo, hi, per_dim, seeded, samples

    def latent_grad(backward):
        def grad(ctx, gz, gk, gd):
            mu, logvar, noise = ctx.saved_tensors
            if gz is None:
                gz = mu.new_zeros(sample_shape(mu, ctx.samples))
            gk = mu.new_zeros(mu.shape[0], dtype=torch.float32) if gk is None else gk.float()
            gd = gd.float() if ctx.per_dim and gd is not None else None
            dmu, dlogvar = backward(gz, gk, gd, mu, logvar, noise, ctx.lo, ctx.hi, ctx.seeded, ctx.samples)
            return dmu, dlogvar, None, None, None, None, None, None

        return grad

    latent_fwd.register_autograd(latent_grad(latent_bwd), setup_context=latent_setup_context)

    @torch.library.custom_op(lib.format("bce_fwd"), mutates_args=())
    def bce_fwd(logits: torch.Tensor, target: torch.Tensor, continuous: bool) -> torch.Tensor:
        return bce_forward(logits, target, continuous)

    @bce_fwd.register_fake
    def _(logits, target, continuous):
        return logits.new_empty(logits.shape[0], dtype=torch.float32)

    @torch.library.custom_op(lib.format("bce_bwd"), mutates_args=())
    def bce_bwd(g: torch.Tensor, logits: torch.Tensor, target: torch.Tensor, continuous: bool) -> torch.Tensor:
        return bce_backward(g, logits, target, continuous)

    @bce_bwd.register_fake
    def _(g, logits, target, continuous):
        return torch.empty_like(logits, memory_format=torch.contiguous_format)

    def bce_setup_context(ctx, inputs, output):
        # The gradient sigmoid(x) - t is recomputed in backward rather than stored in forward: the memory
        # traffic is the same (read x, t; write dx) and no extra logits-sized buffer is held between the passes.
        logits, target, continuous = inputs
        ctx.save_for_backward(logits, target)
        ctx.continuous = continuous

    def bce_grad(backward):
        def grad(ctx, g):
            logits, target = ctx.saved_tensors
            return backward(g.float(), logits, target, ctx.continuous), None, None

        return grad

    bce_fwd.register_autograd(bce_grad(bce_bwd), setup_context=bce_setup_context)

    # Old-style forward(ctx, ...): the separate setup_context form costs an inspect.signature bind per call.
    def latent_function_forward(ctx, mu, logvar, noise, lo, hi, per_dim, seeded, samples):
        # Outputs without a gradient (the per-dim KL, when only monitored) reach backward as None, not as a
        # zeros tensor that the kernel would then read.
        ctx.set_materialize_grads(False)
        inputs = (mu, logvar, noise, lo, hi, per_dim, seeded, samples)
        out = latent_forward(*inputs)
        latent_setup_context(ctx, inputs, out)
        return out

    def bce_function_forward(ctx, logits, target, continuous):
        bce_setup_context(ctx, (logits, target, continuous), None)
        return bce_forward(logits, target, continuous)

    # Named per backend (the autograd node becomes e.g. "vaefast_latent_nativeBackward"), so that profiles and
    # traces say which kernel ran.
    LatentFunction = type(f"vaefast_latent_{name}", (torch.autograd.Function,), {
        "forward": staticmethod(latent_function_forward), "backward": staticmethod(latent_grad(latent_backward))})
    BCEFunction = type(f"vaefast_bce_{name}", (torch.autograd.Function,), {
        "forward": staticmethod(bce_function_forward), "backward": staticmethod(bce_grad(bce_backward))})

    def latent(mu, logvar, noise, lo, hi, per_dim, seeded=False, samples=1):
        if torch.compiler.is_compiling():
            return latent_fwd(mu, logvar, noise, lo, hi, per_dim, seeded, samples)
        return LatentFunction.apply(mu, logvar, noise, lo, hi, per_dim, seeded, samples)

    def bce(logits, target, continuous=False):
        if torch.compiler.is_compiling():
            return bce_fwd(logits, target, continuous)
        return BCEFunction.apply(logits, target, continuous)

    return FusedOps(name=name, latent=latent, bce=bce, latent_op=latent_fwd, bce_op=bce_fwd)
