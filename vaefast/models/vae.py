"""The VAE models: an MLP VAE and a convolutional VAE with a flat or a spatial latent.

Both encode to (mu, logvar), draw z and the KL with the fused ``reparameterize_kl`` (which also gives the per-dim
KL for active-unit monitoring and free bits), and decode to the parameters of their likelihood.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..ops import reparameterize_kl
from ..instrument import stage
from .likelihoods import Likelihood, make_likelihood

ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU}


@dataclass
class ModelConfig:
    kind: str = "mlp"  # "mlp", "conv" or "diffusers"
    latent_dim: int = 20  # flat latent size (mlp, or conv with latent_channels == 0)
    hidden: list[int] = field(default_factory=lambda: [400])  # mlp widths, encoder order
    channels: list[int] = field(default_factory=lambda: [32, 64])  # conv widths; each stage halves H and W
    latent_channels: int = 0  # conv only: > 0 gives a spatial latent [latent_channels, H/2^k, W/2^k]
    activation: str = "relu"
    likelihood: str = "bernoulli"
    gaussian_sigma: float = 0.1  # the scale of the gaussian (sigma) and laplace (b) likelihoods
    learn_sigma: bool = False
    clamp: tuple[float, float] | None = (-10.0, 10.0)
    backend: str = "auto"
    # kind "diffusers": an AutoencoderKL from a preset name, a config.json (random init) or a local model folder
    diffusers: str | None = None


class VAEOutput(NamedTuple):
    decoded: torch.Tensor  # likelihood parameters, image-shaped ([K * B, ...] for K samples, sample-major)
    z: torch.Tensor  # [B, ...], or [K, B, ...] for K samples
    kl: torch.Tensor  # [B] float32
    kl_per_dim: torch.Tensor  # latent-shaped, summed over the batch
    mu: torch.Tensor
    logvar: torch.Tensor


def split_moments(moments, owner: str = "encoder") -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, logvar) from packed ``[B, 2C, ...]`` moments (halves along dim 1, views, not copies) or from a pair."""
    if isinstance(moments, (tuple, list)) and len(moments) == 2:
        mu, logvar = moments
    elif isinstance(moments, torch.Tensor) and moments.dim() >= 2 and moments.shape[1] % 2 == 0:
        mu, logvar = moments.chunk(2, dim=1)
    else:
        shape = tuple(moments.shape) if isinstance(moments, torch.Tensor) else type(moments).__name__
        raise ValueError(f"{owner}.encode must return packed moments [B, 2C, ...] (an even dim 1) or a "
                         f"(mu, logvar) pair, got {shape}")
    if mu.shape != logvar.shape:
        raise ValueError(f"{owner}.encode gave mu {tuple(mu.shape)} and logvar {tuple(logvar.shape)}: they must match")
    return mu, logvar


