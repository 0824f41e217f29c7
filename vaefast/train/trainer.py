"""The training loop: small enough to read in one sitting.

``Trainer(cfg).fit()`` builds the data, model, optimizer and the self-gating side components (checkpointer,
monitor), then runs ``train_step`` over the epochs. The only per-step host sync is the NaN guard's decision;
metrics stay on the device and are read on log steps.
"""

from __future__ import annotations

import gc
import math
import random
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..data import ImageDataset, load_dataset, make_loader
from ..eval import evaluate_elbo
from ..models import build_model
from ..profiling import stage
from .checkpoint import Checkpointer, load_checkpoint
from .config import TrainConfig, save_resolved
from .distributed import DistContext
from .guard import NaNGuard, non_finite_report
from .monitor import Monitor
from .optim import make_optimizer, native_master_step_available
from .schedules import kl_objective, kl_weight

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Steps excluded from the throughput figure: compilation and first-touch allocation happen there.
WARMUP_STEPS = 3


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run natively here, so that bf16 autocast is a speed-up rather than an emulation."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        return bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)()
                    or getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


class NegativeELBO(nn.Module):
    """The model and its loss as one module, so that DDP wraps (and synchronizes) every parameter the loss uses,
    the likelihood's learned scale included."""

    def __init__(self, model: nn.Module, free_bits: float):
        super().__init__()
        self.model, self.free_bits = model, free_bits

    def forward(self, x: torch.Tensor, kl_w: torch.Tensor, scale: torch.Tensor):
        """``scale`` turns the local sums into this rank's share of the global mean (world_size / global count)."""
        out = self.model(x)
        with stage("recon loss"):
            nll = self.model.nll(out.decoded, x)
        nll_sum = nll.sum()
        loss = (nll_sum + kl_w * kl_objective(out.kl, out.kl_per_dim, x.shape[0], self.free_bits)) * scale
        return loss, nll_sum.detach(), out.kl.sum().detach(), out.kl_per_dim.detach()


