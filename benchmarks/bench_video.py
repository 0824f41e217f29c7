"""A video autoencoder with the Latent-Diffusion recipe in 5D, two ways, and its memory against the clip length.

Speed: the same tiny ``AutoencoderKLWan`` layout (base 16, dim_mult 1-2, temporal downsampling, z 4), initial
weights, LPIPS (random VGG16 trunk, shipped linear layers), 3D PatchGAN (2 layers, active from step 0) and clips of
moving discs, each variant in its own process, rounds interleaved, clips/s past the first 2 steps:

- ``two-pass``: generative-models' ``GeneralLPIPSWithDiscriminator`` with ``dims: 3`` as Lightning runs it: per step
  a pass per optimizer, so the autoencoder forward, the per-frame L1 and LPIPS and the KL twice; the adaptive weight
  by two ``autograd.grad`` with ``retain_graph``; ``loss.backward()`` through LPIPS, D and the autoencoder; the
  discriminator's pass on the second forward's reconstruction.
- ``vaefast``: ``vaefast train --recipe ldm --disc patchgan3d --frames T`` (a ``Trainer``): one forward per step,
  each backward once, the adaptive weight's gradients through the last layer alone.

Every process runs with glibc's mmap threshold fixed (as bench_autoencoder.py explains) and reports its peak RSS and
what training adds to it (the peak over the RSS before the first step); CUDA's max allocated on a GPU. Memory:
``vaefast``'s step at T = 1, 5, 9, 17, 33 frames (``--memory-size``), with and without
``--activation-checkpointing`` (Wan has no block checkpointing in diffusers; vaefast recomputes its whole encoder and
decoder), each in its own process; and where the memory of one step goes at its peak (torch.profiler's memory view:
parameters, optimizer state, inputs, activations, gradients, temporaries), with and without checkpointing.

    python benchmarks/bench_video.py                 # CPU: clips [2, 3, 9, 32, 32], memory rows at 64x64
    python benchmarks/bench_video.py --quick         # a smoke run (results/quick/)
    python benchmarks/bench_video.py --device cuda --size 128 --frames 17 --batch-size 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import machine_info, peak_memory_mb, rss_mb, update_readme_section, write_result  # noqa: E402

WARMUP = 2
WAN = {"base_dim": 16, "z_dim": 4, "dim_mult": [1, 2], "num_res_blocks": 1, "attn_scales": [],
       "temperal_downsample": [True], "latents_mean": [0.0] * 4, "latents_std": [1.0] * 4}
VARIANTS = {"two-pass": "generative-models dims=3, a pass per optimizer", "vaefast": "vaefast train --recipe ldm"}
MEMORY_FRAMES = (1, 5, 9, 17, 33)
# Wan: no block checkpointing in diffusers (vaefast recomputes the whole encoder and decoder); LTX-Video: diffusers'.
MODELS = {"wan": "AutoencoderKLWan", "ltx": "AutoencoderKLLTXVideo"}
MMAP_THRESHOLD = "131072"  # glibc's, fixed: RSS then follows the live tensors (bench_autoencoder.py)


def clips(spec: dict, count: int) -> torch.Tensor:
    from test_video import moving_shapes

    return torch.from_numpy(moving_shapes(count, spec["frames"], spec["size"], seed=spec["seed"])).permute(
        0, 4, 1, 2, 3).contiguous()


def models(spec: dict, device):
    import diffusers
    from test_video import VIDEO_CLASSES

    from vaefast import LPIPSWithDiscriminator
    from vaefast.models.lpips import LPIPS
    from vaefast.models.patchgan import PatchGAN3D

    torch.manual_seed(spec["seed"])
    config = dict(VIDEO_CLASSES[MODELS[spec.get("model", "wan")]])
    vae = getattr(diffusers, config.pop("_class_name"))(**config).to(device)
    torch.manual_seed(spec["seed"] + 1)
    lpips = LPIPS()
    lpips.load_linear()
    crit = LPIPSWithDiscriminator(lpips, PatchGAN3D(3, layers=2), kl_weight=1e-6, disc_start=0).to(device)
    return vae, crit


def two_pass_step(vae, crit, opts, x):
    """One step of generative-models' dims=3 loss under Lightning (see the module docstring)."""
    from vaefast.models.recipe_parts import as_frames, frozen

    opt_g, opt_d = opts

    def losses():
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample()).sample
        xf, rf = as_frames(x), as_frames(rec)
        rec_loss = (xf - rf).abs() + crit.perceptual_weight * crit.perceptual(xf.contiguous(), rf.contiguous())
        nll = rec_loss / torch.exp(crit.logvar) + crit.logvar
        kl = 0.5 * (posterior.mean.square() + posterior.var - 1 - posterior.logvar).flatten(1).sum(1)
        return rec, nll.sum() / nll.shape[0], kl.sum() / kl.shape[0]

    with frozen(crit.discriminator):
        rec, nll_loss, kl_loss = losses()
        g_loss = -crit.discriminator(rec).mean()
        last = vae.decoder.conv_out.weight
        nll_grads = torch.autograd.grad(nll_loss, last, retain_graph=True)[0]
        g_grads = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
        d_weight = torch.clamp(torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4), 0.0, 1e4).detach() * 0.5
        (nll_loss + crit.kl_weight * kl_loss + d_weight * g_loss).backward()
    opt_g.step()
    opt_g.zero_grad(set_to_none=True)
    generator = [p for p in [*vae.parameters(), crit.logvar] if p.requires_grad]
    for p in generator:
        p.requires_grad_(False)
    rec, _, _ = losses()  # Lightning's second training_step
    real, fake = crit.discriminator(x), crit.discriminator(rec.detach())
    (0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())).backward()
    for p in generator:
        p.requires_grad_(True)
    opt_d.step()
    opt_d.zero_grad(set_to_none=True)


