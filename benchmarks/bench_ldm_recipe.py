"""The Latent-Diffusion autoencoder recipe (L1 + LPIPS + KL + PatchGAN with the adaptive weight) three ways, on the
same AutoencoderKL, LPIPS weights, discriminator init, data and steps, each variant in its own process, rounds
interleaved:

- ``ldm``: the CompVis flow as Lightning runs it: per step, ``training_step`` once per optimizer, so the
  autoencoder forward, L1, LPIPS and the KL twice; the adaptive weight by two ``autograd.grad`` to the last layer;
  ``loss.backward()`` through LPIPS, D and the autoencoder; the discriminator pass on the reconstruction of the
  second forward (after the generator's update), the other network toggled off in each pass.
- ``diffusers``: ``train_autoencoderkl.py`` as published: one forward per step; generator and discriminator
  alternate by step; LPIPS under ``no_grad`` (no perceptual gradient); the discriminator branch computes its loss
  and never steps (so D never learns); its ``.item()`` logging. Reported for speed only: it is not the recipe.
- ``vaefast``: the drop-in ``vaefast.LPIPSWithDiscriminator`` in a plain loop: one forward,
  ``backward_generator`` (each backward once), ``backward_discriminator`` on the same reconstruction.
- ``trainer``: ``vaefast train --recipe ldm`` (a ``Trainer`` with the same AutoencoderKL, LPIPS trunk and crops;
  its own discriminator init, fused Adam, NaN guard and metrics; no checkpoint or evaluation inside the timing).

    python benchmarks/bench_autoencoder.py --recipe ldm          # CPU: 64x64 crops, batch 8, blocks 32-64
    python benchmarks/bench_autoencoder.py --recipe ldm --train decoder   # decoder-only fine-tuning, three ways
    python benchmarks/bench_ldm_recipe.py --quick                 # a smoke run (results/quick/)
    python benchmarks/bench_ldm_recipe.py --loop lightning        # LDM's own loop: its loss class vs vaefast's
    python benchmarks/bench_ldm_recipe.py --device cuda --preset sd-kl-f8 --size 256 --precision bf16

With ``--train decoder`` (sd-vae-ft-mse's fine-tuning: the decoder and post_quant_conv train, the latents stay):
``trainer-decoder`` is ``vaefast train --recipe ldm --train decoder``, ``trainer-all`` the same run training
everything, and ``ldm-decoder`` the LDM flow above with the encoder and quant_conv frozen (``requires_grad_(False)``,
out of the optimizer: what ``trainable_ae_params`` fine-tuning scripts do), which still runs the encoder and the KL
in both optimizer passes.

With ``--loop lightning`` (the codebases that copied LDM's loss, issue #41): Lightning's two-optimizer step
(``tests/ldm_reference.py``: per optimizer, the other toggled off, the autoencoder forward, the loss called with
LDM's signature, ``loss.backward()``, the step) once with LDM's ``LPIPSWithDiscriminator`` (written out from its
formulas in ``tests/ldm_reference.py``) and once with ``vaefast.LPIPSWithDiscriminator`` in its place, the same call;
each before ``disc_start`` (LDM still runs D and the adaptive weight's two ``autograd.grad`` there) and after it, in
its own process.

Images/s leaves out the first 2 steps of each process. The first step's gradients of ``vaefast`` are compared with
``ldm``'s (relative difference of the flattened gradient vectors): the generator's (autoencoder and logvar), and the
discriminator's, which in the LDM flow come from the reconstruction after the generator's update; the
discriminator's are therefore also compared at the same reconstruction. The LPIPS trunk is random (no ImageNet
weights here), which changes nothing about the cost; the discriminator is active from step 0.
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
from bench_autoencoder import TRAIN_PHOTOS, add_autoencoder_arguments, autoencoder, photo_crops  # noqa: E402
from common import machine_info, peak_memory_mb, rss_mb, update_readme_section, write_result  # noqa: E402

WARMUP = 2
VARIANTS = {"ldm": "CompVis LDM flow (Lightning: a pass per optimizer)",
            "diffusers": "diffusers train_autoencoderkl.py as published (not the recipe)",
            "vaefast": "vaefast.LPIPSWithDiscriminator, single pass",
            "trainer": "vaefast train --recipe ldm"}
LIGHTNING_VARIANTS = {"lightning-ldm": "LDM's LPIPSWithDiscriminator",
                      "lightning-vaefast": "vaefast.LPIPSWithDiscriminator"}
PHASES = {"before": 10**9, "after": 0}  # disc_start, for steps before it and after it
DECODER_VARIANTS = {"ldm-decoder": "CompVis LDM flow, encoder frozen",
                    "trainer-all": "vaefast train --recipe ldm (everything trains)",
                    "trainer-decoder": "vaefast train --recipe ldm --train decoder"}


def _criterion(spec, device, dtype=torch.float32):
    from vaefast import LPIPSWithDiscriminator
    from vaefast.models.lpips import LPIPS
    from vaefast.models.patchgan import PatchGAN

    torch.manual_seed(spec["seed"] + 1)
    lpips = LPIPS()  # random trunk, shipped linear layers
    lpips.load_linear()
    disc = PatchGAN(3, layers=3)
    return LPIPSWithDiscriminator(lpips, disc, kl_weight=1e-6, perceptual_weight=1.0, disc_weight=0.5,
                                  disc_start=0, disc_loss="hinge").to(device, dtype)


def _optimizers(vae, crit, lr):
    opt_g = torch.optim.Adam([*(p for p in vae.parameters() if p.requires_grad), crit.logvar], lr=lr, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(crit.discriminator.parameters(), lr=lr, betas=(0.5, 0.9))
    return opt_g, opt_d


def _forward(vae, x, autocast):
    with autocast():
        posterior = vae.encode(x).latent_dist
        return vae.decode(posterior.sample()).sample, posterior


def _ldm_losses(crit, x, rec, posterior):
    """The part of LDM's loss forward that both optimizer passes compute before branching."""
    rec_loss = (x - rec).abs() + crit.perceptual_weight * crit.perceptual(x.contiguous(), rec.contiguous())
    nll = rec_loss / torch.exp(crit.logvar) + crit.logvar
    return nll.sum() / nll.shape[0], posterior.kl().sum() / x.shape[0]


