"""diffusers' AutoencoderKL trained the way a diffusers user writes the loop, against vaefast's training loop on the
same model config, initial weights, data, batch and number of steps, in one run.

    python benchmarks/bench_autoencoder.py                          # CPU: 32x32 RGB crops, blocks 32-64
    python benchmarks/bench_autoencoder.py --quick                  # a smoke run (results/quick/)
    python benchmarks/bench_autoencoder.py --device cuda --preset sd-kl-f8 --size 256 --batch-size 8 --steps 40
    python benchmarks/bench_autoencoder.py --recipe ldm             # L1 + LPIPS + KL + PatchGAN, three ways

The reference loop is the one in diffusers' ``train_autoencoderkl.py`` without its LPIPS and GAN parts, in plain
PyTorch below: pixels scaled to [-1, 1]; ``posterior = vae.encode(x).latent_dist``, ``z = posterior.sample()``,
``rec = vae.decode(z).sample``; ``mse_loss(rec, x) + 1e-6 * posterior.kl().mean()``; AdamW (weight decay 1e-2);
fp32 eager (the script's default ``mixed_precision="no"``), or bf16 autocast as its ``--mixed_precision bf16``. The
batches are drawn from the same in-memory uint8 tensor as vaefast's, so neither side pays for decoding.

vaefast runs ``Trainer(cfg, model=from_diffusers(vae))``, the loop of ``vaefast train``: Gaussian likelihood (L2)
with the KL weight that makes its objective the reference's times a constant (so Adam, which ignores the scale,
sees the same problem), its run plan's precision and compile choices, and the variants below. ``Trainer.run`` is
timed rather than ``fit``, whose end-of-epoch evaluation and checkpoint are not training.

Every variant runs in its own process, and the variants are interleaved round by round; images/s leaves out the
first 3 steps (allocation, autotuning). Peak memory is CUDA's max allocated on GPU. On CPU it is the process's peak
RSS and its growth over the RSS before the first step (the part training adds), measured in one extra short run
per variant with glibc's mmap threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``): glibc otherwise raises the
threshold as tensors are freed and keeps their memory, so RSS would measure the allocator's history rather than
the live tensors. The timed runs keep the default allocator. The quality figures are the
same evaluation for every variant: held-out crops (from photographs no training crop comes from) encoded to the
posterior mean and decoded, PSNR and SSIM in [0, 1], and the reference's loss on them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, rss_mb, update_readme_section, write_result  # noqa: E402

WARMUP_STEPS = 3
KL_WEIGHT = 1e-6
SIGMA = 0.1  # vaefast's Gaussian scale; the KL weight is matched to it (see vaefast_kl_weight)
TRAIN_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")
TEST_PHOTOS = ("retina", "stereo_motorcycle")
VARIANTS = {
    "reference": "diffusers-style loop, fp32 eager",
    "reference-bf16": "diffusers-style loop, bf16 autocast",
    "vaefast": "vaefast, its run plan (precision, compile)",
    "vaefast-fp32": "vaefast, fp32",
    "vaefast-compile": "vaefast --compile",
    "vaefast-whole-step": "vaefast --compile --compile-mode whole-step",
    "vaefast-fp32-whole-step": "vaefast, fp32, --compile --compile-mode whole-step",
    "vaefast-ckpt": "vaefast --activation-checkpointing",
    "vaefast-channels-last": "vaefast --channels-last",
}


# ------------------------------------------------------------------------------------------------ data and model


def photo_crops(names, count: int, size: int, seed: int) -> torch.Tensor:
    """uint8 [count, 3, size, size]: random crops of scikit-image's bundled photographs, each photo first scaled so
    that its shorter side is 4x the crop (a crop then shows a recognizable part of the scene)."""
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(seed)
    photos = []
    for name in names:
        photo = getattr(data, name)()
        photo = photo[0] if isinstance(photo, tuple) else photo
        img = Image.fromarray(photo)
        scale = 4 * size / min(img.size)
        photos.append(np.asarray(img.resize((round(img.size[0] * scale), round(img.size[1] * scale)),
                                            Image.BICUBIC)))
    crops = np.empty((count, 3, size, size), dtype=np.uint8)
    for i in range(count):
        photo = photos[rng.integers(len(photos))]
        y, x = rng.integers(0, photo.shape[0] - size + 1), rng.integers(0, photo.shape[1] - size + 1)
        crops[i] = photo[y:y + size, x:x + size].transpose(2, 0, 1)
    return torch.from_numpy(crops)


def autoencoder(spec: dict):
    from diffusers import AutoencoderKL

    from vaefast.integrations.diffusers import load_autoencoder

    if spec["preset"]:
        return load_autoencoder(spec["preset"])
    blocks = tuple(spec["blocks"])
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=blocks, layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * len(blocks),
                         up_block_types=("UpDecoderBlock2D",) * len(blocks), latent_channels=4,
                         norm_num_groups=min(32, blocks[0]))


def vaefast_kl_weight(image_shape) -> float:
    """The reference minimizes mean((rec - x')^2) + w·KL with x' = 2x - 1 in [-1, 1], i.e. per image
    4·SSE/D + w·KL. vaefast's Gaussian NLL is SSE/(2σ²) + const; times D/(8σ²) the reference becomes
    SSE/(2σ²) + w·D/(8σ²)·KL, so β = w·D/(8σ²) gives the same objective up to a constant factor and offset."""
    return KL_WEIGHT * float(np.prod(image_shape)) / (8 * SIGMA ** 2)


@torch.no_grad()
def evaluate(vae, test: torch.Tensor, device, batch: int = 32) -> dict:
    """PSNR/SSIM of posterior-mean reconstructions in [0, 1], and the reference's loss (MSE in [-1, 1] +
    1e-6·KL) on the held-out crops; the same for every variant, since vaefast's diffusers adapter keeps the
    model in diffusers' [-1, 1] pixel convention."""
    from vaefast.eval.quality import psnr_ssim

    vae.eval()
    psnr, ssim, loss = [], [], []
    for start in range(0, len(test), batch):
        x = test[start:start + batch].to(device).float() / 255
        posterior = vae.encode(x * 2 - 1).latent_dist
        rec = (vae.decode(posterior.mode()).sample.float() + 1) / 2
        p, s = psnr_ssim(rec, x)
        psnr.append(p)
        ssim.append(s)
        mse_signed = 4 * (rec - x).square().mean()
        loss.append((mse_signed + KL_WEIGHT * posterior.kl().mean()).repeat(len(x)))
    return {"psnr": float(torch.cat(psnr).mean()), "ssim": float(torch.cat(ssim).mean()),
            "test_loss": float(torch.cat(loss).mean())}


# ------------------------------------------------------------------------------------------------ the two loops


def reference_loop(vae, train, spec, device, autocast_dtype) -> float:
    """The diffusers-style loop; returns the training time of the steps after the warm-up."""
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=spec["lr"], weight_decay=1e-2)
    generator = torch.Generator().manual_seed(spec["seed"])
    order = torch.randperm(len(train), generator=generator)
    batch, position, started = spec["batch_size"], 0, None
    for step in range(spec["steps"]):
        if step == WARMUP_STEPS:
            _sync(device)
            started = time.perf_counter()
        if position + batch > len(order):
            order, position = torch.randperm(len(train), generator=generator), 0
        x = train[order[position:position + batch]].to(device, non_blocking=True).float() / 255 * 2 - 1
        position += batch
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            posterior = vae.encode(x).latent_dist
            z = posterior.sample()
            rec = vae.decode(z).sample
        loss = F.mse_loss(rec.float(), x.float(), reduction="mean") + KL_WEIGHT * posterior.kl().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync(device)
    return time.perf_counter() - started


