"""A training process for the DDP tests, launched by torchrun (or plainly, as the single-process reference).

argv[1] is a JSON object, or {"runs": [object, ...]} run in turn in one process group: n_images, batch_size, epochs,
out, and optionally zero_noise (deterministic z = mu, so that runs with different world sizes are comparable),
fail_at_step + fail_how ("raise" or "kill") + fail_rank,
nan_at_step (rank 1's batch turns to NaN at that step), checkpoint_every, grad_accum, max_steps, resume,
count_reads (run that many steps counting host reads of device values, written to out/reads-rank{R}.json), recipe
(options of the LDM recipe, e.g. {"recipe": "ldm", "lpips_weights": ...}: the saved parameters then also hold the
discriminator's and logvar), first_step_grads (take one step and write the gradients it left, all-reduced, to
out/grads-rank{R}.pt, instead of training), clips ({"data": an .npy of clips, "model": a diffusers config.json,
"frames": T}: a video autoencoder on clips instead of the MLP on images). Each rank writes its final parameters to
out/params-rank{R}.pt.
"""

import json
import os
import signal
import sys
from pathlib import Path

import torch

from numerics import reduction_lengths

import vaefast.models.vae as vae_module
from vaefast.data import ImageDataset, load_dataset
from vaefast.train import TrainConfig, Trainer
from vaefast.train.distributed import DistContext


def trained_state(trainer) -> torch.Tensor:
    trained = [*trainer.model.parameters()]
    if trainer.recipe is not None:
        trained += [*trainer.recipe.criterion.parameters(), *trainer.recipe.disc.buffers()]
    return torch.cat([p.detach().float().flatten() for p in trained]).clone()


def main():
    """One run, or with {"runs": [args, ...]} several in turn in one process group (each pays no start-up)."""
    args = json.loads(sys.argv[1])
    runs = args.get("runs", [args])
    dist = DistContext.from_env("cpu", None, runs[0].get("timeout", 60))
    fused = vae_module.reparameterize_kl
    for run_args in runs:
        vae_module.reparameterize_kl = _without_noise(fused) if run_args.get("zero_noise") else fused
        run(run_args, dist)
    dist.shutdown()


def _without_noise(fused):
    def without_noise(mu, logvar, eps=None, *, seed=None, **kwargs):
        return fused(mu, logvar, torch.zeros_like(mu), **kwargs)
    return without_noise


def run(args: dict, dist: DistContext) -> None:
    clips = args.get("clips")
    full = load_dataset(clips["data"], frames=clips["frames"]) if clips else load_dataset(None)
    n = args["n_images"]
    data = ImageDataset("subset", full.train[:n].clone(), full.test[:64].clone())
    model = {"model": f"diffusers:{clips['model']}"} if clips else {}
    cfg = TrainConfig.from_options(out=args["out"], epochs=args.get("epochs", 1), batch_size=args["batch_size"],
                      progress=False, tensorboard=False, lr=3e-3,
                      checkpoint_every=args.get("checkpoint_every", 0), grad_accum=args.get("grad_accum", 1),
                      max_steps=args.get("max_steps", 0), resume=args.get("resume"),
                      compile=args.get("compile", False), precision=args.get("precision", "fp32"),
                      **model, **args.get("recipe", {}))
    cfg.model.hidden, cfg.model.latent_dim = [32], 4
    trainer = Trainer(cfg, data, dist=dist)
    initial = trained_state(trainer)
    nan_at = args.get("nan_at_step")
    if nan_at is not None and dist.rank == 1:
        clean_step = trainer.train_step

        def poisoned(batches):
            if trainer.step == nan_at:
                batches = [torch.full_like(x, float("nan")) for x in batches]
            return clean_step(batches)

        trainer.train_step = poisoned
    fail_at = args.get("fail_at_step")
    if fail_at is not None and dist.rank == args.get("fail_rank", 1):
        step = trainer.train_step

        def failing(batches):
            if trainer.step == fail_at:
                if args.get("fail_how") == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError(f"injected failure on rank {dist.rank} at step {fail_at}")
            return step(batches)

        trainer.train_step = failing
    if args.get("count_reads"):  # host reads of device values per step (tests/test_sync_free.py), then stop
        from test_sync_free import ScalarReads

        counts = []
        with ScalarReads() as mode:
            trainer.run(args["count_reads"], on_step=lambda step: counts.append(mode.count))
        (Path(args["out"]) / f"reads-rank{dist.rank}.json").write_text(json.dumps(counts))
        trainer.close()
        return
    if args.get("first_step_grads"):
        trainer.run(1)
        trained = [*trainer.model.parameters()]
        if trainer.recipe is not None:
            trained += [*trainer.recipe.criterion.parameters()]
        grads = [p.grad.detach() if p.grad is not None else torch.zeros_like(p) for p in trained]
        # The sums the gradients went through (tests/numerics.py): every layer's fan-in, and the loss's sum over the
        # global batch's pixels (which logvar's gradient and every weight gradient reduce over).
        lengths = reduction_lengths(trainer.model, *([trainer.recipe.criterion] if trainer.recipe else []))
        lengths.append(args["batch_size"] * dist.world_size * data.train[0].numel())
        torch.save({"grads": grads, "reduction_lengths": lengths}, Path(args["out"]) / f"grads-rank{dist.rank}.pt")
        trainer.close()
        return
    summary = trainer.fit()
    params = trained_state(trainer)
    torch.save({"params": params, "initial": initial, "steps": summary.steps, "skipped": summary.skipped_steps},
               Path(args["out"]) / f"params-rank{dist.rank}.pt")
    trainer.close()


if __name__ == "__main__":
    main()