def ldm_step(vae, crit, opts, x, autocast):
    from vaefast.models.recipe_parts import frozen

    opt_g, opt_d = opts
    with frozen(crit.discriminator):  # Lightning's toggle_optimizer(opt_g)
        rec, posterior = _forward(vae, x, autocast)
        with autocast():
            nll_loss, kl_loss = _ldm_losses(crit, x, rec, posterior)
            g_loss = -crit.discriminator(rec.contiguous()).float().mean()
        last = vae.decoder.conv_out.weight
        nll_grads = torch.autograd.grad(nll_loss, last, retain_graph=True)[0]
        g_grads = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
        d_weight = torch.clamp(torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4), 0.0, 1e4).detach() * 0.5
        loss = nll_loss + crit.kl_weight * kl_loss + d_weight * crit.disc_factor * g_loss
        loss.backward()
    grads_g = _flat([*vae.parameters(), crit.logvar])
    opt_g.step()
    opt_g.zero_grad(set_to_none=True)
    frozen_g = [p for p in [*vae.parameters(), crit.logvar] if p.requires_grad]
    for p in frozen_g:  # toggle_optimizer(opt_d)
        p.requires_grad_(False)
    rec, posterior = _forward(vae, x, autocast)  # the second training_step: forward, L1, LPIPS and KL again
    with autocast():
        _ldm_losses(crit, x, rec, posterior)
        logits_real = crit.discriminator(x.contiguous().detach()).float()
        logits_fake = crit.discriminator(rec.contiguous().detach()).float()
        d_loss = crit.disc_factor * 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())
    d_loss.backward()
    for p in frozen_g:
        p.requires_grad_(True)
    grads_d = _flat(crit.discriminator.parameters())
    opt_d.step()
    opt_d.zero_grad(set_to_none=True)
    return grads_g, grads_d


