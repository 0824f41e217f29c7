"""The sectioned config: every spelling of a configuration reads to the same values, each option is checked where
it is defined, and checkpoints written before the sections resume bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vaefast.checkpoint import load_checkpoint
from vaefast.cli import build_parser, resolve_train_config
from vaefast.config import DIFFUSERS_CLAMP, TrainConfig, resolve

FIXTURES = Path(__file__).parent / "fixtures"
# Written by `vaefast train --max-steps 6 --checkpoint-every 3 --hidden 16 --latent-dim 4 --batch-size 32 --ema 0.9
# --lr-schedule cosine --kl-warmup-steps 4 --clip-grad 5 --precision fp32` before the config had sections.
FORMAT2 = FIXTURES / "format2-mlp-step3.pt"


def test_three_spellings_read_the_same():
    flat = TrainConfig.from_options(lr=3e-4, batch_size=64, model="conv", conv_channels=[8, 16], beta=0.5)
    sectioned = TrainConfig.from_dict({"optim": {"lr": 3e-4}, "data": {"batch_size": 64},
                                       "model": {"kind": "conv", "channels": [8, 16]}, "objective": {"beta": 0.5}})
    legacy = TrainConfig.from_dict({"lr": 3e-4, "batch_size": 64, "beta": 0.5,
                                    "model": {"kind": "conv", "channels": [8, 16]}})
    assert flat == sectioned == legacy
    assert TrainConfig.from_dict(flat.to_dict()) == flat  # what vaefast writes reads back


def test_legacy_diffusers_model_and_its_clamp():
    legacy = TrainConfig.from_dict({"model": {"kind": "diffusers", "diffusers": "sd-kl-f8", "clamp": [-30.0, 20.0]}})
    assert legacy.model.kind == "diffusers:sd-kl-f8" and legacy.model.diffusers == "sd-kl-f8"
    assert TrainConfig.from_options(model="diffusers:sd-kl-f8").model.clamp == DIFFUSERS_CLAMP
    assert TrainConfig.from_options(model="diffusers:sd-kl-f8", clamp=None).model.clamp is None
    assert TrainConfig.from_options(model="conv").model.clamp == (-10.0, 10.0)


@pytest.mark.parametrize("options, message", [
    ({"kl_warmup_steps": -3}, "--kl-warmup-steps must be >= 0, got -3"),
    ({"loader": "fast"}, "--loader must be one of auto, memory, dali, torch"),
    ({"ema": 1.5}, r"--ema must be in \[0.0, 1.0\)"),
    ({"batch_size": 0}, "--batch-size must be >= 1"),
    ({"lr": "big"}, "--lr must be a number"),
    ({"objective": "iwae"}, "pass --samples 2 or more"),
    ({"estimator": "dreg"}, "--estimator dreg is for --objective iwae"),
    ({"precision": "fp32", "master_weights": True}, "--master-weights is for bf16"),
    ({"clamp": (5.0, -5.0)}, "--clamp needs LO < HI"),
    ({"model": "transformer"}, "--model must be mlp, conv or diffusers:SPEC"),
    ({"learning_rate": 1.0}, "unknown config key 'learning_rate'"),
])
def test_bad_options_are_refused_where_they_are_defined(options, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_options(**options)


def test_changes_in_place_are_checked_again():
    cfg = TrainConfig()
    cfg.optim.epochs = 0
    with pytest.raises(ValueError, match="--epochs must be >= 1, got 0"):
        cfg.validate()


def test_flags_toml_and_checkpoint_layer_in_order(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('epochs = 5\n[optim]\nlr = 0.01\n[model]\nhidden = [32]\n')
    args = build_parser().parse_args(["train", "--config", str(toml), "--resume", str(FORMAT2), "--epochs", "2",
                                      "--out", str(tmp_path / "run")])
    cfg, resumed = resolve_train_config(args)
    assert resumed is not None and resumed["step"] == 3  # read once, handed on
    assert cfg.optim.epochs == 2 and cfg.optim.lr == 0.01 and cfg.model.hidden == [32]  # flag > TOML > checkpoint
    assert cfg.model.latent_dim == 4 and cfg.optim.ema == 0.9 and cfg.checkpoint.out == str(tmp_path / "run")


def test_help_groups_the_flags_by_section():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    text = train.format_help()
    order = [text.index(f"{title} options:") for title in
             ("data", "model", "objective", "optimization", "runtime", "checkpoints", "logging")]
    assert order == sorted(order)
    body = text[order[0]:]  # past the usage line, which lists every flag
    assert body.index("--kl-warmup-steps") > body.index("objective options:") > body.index("--latent-dim")


def test_a_checkpoint_written_before_the_sections_resumes_bit_exactly(tmp_path):
    """Everything the old checkpoint holds comes back as it was: the weights, Adam's moments and steps, the EMA,
    the LR schedule, every RNG stream, the noise counter and the data position; then training goes on."""
    from vaefast.train import Trainer

    old = load_checkpoint(FORMAT2)
    cfg = resolve(old["config"], {"out": str(tmp_path / "run"), "resume": str(FORMAT2)})
    trainer = Trainer(cfg)
    new = trainer.checkpointer.state()
    assert set(old) - {"format_version", "sha256"} == set(new)
    for key in sorted(set(new) - {"config"}):
        _assert_identical(old[key], new[key], key)
    assert TrainConfig.from_dict(old["config"]).to_dict() == new["config"] | {"checkpoint": new["config"]["checkpoint"]
                                                                               | {"out": "/tmp/fx/run",
                                                                                  "resume": None}}
    assert trainer.run(2) == 2 and trainer.step == 5


def _assert_identical(a, b, where):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b.to(a.device)), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            _assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def test_json_keys_fixture_matches_the_typed_results():
    import dataclasses

    from vaefast.eval.report import EvalReport
    from vaefast.train.summary import RunSummary

    keys = json.loads((FIXTURES / "json_keys.json").read_text())
    # present after an LDM-recipe run
    recipe_only = ("test_psnr", "test_ssim", "test_lpips", "test_rfid", "test_temporal")
    assert [f.name for f in dataclasses.fields(RunSummary) if f.name not in recipe_only] == keys["train"]
    # only when SSIM is missing, LPIPS or FID weights are given, the data are clips, or tiles were asked for
    optional = ("quality_note", "lpips", "rfid", "temporal", "tiling")
    assert [f.name for f in dataclasses.fields(EvalReport) if f.name not in optional] == keys["eval"]


def test_resume_flags_complete_with_the_checkpoints_own_options(tmp_path, tiny_data):
    """`--resume RUN --estimator dreg` on an IWAE run: the flag alone breaks a rule (dreg needs iwae), with the
    checkpoint's options it does not; the checkpoint's options are layered in before the rules are checked."""
    from vaefast.train import Trainer

    run = tmp_path / "iwae"
    Trainer(TrainConfig.from_options(out=str(run), samples=2, objective="iwae", max_steps=1, hidden=[8],
                                     latent_dim=2, progress=False, tensorboard=False), tiny_data).fit()
    args = build_parser().parse_args(["train", "--resume", str(run), "--estimator", "dreg"])
    cfg, resumed = resolve_train_config(args)
    assert resumed["step"] == 1 and cfg.objective.objective == "iwae" and cfg.objective.estimator == "dreg"