class Trainer:
    def __init__(self, cfg: TrainConfig, dataset: ImageDataset | None = None, *, dist: DistContext | None = None):
        cfg.validate()
        self.cfg = cfg
        self.dist = dist or DistContext()
        rank, world_size = self.dist.rank, self.dist.world_size
        self.device = self.dist.device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        seed_everything(cfg.seed + rank)  # distinct noise per rank; DDP broadcasts rank 0's initial weights
        self.data = dataset if dataset is not None else load_dataset(
            cfg.data, cfg.test_fraction, cfg.seed, image_size=cfg.image_size, skip_bad=cfg.skip_bad_images)
        self.loader, self.loader_kind, why = make_loader(
            cfg.loader, self.data, cfg.batch_size, device=self.device, seed=cfg.seed, rank=rank,
            world_size=world_size, skip_bad=cfg.skip_bad_images, num_workers=cfg.num_workers, flip=cfg.flip)
        if rank == 0 and cfg.progress:
            print(f"vaefast: {self.data.describe()}; loader {self.loader_kind} ({why}); "
                  f"{world_size} process{'es' if world_size > 1 else ''}", file=sys.stderr)
        torch.manual_seed(cfg.seed)  # the same initial weights whatever the rank and the data source
        self.model = build_model(cfg.model, self.data.image_shape).to(self.device)
        self.master_weights = self.use_master_weights()
        # Built before the DDP wrap: with master weights it takes the float32 weights and converts the model to bf16.
        self.optimizer = make_optimizer(cfg.optimizer, self.model, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                        device=self.device, master_weights=self.master_weights)
        torch.manual_seed(cfg.seed + rank)
        self.objective = NegativeELBO(self.model, cfg.free_bits)
        if self.dist.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.objective = DDP(self.objective, device_ids=device_ids)
        self.steps_per_epoch = math.ceil(len(self.loader) / cfg.grad_accum)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.lr_schedule == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=self.total_steps)
        else:
            self.scheduler = torch.optim.lr_scheduler.ConstantLR(self.optimizer, factor=1.0, total_iters=0)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.out = Path(cfg.out)
        self.checkpointer = Checkpointer(self.out, cfg.keep_checkpoints, enabled=self.dist.is_main)
        self.monitor = Monitor(self.out, enabled=self.dist.is_main, progress=cfg.progress,
                               tensorboard=cfg.tensorboard)
        self.guard = NaNGuard(cfg.max_bad_steps)
        self.step = self.epoch = self.batch_in_epoch = 0
        self._kl_w_value, self._kl_w = None, None
        self._scale_count, self._scale = None, None
        self.compiled = self.should_compile()
        # Compile after the DDP wrap, as PyTorch recommends: DDP's graph-break points then match its buckets.
        mode = self.resolved_compile_mode()
        self.loss_fn = torch.compile(self.objective, mode=mode) if self.compiled else self.objective
        # CUDA-graph replays reuse their output buffers: what a step keeps past the next one must be copied out.
        self.cuda_graphs = self.compiled and self.device.type == "cuda" and mode in ("reduce-overhead", "max-autotune")
        if cfg.resume:
            self.load(cfg.resume)
        if self.dist.is_main:
            save_resolved(cfg, self.out)

    def should_compile(self) -> bool:
        """An explicit --compile/--no-compile wins. Otherwise: never on CPU, where compiling the forward and loss
        (or the whole step) cost 4-20 s and measured no faster per step; on CUDA for runs of 2,000+ steps, in
        reduce-overhead mode (CUDA graphs): on an H100 the small MLP and conv VAEs are bound by the host's kernel
        launches, and it measured 2.1-3.3x for the MLP and 1.7x for the fp32 conv VAE, while default-mode compile
        measured 0.7-1.5x (benchmarks/README.md)."""
        if self.cfg.compile is not None:
            return self.cfg.compile
        return self.device.type == "cuda" and self.total_steps >= 2_000

    def resolved_compile_mode(self) -> str:
        """An explicit mode wins. Otherwise reduce-overhead on one CUDA device (measured there), and default under
        DDP, whose gradient collectives inside CUDA graphs were not run here (one GPU)."""
        if self.cfg.compile_mode is not None:
            return self.cfg.compile_mode
        return "reduce-overhead" if self.device.type == "cuda" and not self.dist.enabled else "default"

    def use_master_weights(self) -> bool:
        """An explicit setting wins (bf16 only). Otherwise on for bf16 on CPU in one process with the native
        kernel: there the weight casts it removes were ~12% of a step (benchmarks/README.md). Under DDP the bf16
        model would all-reduce bf16 gradients, so it stays opt-in there."""
        if self.cfg.master_weights is not None:
            if self.cfg.master_weights and self.precision != "bf16":
                raise ValueError(f"master weights are for bf16 training, but precision resolved to {self.precision}")
            return self.cfg.master_weights
        return (self.precision == "bf16" and self.device.type == "cpu" and not self.dist.enabled
                and native_master_step_available())

    def autocast(self):
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=AMP_DTYPES[self.precision])

    def train_step(self, micro_batches: list[torch.Tensor] | torch.Tensor):
        """One optimizer step over ``micro_batches`` (gradient accumulation), exact under DDP.

        The loss is the sum over the global batch divided by its all-reduced size, so ranks with short or empty
        last batches, and accumulation, give the single-process gradient. Returns this rank's (nll, kl, per-dim
        KL) sums, or Nones for a skipped step.
        """
        if isinstance(micro_batches, torch.Tensor):
            micro_batches = [micro_batches]
        w = kl_weight(self.step, self.total_steps, self.cfg.beta, self.cfg.kl_warmup_steps, self.cfg.kl_cycles)
        if w != self._kl_w_value:
            # A tensor, not a float: torch.compile would specialize on (and recompile for) each new Python float.
            self._kl_w_value, self._kl_w = w, torch.tensor(w, device=self.device)
        scale = self._loss_scale(sum(len(x) for x in micro_batches))
        self.optimizer.zero_grad(set_to_none=True)
        finite = sums = None
        for i, x in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            # DDP all-reduces gradients only on the last micro-batch of the step.
            sync = nullcontext() if last or not self.dist.enabled else self.objective.no_sync()
            with sync:
                if self.cuda_graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                with self.autocast():
                    loss, nll_sum, kl_sum, kl_per_dim = self.loss_fn(x, self._kl_w, scale)
                with stage("backward"):
                    self.scaler.scale(loss).backward()
            finite = torch.isfinite(loss) if finite is None else finite & torch.isfinite(loss)
            part = (nll_sum, kl_sum, kl_per_dim)
            if self.cuda_graphs:
                part = tuple(t.clone() for t in part)
            sums = part if sums is None else tuple(a + b for a, b in zip(sums, part))
        self.scaler.unscale_(self.optimizer)
        if self.cfg.clip_grad is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad, foreach=True)
            grads_finite = torch.isfinite(grad_norm)
        else:
            grads_finite = self._grads_finite()
        if not self.scaler.is_enabled():  # with fp16 the scaler itself skips steps whose gradients overflowed
            if isinstance(grads_finite, bool):  # the native check answered on the host: no tensor op needed
                finite = finite if grads_finite else torch.zeros_like(finite)
            else:
                finite = finite & grads_finite
        if self.dist.enabled:
            # All ranks take the same decision, so they never diverge: any rank's NaN skips the step everywhere.
            finite = self.dist.all_reduce_((~finite).float().view(1)) == 0
        # The one host sync per step: whether to apply the update must be known before the optimizer runs.
        ok = bool(finite)
        if ok:
            with stage("optimizer"):
                self.scaler.step(self.optimizer)
                self.scheduler.step()
        self.scaler.update()
        self.guard.record(ok, lambda: self.diagnose(torch.cat(micro_batches)))
        return sums if ok else (None, None, None)

    def _loss_scale(self, local_count: int) -> torch.Tensor:
        """world_size / global batch size, as a tensor (a Python float would make torch.compile specialize).

        One process needs no collective, and the tensor is reused while the batch size stays the same."""
        if self.dist.enabled:
            count = self.dist.all_reduce_(torch.tensor([float(local_count)], device=self.device))
            return self.dist.world_size / count.clamp_min(1.0)
        if local_count != self._scale_count:
            self._scale_count = local_count
            self._scale = torch.tensor(1.0 / max(local_count, 1), device=self.device)
        return self._scale

    def _grads_finite(self) -> torch.Tensor | bool:
        """One multi-tensor pass (GradScaler's own kernel, with a scale of 1) instead of a norm per parameter, or
        with master weights the optimizer's read-only native check of the bf16 gradients, answered on the host."""
        if self.master_weights:
            return self.optimizer.grads_finite()
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        found_inf = torch.zeros(1, device=self.device)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, torch.ones(1, device=self.device))
        return found_inf[0] == 0

    def diagnose(self, x: torch.Tensor) -> str:
        with torch.no_grad(), self.autocast():
            mu, logvar = self.model.encode(x)
            out = self.model(x)
            nll = self.model.nll(out.decoded, x)
        return non_finite_report({"input": x, "mu": mu, "logvar": logvar, "z": out.z, "decoder output": out.decoded,
                                  "reconstruction loss": nll, "kl": out.kl}, self.model)

    def close(self) -> None:
        """Release the DDP wrapper before the process group is destroyed.

        Seen here (torch 2.13, gloo): a Reducer freed at interpreter exit destroys its process group while a gloo
        worker thread waits for the GIL, and the process hangs. Dropping it here, while the group is alive, and
        meeting at a barrier avoids that.
        """
        self.objective = self.loss_fn = None
        gc.collect()
        if self.dist.enabled:
            torch.distributed.barrier()

    def _step_groups(self):
        """The epoch's remaining micro-batches, grad_accum at a time (the last group may be smaller)."""
        group = []
        batches = iter(self.loader.batches(self.batch_in_epoch))
        while True:
            with stage("data"):
                x = next(batches, None)
            if x is None:
                break
            group.append(x)
            if len(group) == self.cfg.grad_accum:
                yield group
                group = []
        if group:
            yield group

    def fit(self) -> dict:
        cfg, device = self.cfg, self.device
        # Per-step metrics stay on the device: a list of (nll, kl) sums read on log steps, one in-place add for the
        # per-dim KL; images are counted on the host.
        logged, logged_images = [], 0
        kl_dim_sum, epoch_images = None, 0
        train_time, train_images, checkpoint, test = 0.0, 0, None, None
        stopped = False
        for epoch in range(self.epoch, cfg.epochs):
            self.loader.set_epoch(epoch)
            t0 = loop_mark = time.perf_counter()
            # Throughput counts the whole loop, data loading and metric logging included, but not checkpoint
            # writes or the per-epoch evaluation.
            for group in self._step_groups():
                nll_sum, kl_sum, kl_per_dim = self.train_step(group)
                self.step += 1
                self.batch_in_epoch += len(group)
                images = sum(len(x) for x in group)
                if nll_sum is not None:
                    logged.append((nll_sum, kl_sum))
                    logged_images += images
                    epoch_images += images
                    kl_dim_sum = kl_per_dim.double() if kl_dim_sum is None else kl_dim_sum.add_(kl_per_dim)
                if self.step % cfg.log_every == 0:
                    self._log(logged, logged_images, self.dist.world_size * train_images / max(train_time, 1e-9))
                    logged, logged_images = [], 0
                if self.step > WARMUP_STEPS:
                    train_time += time.perf_counter() - loop_mark
                    train_images += images
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    checkpoint = self.save()
                loop_mark = time.perf_counter()
                if cfg.max_steps and self.step >= cfg.max_steps:
                    stopped = True
                    break
            if stopped and self.batch_in_epoch < len(self.loader):
                checkpoint = self.save()  # stopped mid-epoch: keep the exact data position
                break
            self.epoch, self.batch_in_epoch = epoch + 1, 0
            test = self.evaluate()
            if kl_dim_sum is None:  # every step of the epoch was skipped here; the reduction is still collective
                kl_dim_sum = torch.zeros(self.model.latent_shape, dtype=torch.float64, device=device)
            self.dist.all_reduce_(kl_dim_sum)
            images_seen = self.dist.all_reduce_(torch.tensor([float(epoch_images)], device=device))
            collapse = {}
            if float(images_seen) > 0:
                collapse = self.monitor.check_collapse((kl_dim_sum / images_seen).float().cpu(), self.step)
            kl_dim_sum, epoch_images = None, 0
            self.monitor.log(self.step, {"epoch": self.epoch, "epoch_seconds": time.perf_counter() - t0,
                                         **{f"test/{k}": v for k, v in test.items() if k != "kl_per_dim"},
                                         **{f"train/{k}": v for k, v in collapse.items()}})
            self.monitor.progress_line(
                f"epoch {self.epoch}/{cfg.epochs}: test -ELBO {test['neg_elbo_nats']:.2f} nats "
                f"({test['bpd']:.4f} bpd), {collapse.get('active_units', 0)}/{collapse.get('latent_dim', 0)} "
                f"active units, {self.dist.world_size * train_images / max(train_time, 1e-9):,.0f} img/s",
                final=True)
            self._log_images()
            checkpoint = self.save()
            if stopped:
                break
        self.monitor.close()
        test = test or self.evaluate()
        # Global throughput: all ranks' images over the slowest rank's time.
        totals = self.dist.all_reduce_(torch.tensor([float(train_images)], device=device))
        slowest = self.dist.all_reduce_(torch.tensor([train_time], device=device), op=torch.distributed.ReduceOp.MAX)
        return {
            "images_per_s": float(totals) / max(float(slowest), 1e-9),
            "test_neg_elbo_nats": test["neg_elbo_nats"],
            "test_bpd": test["bpd"],
            "test_recon_nats": test["recon_nats"],
            "test_kl_nats": test["kl_nats"],
            "active_units": test["active_units"],
            "checkpoint": str(checkpoint or self.checkpointer.latest() or ""),
            "epochs": self.epoch,
            "steps": self.step,
            "skipped_steps": self.guard.skipped,
            "compiled": self.compiled,
            "precision": self.precision,
            "master_weights": self.master_weights,
            "device": str(device),
            "loader": self.loader_kind,
            "world_size": self.dist.world_size,
        }

    def _log(self, logged: list, images: int, images_per_s: float) -> None:
        sums = torch.stack([torch.stack(pair) for pair in logged]).double().sum(0) if logged else \
            torch.zeros(2, dtype=torch.float64, device=self.device)
        totals = torch.cat([sums, torch.tensor([float(images)], dtype=torch.float64, device=self.device)])
        nll, kl, n = self.dist.all_reduce_(totals).tolist()  # host sync, on log steps only
        n = max(n, 1.0)
        metrics = {"train/recon_nats": nll / n, "train/kl_nats": kl / n, "train/neg_elbo_nats": (nll + kl) / n,
                   "train/images_per_s": images_per_s, "train/lr": self.optimizer.param_groups[0]["lr"],
                   "train/skipped_steps": self.guard.skipped}
        self.monitor.log(self.step, metrics)
        self.monitor.progress_line(
            f"epoch {self.epoch + 1}/{self.cfg.epochs} step {self.step}/{self.total_steps}  "
            f"-ELBO {metrics['train/neg_elbo_nats']:.2f} (recon {metrics['train/recon_nats']:.2f}, "
            f"kl {metrics['train/kl_nats']:.2f})  {images_per_s:,.0f} img/s")

    def evaluate(self) -> dict:
        return evaluate_elbo(self.model, self.data.test, batch_size=max(self.cfg.batch_size, 500),
                             device=self.device, autocast=self.autocast())

    @torch.no_grad()
    def _log_images(self) -> None:
        if self.monitor.writer is None:
            return
        self.model.eval()
        x = self.data.test[:8].to(self.device).float().div_(255.0)
        z = torch.randn((8, *self.model.latent_shape), device=self.device)
        # Under the training precision, as the steps run (with master weights the model itself is bf16).
        with self.autocast():
            recon = self.model.likelihood.mean(self.model(x).decoded).float()
            samples = self.model.likelihood.mean(self.model.decode(z)).float()
        self.model.train()
        self.monitor.images("reconstructions", torch.cat([x, recon]), self.step)
        self.monitor.images("samples", samples, self.step)

    def state_dict(self) -> dict:
        return {
            # With master weights: the float32 masters, loadable by any float32 copy of the model.
            "model": self.optimizer.master_state_dict(self.model) if self.master_weights else self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "world_size": self.dist.world_size,
            "skipped_steps": self.guard.skipped,
            "config": self.cfg.to_dict(),
            "image_shape": list(self.data.image_shape),
        }

    def save(self) -> Path | None:
        return self.checkpointer.save(self.state_dict(), self.step)

    def load(self, path) -> None:
        state = load_checkpoint(path, map_location=self.device)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise ValueError(f"checkpoint {path} does not fit this model (was it trained with other model flags? "
                             f"its model config: {state['config'].get('model')}): {exc}") from None
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as exc:
            flag = "--no-master-weights" if self.master_weights else "the settings it was trained with"
            raise ValueError(f"cannot resume {path}: {exc}; resume it with {flag}") from None
        self.scaler.load_state_dict(state["scaler"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.epoch, self.batch_in_epoch, self.step = state["epoch"], state["batch_in_epoch"], state["step"]
        self.guard.skipped = state.get("skipped_steps", 0)
        old_world = state.get("world_size", 1)
        if self.dist.enabled or old_world > 1:
            # One saved RNG stream cannot serve several ranks: re-seed per rank and step, so that each rank's noise
            # stays distinct (the data order and the parameters still resume exactly).
            torch.manual_seed(self.cfg.seed + self.dist.rank + 1_000_003 * self.step)
        if old_world != self.dist.world_size and self.batch_in_epoch:
            # Global batch k of an epoch is the same samples whatever the world size (the unpadded sharding
            # interleaves ranks), so the position reshards as a count of samples consumed.
            consumed = self.batch_in_epoch * self.cfg.batch_size * old_world
            per_batch = self.cfg.batch_size * self.dist.world_size
            self.batch_in_epoch = math.ceil(consumed / per_batch)
            if consumed % per_batch:
                warnings.warn(f"resuming {old_world} -> {self.dist.world_size} processes mid-epoch: the position "
                              f"({consumed} samples) is not a multiple of the new global batch ({per_batch}); "
                              f"continuing at the next boundary, {self.batch_in_epoch * per_batch - consumed} "
                              "samples of this epoch are skipped", RuntimeWarning, stacklevel=2)


def train(cfg: TrainConfig | None = None, **overrides) -> dict:
    """Python API: ``vaefast.train(epochs=3, latent_dim=32)`` trains and returns the summary."""
    cfg = cfg or TrainConfig()
    for key, value in overrides.items():
        target = cfg.model if hasattr(cfg.model, key) and not hasattr(cfg, key) else cfg
        if not hasattr(target, key):
            raise TypeError(f"unknown training option {key!r}")
        setattr(target, key, value)
    return Trainer(cfg).fit()
