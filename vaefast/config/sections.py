"""Every option of a training run, once: its section, type, default, range and help.

Adding an option is adding a field here; the flag, the TOML key, the checks and the options page follow from it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Iterator, Literal

from .options import Section, above, at_least, option, within

# What diffusers' DiagonalGaussianDistribution clamps logvar to; the default clamp of diffusers models.
DIFFUSERS_CLAMP = (-30.0, 20.0)

Loader = Literal["auto", "memory", "dali", "torch"]
Likelihood = Literal["bernoulli", "continuous_bernoulli", "gaussian", "laplace", "logistic"]
Activation = Literal["relu", "silu", "gelu", "leaky_relu"]
Backend = Literal["auto", "torch", "triton", "native"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs", "whole-step"]


def parse_model_kind(text: str) -> str:
    if text in ("mlp", "conv") or (text.startswith("diffusers:") and len(text) > len("diffusers:")):
        return text
    raise argparse.ArgumentTypeError(f"expected mlp, conv or diffusers:SPEC, got {text!r}")


def parse_int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def parse_betas(text: str) -> tuple[float, float]:
    try:
        b1, b2 = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected B1,B2 (e.g. 0.5,0.9), got {text!r}") from None
    return (b1, b2)


def parse_clamp(text: str):
    if text.lower() == "none":
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI or 'none', got {text!r}") from None
    return (lo, hi)


@dataclass
class DataConfig(Section, name="data", title="data"):
    source: str | None = option(None, "IDX directory/file, .npy/.npz array, image folder or WebDataset shards "
                                "(default: the embedded Fashion-MNIST split)", key="data")
    test_fraction: float = option(0.1, "held-out share when the data has no test split", range=within(0.0, 1.0))
    loader: Loader = option("auto", "auto: in memory when the decoded data fits, else DALI, else a torch DataLoader")
    image_size: int | None = option(None, "image folders and shards: the square the model sees, cropped from the "
                                    "images resized by --resize", range=at_least(1))
    resize: int | None = option(None, "image folders and shards: the shorter side is resized to this first (and the "
                                "central square of that side kept) before --crop takes --image-size from it (default: "
                                "--image-size)", range=at_least(1))
    crop: Literal["auto", "random", "center"] = option(
        "auto", "training crops of --image-size from the resized square: random (seeded, resumed exactly) or center; "
        "auto: random for image folders and shards; evaluation always center-crops")
    frames: int | None = option(None, "clips: frames per training clip, a window of each clip (random in training, "
                                "the first ones for evaluation)", range=at_least(1))
    frame_stride: int = option(1, "clips: take every S-th frame in the window", range=at_least(1))
    image_ratio: float = option(0.0, "clips: the share of training batches that are one-frame clips (one frame of "
                                "each clip), so that a causal video autoencoder learns images too, as Wan and Cosmos "
                                "train", range=within(0.0, 1.0))
    skip_bad_images: bool = option(False, "image folders: leave undecodable files out (counted in the log) instead "
                                   "of failing")
    num_workers: int = option(2, "decoding workers (torch DataLoader processes, DALI threads)", range=at_least(0))
    flip: bool = option(False, "random horizontal flips of the training images (natural images, not digits)")
    batch_size: int = option(128, "images per micro-batch and process (a step takes --grad-accum of them)",
                             range=at_least(1))

    def rules(self) -> Iterator[str]:
        if self.resize is not None and self.image_size is None:
            yield "--resize sets the size the crops of --image-size are taken from: pass --image-size too"
        if self.resize is not None and self.image_size is not None and self.resize < self.image_size:
            yield f"--resize {self.resize} is smaller than --image-size {self.image_size}: a crop cannot be larger"
        if self.image_ratio > 0 and self.frames is None:
            yield "--image-ratio mixes one-frame batches into clips: pass --frames (and clips as --data)"

    @property
    def decoded_size(self) -> int | None:
        """The square images are decoded to: --resize, or --image-size."""
        return self.resize or self.image_size


@dataclass
class ModelConfig(Section, name="model", title="model"):
    kind: str = option("mlp", "mlp, conv, or diffusers:SPEC: a diffusers KL autoencoder from a preset (sd-kl-f8, "
                       "sdxl, sd3, flux, kl-f8-16ch) or a config.json (both random init), a local model folder or a "
                       "released .safetensors/.ckpt file in the original layout (fine-tuning); its logvar clamp "
                       "defaults to diffusers' -30,20", key="model", parse=parse_model_kind,
                       metavar="{mlp,conv,diffusers:SPEC}")
    model_config: str | None = option(None, "the architecture of a --model diffusers:FILE single file: a preset, a "
                                      "config.json or a diffusers folder (default: read from the file's tensors)",
                                      metavar="SPEC")
    latent_dim: int = option(20, "flat latent size (mlp, or conv with --latent-channels 0)", range=at_least(1))
    hidden: list[int] = option(help="MLP widths, encoder order, e.g. 400 or 512,256", factory=lambda: [400],
                               parse=parse_int_list, metavar="W[,W...]")
    channels: list[int] = option(help="conv widths, one per stride-2 stage, e.g. 32,64", factory=lambda: [32, 64],
                                 key="conv_channels", parse=parse_int_list, metavar="C[,C...]")
    latent_channels: int = option(0, "conv: > 0 gives a spatial latent [C, H/2^k, W/2^k]", range=at_least(0))
    activation: Activation = option("relu", "hidden activation of the mlp and conv models")
    likelihood: Likelihood = option("bernoulli", "the decoder's pixel likelihood")
    gaussian_sigma: float = option(0.1, "scale of the gaussian (sigma) and laplace (b) likelihoods", range=above(0))
    learn_sigma: bool = option(False, "learn that scale")
    clamp: tuple[float, float] | None = option((-10.0, 10.0), "logvar clamp LO,HI, or 'none'", parse=parse_clamp,
                                               metavar="LO,HI")
    backend: Backend = option("auto", "fused-op backend: triton on CUDA, native on CPU when built, else torch")

    def __post_init__(self):
        if self.clamp is not None:
            self.clamp = tuple(self.clamp)  # TOML and JSON give lists
        super().__post_init__()

    @property
    def diffusers(self) -> str | None:
        """The AutoencoderKL spec of a ``diffusers:SPEC`` model, else None."""
        return self.kind.split(":", 1)[1] if self.kind.startswith("diffusers:") else None

    def rules(self) -> Iterator[str]:
        if self.clamp is not None and not self.clamp[0] < self.clamp[1]:
            yield f"--clamp needs LO < HI, got {self.clamp}"
        if self.kind not in ("mlp", "conv") and self.diffusers is None:
            yield f"--model must be mlp, conv or diffusers:SPEC, got {self.kind!r}"
        if self.model_config is not None and self.diffusers is None:
            yield "--model-config gives the architecture of a --model diffusers:FILE weights file"
        for name in ("hidden", "channels"):
            if any(width < 1 for width in getattr(self, name)):
                yield f"--{'conv-channels' if name == 'channels' else name} widths must be >= 1"


@dataclass
class ObjectiveConfig(Section, name="objective", title="objective"):
    beta: float = option(1.0, "weight of the KL term", range=at_least(0.0))
    kl_warmup_steps: int = option(0, "linear warm-up of the KL weight from 0 to beta over this many steps",
                                  range=at_least(0))
    kl_cycles: int = option(0, "> 0: cyclical KL annealing with this many cycles over the run (Fu et al., 2019)",
                            range=at_least(0))
    free_bits: float = option(0.0, "per-latent-dimension KL floor in nats (Kingma et al., 2016)", range=at_least(0.0))
    noise: Literal["seeded", "randn"] = option(
        "seeded", "seeded: the fused op draws eps in the kernel from a device key (Philox) and regenerates it in "
        "backward; randn: eps from torch.randn_like, saved for backward")
    samples: int = option(1, "posterior samples per image (K), drawn in one fused pass", range=at_least(1))
    objective: Literal["elbo", "iwae"] = option(
        "elbo", "elbo: the K-sample average; iwae: the importance-weighted bound over the K samples (Burda et al.)")
    estimator: Literal["standard", "dreg"] = option(
        "standard", "IWAE encoder gradient: standard, or dreg (doubly reparameterized, Tucker et al., 2018)")

    def rules(self) -> Iterator[str]:
        yield from objective_rules(self.objective, self.estimator, self.samples, self.free_bits)


def objective_rules(objective: str, estimator: str, samples: int, free_bits: float) -> Iterator[str]:
    """The objective's rules, shared with ``NegativeELBO`` for callers that build it without a config."""
    if estimator == "dreg" and objective != "iwae":
        yield "--estimator dreg is for --objective iwae"
    if objective == "iwae" and samples < 2:
        yield f"--objective iwae weighs several samples: pass --samples 2 or more, got {samples}"
    if objective == "iwae" and free_bits > 0:
        yield "--free-bits floors the ELBO's analytic KL; the IWAE bound has no such term"


