"""The pytorch/examples VAE recipe against `vaefast train`, same model, batch size and epochs, one run: the classic
Bernoulli recipe, and its current continuous Bernoulli form against `--likelihood continuous_bernoulli`.

    python benchmarks/bench_train.py                     # 5 epochs, 3 seeds each, full Fashion-MNIST
    python benchmarks/bench_train.py --epochs 1 --seeds 1 --quick

The recipe is reproduced in plain eager PyTorch below: 784-400-20-400-784 MLP with ReLU, sigmoid output, BCE
summed over pixels plus the analytic KL, Adam at lr 1e-3, batch 128, and a per-sample Dataset + DataLoader with
num_workers=0 as that recipe uses on CPU, with torchvision's MNIST item path (uint8 -> PIL image -> ToTensor)
reproduced line for line, since torchvision does not import beside the CPU build of torch here. The runs are interleaved seed by seed; images/s counts each training loop with its data loading (the recipe's
DataLoader, vaefast's loader) and per-step bookkeeping, not the test evaluation, and the test negative ELBO
is nats per test image with one posterior sample, as the recipe's test loss.

The current pytorch/examples recipe adds the continuous Bernoulli's negative log-normalizer to the BCE, computed in
eager ops on the clamped decoder probabilities (clamped to [1e-4, 1 - 1e-4], a Taylor series for lambda in
[0.49, 0.51]); vaefast fuses it into the BCE pass on the logits. vaefast reports continuous densities dequantized
(+ 784 log 256 nats per image); the table subtracts that so that both columns are the recipe's test loss.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, update_readme_section, write_result  # noqa: E402

from vaefast.data import load_dataset  # noqa: E402
from vaefast.perf.loss_bench import eager_log_normalizer  # noqa: E402
from vaefast.train import TrainConfig, Trainer  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"


class RecipeVAE(nn.Module):
    """pytorch/examples vae/main.py, the same structure; ``continuous``: its current form, whose decoder output is
    clamped away from 0 and 1 for the continuous Bernoulli's normalizer."""

    def __init__(self, continuous: bool = False):
        super().__init__()
        self.continuous = continuous
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        probs = torch.sigmoid(self.fc4(h3))
        return probs.clamp(1e-4, 1.0 - 1e-4) if self.continuous else probs

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def recipe_loss(recon_x, x, mu, logvar):
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def recipe_continuous_loss(recon_x, x, mu, logvar):
    return recipe_loss(recon_x, x, mu, logvar) - eager_log_normalizer(recon_x).sum()


