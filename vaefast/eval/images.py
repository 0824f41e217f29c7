"""Pictures of a model: sample grids, reconstructions, latent traversals, interpolations and a latent scatter.

Grids are assembled in torch and written as PNG with Pillow, whose default font also draws the titles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw


# A 10-colour palette (Tableau) for class labels in the scatter plot.
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def image_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """[N, C, H, W] in [0, 1] -> one [C, H', W'] grid image with padding between the tiles."""
    n, c, h, w = images.shape
    ncol = min(nrow, n)
    nrows = -(-n // ncol)
    grid = torch.full((c, nrows * (h + padding) + padding, ncol * (w + padding) + padding), pad_value)
    for i, img in enumerate(images.float().clamp(0, 1).cpu()):
        r, col = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top:top + h, left:left + w] = img
    return grid


def to_pil(grid: torch.Tensor, scale: int = 2) -> Image.Image:
    """[C, H, W] in [0, 1] -> an RGB PIL image, upscaled with nearest neighbour so that small images are readable."""
    array = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    img = Image.fromarray(array, mode="RGB")
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def titled(img: Image.Image, title: str) -> Image.Image:
    banner = 18
    out = Image.new("RGB", (img.width, img.height + banner), "white")
    out.paste(img, (0, banner))
    ImageDraw.Draw(out).text((4, 3), title, fill="black")
    return out


def save_png(img: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path


def grid_png(images: torch.Tensor, path, *, nrow: int = 8, title: str | None = None, scale: int = 2) -> Path:
    img = to_pil(image_grid(images, nrow=nrow), scale)
    return save_png(titled(img, title) if title else img, path)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation, the natural path between two draws of a Gaussian latent (White, 2016)."""
    a_flat, b_flat = a.flatten(), b.flatten()
    cos = (a_flat @ b_flat) / (a_flat.norm() * b_flat.norm()).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    if omega.abs() < 1e-6:
        return torch.stack([(1 - s) * a + s * b for s in t])
    so = torch.sin(omega)
    return torch.stack([(torch.sin((1 - s) * omega) / so) * a + (torch.sin(s * omega) / so) * b for s in t])


def pca_2d(points: torch.Tensor) -> torch.Tensor:
    """[N, D] -> [N, 2]: the first two principal components (identity when D <= 2)."""
    points = points.double()
    if points.shape[1] <= 2:
        return torch.nn.functional.pad(points, (0, 2 - points.shape[1]))
    centered = points - points.mean(0)
    _, _, v = torch.pca_lowrank(centered, q=2, center=False)
    return centered @ v[:, :2]


def scatter_png(points: torch.Tensor, labels: torch.Tensor | None, path, *, size: int = 512, title: str = "") -> Path:
    """A scatter plot of 2-D points, coloured by label, drawn directly (no plotting library needed): the title on the
    first line, the legend (a swatch and the class index per label) on a line of its own below it, then the plot."""
    xy = points.double()
    lo, hi = xy.min(0).values, xy.max(0).values
    span = (hi - lo).clamp_min(1e-9)
    margin, line = 16, 18
    header = line * (2 if labels is not None else 1)
    pix = ((xy - lo) / span * (size - 2 * margin) + margin).round().long().numpy()
    img = Image.new("RGB", (size, size + header), "white")
    draw = ImageDraw.Draw(img)
    for i, (px, py) in enumerate(pix):
        color = PALETTE[int(labels[i]) % len(PALETTE)] if labels is not None else (31, 119, 180)
        draw.rectangle([px - 1, size - py - 1 + header, px + 1, size - py + 1 + header], fill=color)
    draw.text((4, 3), title, fill="black")
    if labels is not None:
        for c in range(int(labels.max()) + 1):
            left = 4 + c * 28
            draw.rectangle([left, line + 5, left + 7, line + 12], fill=PALETTE[c % len(PALETTE)])
            draw.text((left + 10, line + 3), str(c), fill="black")
    return save_png(img, path)
