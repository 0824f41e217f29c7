"""The fused-loss benchmark core, shared by `vaefast bench` and benchmarks/bench_loss.py.

Every variant computes z, the per-sample KL and the per-sample BCE, then one backward with fixed upstream
gradients to mu, logvar and the logits (``torch.autograd.grad`` with grad_outputs, so no extra reduction ops are
timed). CUDA uses ``triton.testing.do_bench``; CPU uses ``torch.utils.benchmark`` with the variants interleaved
round by round and the median taken, so noise on a shared machine hits all of them alike. The roofline is
``dst.copy_(src)`` into a preallocated float32 buffer whose read + write bytes equal the op's minimal traffic
(10 latent element-passes + 5 pixel element-passes), measured in the same run; ``torch.clone`` of the same bytes
is reported beside it (it also pays first-touch page faults).
"""

from __future__ import annotations

import math
import random
import statistics

import torch
import torch.nn.functional as F

from .. import ops as vaefast  # the public loss API, as users call it

CLAMP = (-10.0, 10.0)
# (name, latent shape without B, pixel shape without B)
CASES = [
    ("D=20, 784 px", (20,), (784,)),
    ("D=512, 784 px", (512,), (784,)),
    ("D=4096, 784 px", (4096,), (784,)),
    ("4x32x32, 3x64x64 px", (4, 32, 32), (3, 64, 64)),
]
QUICK_CASES = [("D=512, 784 px", (512,), (784,))]
# The GPU table of benchmarks/gpu_suite.sh.
GPU_CASES = [(f"D={d}, 784 px", (d,), (784,)) for d in (20, 512, 4096, 16384)] + [
    ("4x64x64, 3x64x64 px", (4, 64, 64), (3, 64, 64))]


def eager_composition(mu, logvar, eps, logits, target):
    """The plain PyTorch composition a user would write."""
    lv = torch.clamp(logvar, *CLAMP)
    std = torch.exp(0.5 * lv)
    z = mu + std * eps
    kl = 0.5 * (mu.pow(2) + lv.exp() - 1.0 - lv).flatten(1).sum(1)
    recon = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1)
    return z, kl, recon


def eager_log_normalizer(lam, lower=0.49, upper=0.51):
    """The continuous Bernoulli's log-normalizer as the current pytorch/examples VAE computes it, in eager ops on
    the decoder's probabilities: log|2 atanh(1 - 2 lam)| - log|1 - 2 lam| outside [lower, upper], and
    log 2 + 4/3 (lam - 1/2)^2 + 104/45 (lam - 1/2)^4 inside."""
    outside = (lam <= lower) | (lam > upper)
    cut = torch.where(outside, lam, torch.full_like(lam, lower))
    two_atanh = torch.log(1.0 + (1 - 2.0 * cut)) - torch.log(1.0 - (1 - 2.0 * cut))
    closed = torch.log(two_atanh.abs()) - torch.log((1 - 2.0 * cut).abs())
    taylor = math.log(2.0) + 4.0 / 3.0 * (lam - 0.5) ** 2 + 104.0 / 45.0 * (lam - 0.5) ** 4
    return torch.where(outside, closed, taylor)


def eager_continuous_composition(mu, logvar, eps, logits, target):
    """The eager composition with the continuous Bernoulli's NLL: the BCE minus the log-normalizer of the clamped
    probabilities, as pytorch/examples does it."""
    z, kl, recon = eager_composition(mu, logvar, eps, logits, target)
    lam = torch.sigmoid(logits).clamp(1e-4, 1.0 - 1e-4)
    return z, kl, recon - eager_log_normalizer(lam).flatten(1).sum(1)


def fused_continuous(backend):
    def run(mu, logvar, eps, logits, target):
        z, kl = vaefast.reparameterize_kl(mu, logvar, eps, clamp=CLAMP, backend=backend)
        return z, kl, vaefast.continuous_bernoulli_nll(logits, target, backend=backend)

    return run


def fused(backend):
    def run(mu, logvar, eps, logits, target):
        z, kl = vaefast.reparameterize_kl(mu, logvar, eps, clamp=CLAMP, backend=backend)
        return z, kl, vaefast.bce_with_logits(logits, target, backend=backend)

    return run


def fused_seeded(backend, seed: torch.Tensor):
    """The fused op with its noise drawn in the kernel from ``seed``: the eps input goes unused (nor stored)."""
    def run(mu, logvar, eps, logits, target):
        z, kl = vaefast.reparameterize_kl(mu, logvar, seed=seed, clamp=CLAMP, backend=backend)
        return z, kl, vaefast.bce_with_logits(logits, target, backend=backend)

    return run


