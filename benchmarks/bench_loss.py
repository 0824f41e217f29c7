"""Forward+backward of the fused VAE loss per backend, against eager PyTorch and torch.compile of the same math.

    python benchmarks/bench_loss.py                 # CPU: native vs eager vs compile, fp32
    python benchmarks/bench_loss.py --dtype bf16    # another input dtype
    python benchmarks/bench_loss.py --quick         # one small case, few repeats (smoke test)

Every variant computes z, the per-sample KL and the per-sample BCE, then one backward with fixed upstream
gradients to mu, logvar and the logits (``torch.autograd.grad`` with grad_outputs, so no extra reduction ops are
timed). Timing: CUDA uses ``triton.testing.do_bench``; CPU uses ``torch.utils.benchmark`` with the variants
interleaved round by round and the median taken, so noise on a shared machine hits all of them alike.

The roofline is ``dst.copy_(src)`` into a preallocated float32 buffer whose read + write bytes equal the op's
minimal traffic (10 latent element-passes + 5 pixel element-passes, see ../shared/DESIGN.md), measured in the same
run. Results go to benchmarks/results/bench_loss-<device>-<dtype>.json and a table in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DTYPES, machine_info, update_readme_section, write_result  # noqa: E402

import vaefast  # noqa: E402

CLAMP = (-10.0, 10.0)
# (name, latent shape without B, pixel shape without B)
CASES = [
    ("D=20, 784 px", (20,), (784,)),
    ("D=512, 784 px", (512,), (784,)),
    ("D=4096, 784 px", (4096,), (784,)),
    ("4x32x32, 3x64x64 px", (4, 32, 32), (3, 64, 64)),
]
QUICK_CASES = [("D=512, 784 px", (512,), (784,))]


def eager_composition(mu, logvar, eps, logits, target):
    """The plain PyTorch composition a user would write."""
    lv = torch.clamp(logvar, *CLAMP)
    std = torch.exp(0.5 * lv)
    z = mu + std * eps
    kl = 0.5 * (mu.pow(2) + lv.exp() - 1.0 - lv).flatten(1).sum(1)
    recon = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1)
    return z, kl, recon


def fused(backend):
    def run(mu, logvar, eps, logits, target):
        z, kl = vaefast.reparameterize_kl(mu, logvar, eps, clamp=CLAMP, backend=backend)
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


def minimal_bytes(batch, latent_shape, pixel_shape, dtype):
    size = torch.tensor([], dtype=dtype).element_size()
    n_latent, n_pixel = batch * math.prod(latent_shape), batch * math.prod(pixel_shape)
    # latent: read mu, logvar, eps, write z; backward read gz, mu, logvar, eps, write dmu, dlogvar.
    # pixels: read x, t; backward read x, t, write dx.
    return size * (10 * n_latent + 5 * n_pixel)


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


def time_cuda(steps: dict, rounds: int, min_time: float) -> dict:
    from triton.testing import do_bench

    out = {}
    for name, step in steps.items():
        ms = do_bench(step, warmup=25, rep=max(100, int(min_time * 1000 * rounds)), return_mode="all")
        ms = sorted(ms)
        out[name] = {"median_s": statistics.median(ms) / 1e3, "p10_s": ms[len(ms) // 10] / 1e3,
                     "p90_s": ms[(len(ms) * 9) // 10] / 1e3, "rounds": len(ms)}
    return out


def run_case(name, latent_shape, pixel_shape, args, device, dtype):
    leaves, upstream = make_inputs(args.batch, latent_shape, pixel_shape, dtype, device)
    floor = minimal_bytes(args.batch, latent_shape, pixel_shape, dtype)
    variants = {"eager": eager_composition, "compile": torch.compile(eager_composition), "torch": fused("torch")}
    for backend in ("native", "triton"):
        if vaefast.available_backends(device)[backend] is None and not (backend == "triton" and device.type == "cpu"):
            variants[backend] = fused(backend)  # the interpreter is for correctness, not for timing
    steps = {k: step_fn(fn, leaves, upstream) for k, fn in variants.items()}
    src = torch.randn(floor // 8, device=device)  # float32: copy reads and writes floor bytes in all
    dst = torch.empty_like(src)
    steps["copy (roofline)"] = lambda: dst.copy_(src)
    for step in steps.values():  # warm-up: compilation, autotuning, first-touch allocation
        for _ in range(3):
            step()
    timer = time_cuda if device.type == "cuda" else time_cpu
    timings = timer(steps, args.rounds, args.min_time)
    copy_bw = floor / timings["copy (roofline)"]["median_s"]
    rows = {}
    for variant in variants:
        t = timings[variant]["median_s"]
        total, extra = saved_bytes(variants[variant], leaves, upstream)
        rows[variant] = {**timings[variant], "effective_GBps": floor / t / 1e9,
                         "fraction_of_copy_bandwidth": floor / t / copy_bw,
                         "saved_bytes_total": total, "saved_bytes_not_inputs": extra}
    return {"case": name, "batch": args.batch, "latent_shape": list(latent_shape), "pixel_shape": list(pixel_shape),
            "minimal_bytes": floor, "copy_GBps": copy_bw / 1e9, "variants": rows}


def table(results: list[dict], fused_name: str) -> str:
    lines = [f"| case | variant | median ms | GB/s | % of copy | x eager | x compile | saved MB (not inputs) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        v = r["variants"]
        for name, row in v.items():
            t = row["median_s"]
            lines.append(
                f"| {r['case']} | {name} | {t * 1e3:.3f} | {row['effective_GBps']:.1f} | "
                f"{100 * row['fraction_of_copy_bandwidth']:.0f}% | {v['eager']['median_s'] / t:.2f} | "
                f"{v['compile']['median_s'] / t:.2f} | {row['saved_bytes_total'] / 1e6:.2f} "
                f"({row['saved_bytes_not_inputs'] / 1e6:.2f}) |"
            )
        lines.append(f"| {r['case']} | copy roofline | | {r['copy_GBps']:.1f} | 100% | | | |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--min-time", type=float, default=0.05, help="seconds per timed sample")
    parser.add_argument("--quick", action="store_true", help="one case, few rounds: a smoke test")
    parser.add_argument("--no-readme", action="store_true", help="do not update benchmarks/README.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.min_time = 3, 0.01
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    results = [run_case(n, ls, ps, args, device, dtype) for n, ls, ps in (QUICK_CASES if args.quick else CASES)]
    command = "python benchmarks/bench_loss.py " + " ".join(argv if argv is not None else sys.argv[1:])
    payload = {"benchmark": "bench_loss", "command": command.strip(), "dtype": args.dtype,
               "machine": machine_info(device), "results": results}
    path = write_result(f"bench_loss-{device.type}-{args.dtype}", payload, quick=args.quick)
    text = table(results, "native" if device.type == "cpu" else "triton")
    print(text)
    print(f"\nwrote {path}")
    if not args.quick and not args.no_readme:
        update_readme_section(f"bench_loss-{device.type}-{args.dtype}", payload, text)
    return payload


if __name__ == "__main__":
    main()
