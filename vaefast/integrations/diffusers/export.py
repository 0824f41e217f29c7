"""``vaefast export``: a trained diffusers autoencoder as a folder its own class's ``from_pretrained`` loads, or as
one ``.safetensors`` file in the original layout that ``AutoencoderKL.from_single_file`` reads, with the latents'
statistics a diffusion model trained on it needs.

``scaling_factor`` is what a diffusion model multiplies the latents by to give them unit variance (1/std), and
``shift_factor`` what it subtracts first (their mean; SD3 and FLUX.1 have one, SD 1.x and SDXL do not). Both depend
on the encoder, so a run that trained it has them measured here over training images; after a decoder-only run the
latents are the original's and so are the factors. Classes that keep per-channel ``latents_mean`` / ``latents_std``
lists get those measured per channel.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .adapter import DiffusersAutoencoder
from .single_file import to_original_layout, write_single_file

FORMATS = ("diffusers", "single-file")


def statistics_config(config, stats) -> dict:
    """The config entries ``stats`` (vaefast.eval.latents.LatentStatistics) sets, in the form ``config`` (the
    class's) uses."""
    updates = {}
    if config.get("latents_mean") is not None and config.get("latents_std") is not None:
        updates.update(latents_mean=[round(v, 6) for v in stats.channel_mean],
                       latents_std=[round(v, 6) for v in stats.channel_std])
    if "scaling_factor" in config:
        updates["scaling_factor"] = round(1.0 / stats.std, 6)
        if config.get("shift_factor") is not None:
            updates["shift_factor"] = round(stats.mean, 6)
    return updates


def batch_norm_statistics(vae: nn.Module) -> tuple[int, int] | None:
    """The patch size of a class that normalizes its latents with a BatchNorm's running statistics over patchified
    channels (FLUX.2's ``bn``), else None."""
    bn = getattr(vae, "bn", None)
    if isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats and vae.config.get("patch_size"):
        return tuple(vae.config.patch_size)
    return None


@torch.no_grad()
def set_batch_norm_statistics(vae: nn.Module, stats) -> None:
    """FLUX.2's ``bn`` running mean and variance from measured per-channel statistics."""
    vae.bn.running_mean.copy_(torch.tensor(stats.channel_mean))
    vae.bn.running_var.copy_(torch.tensor(stats.channel_std).square())


def autoencoder_of(model: nn.Module) -> nn.Module:
    """The diffusers model inside a vaefast model built on one."""
    module = getattr(model, "module", None)
    if not isinstance(module, DiffusersAutoencoder):
        raise ValueError("only models built on a diffusers autoencoder (--model diffusers:...) export to diffusers")
    return module.vae


def export(model: nn.Module, out: str | Path, *, fmt: str = "diffusers", config_updates: dict | None = None) -> Path:
    """Write the diffusers model inside ``model`` (float32) with ``config_updates`` in its config: a folder
    (``save_pretrained``) or, with ``fmt="single-file"``, ``out`` as one ``.safetensors`` in the original layout
    (``AutoencoderKL`` only) with its config in the folder ``<out>-config`` beside it (``from_single_file``'s
    ``config=``)."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    vae = autoencoder_of(model).to(torch.float32)
    if config_updates:
        vae.register_to_config(**config_updates)
    out = Path(out)
    if fmt == "diffusers":
        vae.save_pretrained(str(out))
        return out
    if type(vae).__name__ != "AutoencoderKL":
        raise ValueError(f"--format single-file writes the original layout of AutoencoderKL; {type(vae).__name__} "
                         "has none: export a diffusers folder")
    if out.suffix != ".safetensors":
        out = out.with_suffix(".safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    state = to_original_layout({k: v.detach().cpu() for k, v in vae.state_dict().items()}, dict(vae.config))
    write_single_file(state, out, metadata={"format": "pt"})
    vae.save_config(str(out.with_suffix("")) + "-config")  # from_single_file(..., config=<that folder>)
    return out
