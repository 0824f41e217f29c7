"""The ``vaefast`` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from .config.flags import add_config_arguments, options_given

# Only the standard library and vaefast.config (no torch) are imported before a command runs, so that --help
# answers at once; each command imports what it needs.


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The training flags, generated from the config's sections; each defaults to 'not given', so that the config
    file and the checkpoint show through."""
    p.add_argument("--config", help="TOML config file (flat or sectioned, see docs/options.md); flags override it")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")
    add_config_arguments(p)


def resolve_train_config(args: argparse.Namespace, auto_choice: tuple[str | None] | None = None):
    """(config, the checkpoint to resume or None): checkpoint config (on --resume) < TOML file < flags. The
    checkpoint is read and verified once, here, and handed to the Trainer. ``--resume auto`` resumes the newest good
    checkpoint in --out when there is one (and refuses one of another model or data), else starts a new run;
    ``auto_choice`` = (path or None,) imposes another rank's choice."""
    from .checkpoint import load_checkpoint
    from .config import CheckpointConfig, load_toml, merge, resolve
    from .config.train_config import sectioned
    from .train.build import find_resumable

    flags = options_given(args)
    layers = [load_toml(args.config)] if args.config else []
    # The checkpoint options alone first: the other options may only be complete with the checkpoint's own.
    merged: dict = {}
    for layer in [*layers, flags]:
        merged = merge(merged, sectioned(layer))
    ckpt = CheckpointConfig(**merged.get("checkpoint", {}))
    if ckpt.resume is None:
        return resolve(*layers, flags), None
    if ckpt.resume != "auto":
        resumed = load_checkpoint(ckpt.resume, trust=ckpt.trust_checkpoint, fallback=ckpt.resume_fallback)
        return resolve(resumed["config"], *layers, flags), resumed
    requested = resolve(*layers, flags)  # auto: the same command as the run's first start, complete by itself
    if auto_choice is None:
        resumed = find_resumable(requested)
    else:
        resumed = None if auto_choice[0] is None else load_checkpoint(auto_choice[0], trust=ckpt.trust_checkpoint)
    if os.environ.get("RANK", "0") == "0" and auto_choice is None:  # said once under torchrun
        said = f"resuming {ckpt.out} at step {resumed['step']}" if resumed else f"no checkpoint in {ckpt.out}"
        print(f"vaefast: --resume auto: {said}{'' if resumed else ': a new run'}", file=sys.stderr)
    return (resolve(resumed["config"], *layers, flags) if resumed else requested), resumed


def cmd_train(args) -> int:
    cfg, resumed = resolve_train_config(args)
    from .train import Trainer
    from .train.distributed import DistContext
    from .train.preemption import PREEMPTED_EXIT_CODE

    dist = DistContext.from_env(cfg.runtime.device, cfg.runtime.dist_backend, cfg.runtime.dist_timeout)
    try:
        if dist.enabled and cfg.checkpoint.resume == "auto":
            cfg, resumed = _agree_on_checkpoint(args, dist, cfg, resumed)
        trainer = Trainer(cfg, dist=dist, resumed=resumed)
        summary = trainer.fit()
        trainer.close()
    finally:
        dist.shutdown()
    if summary.preempted:
        if dist.is_main:
            print(f"vaefast train: stopped by a signal at step {summary.steps}; checkpoint {summary.checkpoint}; "
                  f"continue with --resume {cfg.checkpoint.out}", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    if not dist.is_main:
        return 0
    if resumed is not None and summary.steps == resumed["step"]:
        print(f"vaefast train: nothing left to train: {cfg.checkpoint.out} is at step {summary.steps}, epoch "
              f"{summary.epochs} of {cfg.optim.epochs}; raise --epochs or --max-steps to go on", file=sys.stderr)
    else:
        print(summary.describe(), file=sys.stderr)
    if args.json:
        print(json.dumps(summary.to_json()))
    return 0


def _agree_on_checkpoint(args, dist, cfg, resumed):
    """Under torchrun (an elastic restart, say) rank 0's choice of checkpoint is every rank's: a rank that found
    another file (a folder still settling on a shared filesystem) loads rank 0's."""
    import torch.distributed

    from .checkpoint import checkpoint_path

    mine = resumed["step"] if resumed else None
    choice = [mine]
    torch.distributed.broadcast_object_list(choice, src=0)
    if choice[0] == mine:
        return cfg, resumed
    path = None if choice[0] is None else str(checkpoint_path(cfg.checkpoint.out, choice[0]))
    return resolve_train_config(args, auto_choice=(path,))


def cmd_eval(args) -> int:
    from .eval.report import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, data=args.data, iw_samples=args.iw_samples,
                                 batch_size=args.batch_size, device=args.device, seed=args.seed, limit=args.limit,
                                 use_ema=args.ema, trust=args.trust_checkpoint, lpips_weights=args.lpips_weights,
                                 fid_weights=args.fid_weights, tile_size=args.tile_size,
                                 tile_frames=args.tile_frames)
    print(result.describe(), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(result.to_json()))
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
    from .eval.report import export_checkpoint

    path, note = export_checkpoint(args.checkpoint, args.out, fmt=args.format, stats_images=args.stats_images,
                                   use_ema=args.ema, trust=args.trust_checkpoint)
    print(f"wrote {path} ({args.format}); {note}")
    return 0


