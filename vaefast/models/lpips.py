"""LPIPS (Zhang et al., 2018) on VGG16: the perceptual distance of the Latent-Diffusion autoencoder recipe.

The network, step by step: a fixed affine scaling of the [-1, 1] input; VGG16's convolutional trunk, read after the
last ReLU of each of its five stages; each feature map divided by its per-position channel norm; the squared
difference of the two images' maps; a 1×1 convolution per stage (the "linear layers", calibrated on human
judgments); the spatial mean; the sum over stages. One value per image, ``[B, 1, 1, 1]``.

Weights come from local files only, never from a download:
- the linear layers ship with vaefast (``models/weights/``, BSD-2-Clause, from the ``lpips`` package);
- the VGG16 trunk is torchvision's ImageNet classifier, read from a file in torchvision's state-dict format
  (``features.{i}.weight`` / ``.bias``): the path given, else torch's hub cache, where torchvision saves it as
  ``checkpoints/vgg16-397923af.pth``.
Both are read with ``torch.load(weights_only=True)``: nothing in a weights file runs.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from torch import nn

VGG16_FILE = "vgg16-397923af.pth"  # the name torchvision gives its ImageNet VGG16 in the hub cache
# VGG16's convolutional trunk (torchvision's "features", configuration D): channels per conv, "M" a 2×2 max pool.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
STAGE_ENDS = (3, 8, 15, 22, 29)  # the indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in "features"
STAGE_CHANNELS = (64, 128, 256, 512, 512)
SHIFT = (-0.030, -0.088, -0.188)  # LPIPS v0.1's scaling layer: (x - shift) / scale
SCALE = (0.458, 0.448, 0.450)


class LPIPSWeightsError(FileNotFoundError):
    """The VGG16 or linear-layer weights are missing or not what LPIPS needs; the message says which file."""


def default_vgg16_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE


def vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for item in VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU(inplace=True)]
            channels = item
    return nn.Sequential(*layers[:STAGE_ENDS[-1] + 1])  # nothing after relu5_3 is read


class LPIPS(nn.Module):
    """``LPIPS()(x, y)`` with ``x``, ``y`` images in [-1, 1], ``[B, 3, H, W]``; frozen (no parameter takes a gradient)
    and in eval mode. When ``x`` takes no gradient (a target), its features are computed without a graph."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.features = vgg16_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in STAGE_CHANNELS)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_files(cls, vgg16: str | Path | None = None, linear: str | Path | None = None) -> "LPIPS":
        """VGG16 from ``vgg16`` (default: the torch hub cache) and the linear layers from ``linear`` (default: the
        weights that ship with vaefast)."""
        model = cls()
        model.load_vgg16(vgg16)
        model.load_linear(linear)
        return model

    def train(self, mode: bool = True) -> "LPIPS":
        return super().train(False)  # a fixed metric: no dropout, whatever the caller's mode

    def load_vgg16(self, path: str | Path | None = None) -> None:
        path = Path(path).expanduser() if path is not None else default_vgg16_path()
        if not path.is_file():
            raise LPIPSWeightsError(
                f"LPIPS needs VGG16's ImageNet weights in torchvision's format ({VGG16_FILE}), not found at {path}: "
                "pass --lpips-weights PATH (Python: LPIPS.from_files(vgg16=PATH)), or train without LPIPS with "
                "--perceptual-weight 0")
        _copy(self.features, {k: f"features.{k}" for k in self.features.state_dict()}, _load(path), path)

    def load_linear(self, path: str | Path | None = None) -> None:
        if path is None:
            with resources.as_file(resources.files(__package__).joinpath("weights/lpips-vgg-lin-v0.1.pth")) as p:
                state, path = _load(p), p
        else:
            state = _load(Path(path))
        _copy(self.lins, {f"{i}.weight": f"lin{i}.model.1.weight" for i in range(len(self.lins))}, state, path)

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five unit-normalized feature maps of ``x``."""
        h = (x - self.shift.to(x.dtype)) / self.scale.to(x.dtype)
        out = []
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index in STAGE_ENDS:
                out.append(h / (h.square().sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Grayscale images ([B, 1, H, W]) are compared as three equal channels, as VGG sees a gray photograph."""
        if x.dim() != 4 or x.shape[1] not in (1, 3) or x.shape != y.shape:
            raise ValueError(f"LPIPS takes two [B, 3, H, W] (or grayscale [B, 1, H, W]) images of one shape, got "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad):
            fx = self.stage_features(x)
        with torch.set_grad_enabled(torch.is_grad_enabled() and y.requires_grad):
            fy = self.stage_features(y)
        total = 0
        for lin, a, b in zip(self.lins, fx, fy):
            total = total + lin((a - b).square()).mean((2, 3), keepdim=True)
        return total


def _load(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated, corrupt or pickled-code file: one error that names it
        raise LPIPSWeightsError(f"{path}: not a readable weights file ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise LPIPSWeightsError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def _copy(module: nn.Module, keys: dict[str, str], state: dict, path) -> None:
    """Load ``module`` from ``state``, where ``keys`` maps each of the module's keys to the file's."""
    own = module.state_dict()
    missing = [theirs for theirs in keys.values() if theirs not in state]
    wrong = [f"{theirs} {tuple(state[theirs].shape)} (expected {tuple(own[mine].shape)})"
             for mine, theirs in keys.items() if theirs in state and state[theirs].shape != own[mine].shape]
    if missing or wrong:
        raise LPIPSWeightsError(f"{path}: not the weights LPIPS-VGG16 needs; missing: "
                                f"{', '.join(missing[:3]) or 'none'}; wrong shapes: {', '.join(wrong[:3]) or 'none'}")
    module.load_state_dict({mine: state[theirs] for mine, theirs in keys.items()})
