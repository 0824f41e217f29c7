"""A run's outcome: what ``vaefast train`` prints and ``--json`` writes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..eval.quality import QUALITY_KEYS, quality_text
from ..instrument import peak_memory_mb


@dataclass
class RunSummary:
    images_per_s: float | None  # all ranks' images over the slowest rank's training time; None: too few steps to time
    test_neg_elbo_nats: float
    test_bpd: float
    test_recon_nats: float
    test_kl_nats: float
    active_units: int
    checkpoint: str
    epochs: int
    steps: int
    skipped_steps: int
    preempted: bool
    compiled: bool
    precision: str
    master_weights: bool
    device: str
    loader: str
    world_size: int
    peak_memory_mb: float | None
    # The LDM recipe's reconstruction quality (vaefast.train.recipe); absent from the JSON of other runs.
    test_psnr: float | None = None
    test_ssim: float | None = None
    test_lpips: float | None = None
    test_rfid: float | None = None
    test_temporal: float | None = None  # clips

    @classmethod
    def of(cls, trainer, test: dict) -> "RunSummary":
        t = trainer
        return cls(
            images_per_s=t.metrics.global_throughput(), test_neg_elbo_nats=test["neg_elbo_nats"],
            test_bpd=test["bpd"], test_recon_nats=test["recon_nats"], test_kl_nats=test["kl_nats"],
            active_units=test["active_units"], checkpoint=str(t.last_checkpoint or t.checkpointer.latest() or ""),
            epochs=t.epoch, steps=t.step, skipped_steps=t.guard.skipped, preempted=t.preempted, compiled=t.compiled,
            precision=t.precision, master_weights=t.master_weights, device=str(t.device), loader=t.loader_kind,
            world_size=t.dist.world_size, peak_memory_mb=peak_memory_mb(t.device),
            **{f"test_{key}": test[key] for key in QUALITY_KEYS if test.get(key) is not None})

    def to_json(self) -> dict:
        """The ``--json`` object: these keys, in this order (tests/fixtures/json_keys.json pins them); the quality
        keys only where they were measured."""
        return {key: value for key, value in dataclasses.asdict(self).items()
                if value is not None or key.removeprefix("test_") not in QUALITY_KEYS}

    def describe(self) -> str:
        epochs = f"{self.epochs} epoch{'s' if self.epochs != 1 else ''}" if self.epochs else f"{self.steps} steps"
        speed = f" at {self.images_per_s:,.0f} images/s" if self.images_per_s else ""
        quality = quality_text(self.test_psnr, self.test_ssim, self.test_lpips, self.test_rfid)
        return (f"trained {epochs}{speed}; test -ELBO {self.test_neg_elbo_nats:.2f} nats/image "
                f"({self.test_bpd:.4f} bits/dim){quality}; checkpoint {self.checkpoint}")

