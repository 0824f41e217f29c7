"""The VAE: an encoder to (mu, logvar), the fused ``reparameterize_kl`` (which also gives the per-dim KL for
active-unit monitoring and free bits), and a decoder to the parameters of its likelihood. The architectures that
fill it are built in vaefast.models.factory; any encode/decode module fits through vaefast.models.protocol.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..ops import reparameterize_kl
from ..instrument import stage
from .likelihoods import Likelihood



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
    checkpointed = False  # activation checkpointing of the encoder and (checkpoint_decoder) the decoder
    checkpoint_decoder = True
    memory_format = torch.contiguous_format  # of the 4-D weights and image batches (channels_last for some convs)
    encoder_frozen = False  # --train decoder
    other_frame_counts: tuple[int, ...] = ()  # clip lengths taken besides image_shape's (--image-ratio's one frame)

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
        if tuple(x.shape[1:]) != self.image_shape and not self._other_clip_length(x):
            raise ValueError(f"the model takes images of shape {self.image_shape}, got a batch of {tuple(x.shape)}")
        if x.dim() == 4:
            x = x.contiguous(memory_format=self.memory_format)  # no copy when it already is
        return split_moments(self.moments(x), type(self).__name__)

    def _other_clip_length(self, x: torch.Tensor) -> bool:
        shape = self.image_shape
        return (x.dim() == 5 and x.shape[2] in self.other_frame_counts
                and (x.shape[1], *x.shape[3:]) == (shape[0], *shape[2:]))

    def moments(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The encoder's output: packed ``[B, 2C, ...]`` moments or a ``(mu, logvar)`` pair."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def last_layer(self) -> nn.Parameter:
        """The weight of the decoder's last layer: where the LDM recipe's adaptive weight compares the gradient norms
        of its pixel and adversarial terms."""
        weights = [m.weight for m in self.decoder.modules() if isinstance(getattr(m, "weight", None), nn.Parameter)]
        if not weights:
            raise ValueError(f"{type(self).__name__}'s decoder has no layer with a weight for the adaptive weight")
        return weights[-1]

    def decoder_parts(self) -> list[nn.Module]:
        """What ``--train decoder`` trains: the decoder and the likelihood's own parameters (a learned scale)."""
        if self.decoder is None:
            raise ValueError(f"--train decoder: {type(self).__name__} has no decoder")
        return [self.decoder, self.likelihood]

    def freeze_encoder(self) -> None:
        """Train the decoder parts only: every other parameter stops taking gradients, the encoder runs without
        building a graph and its modules stay in eval mode (dropout off, normalization statistics unchanged), so the
        latents are the ones the weights give, as a diffusion model trained on them expects."""
        parts = self.decoder_parts()
        trained = {id(p) for part in parts for p in part.parameters()}
        self._decoder_modules = {id(m) for part in parts for m in part.modules()}
        for p in self.parameters():
            if id(p) not in trained:
                p.requires_grad_(False)
        self.encoder_frozen = True
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.encoder_frozen:
            for m in self.modules():  # one by one: eval() would reach the decoder through a common parent
                if id(m) not in self._decoder_modules:
                    m.training = False
        return self

    def frozen_names(self) -> set[str]:
        return {name for name, p in self.named_parameters() if not p.requires_grad}

    def trained_state_dict(self, state: dict | None = None) -> dict:
        """``state`` (default: ``state_dict()``) without the frozen parameters: what a checkpoint holds. The frozen
        ones come from where the model was built from (the released weights), unchanged."""
        frozen = self.frozen_names()
        return {k: v for k, v in (self.state_dict() if state is None else state).items() if k not in frozen}

    def load_trained_state(self, state: dict) -> None:
        """Load a checkpoint's weights: all of them, or with a frozen encoder all but the frozen parameters."""
        if not self.encoder_frozen:
            self.load_state_dict(state)
            return
        missing, unexpected = self.load_state_dict(state, strict=False)
        untrained = sorted(set(missing) - self.frozen_names())
        if untrained or unexpected:
            raise RuntimeError(f"missing {untrained[:3]}, unexpected {sorted(unexpected)[:3]}")

    def enable_activation_checkpointing(self, decoder: bool = True) -> None:
        """Keep only the encoder's input and the decoder's input for backward and recompute the activations in
        between (torch.utils.checkpoint): one more forward pass of each for a fraction of the activation memory.
        ``decoder=False`` leaves the decoder as it is: the LDM recipe takes the last layer's gradient with
        ``retain_graph`` before the backward, which would recompute a checkpointed decoder and keep the recomputation
        until the backward, more memory than not checkpointing it (bench_video.py measured it)."""
        self.checkpointed, self.checkpoint_decoder = True, decoder

    def use_channels_last(self) -> None:
        """NHWC weights and batches: convolutions then skip their layout conversions where the kernels prefer it
        (often on GPU with bf16; measure, as ``benchmarks/bench_autoencoder.py`` does)."""
        self.memory_format = torch.channels_last
        self.to(memory_format=torch.channels_last)

    def _maybe_checkpointed(self, fn, arg):
        if self.checkpointed and torch.is_grad_enabled() and (self.checkpoint_decoder or fn != self.decode):
            return checkpoint(fn, arg, use_reentrant=False)
        return fn(arg)

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None, *,
                seed: int | torch.Tensor | None = None, samples: int = 1, float32_latent: bool = False) -> VAEOutput:
        """``eps``: the noise; or ``seed``: the key of noise drawn inside the fused op (see reparameterize_kl);
        neither: torch.randn_like. ``samples`` = K > 1: K posterior samples per image, decoded as one batch of
        K * B (sample-major). ``float32_latent``: mu and logvar of a lower precision (bf16 under autocast) are
        widened to float32 before the reparameterization, so that z is not rounded to their 8 bits of mantissa
        (what the importance weights need; the decoder still casts z as autocast says)."""
        with stage("encoder"), torch.no_grad() if self.encoder_frozen else nullcontext():
            mu, logvar = self._maybe_checkpointed(self.encode, x)
        if float32_latent and mu.dtype in (torch.bfloat16, torch.float16):
            mu, logvar = mu.float(), logvar.float()
        with stage("reparam/KL"):
            z, kl, kl_per_dim = reparameterize_kl(mu, logvar, eps, seed=seed, samples=samples, clamp=self.clamp,
                                                  backend=self.backend, return_kl_per_dim=True)
        with stage("decoder"):
            decoded = self._maybe_checkpointed(self.decode, z.flatten(0, 1) if samples > 1 else z)
        return VAEOutput(decoded, z, kl, kl_per_dim, mu, logvar)

    def nll(self, decoded: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.likelihood.nll(decoded, x)