def vaefast_loop(vae, train, test, spec, device, variant) -> tuple[float, dict]:
    """vaefast's trainer on the same AutoencoderKL (trained in place); returns its images/s and plan."""
    from vaefast.config import TrainConfig
    from vaefast.data import ImageDataset
    from vaefast.integrations.diffusers import DIFFUSERS_CLAMP, from_diffusers
    from vaefast.train import Trainer

    whole_step = variant.endswith("whole-step")
    cfg = TrainConfig.from_options(out=spec["out"], batch_size=spec["batch_size"], epochs=10**6, lr=spec["lr"],
                      optimizer="adamw", weight_decay=1e-2, beta=vaefast_kl_weight(train.shape[1:]),
                      seed=spec["seed"], device=str(device), progress=False, tensorboard=False, log_every=10**6,
                      activation_checkpointing=variant == "vaefast-ckpt",
                      channels_last=variant == "vaefast-channels-last",
                      precision="fp32" if variant.startswith("vaefast-fp32") else "auto",
                      compile=True if variant in ("vaefast-compile",) or whole_step else None,
                      compile_mode="whole-step" if whole_step else None)
    cfg.model.likelihood, cfg.model.gaussian_sigma, cfg.model.clamp = "gaussian", SIGMA, DIFFUSERS_CLAMP
    trainer = Trainer(cfg, ImageDataset("photo crops", train, test), model=from_diffusers(vae))
    trainer.run(spec["steps"])
    _sync(device)
    plan = {"precision": trainer.precision, "compiled": trainer.compiled, "master_weights": trainer.master_weights}
    return trainer.metrics.images_per_s, plan


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_variant(variant: str, spec: dict) -> dict:
    torch.manual_seed(spec["seed"])
    device = torch.device(spec["device"])
    train = photo_crops(TRAIN_PHOTOS, spec["train_images"], spec["size"], seed=spec["seed"])
    test = photo_crops(TEST_PHOTOS, spec["test_images"], spec["size"], seed=spec["seed"] + 1)
    vae = autoencoder(spec).to(device)  # the same initial weights in every variant (seeded)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else rss_mb()
    result = {"variant": variant, "description": VARIANTS[variant],
              "parameters": sum(p.numel() for p in vae.parameters())}
    if variant.startswith("reference"):
        bf16 = torch.bfloat16 if variant == "reference-bf16" else None
        seconds = reference_loop(vae, train, spec, device, bf16)
        result["images_per_s"] = (spec["steps"] - WARMUP_STEPS) * spec["batch_size"] / seconds
        result["plan"] = {"precision": "bf16 autocast" if bf16 else "fp32", "compiled": False}
    else:
        result["images_per_s"], result["plan"] = vaefast_loop(vae, train.to(device), test, spec, device, variant)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result.update(peak_memory_mb=peak, training_memory_mb=peak - baseline)
    result.update(evaluate(vae.float(), test, device=device))
    return result


