"""Training metrics: a progress line, a JSONL file, TensorBoard scalars and images, and collapse warnings.

The monitor gates itself: on ranks other than 0 it writes nothing.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import torch

from ..eval.elbo import ACTIVE_UNIT_NATS, collapse_level
from ..eval.images import image_grid


class Monitor:
    def __init__(self, out: Path, *, enabled: bool = True, progress: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.progress = progress and enabled
        self.writer = None
        self.metrics_file = None
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        self.metrics_file = open(out / "metrics.jsonl", "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("vaefast: tensorboard is not installed; skipping TensorBoard logs "
                      "(pip install 'vaefast[logging]')", file=sys.stderr)
            else:
                self.writer = SummaryWriter(str(out / "tensorboard"))

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": time.time(), **metrics}
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        if self.writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, step)

    def progress_line(self, text: str, final: bool = False) -> None:
        if self.progress:
            # Pad to overwrite a longer previous line in place.
            print(f"\r{text:<110}", end="\n" if final else "", file=sys.stderr, flush=True)

    def images(self, tag: str, images: torch.Tensor, step: int) -> None:
        if self.enabled and self.writer is not None:
            self.writer.add_image(tag, image_grid(images), step)

    def check_collapse(self, avg_kl_per_dim: torch.Tensor, step: int) -> dict:
        """Active units and a warning, with remedies, when the posterior collapses."""
        active = int((avg_kl_per_dim > ACTIVE_UNIT_NATS).sum())
        total = avg_kl_per_dim.numel()
        kl_total = float(avg_kl_per_dim.sum())
        if self.enabled and self.writer is not None:
            self.writer.add_histogram("kl_per_dim", avg_kl_per_dim, step)
        if self.enabled and collapse_level(kl_total, active, total) != "healthy":
            warnings.warn(
                f"posterior collapse risk: {active} of {total} latent units are active (KL > {ACTIVE_UNIT_NATS} "
                f"nats) and the KL is {kl_total:.3f} nats per image. Remedies: KL warm-up (--kl-warmup-steps) or "
                "cyclical annealing (--kl-cycles), free bits (--free-bits 0.1), a weaker decoder, a lower learning "
                "rate, or a smaller latent (--latent-dim).",
                RuntimeWarning, stacklevel=2,
            )
        return {"active_units": active, "latent_dim": total, "kl_nats": kl_total}

    def close(self) -> None:
        if self.metrics_file is not None:
            self.metrics_file.close()
        if self.writer is not None:
            self.writer.close()
