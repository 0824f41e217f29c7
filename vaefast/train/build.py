"""What a Trainer is built from, and the I/O that building does: the data and its loader, the model, the loss
objective, the run folder, and the checkpoint to resume from. The Trainer itself only wires the parts and steps."""

from __future__ import annotations

import dataclasses
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..checkpoint import Checkpointer, ensure_writable, list_checkpoints, load_checkpoint
from ..config import TrainConfig, save_resolved
from ..data import ImageDataset, load_dataset, make_loader
from ..models import build_model
from ..models.loss_terms import LossTerm
from ..models.objective import NegativeELBO
from .distributed import DistContext
from .monitor import Monitor


def load_data(cfg: TrainConfig, dataset: ImageDataset | None, dist: DistContext, device: torch.device):
    """(dataset, loader, loader kind, why that loader)."""
    data = cfg.data
    if dataset is None:
        dataset = load_dataset(data.source, data.test_fraction, cfg.runtime.seed, image_size=data.image_size,
                               resize=data.resize, skip_bad=data.skip_bad_images, frames=data.frames,
                               frame_stride=data.frame_stride)
    loader, kind, why = make_loader(data.loader, dataset, data.batch_size, device=device, seed=cfg.runtime.seed,
                                    rank=dist.rank, world_size=dist.world_size, skip_bad=data.skip_bad_images,
                                    num_workers=data.num_workers, flip=data.flip, crop=data.crop,
                                    frame_stride=data.frame_stride, image_ratio=data.image_ratio)
    return dataset, loader, kind, why


def make_model(cfg: TrainConfig, image_shape, model: nn.Module | None, device: torch.device) -> nn.Module:
    """The same initial weights whatever the rank and the data source."""
    torch.manual_seed(cfg.runtime.seed)
    one_frame = cfg.data.image_ratio > 0 and len(image_shape) == 4  # the model also sees clips of one frame
    built = build_model(cfg.model, image_shape, model, quiet=not cfg.logging.progress,
                        also_frames=(1,) if one_frame else ()).to(device)
    if cfg.optim.trainable == "decoder":
        built.freeze_encoder()
    if cfg.runtime.activation_checkpointing:
        built.enable_activation_checkpointing(decoder=not cfg.recipe.ldm)  # why: VAE.enable_activation_checkpointing
    if cfg.runtime.channels_last:
        built.use_channels_last()
    return built


def make_objective(cfg: TrainConfig, model: nn.Module, loss_terms: list[LossTerm] | None, dist: DistContext,
                   device: torch.device, recipe=None) -> nn.Module:
    """The loss (the ELBO, or the LDM recipe's autoencoder and logvar), wrapped in DDP in a distributed run."""
    o = cfg.objective
    if recipe is not None:
        if loss_terms:
            raise ValueError("--recipe ldm has its own perceptual and adversarial terms; pass loss_terms with the ELBO")
        objective = recipe.objective(model)
    else:
        objective = NegativeELBO(model, o.free_bits, loss_terms, samples=o.samples, objective=o.objective,
                                 estimator=o.estimator).to(device)
    if dist.enabled:
        objective = DDP(objective, device_ids=[device.index] if device.type == "cuda" else None)
    return objective


@contextmanager
def no_sync(objective: nn.Module, recipe=None):
    """DDP's gradient all-reduce off for a micro-batch that is not the step's last, for every DDP module of the step."""
    with ExitStack() as stack:
        for module in (objective, getattr(recipe, "pair", None)):
            if isinstance(module, DDP):
                stack.enter_context(module.no_sync())
        yield


def open_run_folder(cfg: TrainConfig, dist: DistContext, resumed_step: int | None) -> tuple[Checkpointer, Monitor]:
    """The checkpointer and the monitor of the run folder, which rank 0 checks is writable before any step; on
    resume the logs drop what was logged past the checkpoint (vaefast.train.monitor)."""
    out = Path(cfg.checkpoint.out)
    checkpointer = Checkpointer(out, cfg.checkpoint.keep_checkpoints, enabled=dist.is_main,
                                every=cfg.checkpoint.checkpoint_every)
    if dist.is_main:
        ensure_writable(out)
        save_resolved(cfg, out)
    monitor = Monitor(out, enabled=dist.is_main, progress=cfg.logging.progress, tensorboard=cfg.logging.tensorboard,
                      resumed_step=resumed_step)
    return checkpointer, monitor


def read_resume(cfg: TrainConfig, device: torch.device | str, resumed: dict | None = None) -> dict | None:
    """The checkpoint to resume, read and verified once: ``resumed`` when the caller read it already (the CLI does,
    for its configuration), else ``cfg.checkpoint.resume``'s; with ``auto`` the newest good one in the run folder,
    or None for a new run."""
    c = cfg.checkpoint
    if resumed is not None or c.resume is None:
        return resumed
    if c.resume == "auto":
        return find_resumable(cfg, device)
    return load_checkpoint(c.resume, map_location=device, trust=c.trust_checkpoint, fallback=c.resume_fallback)


def find_resumable(cfg: TrainConfig, device: torch.device | str = "cpu") -> dict | None:
    """``--resume auto``: the newest good checkpoint in ``--out``, or None when it holds none. A run folder of
    another model or data is refused (a ValueError that says which), never silently continued."""
    c = cfg.checkpoint
    out = Path(c.out)
    if not out.is_dir() or not list_checkpoints(out):
        return None
    state = load_checkpoint(out, map_location=device, trust=c.trust_checkpoint, fallback=c.resume_fallback)
    saved = TrainConfig.from_dict(state["config"])
    pairs = [(f"model.{f.name}", getattr(saved.model, f.name), getattr(cfg.model, f.name))
             for f in dataclasses.fields(cfg.model)]
    pairs += [(f"data.{name}", getattr(saved.data, name), getattr(cfg.data, name))
              for name in ("source", "image_size", "resize", "frames")]
    differ = [f"{name} {theirs} there, {ours} here" for name, theirs, ours in pairs if theirs != ours]
    if differ:
        raise ValueError(f"--resume auto: {out} holds a run of another model or data ({'; '.join(differ)}): pass "
                         f"another --out, or --resume {out} to continue that run with its own settings")
    return state


def restore(checkpointer: Checkpointer, cfg: TrainConfig, resumed: dict) -> None:
    """Hand each registered part its state from ``resumed``."""
    try:
        checkpointer.restore(resumed)
    except ValueError as exc:
        raise ValueError(f"cannot resume {cfg.checkpoint.resume}: {exc}; its model config: "
                         f"{resumed['config'].get('model')}") from None


def announce(text: str, dist: DistContext, cfg: TrainConfig) -> None:
    if dist.is_main and cfg.logging.progress:
        print(f"vaefast: {text}", file=sys.stderr)