@dataclass
class OptimConfig(Section, name="optim", title="optimization"):
    epochs: int = option(10, "passes over the training data", range=at_least(1))
    max_steps: int = option(0, "> 0: stop (with a checkpoint) after this many optimizer steps", range=at_least(0))
    lr: float = option(1e-3, "learning rate", range=above(0.0))
    optimizer: Literal["adam", "adamw"] = option("adam", "the optimizer (torch's fused implementation where it runs)")
    weight_decay: float = option(0.0, "weight decay (decoupled with adamw)", range=at_least(0.0))
    betas: tuple[float, float] = option((0.9, 0.999), "Adam's B1,B2 (the LDM recipe's are 0.5,0.9)",
                                        key="adam_betas", parse=parse_betas, metavar="B1,B2")
    lr_schedule: Literal["constant", "cosine"] = option("constant", "learning-rate schedule over the run")
    clip_grad: float | None = option(None, "max global gradient norm (default: no clipping)", range=above(0.0))
    grad_accum: int = option(1, "micro-batches per optimizer step (DDP syncs gradients on the last one only)",
                             range=at_least(1))
    trainable: Literal["all", "decoder"] = option(
        "all", "what trains: all, or decoder (the decoder and post_quant_conv; the encoder runs without a graph, its "
        "latents stay the original's and the KL term is dropped)", key="train")
    warmup_steps: int = option(0, "linear learning-rate warm-up from 0 over this many steps (both optimizers of the "
                               "LDM recipe)", range=at_least(0))
    ema: float = option(0.0, "> 0: keep an exponential moving average of the weights with this decay (e.g. 0.999); "
                        "eval uses it", range=within(0.0, 1.0), metavar="DECAY")
    max_bad_steps: int = option(20, "consecutive non-finite steps before stopping with a diagnosis",
                                range=at_least(1))

    def __post_init__(self):
        self.betas = tuple(self.betas)  # TOML and JSON give lists
        super().__post_init__()

    def rules(self) -> Iterator[str]:
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            yield f"--adam-betas needs two values in [0, 1), got {self.betas}"