class VAE(nn.Module):
    architecture = "vaefast"  # what a checkpoint records: vaefast rebuilds its own models from the config
    checkpointed = False  # activation checkpointing of the encoder and decoder
    memory_format = torch.contiguous_format  # of the 4-D weights and image batches (channels_last for some convs)

    def __init__(self, encoder: nn.Module, decoder: nn.Module, likelihood: Likelihood, image_shape, latent_shape,
                 clamp, backend):
        super().__init__()
        self.encoder, self.decoder, self.likelihood = encoder, decoder, likelihood
        self.image_shape, self.latent_shape = tuple(image_shape), tuple(latent_shape)
        self.clamp, self.backend = clamp, backend

    @property
    def latent_size(self) -> int:
        return math.prod(self.latent_shape)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"the model takes images of shape {self.image_shape}, got a batch of {tuple(x.shape)}")
        if x.dim() == 4:
            x = x.contiguous(memory_format=self.memory_format)  # no copy when it already is
        return split_moments(self.moments(x), type(self).__name__)

    def moments(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The encoder's output: packed ``[B, 2C, ...]`` moments or a ``(mu, logvar)`` pair."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def enable_activation_checkpointing(self) -> None:
        """Keep only the encoder's input and the decoder's input for backward and recompute the activations in
        between (torch.utils.checkpoint): one more forward pass of each for a fraction of the activation memory."""
        self.checkpointed = True

    def use_channels_last(self) -> None:
        """NHWC weights and batches: convolutions then skip their layout conversions where the kernels prefer it
        (often on GPU with bf16; measure, as ``benchmarks/bench_autoencoder.py`` does)."""
        self.memory_format = torch.channels_last
        self.to(memory_format=torch.channels_last)

    def _maybe_checkpointed(self, fn, arg):
        if self.checkpointed and torch.is_grad_enabled():
            return checkpoint(fn, arg, use_reentrant=False)
        return fn(arg)

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None, *,
                seed: int | torch.Tensor | None = None, samples: int = 1) -> VAEOutput:
        """``eps``: the noise; or ``seed``: the key of noise drawn inside the fused op (see reparameterize_kl);
        neither: torch.randn_like. ``samples`` = K > 1: K posterior samples per image, decoded as one batch of
        K * B (sample-major)."""
        with stage("encoder"):
            mu, logvar = self._maybe_checkpointed(self.encode, x)
        with stage("reparam/KL"):
            z, kl, kl_per_dim = reparameterize_kl(mu, logvar, eps, seed=seed, samples=samples, clamp=self.clamp,
                                                  backend=self.backend, return_kl_per_dim=True)
        with stage("decoder"):
            decoded = self._maybe_checkpointed(self.decode, z.flatten(0, 1) if samples > 1 else z)
        return VAEOutput(decoded, z, kl, kl_per_dim, mu, logvar)

    def nll(self, decoded: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.likelihood.nll(decoded, x)


def _mlp(sizes: list[int], activation: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def mlp_vae(cfg: ModelConfig, image_shape) -> VAE:
    """784-400-20-400-784 with ReLU (the classic recipe) is ModelConfig(hidden=[400], latent_dim=20)."""
    act = ACTIVATIONS[cfg.activation]
    d = math.prod(image_shape)
    encoder = nn.Sequential(nn.Flatten(), _mlp([d, *cfg.hidden, 2 * cfg.latent_dim], act))
    decoder = nn.Sequential(_mlp([cfg.latent_dim, *reversed(cfg.hidden), d], act), nn.Unflatten(1, image_shape))
    return VAE(encoder, decoder, _likelihood(cfg), image_shape, (cfg.latent_dim,), cfg.clamp, cfg.backend)


def conv_vae(cfg: ModelConfig, image_shape) -> VAE:
    """Stride-2 4x4 convolutions down, transposed convolutions up; H and W must be multiples of 2^depth."""
    act = ACTIVATIONS[cfg.activation]
    c, h, w = image_shape
    factor = 2 ** len(cfg.channels)
    if h % factor or w % factor:
        raise ValueError(f"the conv VAE with {len(cfg.channels)} stages needs H and W divisible by {factor}, "
                         f"got {h}x{w}; change --conv-channels or resize the images")
    hs, ws = h // factor, w // factor
    down: list[nn.Module] = []
    for c_in, c_out in zip([c, *cfg.channels[:-1]], cfg.channels):
        down += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), act()]
    up: list[nn.Module] = []
    rev = list(reversed(cfg.channels))
    for c_in, c_out in zip(rev, rev[1:]):
        up += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), act()]
    up.append(nn.ConvTranspose2d(rev[-1], c, 4, stride=2, padding=1))
    top = cfg.channels[-1]
    if cfg.latent_channels > 0:
        latent_shape = (cfg.latent_channels, hs, ws)
        encoder = nn.Sequential(*down, nn.Conv2d(top, 2 * cfg.latent_channels, 1))
        decoder = nn.Sequential(nn.Conv2d(cfg.latent_channels, top, 1), act(), *up)
    else:
        latent_shape = (cfg.latent_dim,)
        encoder = nn.Sequential(*down, nn.Flatten(), nn.Linear(top * hs * ws, 2 * cfg.latent_dim))
        decoder = nn.Sequential(nn.Linear(cfg.latent_dim, top * hs * ws), act(), nn.Unflatten(1, (top, hs, ws)), *up)
    return VAE(encoder, decoder, _likelihood(cfg), image_shape, latent_shape, cfg.clamp, cfg.backend)


def _likelihood(cfg: ModelConfig) -> Likelihood:
    return make_likelihood(cfg.likelihood, backend=cfg.backend, sigma=cfg.gaussian_sigma, learn_sigma=cfg.learn_sigma)


def build_model(cfg: ModelConfig, image_shape, module: nn.Module | None = None) -> VAE:
    """The model ``cfg`` describes, or ``module`` (any encode/decode module, see models/protocol.py) with the
    likelihood, clamp and backend of ``cfg``."""
    if module is not None:
        from .protocol import as_vae  # protocol.py builds on this module

        return as_vae(module, _likelihood(cfg), image_shape, cfg.clamp, cfg.backend)
    if cfg.activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {cfg.activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    if cfg.kind == "mlp":
        return mlp_vae(cfg, image_shape)
    if cfg.kind == "conv":
        return conv_vae(cfg, image_shape)
    if cfg.kind == "diffusers":
        from ..integrations.diffusers import from_diffusers, load_autoencoder
        from .protocol import ModuleVAE

        if not cfg.diffusers:
            raise ValueError("model kind 'diffusers' needs a preset, config.json or model folder "
                             "(--model diffusers:SPEC)")
        return ModuleVAE(from_diffusers(load_autoencoder(cfg.diffusers)), _likelihood(cfg), image_shape, cfg.clamp,
                         cfg.backend, architecture=VAE.architecture)
    raise ValueError(f"unknown model {cfg.kind!r}; choose 'mlp', 'conv' or 'diffusers'")