# ------------------------------------------------------------------------------------------------ the driver


def add_autoencoder_arguments(p: argparse.ArgumentParser, *, size: int, batch_size: int, steps: int) -> None:
    """The device, the AutoencoderKL (a preset or block widths) and the run's size, shared with bench_ldm_recipe."""
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", default=None, help="a vaefast preset (sd-kl-f8, kl-f8-16ch) instead of --blocks")
    p.add_argument("--blocks", type=int, nargs="+", default=[32, 64])
    p.add_argument("--size", type=int, default=size)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--steps", type=int, default=steps)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_autoencoder_arguments(p, size=32, batch_size=16, steps=60)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--train-images", type=int, default=2048)
    p.add_argument("--test-images", type=int, default=128)
    p.add_argument("--name", default=None, help="results file and docs/performance.md section (default: per device)")
    p.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS),
                   help="default: every variant except the bf16 reference on a CPU without native bf16")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 1 round of 8 steps at 16x16, no separate memory runs on CPU, results/quick/")
    p.add_argument("--results", default=None, help="write the JSON here instead of benchmarks/results/")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(run_variant(args.worker, json.loads(args.spec))), flush=True)
        return
    if args.quick:
        args.size, args.steps, args.rounds, args.train_images, args.test_images = 16, 8, 1, 128, 16
        args.blocks = [8, 16]
    from vaefast.plan import native_bf16

    device = torch.device(args.device)
    # Whole-step capture is measured on its own (gpu_suite.sh --whole-step), by name.
    variants = args.variants or [v for v in VARIANTS if (v != "reference-bf16" or native_bf16(device))
                                 and not v.endswith("whole-step")]
    name = args.name or f"bench_autoencoder-{device.type}"
    out = Path(args.results or "/tmp") / f"{name}-runs"
    spec = {"device": args.device, "preset": args.preset, "blocks": args.blocks, "size": args.size,
            "batch_size": args.batch_size, "steps": args.steps, "lr": args.lr, "seed": 0,
            "train_images": args.train_images, "test_images": args.test_images}
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for round_index in range(args.rounds):
        for variant in variants:  # interleaved, each in a fresh process
            result = _worker(variant, {**spec, "out": str(out / f"{variant}-{round_index}")})
            runs[variant].append(result)
            print(f"round {round_index + 1} {variant:22s} {result['images_per_s']:8.2f} img/s  PSNR "
                  f"{result['psnr']:.2f}", flush=True)
    memory = {}
    for variant in variants:
        if device.type == "cuda" or args.quick:  # quick: the rounds' own readings, not a fresh process's
            memory[variant] = {k: statistics.median(r[k] for r in runs[variant])
                               for k in ("peak_memory_mb", "training_memory_mb")}
        else:
            result = _worker(variant, {**spec, "steps": WARMUP_STEPS + 3, "out": str(out / f"{variant}-memory")},
                             MALLOC_MMAP_THRESHOLD_="131072")
            memory[variant] = {k: result[k] for k in ("peak_memory_mb", "training_memory_mb")}
        print(f"memory {variant:22s} peak {memory[variant]['peak_memory_mb']:7.1f} MB "
              f"(+{memory[variant]['training_memory_mb']:.1f})", flush=True)
    payload = summarize(runs, memory, spec, device, " ".join(["python", *sys.argv]))
    path = write_result(name, payload, quick=args.quick, folder=args.results)
    print(f"wrote {path}")
    if not args.quick and not args.results:
        update_readme_section(name, payload, table(payload))