def trainer(spec: dict, vae, crit, data: torch.Tensor, checkpointing: bool = False):
    import tempfile

    from vaefast import TrainConfig, Trainer
    from vaefast.data import ImageDataset
    from vaefast.integrations.diffusers import from_diffusers

    folder = Path(tempfile.mkdtemp(prefix="bench_video_"))
    vgg = folder / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in crit.perceptual.features.state_dict().items()}, vgg)
    crit.perceptual = crit.discriminator = None  # so that two LPIPS never coexist in the process
    cfg = TrainConfig.from_options(
        recipe="ldm", lpips_weights=str(vgg), disc="patchgan3d", disc_layers=2, disc_start=0, lr=1e-4,
        batch_size=spec["batch_size"], precision="fp32", device=spec["device"], compile=False, epochs=1,
        out=str(folder / "run"), progress=False, tensorboard=False, log_every=10**6, seed=spec["seed"],
        activation_checkpointing=checkpointing)
    return Trainer(cfg, ImageDataset("clips", data, data[:spec["batch_size"]]), model=from_diffusers(vae))


def run_variant(variant: str, spec: dict) -> dict:
    device = torch.device(spec["device"])
    vae, crit = models(spec, device)
    data = clips(spec, spec["batch_size"] * spec["steps"])
    if variant == "vaefast":
        t = trainer(spec, vae, crit, data)
        before = rss_mb()
        t.run(WARMUP)
        _sync(device)
        started = time.perf_counter()
        t.run(spec["steps"] - WARMUP)
    else:
        opts = (torch.optim.Adam([*vae.parameters(), crit.logvar], lr=1e-4, betas=(0.5, 0.9)),
                torch.optim.Adam(crit.discriminator.parameters(), lr=1e-4, betas=(0.5, 0.9)))
        before = rss_mb()
        for step in range(spec["steps"]):
            if step == WARMUP:
                _sync(device)
                started = time.perf_counter()
            x = data[step * spec["batch_size"]:(step + 1) * spec["batch_size"]].to(device).float() / 127.5 - 1
            two_pass_step(vae, crit, opts, x)
    _sync(device)
    seconds = time.perf_counter() - started
    peak = peak_memory_mb(device)
    return {"variant": variant, "clips_per_s": (spec["steps"] - WARMUP) * spec["batch_size"] / seconds,
            "peak_memory_mb": peak, "training_memory_mb": peak - (0 if device.type == "cuda" else before)}


