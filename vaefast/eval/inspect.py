"""`vaefast sample` and `vaefast inspect`: the pictures a VAE user looks at."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data import load_dataset
from ..data.convert import to_unit_float
from .images import grid_png, image_grid, pca_2d, save_png, scatter_png, slerp, titled, to_pil
from .report import load_model, posterior_means


@torch.no_grad()
def sample_images(checkpoint, out, *, n: int = 64, temperature: float = 1.0, seed: int = 0, binarize: bool = False,
                  device: str = "cpu", use_ema: bool = True, trust: bool = False) -> Path:
    """Decode z ~ N(0, T^2 I) into a grid; Bernoulli models show the mean, or a binarized draw with ``binarize``."""
    model, _ = load_model(checkpoint, device, use_ema, trust)
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn((n, *model.latent_shape), generator=g) * temperature).to(device)
    images = model.likelihood.mean(model.decode(z))
    if binarize:
        images = torch.bernoulli(images.float().cpu(), generator=g)
    title = f"{n} samples, T={temperature}" + (", binarized" if binarize else "")
    return grid_png(images.cpu(), out, nrow=int(n ** 0.5 + 0.999), title=title)


@torch.no_grad()
def inspect_model(checkpoint, out, *, data: str | None = None, n: int = 8, steps: int = 9, dims: int = 8,
                  seed: int = 0, device: str = "cpu", use_ema: bool = True,
                  trust: bool = False) -> dict[str, Path]:
    out = Path(out)
    model, cfg = load_model(checkpoint, device, use_ema, trust)
    dataset = load_dataset(data if data is not None else cfg.data.source, cfg.data.test_fraction, cfg.runtime.seed,
                           image_size=cfg.data.image_size, resize=cfg.data.resize,
                           frames=cfg.data.frames, frame_stride=cfg.data.frame_stride)
    test = dataset.test
    if test.dim() == 5:
        return inspect_clips(model, test, out, n=min(n, 4), seed=seed, device=device)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(test), generator=g)[: 2 * n]
    x = to_unit_float(test[pick], device)
    mean_img = model.likelihood.mean
    paths = {}

    mu, _ = model.encode(x[:n])
    recon = mean_img(model.decode(mu))  # the decoder at the posterior mean: the reconstruction people judge
    paths["reconstructions"] = grid_png(torch.cat([x[:n], recon.float()]).cpu(), out / "reconstructions.png",
                                        nrow=n, title="top: input, bottom: reconstruction (posterior mean)")

    # Traversals: most active dimensions first (by their average KL on the test set).
    kl_per_dim = model(to_unit_float(test[:1000], device)).kl_per_dim
    order = kl_per_dim.flatten().argsort(descending=True)[:dims]
    base = mu[0].flatten()
    values = torch.linspace(-3.0, 3.0, steps, device=device)
    rows = []
    for d in order:
        z = base.repeat(steps, 1)
        z[:, d] = values
        rows.append(mean_img(model.decode(z.view(steps, *model.latent_shape))).float())
    paths["traversals"] = grid_png(torch.cat(rows).cpu(), out / "traversals.png", nrow=steps,
                                   title=f"rows: latent dims {order.tolist()} (most active first), values from -3 to 3")

    t = torch.linspace(0.0, 1.0, steps, device=device)
    mu_pairs, _ = model.encode(x)
    lin, sph = [], []
    for i in range(min(n // 2, 4)):
        a, b = mu_pairs[2 * i], mu_pairs[2 * i + 1]
        lin.append(mean_img(model.decode(torch.stack([(1 - s) * a + s * b for s in t]))).float())
        sph.append(mean_img(model.decode(slerp(a, b, t))).float())
    paths["interpolations"] = grid_png(torch.cat(lin).cpu(), out / "interpolations_linear.png", nrow=steps,
                                       title="linear interpolation between posterior means")
    paths["interpolations_spherical"] = grid_png(torch.cat(sph).cpu(), out / "interpolations_spherical.png",
                                                 nrow=steps, title="spherical interpolation (slerp)")

    means = posterior_means(model, test[:5000], 500, device)
    labels = dataset.test_labels[:5000] if dataset.test_labels is not None else None
    how = "PCA of posterior means" if means.shape[1] > 2 else "posterior means"
    paths["latent_scatter"] = scatter_png(pca_2d(means), labels, out / "latent_scatter.png",
                                          title=f"{how}, {len(means)} test images" +
                                          (", coloured by label" if labels is not None else ""))
    return paths


@torch.no_grad()
def inspect_clips(model, test: torch.Tensor, out: Path, *, n: int = 4, seed: int = 0, device="cpu",
                  frame_ms: int = 125) -> dict[str, Path]:
    """For clips: ``n`` test clips and their reconstructions (posterior mean) as an animation (GIF, and WebP where
    Pillow has it), each frame the clips' inputs beside their reconstructions, and a contact sheet PNG, each clip's
    frames along a row above its reconstruction's."""
    g = torch.Generator().manual_seed(seed)
    x = to_unit_float(test[torch.randperm(len(test), generator=g)[:n]], device)
    mu, _ = model.encode(x)
    recon = model.likelihood.mean(model.decode(mu)).float().clamp(0, 1)
    x, recon = x.float().cpu(), recon.cpu()
    frames = [to_pil(image_grid(torch.stack([pair[:, t] for clip in zip(x, recon) for pair in clip]), nrow=2))
              for t in range(x.shape[2])]
    paths = {}
    for suffix in (".gif", ".webp"):
        path = out / f"clips{suffix}"
        out.mkdir(parents=True, exist_ok=True)
        try:
            frames[0].save(path, save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)
        except (KeyError, OSError):  # a Pillow built without WebP
            continue
        paths[f"animation{suffix}"] = path
    rows = torch.cat([row.transpose(0, 1) for clip in zip(x, recon) for row in clip])  # [2n * T, C, H, W]
    sheet = titled(to_pil(image_grid(rows, nrow=x.shape[2])), "rows: a clip's frames, then its reconstruction")
    paths["contact_sheet"] = save_png(sheet, out / "contact_sheet.png")
    return paths