@dataclass
class RecipeConfig(Section, name="recipe", title="LDM recipe (perceptual and adversarial terms)"):
    recipe: Literal["elbo", "ldm"] = option(
        "elbo", "elbo: the likelihood and KL; ldm: Latent Diffusion's autoencoder loss (L1 + LPIPS with a learned "
        "scalar logvar, KL, PatchGAN with the adaptive weight), which also sets the LDM defaults of --perceptual, "
        "--disc, --beta (1e-6), --adam-betas (0.5,0.9) and --likelihood (gaussian: its mean is the decoder output)")
    perceptual: Literal["lpips", "none"] = option("none", "the recipe's perceptual term (LPIPS-VGG16)")
    perceptual_weight: float = option(1.0, "weight of LPIPS in the recipe's pixel term", range=at_least(0.0))
    pixel_loss: Literal["l1", "mse"] = option("l1", "the recipe's pixel term: l1 (LDM, sd-vae-ft-ema) or mse "
                                              "(sd-vae-ft-mse; generative-models' l2)")
    learn_logvar: bool = option(True, "learn the recipe's scalar logvar (LDM); off keeps it at --logvar-init "
                                "(generative-models' default)")
    lpips_weights: str | None = option(None, "VGG16 weights for LPIPS in torchvision's format (default: torch's hub "
                                       "cache, checkpoints/vgg16-397923af.pth)", metavar="PATH")
    fid_weights: str | None = option(None, "FID Inception weights (pytorch-fid's pt_inception-2015-12-05-*.pth) for "
                                     "the rFID of each evaluation (default: torch's hub cache, when there)",
                                     metavar="PATH")
    disc: Literal["patchgan", "patchgan3d", "none"] = option(
        "none", "the recipe's discriminator: patchgan (on images, and on clips frame by frame), patchgan3d (Conv3d, "
        "on clips), none")
    disc_start: int = option(50001, "step from which the discriminator trains and its term counts",
                             range=at_least(0))
    disc_weight: float = option(0.5, "scale of the adaptive weight of the generator term", range=at_least(0.0))
    disc_factor: float = option(1.0, "factor of both adversarial losses from --disc-start on", range=at_least(0.0))
    disc_loss: Literal["hinge", "vanilla"] = option("hinge", "the discriminator's loss")
    disc_layers: int = option(3, "the PatchGAN's stride-2 layers", range=at_least(1))
    disc_lr: float | None = option(None, "the discriminator's learning rate (default: --lr)", range=above(0.0))
    logvar_init: float = option(0.0, "initial value of the recipe's learned scalar logvar")

    @property
    def ldm(self) -> bool:
        return self.recipe == "ldm"

    def rules(self) -> Iterator[str]:
        if not self.ldm and (self.perceptual != "none" or self.disc != "none"):
            yield "--perceptual and --disc are terms of the LDM recipe: pass --recipe ldm"


