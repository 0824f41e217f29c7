"""The ``vaefast`` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import json
import sys

from .data import DataError
from .checkpoint import CheckpointError, disk_error, load_checkpoint
from .config import COMPILE_MODES, TrainConfig, load_toml, merge
from .integrations.diffusers import DIFFUSERS_CLAMP  # diffusers itself is imported only when used
from .models.likelihoods import LIKELIHOODS
from .train.guard import NonFiniteTraining

# flag -> (section, config key); section None is the top-level TrainConfig
TRAIN_FLAGS = {
    "data": (None, "data"), "test_fraction": (None, "test_fraction"), "loader": (None, "loader"),
    "image_size": (None, "image_size"), "skip_bad_images": (None, "skip_bad_images"),
    "num_workers": (None, "num_workers"), "flip": (None, "flip"), "epochs": (None, "epochs"),
    "batch_size": (None, "batch_size"), "lr": (None, "lr"), "optimizer": (None, "optimizer"),
    "weight_decay": (None, "weight_decay"), "grad_accum": (None, "grad_accum"),
    "dist_backend": (None, "dist_backend"), "dist_timeout": (None, "dist_timeout"), "lr_schedule": (None, "lr_schedule"), "clip_grad": (None, "clip_grad"),
    "beta": (None, "beta"), "kl_warmup_steps": (None, "kl_warmup_steps"), "kl_cycles": (None, "kl_cycles"),
    "free_bits": (None, "free_bits"), "noise": (None, "noise"), "ema": (None, "ema"),
    "samples": (None, "samples"), "objective": (None, "objective"), "estimator": (None, "estimator"),
    "activation_checkpointing": (None, "activation_checkpointing"), "channels_last": (None, "channels_last"),
    "precision": (None, "precision"),
    "compile": (None, "compile"),
    "compile_mode": (None, "compile_mode"), "master_weights": (None, "master_weights"),
    "device": (None, "device"), "seed": (None, "seed"), "out": (None, "out"), "resume": (None, "resume"),
    "resume_fallback": (None, "resume_fallback"), "trust_checkpoint": (None, "trust_checkpoint"),
    "keep_checkpoints": (None, "keep_checkpoints"), "checkpoint_every": (None, "checkpoint_every"),
    "max_steps": (None, "max_steps"), "max_bad_steps": (None, "max_bad_steps"),
    "log_every": (None, "log_every"), "progress": (None, "progress"), "tensorboard": (None, "tensorboard"),
    "model": ("model", "kind"), "latent_dim": ("model", "latent_dim"), "hidden": ("model", "hidden"),
    "conv_channels": ("model", "channels"), "latent_channels": ("model", "latent_channels"),
    "activation": ("model", "activation"), "likelihood": ("model", "likelihood"),
    "gaussian_sigma": ("model", "gaussian_sigma"), "learn_sigma": ("model", "learn_sigma"),
    "clamp": ("model", "clamp"), "backend": ("model", "backend"),
}


def _model_kind(text: str) -> str:
    if text in ("mlp", "conv") or (text.startswith("diffusers:") and len(text) > len("diffusers:")):
        return text
    raise argparse.ArgumentTypeError(f"expected mlp, conv or diffusers:SPEC, got {text!r}")


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _clamp(text: str):
    if text.lower() == "none":
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI or 'none', got {text!r}") from None
    return (lo, hi)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The training flags; every one defaults to 'not given', so that the config file and checkpoint show through."""
    S = argparse.SUPPRESS
    p.add_argument("--config", help="TOML config file; flags override it")
    p.add_argument("--data", default=S, help="IDX directory/file, .npy/.npz array or image folder "
                   "(default: the embedded Fashion-MNIST split)")
    p.add_argument("--test-fraction", type=float, default=S, help="held-out share when the data has no test split")
    p.add_argument("--loader", choices=["auto", "memory", "dali", "torch"], default=S,
                   help="auto: in memory when the decoded data fits, else DALI, else a torch DataLoader")
    p.add_argument("--image-size", type=int, default=S, help="image folders: resize + center-crop to this size")
    p.add_argument("--skip-bad-images", action=argparse.BooleanOptionalAction, default=S,
                   help="image folders: skip undecodable files (counted in the log) instead of failing")
    p.add_argument("--num-workers", type=int, default=S, help="decoding workers for the dali/torch loaders")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=S,
                   help="random horizontal flips of the training images")
    p.add_argument("--epochs", type=int, default=S)
    p.add_argument("--batch-size", type=int, default=S)
    p.add_argument("--lr", type=float, default=S)
    p.add_argument("--optimizer", choices=["adam", "adamw"], default=S)
    p.add_argument("--weight-decay", type=float, default=S)
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default=S)
    p.add_argument("--clip-grad", type=float, default=S, help="max global gradient norm")
    p.add_argument("--grad-accum", type=int, default=S, help="micro-batches per optimizer step")
    p.add_argument("--dist-backend", choices=["nccl", "gloo"], default=S,
                   help="torchrun process-group backend (default: nccl on CUDA, gloo on CPU)")
    p.add_argument("--dist-timeout", type=float, default=S,
                   help="seconds a collective waits for a dead or stuck peer before the job fails (default 300)")
    p.add_argument("--beta", type=float, default=S, help="weight of the KL term")
    p.add_argument("--kl-warmup-steps", type=int, default=S, help="linear KL warm-up from 0 to beta")
    p.add_argument("--kl-cycles", type=int, default=S, help="cyclical KL annealing with this many cycles")
    p.add_argument("--free-bits", type=float, default=S, help="per-dimension KL floor in nats")
    p.add_argument("--samples", type=int, default=S,
                   help="posterior samples per image, drawn in one fused pass (default 1)")
    p.add_argument("--objective", choices=["elbo", "iwae"], default=S,
                   help="elbo (default; the K-sample average with --samples) or iwae: the importance-weighted bound")
    p.add_argument("--estimator", choices=["standard", "dreg"], default=S,
                   help="IWAE encoder gradient: standard, or dreg (doubly reparameterized, lower variance)")
    p.add_argument("--noise", choices=["seeded", "randn"], default=S,
                   help="seeded (default): the fused op draws eps in the kernel from a device key (Philox) and "
                        "regenerates it in backward; randn: eps from torch.randn_like, saved for backward")
    p.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=S,
                   help="recompute encoder and decoder activations in backward (less memory, one more forward)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=S,
                   help="conv models: NHWC (channels_last) weights and batches; faster on some GPUs, measure first")
    p.add_argument("--ema", type=float, default=S, metavar="DECAY",
                   help="keep an exponential moving average of the weights (e.g. 0.999); eval uses it")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=S,
                   help="auto: bf16 where the hardware computes it natively (CUDA, AMX/AVX512-BF16 CPUs), else fp32")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=S,
                   help="torch.compile the forward and loss (default: when the run is long enough to repay it)")
    p.add_argument("--compile-mode", choices=list(COMPILE_MODES), default=S,
                   help="torch.compile mode; reduce-overhead replays the step's forward and backward as CUDA graphs; "
                        "whole-step compiles forward, backward and optimizer as one function and on CUDA captures it "
                        "as one CUDA graph (one process, torch's fused Adam; see vaefast/train/capture.py)")
    p.add_argument("--master-weights", action=argparse.BooleanOptionalAction, default=S,
                   help="bf16: keep the model in bf16 and float32 master weights in the optimizer instead of casting "
                        "the weights every step (default: on for bf16 on CPU in one process)")
    p.add_argument("--device", default=S, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--seed", type=int, default=S)
    p.add_argument("--out", default=S, help="run folder for checkpoints, metrics and TensorBoard logs")
    p.add_argument("--resume", default=S, help="checkpoint file or run folder to continue from")
    p.add_argument("--resume-fallback", action=argparse.BooleanOptionalAction, default=S,
                   help="when the newest checkpoint of the --resume folder is corrupt, resume from the newest good "
                        "one with a warning (default); --no-resume-fallback refuses instead")
    p.add_argument("--trust-checkpoint", action=argparse.BooleanOptionalAction, default=S,
                   help="also load format-1 checkpoints (older vaefast), which must be unpickled: this runs code "
                        "from the file, so only for files you wrote")
    p.add_argument("--keep-checkpoints", type=int, default=S)
    p.add_argument("--max-steps", type=int, default=S, help="stop with a checkpoint after this many steps")
    p.add_argument("--checkpoint-every", type=int, default=S, help="steps between mid-epoch checkpoints")
    p.add_argument("--max-bad-steps", type=int, default=S, help="consecutive non-finite steps before stopping")
    p.add_argument("--log-every", type=int, default=S)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=S)
    p.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=S)
    p.add_argument("--model", type=_model_kind, default=S, metavar="{mlp,conv,diffusers:SPEC}",
                   help="diffusers:SPEC is an AutoencoderKL from a preset (sd-kl-f8, kl-f8-16ch), a config.json "
                        "(both random init) or a local model folder (fine-tuning); its logvar clamp defaults to "
                        "diffusers' -30,20")
    p.add_argument("--latent-dim", type=int, default=S)
    p.add_argument("--hidden", type=_int_list, default=S, help="MLP widths, e.g. 400 or 512,256")
    p.add_argument("--conv-channels", type=_int_list, default=S, help="conv widths per stride-2 stage, e.g. 32,64")
    p.add_argument("--latent-channels", type=int, default=S, help="conv: > 0 gives a spatial latent")
    p.add_argument("--activation", choices=["relu", "silu", "gelu", "leaky_relu"], default=S)
    p.add_argument("--likelihood", choices=LIKELIHOODS, default=S)
    p.add_argument("--gaussian-sigma", type=float, default=S,
                   help="scale of the gaussian (sigma) and laplace (b) likelihoods, default 0.1")
    p.add_argument("--learn-sigma", action=argparse.BooleanOptionalAction, default=S,
                   help="learn that scale")
    p.add_argument("--clamp", type=_clamp, default=S, help="logvar clamp LO,HI or 'none' (default -10,10)")
    p.add_argument("--backend", choices=["auto", "torch", "triton", "native"], default=S, help="fused-op backend")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")


