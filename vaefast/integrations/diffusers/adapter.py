"""One adapter for every diffusers autoencoder with a Gaussian posterior (``AutoencoderKL``, ``AutoencoderKLFlux2``,
``AutoencoderKLQwenImage``, ``AutoencoderKLHunyuanImage``, ...): the class's own ``_encode`` up to the packed mean and
log-variance (what its ``encode`` hands to ``DiagonalGaussianDistribution``), vaefast's fused op, the class's own
``_decode``. Nothing is written per class: the classes differ in their blocks, not in this boundary.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn


def diffusers_module():
    try:
        import diffusers
    except ImportError as exc:
        raise ImportError(f"the diffusers integration needs diffusers: pip install 'vaefast[diffusers]' ({exc})") \
            from None
    return diffusers


def check_autoencoder_class(cls: type, origin: str) -> None:
    """Refuse, naming ``origin``, a class that is not a diffusers autoencoder with an encoder and a decoder."""
    missing = [name for name in ("_encode", "_decode", "encode") if not callable(getattr(cls, name, None))]
    if missing:
        raise ValueError(f"{origin}: {cls.__name__} is not an autoencoder with a Gaussian posterior (no "
                         f"{', '.join(missing)}); vaefast trains diffusers' KL autoencoders (AutoencoderKL, "
                         "AutoencoderKLFlux2, AutoencoderKLQwenImage, AutoencoderKLHunyuanImage, ...)")


@torch.no_grad()
def check_gaussian_posterior(vae: nn.Module, image_shape, origin: str) -> None:
    """One encode of a blank image through the class's public ``encode``: its ``latent_dist`` must be diffusers'
    ``DiagonalGaussianDistribution`` (a VQ, tiny or deterministic autoencoder has none)."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    parameter = next(vae.parameters())
    x = torch.zeros(1, *image_shape, device=parameter.device, dtype=parameter.dtype)
    if takes_frames(vae) and x.dim() == 4:
        x = x.unsqueeze(2)
    was_training = vae.training
    vae.eval()
    try:
        out = vae.encode(x)
    finally:
        vae.train(was_training)
    posterior = getattr(out, "latent_dist", None)
    if not isinstance(posterior, DiagonalGaussianDistribution):
        raise ValueError(f"{origin}: {type(vae).__name__}.encode gives no Gaussian posterior (latent_dist); vaefast "
                         "trains diffusers' KL autoencoders")


def takes_frames(vae: nn.Module) -> bool:
    """Whether the class reads ``[B, C, T, H, W]``: video autoencoders, and Wan-style image ones (which take one
    frame, T = 1: an image batch gets that axis added and dropped)."""
    return any(isinstance(m, nn.Conv3d) for m in vae.encoder.modules())


