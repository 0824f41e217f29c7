"""Training metrics: progress, a JSONL file, TensorBoard scalars and images, and collapse warnings.

The monitor gates itself: on ranks other than 0 it writes nothing. Progress is a tqdm bar when stderr is a
terminal, and plain, parseable lines when it is not (a log file, a scheduler's output).
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch

from ..eval.elbo import ACTIVE_UNIT_NATS, collapse_level
from ..eval.images import image_grid
from ..eval.quality import quality_text


class Monitor:
    def __init__(self, out: Path, *, enabled: bool = True, progress: bool = True, tensorboard: bool = True,
                 resumed_step: int | None = None):
        self.enabled, self.out = enabled, out
        self.progress = progress and enabled
        self.writer = None
        self.metrics_file = None
        self.bar = None
        self.terminal = self.progress and sys.stderr.isatty()
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        if resumed_step is not None:
            self.note_set_aside(set_aside_rows_after(out / "metrics.jsonl", resumed_step))
        self.metrics_file = open(out / "metrics.jsonl", "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("vaefast: tensorboard is not installed; skipping TensorBoard logs "
                      "(pip install 'vaefast[logging]')", file=sys.stderr)
            else:
                # On resume, TensorBoard drops the events past the checkpoint's step, as the JSONL file does.
                purge = None if resumed_step is None else resumed_step + 1
                self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=purge)

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

    def advance(self, step: int, total: int) -> None:
        """The bar's position (a host counter: no device read); on a terminal only."""
        if not self.terminal:
            return
        if self.bar is None:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # plain lines, as in a log file
                self.terminal = False
                return
            self.bar = tqdm(total=total, initial=step - 1, unit="step", dynamic_ncols=True, file=sys.stderr)
        self.bar.update(step - self.bar.n)

    def progress_line(self, text: str, final: bool = False) -> None:
        """A log step's metrics (the bar's description on a terminal) or an epoch's result (a line of its own)."""
        if not self.progress:
            return
        if self.bar is not None and not final:
            self.bar.set_description_str(text, refresh=False)
        elif self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def epoch_result(self, step: int, epoch: int, epochs: int, seconds: float, test: dict, collapse: dict,
                     images_per_s: float | None) -> None:
        """An epoch's test result and latent health: logged, and one line of progress."""
        self.log(step, {"epoch": epoch, "epoch_seconds": seconds,
                        **{f"test/{k}": v for k, v in test.items() if k != "kl_per_dim"},
                        **{f"train/{k}": v for k, v in collapse.items()}})
        speed = f", {images_per_s:,.0f} img/s" if images_per_s else ""
        units = f"{collapse.get('active_units', 0)}/{collapse.get('latent_dim', 0)} active units"
        quality = quality_text(test.get("psnr"), test.get("ssim"), test.get("lpips"), test.get("rfid"))
        self.progress_line(f"epoch {epoch}/{epochs}: test -ELBO {test['neg_elbo_nats']:.2f} nats "
                           f"({test['bpd']:.4f} bpd){quality}, {units}{speed}", final=True)

    def note_set_aside(self, moved: tuple[int, Path] | None) -> None:
        if moved is not None:
            self.note(f"resuming: {moved[0]} metrics row(s) logged after the checkpoint moved to {moved[1].name}")

    def note(self, text: str) -> None:
        """A one-line message for the user (rank 0 only), whether or not progress is shown."""
        if self.enabled:
            (self.bar.write if self.bar is not None else print)(f"vaefast: {text}", file=sys.stderr)

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
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.metrics_file is not None:
            self.metrics_file.close()
        if self.writer is not None:
            self.writer.close()


def set_aside_rows_after(path: Path, step: int) -> tuple[int, Path] | None:
    """Move the rows of ``path`` (JSONL, one ``step`` per row) logged after ``step`` to a file of their own beside it,
    so that after a resume each step appears once, with the values of the run that continues; nothing is deleted.
    The rewrite is atomic: a crash leaves either the old file or the new one."""
    if not path.is_file():
        return None
    keep, later = [], []
    for line in path.read_text().splitlines(keepends=True):
        try:
            row_step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):  # a row cut short by a kill: it belongs to no step
            later.append(line if line.endswith("\n") else line + "\n")
            continue
        (keep if row_step <= step else later).append(line)
    if not later:
        return None
    aside = path.with_name(f"{path.stem}.after-step{step:09d}{path.suffix}")
    with open(aside, "a") as f:
        f.writelines(later)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(keep))
    os.replace(tmp, path)
    return len(later), aside
