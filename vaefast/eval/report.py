"""`vaefast eval`: the numbers a paper reports for a trained checkpoint, and a posterior-collapse verdict."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ..checkpoint import load_checkpoint
from ..config import TrainConfig
from ..data import load_dataset
from ..data.convert import to_unit_float
from ..models import build_model
from ..models.ema import load_ema_weights
from ..plan import autocast, resolve_precision
from .elbo import collapse_level, evaluate_elbo
from .fid import load_inception
from .iwae import iwae_log_likelihood
from .latents import measure_latents
from .quality import reconstruction_quality

# Burda et al.'s activity threshold on Cov_x(E_q[z_u]).
COVARIANCE_ACTIVE = 0.01


def load_model(checkpoint, device="cpu", use_ema: bool = True, trust: bool = False):
    """The model of a checkpoint, in eval mode, with its training config; with the EMA weights when the run kept
    them (``--ema``) and ``use_ema``. ``trust`` also loads format-1 (pickled) checkpoints."""
    state = load_checkpoint(checkpoint, map_location=device, trust=trust)
    architecture = state.get("architecture", "vaefast")
    if architecture != "vaefast":
        raise ValueError(f"{checkpoint} holds a {architecture} module passed to Trainer(model=...), which cannot be "
                         f"rebuilt from the config; in Python, build a {architecture} and load the checkpoint's "
                         "'model' state (keys 'module.*') into vaefast.models.ModuleVAE, or resume with Trainer")
    cfg = TrainConfig.from_dict(state["config"])
    with torch.random.fork_rng(devices=[]):  # the run's initial weights, as Trainer builds them
        torch.manual_seed(cfg.runtime.seed)
        model = build_model(cfg.model, tuple(state["image_shape"]), quiet=True).to(device)
    if cfg.optim.trainable == "decoder":
        model.freeze_encoder()  # the checkpoint holds what trained; the encoder is the one the run started from
    model.load_trained_state(state["model"])
    if use_ema and "ema" in state:
        load_ema_weights(model, state["ema"])
    model.eval()
    return model, cfg


@torch.no_grad()
def posterior_means(model, images: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    means = [model.encode(to_unit_float(images[i:i + batch_size], device))[0].float().flatten(1).cpu()
             for i in range(0, len(images), batch_size)]
    return torch.cat(means)


def collapse_verdict(kl_nats: float, active: int, latent_dim: int, mean_distance: float) -> str:
    level = collapse_level(kl_nats, active, latent_dim, mean_distance)
    if level == "collapsed":
        return ("collapsed: the posterior ignores the input (KL ~ 0 or identical latent means for different "
                "images); try KL warm-up, free bits, a weaker decoder or a lower learning rate")
    if level == "partial":
        return (f"partial collapse: {active} of {latent_dim} latent units are active; the rest carry no "
                "information (common with large latents; free bits or a smaller latent help)")
    return f"healthy: {active} of {latent_dim} latent units are active"


@dataclass
class EvalReport:
    """What ``vaefast eval`` reports; ``--json`` prints ``to_json()`` (keys pinned by tests/fixtures/json_keys.json)."""

    test_neg_elbo_nats: float
    test_recon_nats: float
    test_kl_nats: float
    test_bpd: float
    active_units: int
    latent_dim: int
    test_images: int
    psnr: float
    ssim: float | None  # None without the metrics extra; quality_note says why
    quality_note: str | None
    lpips: float | None  # RGB data with LPIPS weights available only
    rfid: float | None  # with the FID Inception weights only
    temporal: float | None  # clips only: mean |change of the reconstruction error between consecutive frames|
    iwae_nll_nats: float | None  # with iw_samples > 0 only
    iwae_bpd: float | None
    iw_samples: int
    active_units_cov: int
    mean_latent_distance: float
    kl_per_dim: list[float]
    kl_per_dim_histogram: dict
    verdict: str
    latent_mean: float  # of posterior samples z over the test images: what export's shift and scaling factors are
    latent_std: float
    latent_channel_mean: list[float]
    latent_channel_std: list[float]
    tiling: str | None = None  # diffusers' tiles, as evaluate_checkpoint set them

    def describe(self) -> str:
        hist = self.kl_per_dim_histogram
        ssim = f", SSIM {self.ssim:.4f}" if self.ssim is not None else f" ({self.quality_note})"
        lines = [
            f"test images:          {self.test_images}",
            f"negative ELBO:        {self.test_neg_elbo_nats:.3f} nats/image "
            f"(reconstruction {self.test_recon_nats:.3f} + KL {self.test_kl_nats:.3f})",
            f"bits per dimension:   {self.test_bpd:.5f}",
            f"reconstruction:       PSNR {self.psnr:.2f} dB{ssim}"
            f"{f', LPIPS {self.lpips:.4f}' if self.lpips is not None else ''}"
            f"{f', rFID {self.rfid:.4g}' if self.rfid is not None else ''}"
            f"{f', temporal {self.temporal:.4f}' if self.temporal is not None else ''} (posterior mean)",
        ]
        if self.iwae_nll_nats is not None:
            lines.append(f"IWAE NLL (K={self.iw_samples}):  {self.iwae_nll_nats:.3f} nats/image "
                         f"({self.iwae_bpd:.5f} bpd)")
        return "\n".join(lines + [
            f"active units:         {self.active_units} of {self.latent_dim} (KL > 0.1 nats); "
            f"{self.active_units_cov} by Cov_x(E_q[z]) > 0.01",
            f"mean latent distance: {self.mean_latent_distance:.3f} between different test images",
            "KL per dim histogram: " + ", ".join(f"[{a:.3g}, {b:.3g}): {c}" for a, b, c in
                                                zip(hist["edges"], hist["edges"][1:], hist["counts"])),
            f"latents:              mean {self.latent_mean:.4f}, std {self.latent_std:.4f} (scaling_factor "
            f"{1 / self.latent_std:.5g}); per channel std "
            + ", ".join(f"{v:.3g}" for v in self.latent_channel_std[:16]),
            f"verdict:              {self.verdict}",
        ] + ([f"encoded and decoded in {self.tiling}"] if self.tiling else []))

    def to_json(self) -> dict:
        """The report's fields; the IWAE figures only when computed, the note only when SSIM is missing."""
        optional = ("quality_note", "lpips", "rfid", "temporal", "iwae_nll_nats", "iwae_bpd", "tiling")
        return {k: v for k, v in dataclasses.asdict(self).items() if not (k in optional and v is None)}