class PerSampleImages(Dataset):
    """torchvision's MNIST dataset with transforms.ToTensor(), reproduced without torchvision (which does not
    import beside the CPU build of torch here): each item becomes a PIL image, then a float CHW tensor in [0, 1]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images[:, 0], labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i].numpy(), mode="L")  # as torchvision.datasets.MNIST.__getitem__
        tensor = torch.from_numpy(np.array(img, np.uint8, copy=True))  # as transforms.functional.to_tensor
        tensor = tensor.view(img.size[1], img.size[0], 1).permute((2, 0, 1)).contiguous()
        return tensor.to(dtype=torch.get_default_dtype()).div(255), int(self.labels[i])


def run_recipe(data, epochs: int, seed: int, continuous: bool = False) -> dict:
    torch.manual_seed(seed)
    model = RecipeVAE(continuous)
    loss_fn = recipe_continuous_loss if continuous else recipe_loss
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(PerSampleImages(data.train, data.train_labels), batch_size=128, shuffle=True)
    test_loader = DataLoader(PerSampleImages(data.test, data.test_labels), batch_size=128, shuffle=False)
    train_time, images = 0.0, 0
    for _ in range(epochs):
        model.train()
        t0 = time.perf_counter()
        train_loss = 0.0
        for x, _ in loader:
            optimizer.zero_grad()
            recon, mu, logvar = model(x)
            loss = loss_fn(recon, x, mu, logvar)
            loss.backward()
            train_loss += loss.item()
            optimizer.step()
            images += len(x)
        train_time += time.perf_counter() - t0
    model.eval()
    test_loss = 0.0
    with torch.no_grad():
        for x, _ in test_loader:
            recon, mu, logvar = model(x)
            test_loss += loss_fn(recon, x, mu, logvar).item()
    return {"images_per_s": images / train_time, "test_neg_elbo_nats": test_loss / len(data.test)}


def run_vaefast(data, epochs: int, seed: int, out: Path, precision: str, master_weights: bool | None = None,
                noise: str = "seeded", likelihood: str = "bernoulli", **objective) -> dict:
    """``objective``: samples / objective / estimator overrides (the K-sample IWAE variant)."""
    cfg = TrainConfig.from_options(epochs=epochs, batch_size=128, lr=1e-3, seed=seed, out=str(out), progress=False,
                      tensorboard=False, precision=precision, master_weights=master_weights, noise=noise, **objective)
    cfg.model.hidden, cfg.model.latent_dim, cfg.model.likelihood = [400], 20, likelihood
    trainer = Trainer(cfg, data)
    summary = trainer.fit()
    # The recipe's test loss is the continuous density itself, without vaefast's dequantization term.
    dequantization = 784 * math.log(256.0) if likelihood == "continuous_bernoulli" else 0.0
    return {"images_per_s": summary.images_per_s,
            "test_neg_elbo_nats": summary.test_neg_elbo_nats - dequantization,
            "precision": summary.precision, "compiled": summary.compiled,
            "master_weights": summary.master_weights}


def _stats(runs: list[dict], key: str) -> dict:
    values = [r[key] for r in runs]
    return {"mean": statistics.mean(values), "min": min(values), "max": max(values), "values": values}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="Fashion-MNIST IDX directory")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--precision", default="auto", help="vaefast --precision")
    parser.add_argument("--out", default="/tmp/vaefast-bench-train")
    parser.add_argument("--quick", action="store_true", help="write under results/quick and skip docs/performance.md")
    args = parser.parse_args(argv)
    data = load_dataset(args.data)
    recipe, ours, autocast_only, randn_noise, recipe_cb, ours_cb, iwae = [], [], [], [], [], [], []
    for seed in range(args.seeds):  # interleaved, so machine noise hits all alike
        recipe.append(run_recipe(data, args.epochs, seed))
        ours.append(run_vaefast(data, args.epochs, seed, Path(args.out) / f"seed{seed}", args.precision))
        # The same run with the float32 weights cast under autocast every step, to show what master weights add.
        autocast_only.append(run_vaefast(data, args.epochs, seed, Path(args.out) / f"seed{seed}-autocast",
                                         args.precision, master_weights=False))
        # eps from torch.randn_like and saved for backward, instead of drawn in the kernel from a seed.
        randn_noise.append(run_vaefast(data, args.epochs, seed, Path(args.out) / f"seed{seed}-randn",
                                       args.precision, noise="randn"))
        recipe_cb.append(run_recipe(data, args.epochs, seed, continuous=True))
        ours_cb.append(run_vaefast(data, args.epochs, seed, Path(args.out) / f"seed{seed}-cb", args.precision,
                                   likelihood="continuous_bernoulli"))
        # 5 posterior samples per image in one fused draw, the IWAE bound with the DReG encoder gradient.
        iwae.append(run_vaefast(data, args.epochs, seed, Path(args.out) / f"seed{seed}-iwae", args.precision,
                                samples=5, objective="iwae", estimator="dreg"))
        print(f"seed {seed}: recipe {recipe[-1]['images_per_s']:,.0f} img/s, -ELBO "
              f"{recipe[-1]['test_neg_elbo_nats']:.2f}; vaefast {ours[-1]['images_per_s']:,.0f} img/s, -ELBO "
              f"{ours[-1]['test_neg_elbo_nats']:.2f}; without master weights "
              f"{autocast_only[-1]['images_per_s']:,.0f} img/s; --noise randn "
              f"{randn_noise[-1]['images_per_s']:,.0f} img/s; continuous Bernoulli: recipe "
              f"{recipe_cb[-1]['images_per_s']:,.0f} img/s, -ELBO {recipe_cb[-1]['test_neg_elbo_nats']:.1f}; vaefast "
              f"{ours_cb[-1]['images_per_s']:,.0f} img/s, -ELBO {ours_cb[-1]['test_neg_elbo_nats']:.1f}; IWAE-5 DReG "
              f"{iwae[-1]['images_per_s']:,.0f} img/s, -ELBO {iwae[-1]['test_neg_elbo_nats']:.2f}", flush=True)

    def summary(runs):
        return {"images_per_s": _stats(runs, "images_per_s"), "test_neg_elbo_nats": _stats(runs, "test_neg_elbo_nats"),
                "precision": runs[0]["precision"], "compiled": runs[0]["compiled"],
                "master_weights": runs[0]["master_weights"]}

    result = {
        "recipe": {"images_per_s": _stats(recipe, "images_per_s"),
                   "test_neg_elbo_nats": _stats(recipe, "test_neg_elbo_nats")},
        "vaefast": summary(ours),
        "vaefast_without_master_weights": summary(autocast_only),
        "vaefast_noise_randn": summary(randn_noise),
        "recipe_continuous_bernoulli": {"images_per_s": _stats(recipe_cb, "images_per_s"),
                                        "test_neg_elbo_nats": _stats(recipe_cb, "test_neg_elbo_nats")},
        "vaefast_continuous_bernoulli": summary(ours_cb),
        "vaefast_iwae5_dreg": summary(iwae),
        "per_seed_speedup": [v["images_per_s"] / r["images_per_s"] for r, v in zip(recipe, ours)],
    }
    speedup = result["vaefast"]["images_per_s"]["mean"] / result["recipe"]["images_per_s"]["mean"]
    result["speedup"] = speedup
    result["speedup_continuous_bernoulli"] = (result["vaefast_continuous_bernoulli"]["images_per_s"]["mean"]
                                              / result["recipe_continuous_bernoulli"]["images_per_s"]["mean"])
    command = "python benchmarks/bench_train.py " + " ".join(argv if argv is not None else sys.argv[1:])
    payload = {"benchmark": "bench_train", "command": command.strip(), "epochs": args.epochs, "seeds": args.seeds,
               "data": "Fashion-MNIST 60k/10k", "machine": machine_info("cpu"), "result": result}
    path = write_result("bench_train-cpu", payload, quick=args.quick)

    def cell(stats, fmt):
        return f"{stats['mean']:{fmt}} ({stats['min']:{fmt}} – {stats['max']:{fmt}})"

    def row(label, entry):
        return (f"| {label} | {cell(entry['images_per_s'], ',.0f')} | {cell(entry['test_neg_elbo_nats'], '.2f')} |")

    ours_label = (f"vaefast train ({result['vaefast']['precision']}, master weights "
                  f"{result['vaefast']['master_weights']}, compile {result['vaefast']['compiled']})")
    per_seed = ", ".join(f"{x:.2f}x" for x in result["per_seed_speedup"])
    table = "\n".join([
        "| variant | images/s, mean (min – max) | test -ELBO nats, mean (min – max) |",
        "|---|---|---|",
        row("pytorch/examples recipe", result["recipe"]),
        row(ours_label, result["vaefast"]),
        row("vaefast train, bf16 autocast without master weights", result["vaefast_without_master_weights"]),
        row("vaefast train --noise randn (eps stored, not seeded)", result["vaefast_noise_randn"]),
        f"| **speed-up** (vaefast train / recipe) | **{speedup:.2f}x** (per seed: {per_seed}) | |",
        row("pytorch/examples recipe, continuous Bernoulli (current)", result["recipe_continuous_bernoulli"]),
        row("vaefast train --likelihood continuous_bernoulli (fused)", result["vaefast_continuous_bernoulli"]),
        f"| **speed-up**, continuous Bernoulli | **{result['speedup_continuous_bernoulli']:.2f}x** | |",
        row("vaefast train --samples 5 --objective iwae --estimator dreg (images/s counts images, not samples; "
            "-ELBO: the one-sample test ELBO)", result["vaefast_iwae5_dreg"]),
    ])
    print(table)
    print(f"wrote {path}")
    if not args.quick:
        update_readme_section("bench_train-cpu", payload,
                              f"{args.epochs} epochs, batch 128, {args.seeds} seeds, full Fashion-MNIST.\n\n{table}")
    return payload


if __name__ == "__main__":
    main()