def cmd_profile(args) -> int:
    from .perf.profile import format_report, profile_training

    cfg, _ = resolve_train_config(args)
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
    ev.add_argument("--lpips-weights", help="VGG16 ImageNet weights in torchvision's format, for LPIPS on RGB data "
                    "(default: torch's hub cache, checkpoints/vgg16-397923af.pth, when present)")
    ev.add_argument("--fid-weights", help="the FID Inception weights pytorch-fid and torch-fidelity use "
                    "(pt_inception-2015-12-05-*.pth), for rFID between the test images and their reconstructions "
                    "(default: torch's hub cache, checkpoints/, when present)")
    ev.add_argument("--tile-size", type=int, help="diffusers autoencoders: encode and decode in diffusers' overlapping "
                    "tiles of this many pixels (large images; the class's own blending)")
    ev.add_argument("--tile-frames", type=int, help="video autoencoders that tile time (LTX-Video, HunyuanVideo): "
                    "encode and decode long clips in overlapping windows of this many frames")
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
    export = sub.add_parser("export", help="write a checkpoint of a diffusers model as a diffusers folder or an "
                            "original-layout single file, with its latents' scaling and shift factors")
    export.add_argument("--checkpoint", required=True)
    export.add_argument("--out", required=True, help="folder for save_pretrained (config.json + weights), or the "
                        ".safetensors file with --format single-file")
    export.add_argument("--format", choices=["diffusers", "single-file"], default="diffusers",
                        help="diffusers: a folder its class's from_pretrained loads; single-file: the original "
                        "layout (AutoencoderKL), which from_single_file reads")
    export.add_argument("--stats-images", type=int, default=1000,
                        help="training images over which a run that trained the encoder has its latents' "
                        "scaling_factor (1/std) and shift_factor (mean, where the layout has one) measured")
    export.set_defaults(func=cmd_export)
    for checkpoint_reader in (ev, sample, insp, export):
        checkpoint_reader.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True,
                            help="use the run's EMA weights when it kept them (--no-ema: the trained weights)")
        checkpoint_reader.add_argument("--trust-checkpoint", action="store_true",
                                       help="also load format-1 checkpoints (older vaefast) by unpickling them, "
                                            "which runs code from the file: only for files you wrote")
    insp.set_defaults(func=cmd_inspect)
    return parser


def _plain_warnings() -> None:
    """Warnings as one line each ("vaefast: warning: ..."), without the source line that raised them; other
    libraries' notices that a user of this command cannot act on are dropped."""
    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message).removeprefix("vaefast: ")
        print(f"vaefast: warning: {text}", file=file or sys.stderr)

    warnings.showwarning = show
    for module in ("diffusers", "accelerate", "huggingface_hub", "torch.utils.tensorboard", "tensorboard"):
        warnings.filterwarnings("ignore", module=module)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")  # read by diffusers when it is imported


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _plain_warnings()
    try:
        return args.func(args)
    except Exception as exc:
        message, code = _user_error(exc, args)
        if message is None:
            raise
        print(f"vaefast {args.command}: error: {message}", file=sys.stderr)
        return code


def _user_error(exc: Exception, args) -> tuple[str | None, int]:
    """The one line a user reads for an error they can act on (and the exit code), or None for a bug."""
    from .checkpoint import CheckpointError, disk_error
    from .data import DataError
    from .train.guard import NonFiniteTraining

    if isinstance(exc, NonFiniteTraining):
        return str(exc), 3
    if isinstance(exc, (DataError, CheckpointError, FileNotFoundError, ValueError)):
        return str(exc), 2
    reason = disk_error(exc) if isinstance(exc, OSError) else None
    if reason is None:  # not a disk that filled up or turned read-only mid-run
        return None, 1
    where = exc.filename or getattr(args, "out", None) or "an output file"
    return f"cannot write in {where}: {reason}", 2
