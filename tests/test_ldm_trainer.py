"""`vaefast train --recipe ldm`: the trainer's step leaves LDM's gradients (as tests/test_ldm_loss.py writes LDM's
flow out), also with gradient accumulation; both updates are skipped on the device on a NaN and counted; no host
read per step; resume is bit-exact with the discriminator, its optimizer and logvar; bf16 and activation
checkpointing; the options, their LDM defaults and what the recipe refuses."""

from __future__ import annotations

import copy
import math
import types

import pytest
import torch
from conftest import quiet_config
from numerics import assert_reordered_close, mutation_is_caught, reduction_lengths
from test_ldm_loss import _grads, ldm_discriminator_step, ldm_generator_step
from test_sync_free import ScalarReads

from vaefast.config import TrainConfig
from vaefast.plan import plan_run
from vaefast.train import Trainer
from vaefast.train.noise import NoiseSeeds


def _reduction_lengths(trainer, batch_size: int) -> list[int]:
    """The sums a recipe step's gradients go through: every layer's fan-in (autoencoder, LPIPS, discriminator) and
    the loss's sum over the batch's pixels."""
    pixels = batch_size * math.prod(trainer.data.image_shape)
    return reduction_lengths(trainer.model, trainer.recipe.criterion) + [pixels]


def recipe_config(tmp_path, vgg, **overrides):
    options = {"recipe": "ldm", "lpips_weights": str(vgg), "disc_start": 0, "beta": 0.01, "hidden": [32],
               "latent_dim": 4, "batch_size": 8, "epochs": 1, "log_every": 1000, "precision": "fp32",
               "checkpoint_every": 0, **overrides}
    return quiet_config(tmp_path, **options)


class ReferenceAutoencoder(torch.nn.Module):
    """The trainer's model as LDM's flow sees it: [-1, 1] in and out, with the noise of the run's n-th draw."""

    def __init__(self, model, x01):
        super().__init__()
        self.model, self.x01 = model, x01

    @property
    def conv_out(self):
        return types.SimpleNamespace(weight=self.model.last_layer())

    def forward(self, x, key):
        out = self.model(self.x01, seed=key)
        return self.model.likelihood.mean(out.decoded) * 2 - 1, out.kl


def _ldm_reference(trainer, micro_batches, step):
    """Copies of the trainer's model and loss, stepped the LDM way over the micro-batches (gradients accumulated
    and divided by their count, as Lightning accumulates): (autoencoder, criterion)."""
    model, crit = copy.deepcopy(trainer.model), copy.deepcopy(trainer.recipe.criterion)
    seeds = NoiseSeeds(trainer.cfg.runtime.seed, 0, torch.device("cpu"))
    for x in micro_batches:
        ae = ReferenceAutoencoder(model, x)
        key = seeds.next()
        ldm_generator_step(ae, crit, x * 2 - 1, key, step)
        ldm_discriminator_step(ae, crit, x * 2 - 1, key, step, trainer.cfg.recipe.disc_loss)
    for p in [*model.parameters(), *crit.parameters()]:
        if p.grad is not None:
            p.grad /= len(micro_batches)
    return model, crit


@pytest.mark.parametrize("disc_start, grad_accum", [(0, 1), (5, 1), (0, 2)],
                         ids=["after disc_start", "before disc_start", "2 micro-batches"])