def diffusers_step(vae, crit, opts, x, autocast, step):
    opt_g, opt_d = opts
    rec, posterior = _forward(vae, x, autocast)
    logs = {}
    if step % 2 == 0:
        with autocast():
            rec_loss = F.l1_loss(rec.float(), x.float(), reduction="none")
            with torch.no_grad():
                p_loss = crit.perceptual(rec, x)
            nll_loss = torch.sum(rec_loss + p_loss) / rec_loss.shape[0]
            kl_loss = torch.sum(posterior.kl()) / x.shape[0]
            g_loss = -torch.mean(crit.discriminator(rec))
        last = vae.decoder.conv_out.weight
        nll_grads = torch.autograd.grad(nll_loss, last, retain_graph=True)[0]
        g_grads = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
        disc_weight = torch.clamp(torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4), 0.0, 1e4).detach() * 0.5
        loss = nll_loss + crit.kl_weight * kl_loss + disc_weight * g_loss
        logs = {k: v.detach().mean().item() for k, v in (("loss", loss), ("nll", nll_loss), ("p", p_loss),
                                                          ("kl", kl_loss), ("w", disc_weight), ("g", g_loss))}
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)
    else:
        with autocast():
            logits_real, logits_fake = crit.discriminator(x), crit.discriminator(rec)
            disc_loss = 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())
        logs = {k: v.detach().mean().item() for k, v in (("d", disc_loss), ("real", logits_real),
                                                         ("fake", logits_fake))}
    return logs


def vaefast_step(vae, crit, opts, x, autocast, step):
    opt_g, opt_d = opts
    rec, posterior = _forward(vae, x, autocast)
    with autocast():
        crit.backward_generator(x, rec, posterior.kl(), last_layer=vae.decoder.conv_out.weight, step=step)
    grads_g = _flat([*vae.parameters(), crit.logvar])
    opt_g.step()
    opt_g.zero_grad(set_to_none=True)
    with autocast():
        crit.backward_discriminator(x, rec, step=step)
    grads_d = _flat(crit.discriminator.parameters())
    opt_d.step()
    opt_d.zero_grad(set_to_none=True)
    return grads_g, grads_d, rec.detach()


def _flat(params) -> torch.Tensor:
    return torch.cat([p.grad.detach().float().flatten() for p in params if p.grad is not None])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def first_step_gradients(spec) -> dict:
    """The first step of ldm and vaefast from the same weights and noise: relative gradient differences."""
    device = torch.device(spec["device"])
    x = photo_crops(TRAIN_PHOTOS, spec["batch_size"], spec["size"], seed=spec["seed"]).to(device).float() / 127.5 - 1
    autocast = _autocast(spec, device)
    out = {}
    results = {}
    for name in ("ldm", "vaefast"):
        torch.manual_seed(spec["seed"])
        vae, crit = autoencoder(spec).to(device), _criterion(spec, device)
        opts = _optimizers(vae, crit, spec["lr"])
        torch.manual_seed(spec["seed"] + 7)  # the same posterior noise in both
        results[name] = ldm_step(vae, crit, opts, x, autocast) if name == "ldm" else \
            vaefast_step(vae, crit, opts, x, autocast, 0)
    out["generator"] = _rel(results["vaefast"][0], results["ldm"][0])
    out["discriminator_vs_ldm_flow"] = _rel(results["vaefast"][1], results["ldm"][1])
    # The LDM discriminator pass at vaefast's reconstruction (before the generator's update): same inputs.
    torch.manual_seed(spec["seed"])
    _, crit = autoencoder(spec).to(device), _criterion(spec, device)
    rec = results["vaefast"][2]
    with autocast():
        real, fake = crit.discriminator(x).float(), crit.discriminator(rec).float()
        (0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())).backward()
    # BatchNorm statistics: vaefast's D also saw the generator pass; both compute train-mode batch statistics.
    out["discriminator_same_reconstruction"] = _rel(results["vaefast"][1], _flat(crit.discriminator.parameters()))
    return out