def _worker(variant: str, spec: dict, **env) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", variant, "--spec", json.dumps(spec)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore", **env})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"{variant} failed:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def summarize(runs: dict, memory: dict, spec: dict, device, command: str) -> dict:
    reference = runs.get("reference")
    summary = {}
    for variant, results in runs.items():
        entry = {
            "description": VARIANTS[variant],
            "plan": results[0]["plan"],
            "images_per_s": [r["images_per_s"] for r in results],
            "median_images_per_s": statistics.median(r["images_per_s"] for r in results),
            **memory[variant],
            "psnr": statistics.median(r["psnr"] for r in results),
            "ssim": statistics.median(r["ssim"] for r in results),
            "test_loss": statistics.median(r["test_loss"] for r in results),
        }
        if reference:  # ratios within each round: the machine's speed drifts between rounds, not within one
            entry["speedup_per_round"] = [r["images_per_s"] / ref["images_per_s"] for r, ref in zip(results, reference)]
            entry["speedup"] = statistics.median(entry["speedup_per_round"])
            entry["training_memory_ratio"] = entry["training_memory_mb"] / max(
                memory["reference"]["training_memory_mb"], 1e-9)
        summary[variant] = entry
    return {"machine": machine_info(device), "command": command, "spec": spec,
            "parameters": runs[next(iter(runs))][0]["parameters"], "variants": summary, "runs": runs}


def table(payload: dict) -> str:
    spec = payload["spec"]
    model = spec["preset"] or "blocks " + "-".join(map(str, spec["blocks"]))
    memory = "CUDA max allocated (growth over step 1)" if payload["machine"]["gpu"] else \
        "peak RSS (growth over the RSS before step 1), glibc mmap threshold fixed"
    lines = [f"AutoencoderKL {model} ({payload['parameters'] / 1e6:.2f}M parameters), {spec['size']}x{spec['size']} "
             f"RGB crops, batch {spec['batch_size']}, {spec['steps']} steps, lr {spec['lr']}; medians of "
             f"{len(payload['runs']['reference'])} interleaved rounds; memory: {memory}.", "",
             "| variant | plan | images/s | x reference | memory MB | x reference (growth) | PSNR dB | SSIM | "
             "test loss |", "|---|---|---|---|---|---|---|---|---|"]
    for variant, e in payload["variants"].items():
        plan = e["plan"]["precision"] + (", compiled" if e["plan"].get("compiled") else "")
        lines.append(f"| {variant} | {plan} | {e['median_images_per_s']:.2f} | {e.get('speedup', 1.0):.2f} | "
                     f"{e['peak_memory_mb']:.0f} (+{e['training_memory_mb']:.0f}) | "
                     f"{e.get('training_memory_ratio', 1.0):.2f} | {e['psnr']:.2f} | {e['ssim']:.3f} | "
                     f"{e['test_loss']:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if "--recipe" in sys.argv:  # --recipe ldm: the Latent-Diffusion recipe, three ways (bench_ldm_recipe.py)
        import bench_ldm_recipe

        bench_ldm_recipe.main([a for a in sys.argv[1:] if a not in ("--recipe", "ldm")])
    else:
        main()