def test_a_trainer_step_leaves_the_ldm_gradients(tmp_path, tiny_data, random_vgg16, disc_start, grad_accum):
    trainer = Trainer(recipe_config(tmp_path, random_vgg16[0], disc_start=disc_start, grad_accum=grad_accum,
                                    batch_size=8 // grad_accum), tiny_data)
    group = [x for x, _ in zip(trainer.loader.batches(), range(grad_accum))]
    model, crit = _ldm_reference(trainer, group, step=0)
    trainer.train_step(group)  # the gradients stay in .grad after the update
    # LDM's flow and the single pass sum in different orders: the rounding-error bound of the chain (numerics.py).
    lengths = _reduction_lengths(trainer, 8)
    ours = {**_grads(trainer.model), "logvar": trainer.recipe.logvar.grad, **_grads(trainer.recipe.disc)}
    theirs = {**_grads(model), "logvar": crit.logvar.grad, **_grads(crit.discriminator)}
    for name, expected in theirs.items():
        assert_reordered_close(ours[name], expected, lengths, name)
    largest = max((name for name in theirs if theirs[name].abs().max() > 0), key=lambda name: theirs[name].numel())
    assert mutation_is_caught(lambda a, b: assert_reordered_close(a, b, lengths, largest), ours[largest],
                              theirs[largest])
    moved = [not torch.equal(a, b) for a, b in zip(crit.discriminator.parameters(), trainer.recipe.disc.parameters())]
    assert all(moved) == (disc_start == 0), "the discriminator steps from disc_start on, and only then"
    # ...yet its Adam counts every step, as LDM's (whose discriminator pass returns 0 · hinge before disc_start)
    assert {int(state["step"]) for state in trainer.recipe.optimizer.state.values()} == {1}
    assert all(p.grad is None for p in trainer.recipe.criterion.perceptual.parameters())


def test_a_nan_batch_skips_both_updates_and_counts_both(tmp_path, tiny_data, random_vgg16, reliability):
    reliability.case("LDM recipe: NaN batch skips generator and discriminator")
    trainer = Trainer(recipe_config(tmp_path, random_vgg16[0]), tiny_data)
    trainer.run(2)
    before = [p.detach().clone() for p in [*trainer.model.parameters(), *trainer.recipe.criterion.parameters()]]
    x = next(iter(trainer.loader.batches()))
    result = trainer.train_step(x * float("nan"))
    after = [*trainer.model.parameters(), *trainer.recipe.criterion.parameters()]
    assert not bool(result.applied)
    assert trainer.guard.skipped == 1 and trainer.recipe.guard.skipped == 1
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_no_host_read_outside_log_steps(tmp_path, tiny_data, random_vgg16):
    trainer = Trainer(recipe_config(tmp_path, random_vgg16[0], disc_start=3, ema=0.99, clip_grad=1.0), tiny_data)
    counts = []
    with ScalarReads() as mode:
        trainer.run(10, on_step=lambda step: counts.append(mode.count))  # across disc_start
    assert [b - a for a, b in zip(counts, counts[1:])] == [0] * 9


def _state(trainer):
    return [t.detach().clone() for t in [*trainer.model.parameters(), *trainer.recipe.criterion.parameters(),
                                         *trainer.recipe.disc.buffers()]] + [
        v.clone() for group in (trainer.optimizer, trainer.recipe.optimizer)
        for state in group.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def test_resume_is_bit_exact_with_the_discriminator(tmp_path, tiny_data, random_vgg16):
    vgg = random_vgg16[0]
    straight = Trainer(recipe_config(tmp_path / "straight", vgg, max_steps=6, disc_start=2, ema=0.9), tiny_data)
    straight.fit()
    first = Trainer(recipe_config(tmp_path / "split", vgg, max_steps=3, disc_start=2, ema=0.9), tiny_data)
    first.fit()
    resumed = Trainer(recipe_config(tmp_path / "split", vgg, max_steps=6, disc_start=2, ema=0.9,
                                    resume=str(tmp_path / "split")), tiny_data)
    assert resumed.step == 3
    resumed.fit()
    a, b = _state(straight), _state(resumed)
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(torch.equal(x, y) for x, y in zip(straight.ema.shadow, resumed.ema.shadow))
    assert len(straight.ema.shadow) == len(list(straight.model.parameters()))  # the EMA is the autoencoder's only


def test_bf16_autocast_follows_fp32(tmp_path, tiny_data, random_vgg16):
    grads = {}
    for precision in ("fp32", "bf16"):
        trainer = Trainer(recipe_config(tmp_path / precision, random_vgg16[0], precision=precision), tiny_data)
        result = trainer.train_step(next(iter(trainer.loader.batches())))
        assert bool(result.applied)
        grads[precision] = torch.cat([p.grad.flatten() for p in trainer.model.parameters()])
    cosine = torch.nn.functional.cosine_similarity(grads["fp32"], grads["bf16"], dim=0)
    assert cosine > 0.98, float(cosine)


def test_activation_checkpointing_keeps_the_gradients(tmp_path, tiny_data, random_vgg16):
    grads = []
    for checkpointing in (False, True):
        trainer = Trainer(recipe_config(tmp_path / str(checkpointing), random_vgg16[0],
                                        activation_checkpointing=checkpointing), tiny_data)
        trainer.train_step(next(iter(trainer.loader.batches())))
        grads.append(torch.cat([p.grad.flatten() for p in [*trainer.model.parameters(), trainer.recipe.logvar]]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


def test_ldm_defaults_fill_only_what_no_layer_sets(tmp_path):
    from vaefast.config import resolve

    cfg = resolve({"beta": 0.01}, {"recipe": "ldm"})  # a TOML's beta, then the flag
    assert cfg.objective.beta == 0.01 and cfg.optim.betas == (0.5, 0.9) and cfg.model.likelihood == "gaussian"
    assert (cfg.recipe.perceptual, cfg.recipe.disc, cfg.recipe.disc_loss) == ("lpips", "patchgan", "hinge")
    plain = TrainConfig()
    assert plain.recipe.recipe == "elbo" and plain.objective.beta == 1.0 and plain.optim.betas == (0.9, 0.999)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("options, words", [
    ({"precision": "fp16"}, "fp32 or bf16"),
    ({"samples": 2}, "one reconstruction per image"),
    ({"master_weights": True, "precision": "bf16"}, "--master-weights"),
    ({"learn_sigma": True}, "--learn-sigma"),
])
def test_what_the_recipe_cannot_combine_with_is_refused(options, words):
    with pytest.raises(ValueError, match=words):
        TrainConfig.from_options(recipe="ldm", **options).validate()


def test_discriminator_options_need_the_recipe():
    with pytest.raises(ValueError, match="pass --recipe ldm"):
        TrainConfig.from_options(disc="patchgan")


def test_whole_step_falls_back_with_its_reason():
    plan = plan_run(device=torch.device("cpu"), compile=True, compile_mode="whole-step", recipe=True)
    assert not plan.whole_step and "LDM recipe" in plan.reasons["compile mode"]
    assert not plan_run(device=torch.device("cpu"), precision="bf16", recipe=True).master_weights


def test_missing_lpips_weights_are_one_line_that_names_the_file(tmp_path):
    import subprocess
    import sys

    missing = tmp_path / "nowhere" / "vgg16.pth"
    proc = subprocess.run([sys.executable, "-m", "vaefast", "train", "--recipe", "ldm", "--lpips-weights",
                           str(missing), "--out", str(tmp_path / "run"), "--max-steps", "1", "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert str(missing) in proc.stderr and "--perceptual-weight 0" in proc.stderr


def test_compiled_autoencoder_forward_leaves_the_eager_gradients(tmp_path, tiny_data, random_vgg16):
    """--compile compiles the autoencoder's forward; the recipe's backward (autograd.grad to the last layer through
    the compiled graph included) leaves what the eager step leaves."""
    grads = []
    for compiled in (False, True):
        trainer = Trainer(recipe_config(tmp_path / str(compiled), random_vgg16[0], compile=compiled), tiny_data)
        trainer.train_step(next(iter(trainer.loader.batches())))
        grads.append([p.grad for p in [*trainer.model.parameters(), trainer.recipe.logvar,
                                       *trainer.recipe.disc.parameters()]])
    lengths = _reduction_lengths(trainer, 8)
    for compiled_grad, eager_grad in zip(*grads[::-1]):
        assert_reordered_close(compiled_grad, eager_grad, lengths, f"gradient {tuple(eager_grad.shape)}")
    largest = max(range(len(grads[0])), key=lambda i: grads[0][i].numel() * bool(grads[0][i].abs().max() > 0))
    assert mutation_is_caught(lambda a, b: assert_reordered_close(a, b, lengths, "mutated"), grads[1][largest],
                              grads[0][largest])
