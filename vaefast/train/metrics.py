"""Training metrics that stay on the device between log steps.

Each step's (nll, kl) sums are kept and its per-dim KL is added to a device tensor; the host reads them,
all-reduced, only every ``log_every`` steps and at epoch ends. The clock counts the whole loop (data loading and
logging included) but not what the trainer excludes with ``restart_clock`` (checkpoint writes, evaluation), nor the
first ``warmup_steps`` steps, where compilation and first-touch allocation happen.
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple

import torch

from .distributed import DistContext
from .monitor import Monitor

WARMUP_STEPS = 3


class StepResult(NamedTuple):
    """One optimizer step's device tensors: this rank's sums, and whether the update was applied."""

    nll: torch.Tensor
    kl: torch.Tensor
    kl_per_dim: torch.Tensor
    term_sums: torch.Tensor | None
    applied: torch.Tensor


class TrainMetrics:
    def __init__(self, monitor: Monitor, dist: DistContext, device: torch.device, log_every: int,
                 warmup_steps: int = WARMUP_STEPS, term_names: list[str] = ()):
        self.monitor, self.dist, self.device = monitor, dist, device
        self.log_every, self.warmup_steps = log_every, warmup_steps
        self.term_names = list(term_names)
        # Since the last log: each step's device sums (nll, kl, extra terms), its device flag (applied or skipped) and
        # its image count; and the epoch's flags and counts, for the per-dim KL mean.
        self.pending, self.epoch_steps = [], []
        self.kl_dim_sum = None
        self._zero = torch.zeros((), device=device)
        self.train_time, self.train_images = 0.0, 0
        self.restart_clock()

    def restart_clock(self) -> None:
        self.mark = time.perf_counter()

    def record(self, images: int, result, latent_shape: tuple | None = None) -> None:
        """One optimizer step: train_step's StepResult, whose tensors are the step's own. Its sums are kept as they
        are until the next log step, which selects and stacks them all at once (two ops fewer per step); the per-dim
        KL is added up now, so that what is pending stays a few scalars per step whatever the latent's size. A
        skipped step adds zeros, chosen on the device. A step whose latent is not of ``latent_shape`` (the one-frame
        clips of --image-ratio) counts in the losses but not in the per-dim KL."""
        applied = result.applied
        self.pending.append((result.nll, result.kl, result.term_sums, applied, images))
        if latent_shape is not None and tuple(result.kl_per_dim.shape) != tuple(latent_shape):
            return
        self.epoch_steps.append((applied, images))
        kl_per_dim = torch.where(applied, result.kl_per_dim, self._zero)
        if self.kl_dim_sum is None:
            self.kl_dim_sum = kl_per_dim.double()
        else:
            self.kl_dim_sum.add_(kl_per_dim)

    def _pending_sums(self) -> torch.Tensor:
        """[nll, kl, *extra terms] summed over the applied steps since the last log, float64 on the device."""
        if not self.pending:
            return torch.zeros(2 + len(self.term_names), dtype=torch.float64, device=self.device)
        rows = torch.stack([torch.stack([nll, kl]) if terms is None else torch.cat([torch.stack([nll, kl]), terms])
                            for nll, kl, terms, _, _ in self.pending])
        applied = torch.stack([applied for _, _, _, applied, _ in self.pending]).view(-1, 1)
        return torch.where(applied, rows, self._zero).double().sum(0)

    def _images(self, steps) -> torch.Tensor:
        """The images of the applied steps among ``steps`` ((flag, count) pairs), as a [1] float64 device tensor."""
        if not steps:
            return torch.zeros(1, dtype=torch.float64, device=self.device)
        flags = torch.stack([flag for flag, _ in steps]).double()
        counts = torch.tensor([count for _, count in steps], dtype=torch.float64, device=self.device)
        return (flags * counts).sum().view(1)

    def is_log_step(self, step: int) -> bool:
        return step % self.log_every == 0

    def lap(self, step: int, images: int) -> None:
        """Count the time since the clock last (re)started as training time, past the warm-up steps."""
        if step > self.warmup_steps:
            self.train_time += time.perf_counter() - self.mark
            self.train_images += images

    @property
    def images_per_s(self) -> float | None:
        """This rank's throughput times the world size; None until a step past the warm-up was timed."""
        if not self.train_images:
            return None
        return self.dist.world_size * self.train_images / max(self.train_time, 1e-9)

    def maybe_log(self, step: int, context: Callable[[], tuple[dict, str]]) -> None:
        """On log steps: all-reduce the pending sums (the host sync), write them with the extra metrics of
        ``context()`` and print a line starting with its text; off log steps ``context`` is not even called."""
        if not self.is_log_step(step):
            return
        extra, progress = context()
        images = self._images([(applied, count) for *_, applied, count in self.pending])
        totals = torch.cat([self._pending_sums(), images])
        nll, kl, *term_sums, n = self.dist.all_reduce_(totals).tolist()
        self.pending = []
        n = max(n, 1.0)
        metrics = {"train/recon_nats": nll / n, "train/kl_nats": kl / n, "train/neg_elbo_nats": (nll + kl) / n,
                   **{f"train/{name}": value / n for name, value in zip(self.term_names, term_sums)},
                   "train/images_per_s": self.images_per_s, **extra}
        self.monitor.log(step, metrics)
        speed = f"  {self.images_per_s:,.0f} img/s" if self.images_per_s else ""
        self.monitor.progress_line(
            f"{progress}  -ELBO {metrics['train/neg_elbo_nats']:.2f} (recon {metrics['train/recon_nats']:.2f}, "
            f"kl {metrics['train/kl_nats']:.2f}){speed}")

    def end_epoch(self, step: int, latent_shape: tuple) -> dict:
        """The epoch's average KL per dim over all ranks, checked for collapse; a collective on every rank."""
        if self.kl_dim_sum is None:  # no step ran here this epoch; the reduction is still collective
            self.kl_dim_sum = torch.zeros(latent_shape, dtype=torch.float64, device=self.device)
        self.dist.all_reduce_(self.kl_dim_sum)
        images_seen = self.dist.all_reduce_(self._images(self.epoch_steps))
        collapse = {}
        if float(images_seen) > 0:
            collapse = self.monitor.check_collapse((self.kl_dim_sum / images_seen).float().cpu(), step)
        self.kl_dim_sum, self.epoch_steps = None, []
        return collapse

    def global_throughput(self) -> float | None:
        """All ranks' images over the slowest rank's time (None when no step past the warm-up was timed); a
        collective on every rank."""
        totals = self.dist.all_reduce_(torch.tensor([float(self.train_images)], device=self.device))
        slowest = self.dist.all_reduce_(torch.tensor([self.train_time], device=self.device),
                                        op=torch.distributed.ReduceOp.MAX)
        return float(totals) / max(float(slowest), 1e-9) if float(totals) else None
