"""The models a config names: the MLP VAE, the convolutional VAE (flat or spatial latent), a diffusers
AutoencoderKL, or the caller's own encode/decode module."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ModelConfig
from .likelihoods import Likelihood, make_likelihood
from .protocol import ModuleVAE, as_vae
from .vae import VAE

ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU}


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


def build_model(cfg: ModelConfig, image_shape, module: nn.Module | None = None, *, quiet: bool = False,
                also_frames: tuple[int, ...] = ()) -> VAE:
    """The model ``cfg`` describes, or ``module`` (any encode/decode module, see models/protocol.py) with the
    likelihood, clamp and backend of ``cfg``. ``quiet``: no notes on stderr (about a released file's layout);
    ``also_frames``: clip lengths besides ``image_shape``'s that a video autoencoder must give back (--image-ratio's
    one-frame clips)."""
    if module is not None:
        return as_vae(module, _likelihood(cfg), image_shape, cfg.clamp, cfg.backend)
    if cfg.kind == "mlp":
        return mlp_vae(cfg, image_shape)
    if cfg.kind == "conv":
        return conv_vae(cfg, image_shape)
    if cfg.diffusers is not None:
        # diffusers is imported only here
        from ..integrations.diffusers import check_gaussian_posterior, from_diffusers, load_autoencoder

        autoencoder = load_autoencoder(cfg.diffusers, cfg.model_config, quiet=quiet)
        _check_fits(autoencoder, image_shape, cfg.kind)
        check_gaussian_posterior(autoencoder, image_shape, cfg.kind)
        if len(image_shape) == 4:
            for frames in (image_shape[1], *also_frames):
                _check_frames(from_diffusers(autoencoder), (image_shape[0], frames, *image_shape[2:]), cfg.kind)
        model = ModuleVAE(from_diffusers(autoencoder), _likelihood(cfg), image_shape, cfg.clamp, cfg.backend,
                          architecture=VAE.architecture)
        model.other_frame_counts = tuple(also_frames)
        return model
    raise ValueError(f"unknown model {cfg.kind!r}; choose mlp, conv or diffusers:SPEC")


@torch.no_grad()
def _check_frames(adapter, clip_shape, name: str) -> None:
    """Refuse, before the first step, a clip length the model does not give back (causal video autoencoders take
    1 + 4k frames and silently drop the rest)."""
    was_training = adapter.training
    adapter.eval()
    try:
        moments = adapter.encode(torch.zeros(1, *clip_shape, device=next(adapter.parameters()).device))
        frames = adapter.decode(moments[:, :moments.shape[1] // 2]).shape[2]
    finally:
        adapter.train(was_training)
    if frames != clip_shape[1] and clip_shape[1] == 1:
        raise ValueError(f"{name} gives back {frames} frames for a one-frame clip: --image-ratio needs a model that "
                         "encodes single frames (a causal one, such as Wan's)")
    if frames != clip_shape[1]:
        raise ValueError(f"{name} gives back {frames} frames for a clip of {clip_shape[1]}: pass a --frames it "
                         "keeps (causal models with 4x temporal compression, such as Wan's, take 1 + 4k)")


def _check_fits(autoencoder, image_shape, name: str) -> None:
    """Refuse, before the first step, images a diffusers autoencoder cannot reconstruct at their own size."""
    config = autoencoder.config
    channels, height, width = image_shape[0], image_shape[-2], image_shape[-1]
    in_channels = config.get("in_channels", config.get("input_channels"))
    if in_channels is not None and channels != in_channels:
        raise ValueError(f"{name} takes {in_channels}-channel images; the data has {channels} channels")
    factor = config.get("spatial_compression_ratio") or getattr(autoencoder, "spatial_compression_ratio", None)
    if factor is None and "block_out_channels" in config:
        factor = 2 ** (len(config.block_out_channels) - 1)
    if factor is None and "dim_mult" in config:  # Wan-style classes
        factor = 2 ** (len(config.dim_mult) - 1)
    factor = int(factor or 1)
    if height % factor or width % factor:
        raise ValueError(f"{name} downsamples by {factor}: the image size must be a multiple of {factor}, got "
                         f"{height}x{width} (pass --image-size {max(factor, height // factor * factor)})")
