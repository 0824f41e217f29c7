"""Where a diffusers autoencoder comes from: a preset, a ``config.json`` (random init), a local diffusers folder or a
released single file in the original layout (weights). Nothing is fetched from a hub."""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path

from torch import nn

from .adapter import check_autoencoder_class, diffusers_module
from .single_file import autoencoder_tensors, infer_config, is_single_file, read_state_dict, to_diffusers

# The field's layouts (DESIGN.md §8, §12): the architecture and the latents' statistics of each release.
PRESETS = ("sd-kl-f8", "sdxl", "sd3", "flux", "kl-f8-16ch")
# An inferred architecture takes the statistics of the first preset of the same layout; the others share it.
SHARED_LAYOUTS = {"sd-kl-f8": "sdxl", "flux": "sd3"}


def preset_config(name: str) -> dict:
    return json.loads(resources.files(__package__).joinpath("presets", f"{name}.json").read_text())


def read_config(spec: str) -> dict:
    """A config from a preset name, a ``config.json`` or a diffusers folder (its ``config.json``, or ``vae/``'s in a
    pipeline folder)."""
    if spec in PRESETS:
        return preset_config(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        path = next((p for p in (path / "config.json", path / "vae" / "config.json") if p.is_file()), path)
        if path.is_dir():
            raise FileNotFoundError(f"{spec}: a folder without config.json (nor vae/config.json)")
    if not path.is_file():
        raise FileNotFoundError(f"model config {spec!r}: not a preset ({', '.join(PRESETS)}), a config.json or a "
                                "diffusers folder")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a diffusers config.json ({exc})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not a diffusers config.json (a JSON object)")
    return config


def autoencoder_class(config: dict, origin: str) -> type:
    name = config.get("_class_name", "AutoencoderKL")
    cls = getattr(diffusers_module(), name, None)
    if not isinstance(cls, type):
        raise ValueError(f"{origin}: diffusers has no class {name!r}")
    check_autoencoder_class(cls, origin)
    return cls


def load_autoencoder(spec: str, model_config: str | None = None, *, quiet: bool = False) -> nn.Module:
    """A diffusers autoencoder from ``spec``: a preset name or a ``config.json`` (random init), a local diffusers
    folder (its weights, for fine-tuning), or a single ``.safetensors`` / ``.ckpt`` file in the original layout,
    whose architecture is ``model_config`` (preset, ``config.json`` or folder) or read from the tensor shapes."""
    path = Path(spec).expanduser()
    if spec not in PRESETS and is_single_file(path):
        return load_single_file(path, model_config, quiet=quiet)
    if model_config is not None:
        raise ValueError("--model-config gives the architecture of a single weights file; "
                         f"{spec} carries its own")
    if path.is_dir():
        config = read_config(str(path))
        cls = autoencoder_class(config, str(path))
        folder = path / "vae" if not (path / "config.json").is_file() else path
        return cls.from_pretrained(str(folder), local_files_only=True)
    if spec in PRESETS or path.is_file():
        config = read_config(spec)
        return autoencoder_class(config, spec).from_config(config)
    raise FileNotFoundError(f"diffusers model {spec!r}: not a preset ({', '.join(PRESETS)}), a config.json, a local "
                            "model folder or a .safetensors/.ckpt file")


def load_single_file(path: Path, model_config: str | None, *, quiet: bool = False) -> nn.Module:
    tensors = autoencoder_tensors(read_state_dict(path), str(path))
    if model_config is not None:
        config = read_config(model_config)
    else:
        config = inferred_with_statistics(infer_config(tensors, str(path)), path, quiet)
    cls = autoencoder_class(config, model_config or str(path))
    try:
        vae = cls.from_config(config)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ValueError(f"{path}: {model_config or 'the architecture read from its tensors'} does not build a "
                         f"{cls.__name__} ({exc}); pass --model-config") from None
    converted = to_diffusers(tensors, vae.config) if cls.__name__ == "AutoencoderKL" else tensors
    missing, unexpected = _mismatch(vae, converted)
    if missing or unexpected:
        raise ValueError(f"{path}: its tensors do not fit {model_config or 'the architecture read from it'} "
                         f"({len(missing)} missing, e.g. {missing[:2]}; {len(unexpected)} unexpected, e.g. "
                         f"{unexpected[:2]})")
    vae.load_state_dict(converted, strict=True)
    return vae


def _mismatch(vae: nn.Module, state: dict) -> tuple[list[str], list[str]]:
    own = vae.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    shapes = sorted(k for k in own if k in state and own[k].numel() != state[k].numel())
    return missing + shapes, unexpected


def inferred_with_statistics(config: dict, path: Path, quiet: bool) -> dict:
    """The inferred architecture with the latent statistics of the preset of the same layout (the released files
    carry none); which one, and how to choose another, is said on stderr."""
    for name in SHARED_LAYOUTS:
        preset = preset_config(name)
        if all(preset.get(k) == v for k, v in config.items() if k not in ("_class_name", "mid_block_add_attention")):
            statistics = {k: preset[k] for k in ("scaling_factor", "shift_factor", "sample_size") if k in preset}
            if not quiet:
                print(f"vaefast: {path.name}: the {name} layout (scaling_factor {preset['scaling_factor']}); pass "
                      f"--model-config {SHARED_LAYOUTS[name]} for the {SHARED_LAYOUTS[name]} one", file=sys.stderr)
            return {**config, **statistics}
    if not quiet:
        print(f"vaefast: {path.name}: architecture read from its tensors (no preset matches; scaling_factor is "
              "diffusers' default until export measures it)", file=sys.stderr)
    return config