def resolve_train_config(args: argparse.Namespace) -> TrainConfig:
    """Checkpoint config (on --resume) < TOML file < flags."""
    flags: dict = {}
    for name, (section, key) in TRAIN_FLAGS.items():
        if name in vars(args):
            target = flags.setdefault(section, {}) if section else flags
            target[key] = getattr(args, name)
    kind = flags.get("model", {}).get("kind", "")
    if kind.startswith("diffusers:"):
        flags["model"].update(kind="diffusers", diffusers=kind.split(":", 1)[1])
        flags["model"].setdefault("clamp", DIFFUSERS_CLAMP)  # as DiagonalGaussianDistribution clamps
    base: dict = {}
    if "resume" in vars(args):
        base = load_checkpoint(args.resume, trust=getattr(args, "trust_checkpoint", None) is True,
                               fallback=getattr(args, "resume_fallback", None) is not False)["config"]
    if args.config:
        base = merge(base, load_toml(args.config))
    return TrainConfig.from_dict(merge(base, flags))


def cmd_train(args) -> int:
    from .train import Trainer
    from .train.distributed import DistContext
    from .train.preemption import PREEMPTED_EXIT_CODE

    cfg = resolve_train_config(args)
    dist = DistContext.from_env(cfg.device, cfg.dist_backend, cfg.dist_timeout)
    try:
        trainer = Trainer(cfg, dist=dist)
        summary = trainer.fit()
        trainer.close()
    finally:
        dist.shutdown()
    if summary["preempted"]:
        if dist.is_main:
            print(f"vaefast train: stopped by a signal at step {summary['steps']}; checkpoint {summary['checkpoint']}"
                  f"; continue with --resume {cfg.out}", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    if not dist.is_main:
        return 0
    print(f"trained {summary['epochs']} epochs at {summary['images_per_s']:,.0f} images/s; test -ELBO "
          f"{summary['test_neg_elbo_nats']:.2f} nats/image ({summary['test_bpd']:.4f} bits/dim); "
          f"checkpoint {summary['checkpoint']}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary))
    return 0


def cmd_eval(args) -> int:
    from .eval.report import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, data=args.data, iw_samples=args.iw_samples,
                                 batch_size=args.batch_size, device=args.device, seed=args.seed, limit=args.limit,
                                 use_ema=args.ema, trust=args.trust_checkpoint)
    hist = result["kl_per_dim_histogram"]
    lines = [
        f"test images:          {result['test_images']}",
        f"negative ELBO:        {result['test_neg_elbo_nats']:.3f} nats/image "
        f"(reconstruction {result['test_recon_nats']:.3f} + KL {result['test_kl_nats']:.3f})",
        f"bits per dimension:   {result['test_bpd']:.5f}",
        (f"reconstruction:       PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.4f} (posterior mean)"
         if result["psnr"] is not None else f"reconstruction:       {result['quality_note']}"),
    ]
    if args.iw_samples:
        lines.append(f"IWAE NLL (K={args.iw_samples}):  {result['iwae_nll_nats']:.3f} nats/image "
                     f"({result['iwae_bpd']:.5f} bpd)")
    lines += [
        f"active units:         {result['active_units']} of {result['latent_dim']} (KL > 0.1 nats); "
        f"{result['active_units_cov']} by Cov_x(E_q[z]) > 0.01",
        f"mean latent distance: {result['mean_latent_distance']:.3f} between different test images",
        "KL per dim histogram: " + ", ".join(f"[{a:.3g}, {b:.3g}): {c}" for a, b, c in
                                            zip(hist["edges"], hist["edges"][1:], hist["counts"])),
        f"verdict:              {result['verdict']}",
    ]
    print("\n".join(lines), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(result))
    return 0


def cmd_sample(args) -> int:
    from .eval.inspect import sample_images

    path = sample_images(args.checkpoint, args.out, n=args.n, temperature=args.temperature, seed=args.seed,
                         binarize=args.binarize, device=args.device or "cpu", use_ema=args.ema,
                         trust=args.trust_checkpoint)
    print(f"wrote {path}")
    return 0


def cmd_inspect(args) -> int:
    from .eval.inspect import inspect_model

    paths = inspect_model(args.checkpoint, args.out, data=args.data, seed=args.seed, device=args.device or "cpu",
                          use_ema=args.ema, trust=args.trust_checkpoint)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def cmd_export(args) -> int:
    from .eval.report import load_model
    from .integrations.diffusers import export_pretrained

    model, _ = load_model(args.checkpoint, "cpu", use_ema=args.ema, trust=args.trust_checkpoint)
    print(f"wrote {export_pretrained(model, args.out)} (diffusers AutoencoderKL folder)")
    return 0


def cmd_profile(args) -> int:
    from .perf.profile import format_report, profile_training

    cfg = resolve_train_config(args)
    report = profile_training(cfg, steps=args.steps, out=args.out, wait=args.wait, warmup=args.warmup,
                              record_shapes=args.record_shapes, profile_memory=args.profile_memory,
                              with_stack=args.with_stack)
    print(format_report(report), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(report))
    return 0


def cmd_bench(args) -> int:
    from .perf.bench import format_bench, run_bench, write

    result = run_bench(quick=args.quick, device=args.device)
    print(format_bench(result))
    print(f"wrote {write(result, args.out)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vaefast", description="Performance-first VAE training.")
    sub = parser.add_subparsers(dest="command")
    train = sub.add_parser("train", help="train a VAE (no arguments: the embedded Fashion-MNIST split)")
    add_train_arguments(train)
    train.set_defaults(func=cmd_train)

    prof = sub.add_parser("profile", help="profile N training steps (TensorBoard and Perfetto traces)")
    add_train_arguments(prof)
    prof.add_argument("--steps", type=int, default=10, help="profiled (active) steps")
    prof.add_argument("--wait", type=int, default=1, help="steps skipped before the warm-up")
    prof.add_argument("--warmup", type=int, default=2, help="steps traced but discarded")
    prof.add_argument("--record-shapes", action=argparse.BooleanOptionalAction, default=True)
    prof.add_argument("--profile-memory", action=argparse.BooleanOptionalAction, default=False)
    prof.add_argument("--with-stack", action=argparse.BooleanOptionalAction, default=False)
    prof.set_defaults(func=cmd_profile, out="profile")

    bench = sub.add_parser("bench", help="fused-loss and training-throughput benchmarks with the machine's roofline")
    bench.add_argument("--quick", action="store_true", help="one small case and few repeats (under a minute on CPU)")
    bench.add_argument("--device")
    bench.add_argument("--out", default="vaefast-bench.json", help="JSON result file")
    bench.set_defaults(func=cmd_bench)

    ev = sub.add_parser("eval", help="test negative ELBO, bits/dim, IWAE NLL and active units of a checkpoint")
    ev.add_argument("--checkpoint", required=True, help="checkpoint file or run folder")
    ev.add_argument("--data", help="data source (default: the one the checkpoint was trained on)")
    ev.add_argument("--iw-samples", type=int, default=0, help="importance samples K for the IWAE bound (0: off)")
    ev.add_argument("--batch-size", type=int, default=500)
    ev.add_argument("--limit", type=int, help="evaluate only the first N test images")
    ev.add_argument("--device")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ev.set_defaults(func=cmd_eval)

    sample = sub.add_parser("sample", help="decode z ~ N(0, T^2 I) into an image grid")
    sample.add_argument("--checkpoint", required=True)
    sample.add_argument("--n", type=int, default=64)
    sample.add_argument("--temperature", type=float, default=1.0)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--binarize", action="store_true", help="Bernoulli draws instead of the mean")
    sample.add_argument("--device")
    sample.add_argument("--out", required=True, help="PNG file")
    sample.set_defaults(func=cmd_sample)

    insp = sub.add_parser("inspect", help="reconstructions, traversals, interpolations and a latent scatter")
    insp.add_argument("--checkpoint", required=True)
    insp.add_argument("--data")
    insp.add_argument("--seed", type=int, default=0)
    insp.add_argument("--device")
    insp.add_argument("--out", required=True, help="folder for the PNG files")
    export = sub.add_parser("export", help="write a checkpoint of a diffusers model as a diffusers folder")
    export.add_argument("--checkpoint", required=True)
    export.add_argument("--out", required=True, help="folder for save_pretrained (config.json + weights)")
    export.set_defaults(func=cmd_export)
    for checkpoint_reader in (ev, sample, insp, export):
        checkpoint_reader.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True,
                            help="use the run's EMA weights when it kept them (--no-ema: the trained weights)")
        checkpoint_reader.add_argument("--trust-checkpoint", action="store_true",
                                       help="also load format-1 checkpoints (older vaefast) by unpickling them, "
                                            "which runs code from the file: only for files you wrote")
    insp.set_defaults(func=cmd_inspect)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (DataError, CheckpointError, FileNotFoundError, ValueError, NonFiniteTraining) as exc:
        print(f"vaefast {args.command}: error: {exc}", file=sys.stderr)
        return 2 if not isinstance(exc, NonFiniteTraining) else 3
    except OSError as exc:  # a log or output file on a disk that filled up or turned read-only mid-run
        reason = disk_error(exc)
        if reason is None:
            raise
        where = exc.filename or getattr(args, "out", None) or "an output file"
        print(f"vaefast {args.command}: error: cannot write in {where}: {reason}", file=sys.stderr)
        return 2