def make_inputs(batch, latent_shape, pixel_shape, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rand(shape, scale=1.0):
        return (torch.randn(shape, generator=g) * scale).to(device=device, dtype=dtype)

    latent, pixels = (batch, *latent_shape), (batch, *pixel_shape)
    leaves = {
        "mu": rand(latent).requires_grad_(),
        "logvar": rand(latent, 3.0).requires_grad_(),
        "eps": rand(latent),
        "logits": rand(pixels, 3.0).requires_grad_(),
        "target": torch.rand(pixels, generator=g).to(device=device, dtype=dtype),
    }
    upstream = (rand(latent), torch.randn(batch, generator=g).to(device), torch.randn(batch, generator=g).to(device))
    return leaves, upstream


def step_fn(fn, leaves, upstream):
    args = [leaves[k] for k in ("mu", "logvar", "eps", "logits", "target")]
    wrt = [leaves["mu"], leaves["logvar"], leaves["logits"]]

    def step():
        outs = fn(*args)
        return torch.autograd.grad(outs, wrt, upstream)

    return step


def saved_bytes(fn, leaves, upstream):
    """Bytes autograd keeps for backward: all distinct storages, and those that are not the op's own inputs."""
    inputs = {t.untyped_storage().data_ptr() for t in leaves.values()}
    seen: dict[int, int] = {}

    def pack(t):
        seen.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step_fn(fn, leaves, upstream)()
    total = sum(seen.values())
    extra = sum(n for ptr, n in seen.items() if ptr not in inputs)
    return total, extra


def minimal_bytes(batch, latent_shape, pixel_shape, dtype, seeded: bool = False):
    size = torch.tensor([], dtype=dtype).element_size()
    n_latent, n_pixel = batch * math.prod(latent_shape), batch * math.prod(pixel_shape)
    # latent: read mu, logvar, eps, write z; backward read gz, mu, logvar, eps, write dmu, dlogvar. Seeded noise
    # drops the two eps reads (4 + 6 element-passes become 3 + 5).
    # pixels: read x, t; backward read x, t, write dx.
    return size * ((8 if seeded else 10) * n_latent + 5 * n_pixel)


def time_cpu(steps: dict, rounds: int, min_time: float) -> dict:
    from torch.utils.benchmark import Timer

    samples = {name: [] for name in steps}
    numbers = {}
    for name, step in steps.items():  # calibrate each to about min_time per sample
        t = Timer("step()", globals={"step": step}, num_threads=torch.get_num_threads()).timeit(1).mean
        numbers[name] = max(1, int(min_time / max(t, 1e-6)))
    for _ in range(rounds):
        order = list(steps)
        random.shuffle(order)
        for name in order:
            samples[name].append(Timer("step()", globals={"step": steps[name]}, num_threads=torch.get_num_threads()).timeit(numbers[name]).mean)
    return {name: {"median_s": statistics.median(v), "p10_s": sorted(v)[len(v) // 10],
                   "p90_s": sorted(v)[(len(v) * 9) // 10], "rounds": len(v)} for name, v in samples.items()}


def time_cuda(steps: dict, rounds: int, min_time: float, graphs: bool = False) -> dict:
    """CUDA-event timing of each step as called from Python (``do_bench``), which includes the host's launch
    overhead; with ``graphs``, each step captured once in a CUDA graph and replayed (``do_bench_cudagraph``), which
    times the GPU work alone: the kernels' own speed, as a caller that captures its step would see it."""
    from triton.testing import do_bench, do_bench_cudagraph

    out = {}
    for name, step in steps.items():
        rep = max(100, int(min_time * 1000 * rounds))
        # do_bench_cudagraph captures rep / (time per call) calls into one graph, and capturing is host-bound: a
        # 10 us step at rep=1500 ms meant capturing 150k steps. 20 ms keeps the capture to a few thousand.
        ms = do_bench_cudagraph(step, rep=20, return_mode="all") if graphs else do_bench(
            step, warmup=25, rep=rep, return_mode="all")
        ms = sorted(ms) if isinstance(ms, list) else [ms]
        out[name] = {"median_s": statistics.median(ms) / 1e3, "p10_s": ms[len(ms) // 10] / 1e3,
                     "p90_s": ms[(len(ms) * 9) // 10] / 1e3, "rounds": len(ms)}
    return out


def run_case(name, latent_shape, pixel_shape, *, batch, rounds, min_time, device, dtype, cuda_graphs=False):
    leaves, upstream = make_inputs(batch, latent_shape, pixel_shape, dtype, device)
    floor = minimal_bytes(batch, latent_shape, pixel_shape, dtype)
    variants = {"eager": eager_composition, "compile": torch.compile(eager_composition), "torch": fused("torch")}
    seed = torch.tensor([12345], device=device)
    for backend in ("native", "triton"):
        # The Triton interpreter on CPU is for correctness, not for timing.
        usable = vaefast.unavailable_backends(device).get(backend) is None
        if usable and not (backend == "triton" and device.type == "cpu"):
            variants[backend] = fused(backend)
            variants[f"{backend} seeded"] = fused_seeded(backend, seed)
    # The continuous Bernoulli pair, compared with each other (the fused one computes the normalizer in the BCE
    # pass on the logits; eager, as pytorch/examples, on the clamped probabilities).
    variants["eager, continuous Bernoulli"] = eager_continuous_composition
    for backend in ("native", "triton"):
        if f"{backend} seeded" in variants:
            variants[f"{backend}, continuous Bernoulli"] = fused_continuous(backend)
    steps = {k: step_fn(fn, leaves, upstream) for k, fn in variants.items()}
    src = torch.randn(floor // 8, device=device)  # float32: copy reads and writes floor bytes in all
    dst = torch.empty_like(src)
    steps["copy (roofline)"] = lambda: dst.copy_(src)
    steps["clone"] = lambda: src.clone()
    for step in steps.values():  # warm-up: compilation, autotuning, first-touch allocation
        for _ in range(3):
            step()
    if device.type == "cuda":
        timings = time_cuda(steps, rounds, min_time, graphs=cuda_graphs)
    else:
        timings = time_cpu(steps, rounds, min_time)
    copy_bw = floor / timings["copy (roofline)"]["median_s"]
    clone_bw = floor / timings["clone"]["median_s"]
    rows = {}
    for variant in variants:
        t = timings[variant]["median_s"]
        total, extra = saved_bytes(variants[variant], leaves, upstream)
        # A seeded variant's own traffic floor is lower (no eps); its bandwidth is measured against that floor.
        own_floor = minimal_bytes(batch, latent_shape, pixel_shape, dtype, seeded=variant.endswith("seeded"))
        rows[variant] = {**timings[variant], "minimal_bytes": own_floor, "effective_GBps": own_floor / t / 1e9,
                         "fraction_of_copy_bandwidth": own_floor / t / copy_bw,
                         "fraction_of_clone_bandwidth": own_floor / t / clone_bw,
                         "saved_bytes_total": total, "saved_bytes_not_inputs": extra}
    return {"case": name, "batch": batch, "latent_shape": list(latent_shape), "pixel_shape": list(pixel_shape),
            "minimal_bytes": floor, "copy_GBps": copy_bw / 1e9, "clone_GBps": clone_bw / 1e9, "variants": rows}


# The latent op alone against a bandwidth probe (issue #40): B·D from 32k to 4M elements at B = 256.
NOISE_DIMS = (128, 512, 2048, 4096, 16384)
# Bytes per latent element (float32): forward reads mu, logvar (and eps when given) and writes z; the backward reads
# the upstream gradient, mu, logvar (and eps) and writes the two input gradients. The probe, torch.add of two tensors
# into a fresh one, moves 12.
NOISE_BYTES = {"given forward": 16, "seeded forward": 12, "given fwd+bwd": 40, "seeded fwd+bwd": 32}
PROBE_BYTES = 12


def run_noise_case(batch: int, dim: int, *, rounds: int, min_time: float, device, backend: str) -> dict:
    """The fused reparameterization + KL with eps given and with seeded noise, forward alone (no graph) and forward +
    backward, and ``torch.add`` into a fresh tensor of the same size timed interleaved with them (the same cache
    state): each variant's effective bandwidth as a fraction of the probe's."""
    g = torch.Generator().manual_seed(0)
    mu, logvar, eps, upstream_z, a, b = (torch.randn(batch, dim, generator=g).to(device) for _ in range(6))
    upstream_kl = torch.randn(batch, generator=g).to(device)
    mu_g, logvar_g = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
    seed = torch.tensor([7], dtype=torch.int64, device=device)

    def forward(noise):
        def step():
            with torch.no_grad():
                return vaefast.reparameterize_kl(mu, logvar, **noise, clamp=CLAMP, backend=backend)
        return step

    def both(noise):
        def step():
            z, kl = vaefast.reparameterize_kl(mu_g, logvar_g, **noise, clamp=CLAMP, backend=backend)
            return torch.autograd.grad((z, kl), (mu_g, logvar_g), (upstream_z, upstream_kl))
        return step

    steps = {"probe": lambda: torch.add(a, b), "given forward": forward({"eps": eps}),
             "seeded forward": forward({"seed": seed}), "given fwd+bwd": both({"eps": eps}),
             "seeded fwd+bwd": both({"seed": seed})}
    timed = (time_cuda if torch.device(device).type == "cuda" else time_cpu)(steps, rounds, min_time)
    n = batch * dim
    probe_bw = PROBE_BYTES * n / timed["probe"]["median_s"]
    rows = {name: {**timed[name], "GBps": NOISE_BYTES[name] * n / timed[name]["median_s"] / 1e9,
                   "fraction_of_probe": NOISE_BYTES[name] * n / timed[name]["median_s"] / probe_bw}
            for name in NOISE_BYTES}
    return {"batch": batch, "dim": dim, "elements": n, "probe": {**timed["probe"], "GBps": probe_bw / 1e9},
            "variants": rows}