# What --recipe ldm sets where a run leaves an option out: CompVis' LPIPSWithDiscriminator defaults and the SD
# autoencoder configs (kl_weight 1e-6, Adam betas 0.5, 0.9).
LDM_DEFAULTS = {"recipe": {"perceptual": "lpips", "disc": "patchgan"}, "objective": {"beta": 1e-6},
                "optim": {"betas": (0.5, 0.9)}, "model": {"likelihood": "gaussian"}}


@dataclass
class RuntimeConfig(Section, name="runtime", title="runtime"):
    device: str | None = option(None, "cpu, cuda or cuda:N (default: cuda if available)")
    precision: Precision = option("auto", "auto: bf16 where the hardware computes it natively (CUDA, AMX / "
                                  "AVX512-BF16 CPUs), else fp32")
    compile: bool | None = option(None, "torch.compile the forward and loss (default: when the run is long enough "
                                  "to repay it, see vaefast/plan.py)")
    compile_mode: CompileMode | None = option(
        None, "torch.compile mode; reduce-overhead replays forward and backward as CUDA graphs; whole-step compiles "
        "forward, backward and optimizer as one function and on CUDA captures it as one CUDA graph (default: "
        "reduce-overhead on one CUDA device, default elsewhere)")
    master_weights: bool | None = option(
        None, "bf16: keep the model in bf16 and float32 master weights in the optimizer instead of casting the "
        "weights every step (default: on for bf16 on CPU in one process)")
    activation_checkpointing: bool = option(False, "recompute encoder and decoder activations in backward (less "
                                            "memory, one more forward)")
    channels_last: bool = option(False, "conv models: NHWC weights and batches, where that measures faster")
    seed: int = option(0, "seed of the initial weights, the data order and the noise")
    dist_backend: Literal["nccl", "gloo"] | None = option(None, "torchrun process-group backend (default: nccl on "
                                                          "CUDA, gloo on CPU)")
    dist_timeout: float = option(300.0, "seconds a collective waits for a dead or stuck peer before the job fails",
                                 range=above(0.0))

    def rules(self) -> Iterator[str]:
        if self.master_weights and self.precision not in ("auto", "bf16"):
            yield f"--master-weights is for bf16 training; precision is {self.precision!r}"


@dataclass
class CheckpointConfig(Section, name="checkpoint", title="checkpoints"):
    out: str = option("runs/vaefast", "run folder for checkpoints, metrics and TensorBoard logs")
    resume: str | None = option(None, "checkpoint file or run folder to continue from; auto: the newest good "
                                "checkpoint in --out when there is one, else a new run (the same command for every "
                                "restart under a scheduler or torchrun)")
    resume_fallback: bool = option(True, "when the newest checkpoint of the --resume folder is corrupt, resume from "
                                   "the newest good one with a warning; --no-resume-fallback refuses instead")
    trust_checkpoint: bool = option(False, "also load format-1 checkpoints (older vaefast), which must be unpickled: "
                                    "this runs code from the file, so only for files you wrote")
    keep_checkpoints: int = option(3, "checkpoints kept in the run folder (the newest)", range=at_least(1))
    checkpoint_every: int = option(0, "steps between mid-epoch checkpoints; 0: at epoch ends only", range=at_least(0))


@dataclass
class LoggingConfig(Section, name="logging", title="logging"):
    log_every: int = option(50, "steps between logged (host-synchronized) metrics", range=at_least(1))
    progress: bool = option(True, "progress bar on a terminal, plain log lines otherwise")
    tensorboard: bool = option(True, "write TensorBoard event files into the run folder")
    image_every: int = option(0, "steps between reconstruction grids of fixed held-out images (TensorBoard and "
                              "PNG in the run folder); 0: at each evaluation", range=at_least(0))


SECTIONS: tuple[type[Section], ...] = (DataConfig, ModelConfig, ObjectiveConfig, RecipeConfig, OptimConfig,
                                       RuntimeConfig, CheckpointConfig, LoggingConfig)