def _autocast(spec, device):
    enabled = spec["precision"] == "bf16"
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def run_trainer(spec: dict, vae, crit, images: torch.Tensor, train: str = "all") -> float:
    """Seconds of the steps past the warm-up of ``vaefast train --recipe ldm`` on ``images``."""
    import tempfile

    from vaefast import TrainConfig, Trainer
    from vaefast.data import ImageDataset
    from vaefast.integrations.diffusers import from_diffusers

    folder = Path(tempfile.mkdtemp(prefix="bench_ldm_"))
    vgg = folder / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in crit.perceptual.features.state_dict().items()}, vgg)
    cfg = TrainConfig.from_options(
        recipe="ldm", lpips_weights=str(vgg), disc_start=0, lr=spec["lr"], batch_size=spec["batch_size"],
        precision=spec["precision"], device=spec["device"], compile=False, out=str(folder / "run"), progress=False,
        tensorboard=False, log_every=10**6, epochs=1, seed=spec["seed"], train=train)
    trainer = Trainer(cfg, ImageDataset("crops", images, images[:spec["batch_size"]]), model=from_diffusers(vae))
    trainer.run(WARMUP)
    _sync(torch.device(spec["device"]))
    started = time.perf_counter()
    trainer.run(spec["steps"] - WARMUP)
    _sync(torch.device(spec["device"]))
    return time.perf_counter() - started