def run_memory(spec: dict) -> dict:
    """One vaefast step at spec's frame count: the memory training adds."""
    device = torch.device(spec["device"])
    vae, crit = models(spec, device)
    t = trainer(spec, vae, crit, clips(spec, spec["batch_size"] * 2), checkpointing=spec["checkpointing"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = rss_mb()
    t.run(2)
    _sync(device)
    peak = peak_memory_mb(device)
    return {"frames": spec["frames"], "checkpointing": spec["checkpointing"], "peak_memory_mb": peak,
            "training_memory_mb": peak - (0 if device.type == "cuda" else before)}


# torch.profiler's memory categories, in the order of the sizes export_memory_timeline writes (after a leading 0).
CATEGORIES = ("parameter", "optimizer_state", "input", "temporary", "activation", "gradient", "autograd_detail",
              "unknown")


def run_memory_view(spec: dict) -> dict:
    """Where the memory of a vaefast step goes: torch.profiler's memory profile of one step past the warm-up (the
    data behind ``export_memory_timeline``), in MB by category at the step's peak."""
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    device = torch.device(spec["device"])
    vae, crit = models(spec, device)
    t = trainer(spec, vae, crit, clips(spec, spec["batch_size"] * (WARMUP + 1)), checkpointing=spec["checkpointing"])
    t.run(WARMUP)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, profile_memory=True, record_shapes=True, with_stack=True) as prof:
        t.run(WARMUP + 1)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "timeline.json"
        prof.export_memory_timeline(str(path), device="cuda:0" if device.type == "cuda" else "cpu")
        _, sizes = json.loads(path.read_text())
    peak = max(sizes, key=sum)
    return {"frames": spec["frames"], "checkpointing": spec["checkpointing"], "model": spec["model"],
            "peak_mb": sum(peak) / 2**20, "by_category_mb": {c: b / 2**20 for c, b in zip(CATEGORIES, peak[1:])}}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--memory-size", type=int, default=64, help="frame size of the memory-vs-frames rows")
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="one round of 3 steps at 5 frames, memory rows of Wan at 1 and 5 frames (results/quick/)")
    p.add_argument("--name", default=None)
    p.add_argument("--results", default=None, help="folder for the JSON result (default: benchmarks/results/)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        spec = json.loads(args.spec)
        run = {"memory": run_memory, "memory-view": run_memory_view}.get(args.worker)
        print(json.dumps(run(spec) if run else run_variant(args.worker, spec)))
        return
    if args.quick:
        args.rounds, args.steps, args.frames = 1, WARMUP + 1, 5
    frames_rows = (1, 5) if args.quick else MEMORY_FRAMES
    memory_models = ("wan",) if args.quick else tuple(MODELS)
    spec = {k: getattr(args, k) for k in ("device", "size", "frames", "batch_size", "steps", "seed")}

    def worker(name, run_spec, **env):
        proc = subprocess.run([sys.executable, __file__, "--worker", name, "--spec", json.dumps(run_spec)],
                              capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore", **env})
        if proc.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    runs = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            runs[variant].append(worker(variant, spec, MALLOC_MMAP_THRESHOLD_=MMAP_THRESHOLD))
            print(f"{variant:10s} {runs[variant][-1]['clips_per_s']:8.3f} clips/s", file=sys.stderr)
    summary = {v: {k: statistics.median(r[k] for r in rs) for k in ("clips_per_s", "peak_memory_mb",
                                                                      "training_memory_mb")}
               for v, rs in runs.items()}
    memory = [{**worker("memory", {**spec, "size": args.memory_size, "frames": t, "checkpointing": c, "model": m},
                        MALLOC_MMAP_THRESHOLD_=MMAP_THRESHOLD), "model": m}
              for m in memory_models for t in frames_rows for c in (False, True)]
    for row in memory:
        print(f"memory {row['model']} T={row['frames']:2d} checkpointing={row['checkpointing']!s:5s} "
              f"+{row['training_memory_mb']:.0f} MB", file=sys.stderr)
    view_frames = 5 if args.quick else 9
    views = {c: worker("memory-view", {**spec, "size": args.memory_size, "frames": view_frames, "checkpointing": c,
                                       "model": "wan"}, MALLOC_MMAP_THRESHOLD_=MMAP_THRESHOLD) for c in (False, True)}
    name = args.name or f"bench_video-{args.device}"
    payload = {"machine": machine_info(args.device), "spec": spec, "rounds": runs, "summary": summary,
               "memory": memory, "memory_view": list(views.values()), "command": "python benchmarks/bench_video.py " + " ".join(argv or sys.argv[1:])}
    base = summary["two-pass"]["clips_per_s"]
    table = [f"Clips [{args.batch_size}, 3, {args.frames}, {args.size}, {args.size}], tiny AutoencoderKLWan, fp32.", "",
             "| variant | clips/s (median) | x two-pass | peak RSS MB | training adds MB |", "|---|---|---|---|---|"]
    table += [f"| {VARIANTS[v]} | {s['clips_per_s']:.3f} | {s['clips_per_s'] / base:.2f}x | "
              f"{s['peak_memory_mb']:.0f} | {s['training_memory_mb']:.0f} |" for v, s in summary.items()]
    table += ["", f"Memory a vaefast step adds, by clip length ({args.memory_size}x{args.memory_size}, batch "
              f"{args.batch_size}):", "",
              "| frames | " + " | ".join(f"{MODELS[m]} MB | {MODELS[m]}, --activation-checkpointing MB"
                                      for m in memory_models) + " |", "|---|" + "---|---|" * len(memory_models)]
    added = {(r["model"], r["frames"], r["checkpointing"]): r["training_memory_mb"] for r in memory}
    for t in frames_rows:
        table.append(f"| {t} | " + " | ".join(f"{added[m, t, c]:.0f}" for m in memory_models for c in (False, True))
                     + " |")
    table += ["", f"Where the memory of that step goes at its peak ({MODELS['wan']}, {view_frames} frames, "
              f"{args.memory_size}x{args.memory_size}, batch {args.batch_size}; torch.profiler's memory view, MB; "
              "parameters include LPIPS' VGG16):", "", "| category | step | --activation-checkpointing |",
              "|---|---|---|"]
    table += [f"| {c} | {views[False]['by_category_mb'][c]:.0f} | {views[True]['by_category_mb'][c]:.0f} |"
              for c in CATEGORIES if views[False]["by_category_mb"][c] or views[True]["by_category_mb"][c]]
    table.append(f"| total at the peak | {views[False]['peak_mb']:.0f} | {views[True]['peak_mb']:.0f} |")
    print("\n".join(table))
    print(f"wrote {write_result(name, payload, quick=args.quick, folder=args.results)}")
    if not args.quick and args.results is None:
        update_readme_section(name, payload, "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
