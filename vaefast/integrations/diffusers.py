"""diffusers' ``AutoencoderKL`` with vaefast's fused reparameterization and KL (``pip install 'vaefast[diffusers]'``).

Two ways in:
- ``from_diffusers(vae)`` adapts an AutoencoderKL to vaefast's encode/decode protocol (models/protocol.py):
  ``quant_conv(encoder(x))`` gives the packed moments, the fused op draws z and the KL, and
  ``decoder(post_quant_conv(z))`` decodes, so ``Trainer(cfg, model=from_diffusers(vae))`` trains it, and
  ``vaefast train --model diffusers:SPEC`` does the same from a preset, a ``config.json`` or a model folder.
- ``patch()`` makes diffusers' own ``DiagonalGaussianDistribution.sample()`` and ``.kl()`` run the fused op, for
  people who keep their own diffusers training loop; ``unpatch()`` restores them. Values and gradients match
  unpatched diffusers for the same ``generator``.

Nothing is downloaded: a preset or ``config.json`` gives a randomly initialized model; ``from_pretrained`` reads
only a local folder.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from ..config.sections import DIFFUSERS_CLAMP
from ..ops import reparameterize_kl

# diffusers clamps the log-variance to this range in DiagonalGaussianDistribution.
PRESETS = ("sd-kl-f8", "kl-f8-16ch")


def _autoencoder_kl():
    try:
        from diffusers import AutoencoderKL
    except ImportError as exc:
        raise ImportError(f"the diffusers integration needs diffusers: pip install 'vaefast[diffusers]' ({exc})") \
            from None
    return AutoencoderKL


class DiffusersAutoencoder(nn.Module):
    """An ``AutoencoderKL`` behind vaefast's protocol; ``self.vae`` is the unchanged diffusers model.

    vaefast's batches are in [0, 1]; diffusers' autoencoders take and return [-1, 1], the range Stable Diffusion's
    VAEs were trained on and that pipelines feed them. The adapter maps ``2x - 1`` into the encoder and the decoder's
    output back with ``(y + 1) / 2``, so pretrained weights are fine-tuned in their own convention and exported
    weights drop into a pipeline unchanged.
    """

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def enable_gradient_checkpointing(self) -> None:
        self.vae.enable_gradient_checkpointing()  # diffusers checkpoints each down/mid/up block

    def last_layer(self) -> nn.Parameter:
        return self.vae.decoder.conv_out.weight  # what LDM's get_last_layer() returns

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        h = self.vae.encoder(x * 2 - 1)
        return self.vae.quant_conv(h) if self.vae.quant_conv is not None else h

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.vae.post_quant_conv is not None:
            z = self.vae.post_quant_conv(z)
        return (self.vae.decoder(z) + 1) * 0.5


def from_diffusers(vae: nn.Module) -> DiffusersAutoencoder:
    return DiffusersAutoencoder(vae)


def load_autoencoder(spec: str) -> nn.Module:
    """An AutoencoderKL from a preset name (random init), a ``config.json`` (random init) or a local model folder
    (its weights, for fine-tuning)."""
    AutoencoderKL = _autoencoder_kl()
    if spec in PRESETS:
        config = json.loads(resources.files("vaefast.integrations.presets").joinpath(f"{spec}.json").read_text())
        return AutoencoderKL.from_config(config)
    path = Path(spec).expanduser()
    if path.is_file():
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not a diffusers config.json ({exc})") from None
        return AutoencoderKL.from_config(config)
    if path.is_dir():
        return AutoencoderKL.from_pretrained(str(path), local_files_only=True)
    raise FileNotFoundError(f"diffusers model {spec!r}: not a preset ({', '.join(PRESETS)}), a config.json or a "
                            "local model folder")


def export_pretrained(model: nn.Module, out: str | Path) -> Path:
    """Write a vaefast model built on an AutoencoderKL as a diffusers folder (``save_pretrained``), float32."""
    module = getattr(model, "module", None)
    if not isinstance(module, DiffusersAutoencoder):
        raise ValueError("only models built on a diffusers AutoencoderKL (--model diffusers:...) export to diffusers")
    out = Path(out)
    module.vae.to(torch.float32).save_pretrained(str(out))
    return out


_ORIGINAL: dict[str, object] = {}


def _fused_sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
    if self.deterministic:
        return _ORIGINAL["sample"](self, generator)
    from diffusers.utils.torch_utils import randn_tensor

    # The same draw as diffusers' own sample(), so that a generator gives the same z.
    eps = randn_tensor(self.mean.shape, generator=generator, device=self.parameters.device,
                       dtype=self.parameters.dtype)
    z, kl = reparameterize_kl(self.mean, self.logvar, eps, clamp=DIFFUSERS_CLAMP)
    self._vaefast_kl = kl  # the KL does not depend on eps: kl() reuses this pass
    return z


def _fused_kl(self, other=None) -> torch.Tensor:
    if self.deterministic or other is not None:
        return _ORIGINAL["kl"](self, other)
    kl = getattr(self, "_vaefast_kl", None)
    if kl is None:
        _, kl = reparameterize_kl(self.mean, self.logvar, torch.zeros_like(self.mean), clamp=DIFFUSERS_CLAMP)
    return kl.to(self.mean.dtype)


def patch() -> None:
    """Route ``DiagonalGaussianDistribution.sample()`` and ``.kl()`` through the fused op (idempotent)."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    if not _ORIGINAL:
        _ORIGINAL.update(sample=DiagonalGaussianDistribution.sample, kl=DiagonalGaussianDistribution.kl)
        DiagonalGaussianDistribution.sample = _fused_sample
        DiagonalGaussianDistribution.kl = _fused_kl


def unpatch() -> None:
    """Restore diffusers' own ``sample()`` and ``kl()``."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    if _ORIGINAL:
        DiagonalGaussianDistribution.sample = _ORIGINAL.pop("sample")
        DiagonalGaussianDistribution.kl = _ORIGINAL.pop("kl")