class DiffusersAutoencoder(nn.Module):
    """A diffusers autoencoder behind vaefast's protocol; ``self.vae`` is the unchanged diffusers model.

    vaefast's batches are in [0, 1]; diffusers' autoencoders take and return [-1, 1], the range Stable Diffusion's
    VAEs were trained on and that pipelines feed them. The adapter maps ``2x - 1`` into the encoder and the decoder's
    output back with ``(y + 1) / 2``, so pretrained weights are fine-tuned in their own convention and exported
    weights drop into a pipeline unchanged.
    """

    def __init__(self, vae: nn.Module):
        super().__init__()
        check_autoencoder_class(type(vae), type(vae).__name__)
        self.vae = vae
        self.frames = takes_frames(vae)

    def enable_gradient_checkpointing(self) -> bool:
        """diffusers' own checkpointing of each down/mid/up block where the class has it (True); False for the
        classes without (Wan's), which vaefast then checkpoints as a whole encoder and decoder."""
        if not getattr(self.vae, "_supports_gradient_checkpointing", False):
            return False
        self.vae.enable_gradient_checkpointing()
        return True

    def decoder_parts(self) -> list[nn.Module]:
        """What ``--train decoder`` trains: the decoder and the 1x1 convolution before it, LDM's split."""
        post = getattr(self.vae, "post_quant_conv", None)
        return [self.vae.decoder] + ([post] if post is not None else [])

    def last_layer(self) -> nn.Parameter:
        """The decoder's output convolution (LDM's ``get_last_layer()``): ``decoder.conv_out`` where the class names
        one, else the last convolution the decoder registers."""
        conv_out = getattr(self.vae.decoder, "conv_out", None)
        if isinstance(getattr(conv_out, "weight", None), nn.Parameter):
            return conv_out.weight
        convs = [m.weight for m in self.vae.decoder.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
        if not convs:
            raise ValueError(f"{type(self.vae).__name__}'s decoder has no convolution for the adaptive weight")
        return convs[-1]

    def enable_tiling(self, size: int | None = None, frames: int | None = None) -> str:
        """diffusers' own tiled encoding and decoding, for evaluation of large images and long clips: spatial tiles of
        ``size`` pixels and, where the class tiles time (LTX-Video, HunyuanVideo), windows of ``frames`` frames,
        each overlapping its neighbour by about a quarter and blended as diffusers blends them. Says what it set."""
        enable = getattr(self.vae, "enable_tiling", None)
        if enable is None:
            raise ValueError(f"{type(self.vae).__name__} has no tiled encoding or decoding in diffusers")
        accepted = inspect.signature(enable).parameters
        wanted = {}

        def stride(extent: int, ratio_name: str) -> int:  # a whole number of latent pixels or frames
            ratio = int(getattr(self.vae, ratio_name, 1) or 1)
            return max(ratio, extent * 3 // 4 // ratio * ratio)

        if size is not None:
            step = stride(size, "spatial_compression_ratio")
            wanted.update(tile_sample_min_height=size, tile_sample_min_width=size, tile_sample_stride_height=step,
                          tile_sample_stride_width=step)
        if frames is not None:
            wanted.update(tile_sample_min_num_frames=frames,
                          tile_sample_stride_num_frames=stride(frames, "temporal_compression_ratio"))
        enable(**{k: v for k, v in wanted.items() if k in accepted})
        said = [f"spatial tiles of {getattr(self.vae, 'tile_sample_min_height', None) or size or 'its default'} px"]
        if size is not None and "tile_sample_min_height" not in accepted and hasattr(self.vae, "tile_sample_min_size"):
            factor = self.vae.tile_sample_min_size // self.vae.tile_latent_min_size  # AutoencoderKL: attributes only
            self.vae.tile_sample_min_size, self.vae.tile_latent_min_size = size, size // factor
        if frames is not None:
            if "tile_sample_min_num_frames" not in accepted:
                raise ValueError(f"{type(self.vae).__name__} tiles space only; --tile-frames needs a class that "
                                 "tiles time (AutoencoderKLLTXVideo, AutoencoderKLHunyuanVideo)")
            for name in ("use_framewise_encoding", "use_framewise_decoding"):
                if hasattr(self.vae, name):
                    setattr(self.vae, name, True)
            said.append(f"windows of {frames} frames")
        return " and ".join(said)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` or clips ``[B, C, T, H, W]`` in [0, 1] to the packed moments."""
        one_frame = self.frames and x.dim() == 4
        moments = self.vae._encode((x * 2 - 1).unsqueeze(2) if one_frame else x * 2 - 1)
        return moments.squeeze(2) if one_frame else moments

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        one_frame = self.frames and z.dim() == 4
        decoded = self.vae._decode(z.unsqueeze(2) if one_frame else z, return_dict=False)[0]
        if one_frame:
            decoded = decoded.squeeze(2)
        return (decoded + 1) * 0.5


def from_diffusers(vae: nn.Module) -> DiffusersAutoencoder:
    return DiffusersAutoencoder(vae)