def evaluate_checkpoint(checkpoint, *, data: str | None = None, iw_samples: int = 0, batch_size: int = 500,
                        device: str | None = None, seed: int = 0, limit: int | None = None,
                        use_ema: bool = True, trust: bool = False, lpips_weights: str | None = None,
                        fid_weights: str | None = None, tile_size: int | None = None,
                        tile_frames: int | None = None) -> EvalReport:
    """``lpips_weights``: VGG16's weights (torchvision format) for the LPIPS figure of RGB data; without it the
    torch hub cache's copy is used when present, and LPIPS is left out otherwise. ``fid_weights``: the FID Inception
    weights for rFID, likewise (vaefast.eval.fid). ``tile_size`` / ``tile_frames``: a diffusers autoencoder encodes
    and decodes in diffusers' own overlapping tiles of that many pixels / frames (large images, long clips)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    inception = load_inception(fid_weights)  # a bad file fails before the model loads
    model, cfg = load_model(checkpoint, device, use_ema, trust)
    tiling = None
    if tile_size is not None or tile_frames is not None:
        enable = getattr(getattr(model, "module", None), "enable_tiling", None)
        if enable is None:
            raise ValueError("--tile-size and --tile-frames tile a diffusers autoencoder's encoding and decoding; this "
                             "checkpoint's model is vaefast's own")
        tiling = enable(tile_size, tile_frames)
    dataset = load_dataset(data if data is not None else cfg.data.source, cfg.data.test_fraction, cfg.runtime.seed,
                           image_size=cfg.data.image_size, resize=cfg.data.resize,
                           frames=cfg.data.frames, frame_stride=cfg.data.frame_stride)
    test = dataset.test[:limit] if limit else dataset.test
    if tuple(test.shape[1:]) != model.image_shape:
        raise ValueError(f"the checkpoint's model takes {model.image_shape} images but the data has "
                         f"{tuple(test.shape[1:])}")
    torch.manual_seed(seed)
    precision = autocast(resolve_precision(cfg.runtime.precision, device), device)
    elbo = evaluate_elbo(model, test, batch_size=batch_size, device=device, autocast=precision)
    quality = reconstruction_quality(model, test, batch_size=batch_size, device=device, autocast=precision,
                                     lpips=_lpips(lpips_weights, test.shape[1]), inception=inception)
    latents = measure_latents(model, test, batch_size=batch_size, seed=seed, device=device)
    iwae_nll = iwae_nll_nats(model, test, iw_samples, batch_size, device, precision) if iw_samples else None
    means = posterior_means(model, test, batch_size, device)
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randint(len(means), (2, min(2000, len(means) * 4)), generator=g)
    different = a != b
    distance = float((means[a[different]] - means[b[different]]).norm(dim=1).mean())
    counts, edges = torch.histogram(elbo["kl_per_dim"].flatten().double(), bins=10)
    return EvalReport(
        test_neg_elbo_nats=elbo["neg_elbo_nats"], test_recon_nats=elbo["recon_nats"], test_kl_nats=elbo["kl_nats"],
        test_bpd=elbo["bpd"], active_units=elbo["active_units"], latent_dim=elbo["latent_dim"],
        test_images=len(test), psnr=quality["psnr"], ssim=quality["ssim"], quality_note=quality.get("quality_note"),
        lpips=quality.get("lpips"), rfid=quality.get("rfid"), temporal=quality.get("temporal"),
        iwae_nll_nats=iwae_nll,
        iwae_bpd=None if iwae_nll is None else iwae_nll / (math.prod(test.shape[1:]) * math.log(2)),
        iw_samples=iw_samples, active_units_cov=int((means.var(0) > COVARIANCE_ACTIVE).sum()),
        mean_latent_distance=distance, kl_per_dim=[round(v, 5) for v in elbo["kl_per_dim"].flatten().tolist()],
        kl_per_dim_histogram={"counts": counts.long().tolist(), "edges": [round(e, 4) for e in edges.tolist()]},
        verdict=collapse_verdict(elbo["kl_nats"], elbo["active_units"], elbo["latent_dim"], distance),
        latent_mean=latents.mean, latent_std=latents.std, latent_channel_mean=latents.channel_mean,
        latent_channel_std=latents.channel_std, tiling=tiling)


def iwae_nll_nats(model, test: torch.Tensor, iw_samples: int, batch_size: int, device, precision) -> float:
    """The IWAE bound's negative log-likelihood per image; fewer images per batch as K grows, so that K decoder
    passes fit in memory."""
    iw_batch = max(1, min(batch_size, 20_000 // iw_samples))
    total = 0.0
    for start in range(0, len(test), iw_batch):
        x = to_unit_float(test[start:start + iw_batch], device)
        total += float(iwae_log_likelihood(model, x, iw_samples, autocast=precision).sum())
    return -total / len(test)


def _lpips(weights: str | None, channels: int):
    """The LPIPS module for the report: from ``weights`` (then it must load), else from the hub cache if there."""
    from ..models.lpips import LPIPS, default_vgg16_path

    if weights is None and (channels != 3 or not default_vgg16_path().is_file()):
        return None
    return LPIPS.from_files(weights)


def export_checkpoint(checkpoint, out, *, fmt: str = "diffusers", stats_images: int = 1000, use_ema: bool = True,
                      trust: bool = False, device: str = "cpu"):
    """``vaefast export``: (the written path, what was done with the latent statistics). A decoder-only run keeps
    the released factors (its latents did not move); any other run has them measured over ``stats_images`` training
    images, the first of the checkpoint's data source."""
    from ..integrations.diffusers import export, statistics_config
    from ..integrations.diffusers.export import batch_norm_statistics, set_batch_norm_statistics

    model, cfg = load_model(checkpoint, device, use_ema, trust)
    config = dict(model.module.vae.config) if hasattr(model, "module") and hasattr(model.module, "vae") else {}
    if not config:
        export(model, out, fmt=fmt)  # refuses a model that is not a diffusers one, with the reason
    if cfg.optim.trainable == "decoder":
        kept = {k: config[k] for k in ("scaling_factor", "shift_factor") if config.get(k) is not None}
        note = f"kept the original latent statistics {kept} (--train decoder: the encoder did not change)"
        return export(model, out, fmt=fmt), note
    if stats_images < 1:
        raise ValueError(f"--stats-images must be at least 1, got {stats_images}")
    dataset = load_dataset(cfg.data.source, cfg.data.test_fraction, cfg.runtime.seed, image_size=cfg.data.image_size,
                           resize=cfg.data.resize, frames=cfg.data.frames, frame_stride=cfg.data.frame_stride)
    images = dataset.first_train_images(stats_images)
    stats = measure_latents(model, images, device=device, seed=cfg.runtime.seed)
    updates = statistics_config(config, stats)
    measured = [f"{k} {v if not isinstance(v, list) else '[' + ', '.join(f'{x:.4g}' for x in v) + ']'}"
                for k, v in updates.items()]
    patch = batch_norm_statistics(model.module.vae)
    if patch is not None:  # FLUX.2: its pipeline normalizes the patchified posterior means by bn's statistics
        set_batch_norm_statistics(model.module.vae, measure_latents(model, images, device=device, sample=False,
                                                                    patch=patch))
        measured.append("bn running mean and variance (per patchified channel, of the posterior means)")
    note = f"measured over {stats.images} training images: " + (", ".join(measured) or "nothing this class keeps")
    return export(model, out, fmt=fmt, config_updates=updates), note
