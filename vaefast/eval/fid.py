"""rFID: the Fréchet Inception distance between images and their reconstructions, the number autoencoder papers and
model cards report.

The network is the TF-Inception of FID (Heusel et al.) as pytorch-fid and torch-fidelity run it: torchvision's
Inception-v3 layout (its module names, so the released ``pt_inception-2015-12-05-*.pth`` loads as it is) with the
FID variants of its blocks (average pools that leave the padding out, a max pool in the last block), the images
resized to 299x299 bilinearly and mapped to [-1, 1], the 2048 features of the last average pool. Written here so
that vaefast needs no torchvision; ``tests/test_fid_reference.py`` holds it to pytorch-fid given the same weights.
The distance is computed in float64.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_GLOB = "pt_inception-2015-12-05-*.pth"
FEATURES = 2048
INPUT_SIZE = 299


def default_weights_path() -> Path | None:
    """Where pytorch-fid's download lands (torch hub's checkpoints folder), if a copy is there."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    found = sorted(folder.glob(WEIGHTS_GLOB))
    return found[0] if found else None


class BasicConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _pool_tf(x: torch.Tensor) -> torch.Tensor:
    """TensorFlow's 3x3 average pool: padded zeros do not count in the average."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_pool_tf(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        dbl = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            dbl = layer(dbl)
        return torch.cat([self.branch1x1(x), b7, dbl, self.branch_pool(_pool_tf(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """``max_pool``: FID's last block pools with a max where the others average (a quirk of the TF graph that the
    released features depend on)."""

    def __init__(self, in_channels: int, max_pool: bool = False):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _pool_tf(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl), self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """The FID network up to its 2048 pool features; ``fc`` is kept so that the released file loads strictly."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    @classmethod
    def from_file(cls, path: str | Path | None = None) -> "FIDInceptionV3":
        """The network with the weights of ``path`` (default: ``default_weights_path()``), in eval mode and frozen.
        A missing file, or one whose tensors do not fit, raises a ValueError / FileNotFoundError naming it."""
        path = Path(path).expanduser() if path is not None else default_weights_path()
        if path is None:
            raise FileNotFoundError(f"no FID Inception weights: pass --fid-weights, or put pytorch-fid's "
                                    f"{WEIGHTS_GLOB} in {Path(torch.hub.get_dir()) / 'checkpoints'}")
        if not path.is_file():
            raise FileNotFoundError(f"FID Inception weights not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file: nothing in it runs (weights_only)
            raise ValueError(f"{path}: cannot read FID Inception weights ({type(exc).__name__}: {exc})") from None
        net = cls()
        own = net.state_dict()
        if not isinstance(state, dict):
            raise ValueError(f"{path}: not a state dict of the FID Inception network")
        wrong = [k for k in own if k not in state or not isinstance(state[k], torch.Tensor)
                 or state[k].shape != own[k].shape]
        unexpected = [k for k in state if k not in own]
        if wrong or unexpected:
            example = wrong[0] if wrong else unexpected[0]
            detail = (f"{example}: {tuple(state[example].shape)} where {tuple(own[example].shape)} is expected"
                      if example in state and example in own and isinstance(state[example], torch.Tensor)
                      else f"{example} {'missing' if wrong else 'unexpected'}")
            raise ValueError(f"{path}: not the FID Inception weights ({len(wrong)} tensors missing or of the wrong "
                             f"shape, {len(unexpected)} unexpected; e.g. {detail})")
        net.load_state_dict(state)
        return net.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Pool features ``[B, 2048]`` of images in [0, 1] (one channel is repeated to three)."""
        x = images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False) * 2 - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def load_inception(path: str | Path | None) -> FIDInceptionV3 | None:
    """The FID network from ``path`` (which must load), or from the default place when a copy is there, else None:
    rFID is then left out of the report."""
    if path is None and default_weights_path() is None:
        return None
    return FIDInceptionV3.from_file(path)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """``‖μa − μb‖² + tr(Σa + Σb − 2 (Σa Σb)^½)`` of two feature sets ``[N, D]``, in float64. The trace of the
    matrix square root is taken as the sum of the square roots of the eigenvalues of ``Σa^½ Σb Σa^½`` (similar to
    ``Σa Σb``, and symmetric, so a symmetric eigensolver gives them without scipy)."""
    a, b = a.double(), b.double()
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Fréchet distance needs at least 2 images on each side")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = (vectors * values.clamp_min(0).sqrt()) @ vectors.T
    middle = root_a @ cov_b @ root_a
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * trace_root)


@torch.no_grad()
def inception_features(net: FIDInceptionV3, images: torch.Tensor, *, batch_size: int = 50,
                       device: torch.device | str = "cpu") -> torch.Tensor:
    """Pool features of float images in [0, 1] ``[N, C, H, W]``, in batches, as float64 on the CPU."""
    return torch.cat([net(images[i:i + batch_size].to(device)).double().cpu()
                      for i in range(0, len(images), batch_size)])