def run_lightning(variant: str, phase: str, spec: dict) -> dict:
    """LDM's Lightning loop with LDM's loss class or vaefast's in its place, all steps before or after disc_start."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from ldm_reference import ReferenceLDMLoss, lightning_step

    from vaefast import LPIPSWithDiscriminator
    from vaefast.models.lpips import LPIPS
    from vaefast.models.patchgan import PatchGAN

    device = torch.device(spec["device"])
    torch.manual_seed(spec["seed"])
    vae = autoencoder(spec).to(device)
    torch.manual_seed(spec["seed"] + 1)
    lpips = LPIPS()  # random trunk, shipped linear layers
    lpips.load_linear()
    options = dict(disc_start=PHASES[phase], kl_weight=1e-6, disc_weight=0.5)
    loss = ReferenceLDMLoss(lpips, PatchGAN(3, layers=3), **options) if variant == "lightning-ldm" else \
        LPIPSWithDiscriminator(lpips, PatchGAN(3, layers=3), **options)
    loss = loss.to(device)
    # LDM's configure_optimizers: the autoencoder's parameters (its logvar is in neither optimizer), then D's
    optimizers = (torch.optim.Adam(vae.parameters(), lr=spec["lr"], betas=(0.5, 0.9)),
                  torch.optim.Adam(loss.discriminator.parameters(), lr=spec["lr"], betas=(0.5, 0.9)))
    autocast = _autocast(spec, device)

    def forward(x):
        with autocast():
            posterior = vae.encode(x).latent_dist
            return vae.decode(posterior.sample()).sample, posterior

    images = photo_crops(TRAIN_PHOTOS, spec["batch_size"] * spec["steps"], spec["size"], seed=spec["seed"])
    before = rss_mb()
    for step in range(spec["steps"]):
        if step == WARMUP:
            _sync(device)
            started = time.perf_counter()
        x = images[step * spec["batch_size"]:(step + 1) * spec["batch_size"]].to(device).float() / 127.5 - 1
        lightning_step(forward, loss, optimizers, x, step, last_layer=vae.decoder.conv_out.weight, noise_seed=step,
                       keep_grads=False)
    _sync(device)
    seconds = time.perf_counter() - started
    peak = peak_memory_mb(device)
    return {"variant": f"{variant}-{phase}", "images_per_s": (spec["steps"] - WARMUP) * spec["batch_size"] / seconds,
            "peak_memory_mb": peak, "training_memory_mb": peak - (0 if device.type == "cuda" else before)}


def run_variant(variant: str, spec: dict) -> dict:
    if variant.startswith("lightning-"):
        return run_lightning(variant.rpartition("-")[0], variant.rpartition("-")[2], spec)
    device = torch.device(spec["device"])
    torch.manual_seed(spec["seed"])
    vae, crit = autoencoder(spec).to(device), _criterion(spec, device)
    if variant == "ldm-decoder":
        for part in (vae.encoder, vae.quant_conv):
            if part is not None:
                part.requires_grad_(False)
    opts = _optimizers(vae, crit, spec["lr"])
    images = photo_crops(TRAIN_PHOTOS, spec["batch_size"] * spec["steps"], spec["size"], seed=spec["seed"])
    autocast = _autocast(spec, device)
    started = None
    trainer = variant.startswith("trainer")
    steps = 0 if trainer else spec["steps"]
    seconds = run_trainer(spec, vae, crit, images, variant.partition("-")[2] or "all") if trainer else None
    for step in range(steps):
        if step == WARMUP:
            _sync(device)
            started = time.perf_counter()
        x = images[step * spec["batch_size"]:(step + 1) * spec["batch_size"]].to(device).float() / 127.5 - 1
        if variant.startswith("ldm"):
            ldm_step(vae, crit, opts, x, autocast)
        elif variant == "diffusers":
            diffusers_step(vae, crit, opts, x, autocast, step)
        else:
            vaefast_step(vae, crit, opts, x, autocast, step)
    _sync(device)
    seconds = seconds if trainer else time.perf_counter() - started
    return {"variant": variant, "images_per_s": (spec["steps"] - WARMUP) * spec["batch_size"] / seconds,
            "peak_memory_mb": peak_memory_mb(device)}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_autoencoder_arguments(p, size=64, batch_size=8, steps=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: one round of 3 steps of 4 images at 32x32 (the PatchGAN's smallest), blocks 8 16 "
                        "(results/quick/)")
    p.add_argument("--train", choices=["all", "decoder"], default="all",
                   help="decoder: decoder-only fine-tuning, vaefast's against full fine-tuning and the LDM flow")
    p.add_argument("--loop", choices=["own", "lightning"], default="own",
                   help="lightning: LDM's two-optimizer loop, its loss class against vaefast's through the same call")
    p.add_argument("--name", default=None)
    p.add_argument("--results", default=None, help="folder for the JSON result (default: benchmarks/results/)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.size, args.batch_size, args.blocks = 1, WARMUP + 1, 32, 4, [8, 16]
    spec = {k: getattr(args, k) for k in ("device", "preset", "blocks", "size", "batch_size", "steps", "lr",
                                          "precision", "seed")}
    if args.worker:
        result = first_step_gradients(spec) if args.worker == "gradients" else run_variant(args.worker, spec)
        print(json.dumps(result))
        return
    argv_base = [a for a in (argv if argv is not None else sys.argv[1:]) if a not in ("--recipe", "ldm")]

    def worker(name, env=None):
        proc = subprocess.run([sys.executable, __file__, *argv_base, "--worker", name], capture_output=True,
                              text=True, check=True, env=env)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    if args.loop == "lightning":
        variants = {f"{v}-{phase}": f"{name}, {phase} disc_start" for phase in PHASES
                    for v, name in LIGHTNING_VARIANTS.items()}
    else:
        variants = DECODER_VARIANTS if args.train == "decoder" else VARIANTS
    gradients = worker("gradients") if args.train == "all" and args.loop == "own" else None
    runs = {v: [] for v in variants}
    for _ in range(args.rounds):
        for variant in variants:
            runs[variant].append(worker(variant))
            print(f"{variant:16s} {runs[variant][-1]['images_per_s']:8.2f} images/s", file=sys.stderr)
    summary = {v: {"images_per_s": statistics.median(r["images_per_s"] for r in rs),
                   "peak_memory_mb": statistics.median(r["peak_memory_mb"] for r in rs)} for v, rs in runs.items()}
    if args.loop == "lightning":
        # Memory in one more process each, glibc's mmap threshold fixed so that RSS follows the live tensors
        # (bench_autoencoder.py); not in the timed rounds, where the fixed threshold's page faults would cost time.
        fixed = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        for variant in variants:
            measured = worker(variant, fixed)
            summary[variant].update(fixed_threshold_peak_mb=measured["peak_memory_mb"],
                                    training_memory_mb=measured["training_memory_mb"])
    suffix = "-decoder" if args.train == "decoder" else "-lightning" if args.loop == "lightning" else ""
    name = args.name or f"bench_ldm_recipe-{args.device}-{args.precision}{suffix}"
    payload = {"machine": machine_info(args.device), "spec": {**spec, "train": args.train}, "rounds": runs,
               "summary": summary, "first_step_gradients": gradients,
               "command": ("python benchmarks/bench_ldm_recipe.py " if args.loop == "lightning" else
                           "python benchmarks/bench_autoencoder.py --recipe ldm ") + " ".join(argv_base)}
    table = table_decoder(summary) if args.train == "decoder" else table_lightning(summary) \
        if args.loop == "lightning" else table_recipe(summary, gradients)
    print("\n".join(table))
    print(f"wrote {write_result(name, payload, quick=args.quick, folder=args.results)}")
    if not args.quick and args.results is None:
        update_readme_section(name, payload, "\n".join(table) + "\n")


def table_recipe(summary: dict, gradients: dict) -> list[str]:
    ldm = summary["ldm"]["images_per_s"]
    table = ["| variant | images/s (median) | x LDM flow | peak memory MB |", "|---|---|---|---|"]
    table += [f"| {VARIANTS[v]} | {s['images_per_s']:.2f} | {s['images_per_s'] / ldm:.2f}x | "
              f"{s['peak_memory_mb']:.0f} |" for v, s in summary.items()]
    return table + ["", f"First step, vaefast vs the LDM flow, relative gradient difference: generator "
                    f"{gradients['generator']:.1e}; discriminator {gradients['discriminator_same_reconstruction']:.1e} "
                    f"at the same reconstruction ({gradients['discriminator_vs_ldm_flow']:.1e} against LDM's pass on "
                    "the reconstruction after the generator's update)."]


def table_lightning(summary: dict) -> list[str]:
    table = ["| steps | LDM's class images/s | vaefast's images/s | x LDM's class | peak RSS MB, LDM's / vaefast's | "
             "training adds MB (fixed mmap threshold), LDM's / vaefast's |", "|---|---|---|---|---|---|"]
    for phase in PHASES:
        ldm, ours = summary[f"lightning-ldm-{phase}"], summary[f"lightning-vaefast-{phase}"]
        table.append(f"| {phase} disc_start | {ldm['images_per_s']:.2f} | {ours['images_per_s']:.2f} | "
                     f"{ours['images_per_s'] / ldm['images_per_s']:.2f}x | {ldm['peak_memory_mb']:.0f} / "
                     f"{ours['peak_memory_mb']:.0f} | {ldm['training_memory_mb']:.0f} / "
                     f"{ours['training_memory_mb']:.0f} |")
    return table


def table_decoder(summary: dict) -> list[str]:
    ldm, full = summary["ldm-decoder"]["images_per_s"], summary["trainer-all"]["images_per_s"]
    table = ["| variant | images/s (median) | x LDM flow, encoder frozen | x full fine-tuning | peak memory MB |",
             "|---|---|---|---|---|"]
    return table + [f"| {DECODER_VARIANTS[v]} | {s['images_per_s']:.2f} | {s['images_per_s'] / ldm:.2f}x | "
                    f"{s['images_per_s'] / full:.2f}x | {s['peak_memory_mb']:.0f} |" for v, s in summary.items()]


if __name__ == "__main__":
    main()
