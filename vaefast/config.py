"""The one typed home of a training run's configuration: dataclasses, a TOML file, and flag overrides."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .models import ModelConfig

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs", "whole-step")


@dataclass
class TrainConfig:
    data: str | None = None  # None: the embedded Fashion-MNIST split
    test_fraction: float = 0.1  # held out when the source has no test split
    loader: str = "auto"  # "auto", "memory", "dali" or "torch"
    image_size: int | None = None  # image folders: resize the shorter side and center-crop to this square
    skip_bad_images: bool = False  # image folders: leave undecodable files out (and log the count) instead of failing
    num_workers: int = 2  # decoding workers (torch DataLoader processes, DALI threads)
    flip: bool = False  # random horizontal flips of the training images (for natural images, not digits)
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"  # "adam" or "adamw"
    weight_decay: float = 0.0
    lr_schedule: str = "constant"  # "constant" or "cosine"
    clip_grad: float | None = None  # max global grad norm; None disables clipping
    grad_accum: int = 1  # micro-batches per optimizer step (DDP syncs gradients on the last one only)
    dist_backend: str | None = None  # None: nccl on CUDA, gloo on CPU
    dist_timeout: float = 300.0  # seconds a collective may wait for a peer before the job fails
    beta: float = 1.0
    kl_warmup_steps: int = 0  # linear warm-up of the KL weight from 0 to beta
    kl_cycles: int = 0  # > 0: cyclical annealing with this many cycles over the run (Fu et al., 2019)
    free_bits: float = 0.0  # per-latent-dim KL floor in nats (Kingma et al., 2016)
    # "seeded": the fused op draws eps in the kernel from a device key and regenerates it in backward (nothing
    # stored); "randn": eps from torch.randn_like, stored for backward (the explicit-eps path).
    noise: str = "seeded"
    samples: int = 1  # posterior samples per image (K): the K-sample ELBO, or the bound of `objective`
    objective: str = "elbo"  # "elbo", or "iwae": the importance-weighted bound over the K samples (Burda et al.)
    estimator: str = "standard"  # IWAE encoder gradient: "standard" or "dreg" (Tucker et al., 2018)
    activation_checkpointing: bool = False  # recompute encoder/decoder activations in backward to save memory
    channels_last: bool = False  # conv models: NHWC weights and batches, where that measures faster
    ema: float = 0.0  # > 0: keep an exponential moving average of the weights with this decay (e.g. 0.999)
    precision: str = "auto"  # bf16 where the hardware computes it natively (CUDA, AMX / AVX512-BF16 CPUs), else fp32
    compile: bool | None = None  # None: on where it pays (see vaefast.plan)
    # torch.compile mode; "reduce-overhead" also replays the compiled forward and backward as CUDA graphs;
    # "whole-step" compiles forward, backward and optimizer together, and on CUDA captures them as one CUDA graph.
    # None: reduce-overhead on one CUDA device, default elsewhere (see vaefast.plan).
    compile_mode: str | None = None
    # bf16: hold the model in bf16 and float32 master weights in the optimizer (train/optim.py) instead of casting
    # float32 weights in every step. None: on for bf16 on CPU in one process when the native kernel is built.
    master_weights: bool | None = None
    device: str | None = None  # None: cuda if available, else cpu
    seed: int = 0
    out: str = "runs/vaefast"
    resume: str | None = None
    resume_fallback: bool = True  # a run folder whose newest checkpoint is corrupt resumes from the newest good one
    trust_checkpoint: bool = False  # also load format-1 (pickled, unverified) checkpoints: runs code from the file
    keep_checkpoints: int = 3
    max_steps: int = 0  # > 0: stop (with a checkpoint) after this many steps, e.g. before a preemption deadline
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints; 0: at epoch ends only
    max_bad_steps: int = 20  # consecutive non-finite steps before stopping with a diagnosis
    log_every: int = 50  # steps between logged (host-synchronized) metrics
    progress: bool = True
    tensorboard: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)

    def validate(self) -> None:
        problems = []
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            problems.append(f"batch size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            problems.append(f"compile mode must be one of {COMPILE_MODES}, got {self.compile_mode!r}")
        if self.master_weights and self.precision not in ("auto", "bf16"):
            problems.append(f"master weights are for bf16 training; precision is {self.precision!r}")
        if self.samples < 1:
            problems.append(f"samples must be >= 1, got {self.samples}")
        if self.objective not in ("elbo", "iwae") or self.estimator not in ("standard", "dreg"):
            problems.append(f"objective must be elbo or iwae and estimator standard or dreg, got "
                            f"{self.objective!r} and {self.estimator!r}")
        elif self.estimator == "dreg" and self.objective != "iwae":
            problems.append("--estimator dreg is for --objective iwae")
        if self.objective == "iwae" and self.samples < 2:
            problems.append(f"--objective iwae weighs several samples: pass --samples 2 or more, got {self.samples}")
        if self.objective == "iwae" and self.free_bits > 0:
            problems.append("--free-bits floors the ELBO's analytic KL; the IWAE bound has no such term")
        if self.noise not in ("seeded", "randn"):
            problems.append(f"noise must be 'seeded' or 'randn', got {self.noise!r}")
        if self.optimizer not in ("adam", "adamw"):
            problems.append(f"optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            problems.append(f"lr schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if not 0.0 <= self.ema < 1.0:
            problems.append(f"ema decay must lie in [0, 1) (0: off), got {self.ema}")
        if self.grad_accum < 1:
            problems.append(f"grad_accum must be >= 1, got {self.grad_accum}")
        if self.keep_checkpoints < 1:
            problems.append(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.model.latent_dim < 1:
            problems.append(f"latent dim must be >= 1, got {self.model.latent_dim}")
        if problems:
            raise ValueError("invalid configuration: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        values = dict(values)
        model = ModelConfig(**_known(ModelConfig, values.pop("model", {}), "model"))
        if model.clamp is not None:
            model.clamp = tuple(model.clamp)
        return cls(model=model, **_known(cls, values, "train"))


def _known(cls, values: dict, section: str) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {section} config keys: {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return values


def load_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: invalid TOML: {exc}") from None


def merge(base: dict, overrides: dict) -> dict:
    """Nested dict merge: values in ``overrides`` (the command-line flags) win."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def save_resolved(cfg: TrainConfig, folder: Path) -> Path:
    """Write the resolved configuration beside the checkpoints, as JSON (TOML has no null)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.json"
    path.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    return path
