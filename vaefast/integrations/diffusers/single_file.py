"""Released weights in the original (CompVis / Stability / Black Forest Labs) single-file layout, in and out.

In: ``read_state_dict`` reads a ``.safetensors`` file (no code runs) or a ``.ckpt`` (``torch.load(weights_only=True)``,
which refuses anything but tensors and plain containers); ``infer_config`` reads the architecture of the standard
layouts from the tensors' shapes; diffusers' own ``convert_ldm_vae_checkpoint`` renames the keys (vaefast keeps no
copy of that map). Out: ``to_original_layout`` is the inverse rename, which diffusers does not ship; every export is
checked by running diffusers' conversion on it and comparing with the model's own state dict.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

# Full Stable Diffusion checkpoints keep the autoencoder under this prefix; VAE-only releases have none.
PREFIXES = ("first_stage_model.", "vae.")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def is_single_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in SINGLE_FILE_SUFFIXES


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a single file, as stored; a corrupt or truncated file raises a ValueError naming it."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as exc:  # SafetensorError, UnpicklingError, a zip error: a file that is not what it says
        raise ValueError(f"{path}: cannot read the weights ({type(exc).__name__}: {str(exc).splitlines()[0]})") \
            from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # Lightning checkpoints
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    return state


def autoencoder_tensors(state: dict[str, torch.Tensor], origin: str) -> dict[str, torch.Tensor]:
    """The autoencoder's tensors, without a full checkpoint's prefix; a file of something else (a UNet, a text
    encoder) is refused with what it seems to hold."""
    for prefix in PREFIXES:
        if any(k.startswith(prefix + "encoder.conv_in.") for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if "encoder.conv_in.weight" in state and "decoder.conv_out.weight" in state:
        return state
    sample = ", ".join(sorted(state)[:3])
    raise ValueError(f"{origin}: not an autoencoder in the original layout (no encoder.conv_in / decoder.conv_out "
                     f"weights; its first keys: {sample})")


def infer_config(state: dict[str, torch.Tensor], origin: str) -> dict:
    """An ``AutoencoderKL`` config from the tensor shapes of the original layout (SD 1.x/2.x, SDXL, SD3, FLUX.1)."""
    def shape(key):
        if key not in state:
            raise ValueError(f"{origin}: {key} is missing, so the architecture cannot be read from the file; pass "
                             "--model-config")
        return state[key].shape

    levels = sorted({int(m.group(1)) for k in state if (m := re.match(r"encoder\.down\.(\d+)\.", k))})
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))}
    if not levels or not blocks:
        raise ValueError(f"{origin}: no encoder.down.N.block.M weights: not the standard KL-f layout; pass "
                         "--model-config")
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": shape("encoder.conv_in.weight")[1],
        "out_channels": shape("decoder.conv_out.weight")[0],
        "block_out_channels": [shape(f"encoder.down.{i}.block.0.conv2.weight")[0] for i in levels],
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "layers_per_block": len(blocks),
        "latent_channels": shape("decoder.conv_in.weight")[1],
        "use_quant_conv": "quant_conv.weight" in state,
        "use_post_quant_conv": "post_quant_conv.weight" in state,
        "mid_block_add_attention": "encoder.mid.attn_1.q.weight" in state,
    }


def to_diffusers(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """diffusers' own conversion of the original layout."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(state, dict(config))


def to_original_layout(diffusers_state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """An ``AutoencoderKL`` state dict in the original layout: the inverse of ``convert_ldm_vae_checkpoint``, checked
    against it (a key or value that does not come back unchanged raises)."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    top = DIFFUSERS_TO_LDM_MAPPING["vae"]
    levels = len(config["up_block_types"])
    original = {}
    for key, value in diffusers_state.items():
        if key in top:
            original[top[key]] = value
            continue
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", key)
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.",
                     lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.block.", new)
        new = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                     lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.upsample.", new)
        new = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m.group(1)) + 1}.", new)
        new = new.replace("conv_shortcut", "nin_shortcut")
        if "mid_block.attentions.0." in new:
            new = new.replace("mid_block.attentions.0.", "mid.attn_1.")
            for theirs, ours in (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                                 ("to_out.0.", "proj_out.")):
                new = new.replace(theirs, ours)
            if value.dim() == 2:  # a Linear in diffusers, a 1x1 convolution in the original
                value = value[:, :, None, None]
        original[new] = value
    back = to_diffusers(original, config)
    wrong = sorted(set(back) ^ set(diffusers_state)) or \
        [k for k in back if not torch.equal(back[k].reshape(diffusers_state[k].shape), diffusers_state[k])]
    if wrong:
        raise RuntimeError(f"the original-layout export does not convert back in diffusers (e.g. {wrong[:3]}): "
                           "please report this with your diffusers version")
    return {k: v.contiguous() for k, v in original.items()}


def write_single_file(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    save_file(state, str(path), metadata=metadata)
    return path
