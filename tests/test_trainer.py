"""The training engine: exact resume, the NaN guard, atomic checkpoints, CLI and config."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vaefast.data import ImageDataset, load_dataset
from vaefast.train import CheckpointError, NonFiniteTraining, TrainConfig, Trainer, load_checkpoint
from vaefast.checkpoint import list_checkpoints


@pytest.fixture(scope="module")
def small_data():
    full = load_dataset(None)
    return ImageDataset("small", full.train[:640], full.test[:200], full.train_labels[:640], full.test_labels[:200])


def _cfg(tmp_path, name, **kw):
    return TrainConfig.from_options(**{"out": str(tmp_path / name), "batch_size": 64, "epochs": 2, "progress": False,
                                       "tensorboard": False, "compile": False, "log_every": 5, "hidden": [64],
                                       "latent_dim": 8, **kw})


def _params(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("stop", ["epoch end", "mid-epoch stop", "crash"])
def test_resume_is_bit_exact(tmp_path, small_data, stop, precision):
    """A run interrupted (a graceful stop, or a crash after a checkpoint) and resumed ends bit-identical: in fp32,
    and in bf16 with float32 master weights (the CPU default)."""
    full = Trainer(_cfg(tmp_path, "full", epochs=3, precision=precision), small_data)
    full.fit()
    steps_per_epoch = len(full.loader)

    if stop == "epoch end":
        part = Trainer(_cfg(tmp_path, "part", epochs=3, max_steps=steps_per_epoch, precision=precision), small_data)
        part.fit()
    elif stop == "mid-epoch stop":
        part = Trainer(_cfg(tmp_path, "part", epochs=3, max_steps=steps_per_epoch + 3, precision=precision),
                       small_data)
        part.fit()
    else:
        part = Trainer(_cfg(tmp_path, "part", epochs=3, checkpoint_every=7, precision=precision), small_data)
        original = part.train_step

        def dies_at_step_17(x):
            if part.step == 17:
                raise KeyboardInterrupt("simulated kill")
            return original(x)

        part.train_step = dies_at_step_17
        with pytest.raises(KeyboardInterrupt):
            part.fit()
    latest = part.checkpointer.latest()
    assert load_checkpoint(latest)["step"] == {"epoch end": steps_per_epoch, "mid-epoch stop": steps_per_epoch + 3,
                                               "crash": 14}[stop]

    resumed = Trainer(_cfg(tmp_path, "resumed", epochs=3, resume=str(latest), precision=precision), small_data)
    resumed.fit()
    assert resumed.step == full.step
    assert torch.equal(_params(resumed), _params(full))
    if resumed.master_weights:
        masters = [resumed.optimizer.state[p]["master"] for p in resumed.model.parameters()]
        assert all(torch.equal(m, full.optimizer.state[p]["master"]) for m, p in zip(masters, full.model.parameters()))


def test_bf16_on_cpu_keeps_float32_master_weights(tmp_path, small_data):
    """The CPU bf16 default: a bf16 model, float32 masters in the optimizer and in the checkpoint, which a float32
    model loads as is; explicit settings win, and master weights with fp32 training are refused."""
    trainer = Trainer(_cfg(tmp_path, "mw", precision="bf16", epochs=1), small_data)
    assert trainer.master_weights and next(trainer.model.parameters()).dtype == torch.bfloat16
    summary = trainer.fit()
    assert summary.master_weights and 100 < summary.test_neg_elbo_nats < 600
    saved = load_checkpoint(summary.checkpoint)["model"]
    assert all(v.dtype == torch.float32 for v in saved.values())
    for name, p in trainer.model.named_parameters():
        assert torch.equal(saved[name].bfloat16(), p.detach())
    assert not Trainer(_cfg(tmp_path, "off", precision="bf16", master_weights=False), small_data).master_weights
    with pytest.raises(ValueError, match="--master-weights is for bf16"):
        Trainer(_cfg(tmp_path, "bad", precision="fp32", master_weights=True), small_data)


def test_nan_guard_skips_then_stops_with_diagnosis(tmp_path, small_data, reliability):
    reliability.case("persistent NaN: stop with a diagnosis, last checkpoint intact")
    trainer = Trainer(_cfg(tmp_path, "nan", max_bad_steps=3, epochs=1), small_data)
    trainer.save()
    good = trainer.checkpointer.latest()
    before = good.read_bytes()
    calls = {"n": 0}

    def poison(module, inputs, output):
        calls["n"] += 1
        if calls["n"] in (2,) or calls["n"] >= 4:
            return output * float("nan")
        return output

    trainer.model.encoder.register_forward_hook(poison)  # the encoder's output: mu and logvar
    with pytest.raises(NonFiniteTraining) as info:
        trainer.fit()
    message = str(info.value)
    assert "3 consecutive steps" in message
    assert "mu" in message and "logvar" in message, message
    assert "--lr" in message and "clamp" in message
    assert trainer.guard.skipped == 4  # the isolated bad step 2, then 3 in a row
    assert good.read_bytes() == before, "the last good checkpoint must be left intact"
    assert list_checkpoints(good.parent) == [good]


def test_a_weight_poisoned_mid_run_stops_with_its_name(tmp_path, small_data, reliability):
    """A NaN written into a weight mid-run (a bad kernel, a flipped bit in memory) makes every later step
    non-finite: the steps are skipped and counted, then the run stops naming the parameter, and the checkpoint
    written before it stays finite and intact."""
    reliability.case("weight poisoned mid-run: skipped, then stop naming it")
    trainer = Trainer(_cfg(tmp_path, "weight", max_bad_steps=4, epochs=1, checkpoint_every=2), small_data)
    trainer.run(2)
    good = trainer.checkpointer.latest()
    before = good.read_bytes()
    name, weight = next((n, p) for n, p in trainer.model.named_parameters() if n.startswith("decoder"))
    with torch.no_grad():
        weight.view(-1)[5] = float("nan")
    with pytest.raises(NonFiniteTraining) as info:
        trainer.run(20)
    assert "4 consecutive steps" in str(info.value) and f"non-finite parameters: {name}" in str(info.value)
    assert trainer.guard.skipped == 4 and trainer.step == 5  # the 4th bad step stops inside its train_step
    assert good.read_bytes() == before and list_checkpoints(good.parent)[-1] == good
    assert all(torch.isfinite(v).all() for v in load_checkpoint(good)["model"].values())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("poisoned", ["loss", "gradient only"])
def test_skipped_step_leaves_parameters_unchanged(tmp_path, small_data, precision, poisoned, reliability):
    reliability.case("NaN batch or weight gradient: step skipped, nothing changed")
    """A non-finite loss, or a finite loss with one non-finite gradient, skips the update: in fp32 (torch's fused
    Adam, GradScaler's check) and in bf16 with master weights (the native check answered on the host)."""
    trainer = Trainer(_cfg(tmp_path, "skip", max_bad_steps=5, precision=precision), small_data)
    assert trainer.master_weights == (precision == "bf16")
    x = small_data.train[:64].float() / 255
    before = _params(trainer).clone()
    masters = [trainer.optimizer.state[p]["master"].clone() for p in trainer.model.parameters()] \
        if trainer.master_weights else []
    if poisoned == "loss":
        handle = trainer.model.encoder.register_forward_hook(lambda m, i, o: o * float("inf"))
    else:
        weight = trainer.model.decoder[0][0].weight
        handle = weight.register_hook(lambda g: g.index_fill(0, torch.tensor([3]), float("nan")))
    result = trainer.train_step(x)
    handle.remove()
    assert not bool(result.applied)
    assert torch.equal(_params(trainer), before)
    for p, master in zip(trainer.model.parameters(), masters):
        assert torch.equal(trainer.optimizer.state[p]["master"], master)
    assert trainer.guard.skipped == 1
    result = trainer.train_step(x)  # the next, finite step updates
    assert bool(result.applied) and not torch.equal(_params(trainer), before)


def test_checkpoints_are_atomic_and_pruned(tmp_path, small_data, monkeypatch):
    trainer = Trainer(_cfg(tmp_path, "ckpt", keep_checkpoints=2), small_data)
    for step in (1, 2, 3):
        trainer.step = step
        trainer.save()
    trainer.checkpointer.wait()
    kept = list_checkpoints(tmp_path / "ckpt")
    assert [p.name for p in kept] == ["ckpt-step000000002.pt", "ckpt-step000000003.pt"]
    last = kept[-1].read_bytes()

    def crash(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    trainer.step = 4
    trainer.save()  # written in the background: the failure comes with the wait (or the next step boundary)
    with pytest.raises(OSError, match="disk full"):
        trainer.checkpointer.wait()
    assert list_checkpoints(tmp_path / "ckpt")[-1].read_bytes() == last
    assert not list((tmp_path / "ckpt").glob(".*.tmp")), "no temporary file is left behind"


def test_corrupt_and_truncated_checkpoints_are_named(tmp_path, small_data):
    trainer = Trainer(_cfg(tmp_path, "corrupt"), small_data)
    path = trainer.save()
    trainer.checkpointer.wait()
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pt: it is truncated or corrupt"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(garbage)
    other = tmp_path / "other.pt"
    torch.save({"weights": 1}, other)
    with pytest.raises(CheckpointError, match="not a vaefast checkpoint"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains(tmp_path, small_data, precision):
    summary = Trainer(_cfg(tmp_path, precision, precision=precision, epochs=1), small_data).fit()
    assert summary.skipped_steps <= 2
    assert 100 < summary.test_neg_elbo_nats < 600


def test_collapse_warning(tmp_path, small_data):
    with pytest.warns(RuntimeWarning, match="posterior collapse risk"):
        Trainer(_cfg(tmp_path, "collapse", beta=200.0, epochs=1, lr=3e-3), small_data).fit()


def test_free_bits_and_cyclical_annealing_run(tmp_path, small_data):
    summary = Trainer(_cfg(tmp_path, "fb", free_bits=0.5, kl_cycles=2, epochs=2), small_data).fit()
    assert summary.active_units >= 4


def test_cli_json_config_override_and_resolved_config(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('epochs = 5\nbatch_size = 256\n[model]\nlatent_dim = 6\nhidden = [32]\n')
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "vaefast", "train", "--config", str(config), "--epochs", "1", "--out", str(out),
         "--no-progress", "--no-tensorboard", "--no-compile", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    keys = json.loads((Path(__file__).parent / "fixtures" / "json_keys.json").read_text())["train"]
    assert list(summary) == keys  # the keys --json printed before the typed summary, in order
    assert summary["epochs"] == 1  # the flag beat the file
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["data"]["batch_size"] == 256 and resolved["model"]["latent_dim"] == 6
    assert (out / "metrics.jsonl").read_text().count("\n") >= 1


def test_cli_reports_bad_input_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vaefast", "train", "--data", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "error: --data path not found" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv, message", [
    (["--kl-warmup-steps", "-3"], "--kl-warmup-steps must be >= 0, got -3"),
    (["--ema", "1"], r"--ema must be in \[0.0, 1.0\), got 1.0"),
    (["--objective", "iwae"], "pass --samples 2 or more"),
])
def test_cli_refuses_a_bad_option_in_one_line(tmp_path, argv, message):
    proc = subprocess.run([sys.executable, "-m", "vaefast", "train", "--out", str(tmp_path / "run"), *argv],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and re.search(message, proc.stderr), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_cli_output_is_plain_lines_when_not_a_terminal(tmp_path):
    """stderr to a file: progress as whole lines (no carriage returns), warnings as one line without source."""
    proc = subprocess.run([sys.executable, "-m", "vaefast", "train", "--out", str(tmp_path / "run"), "--epochs", "1",
                           "--max-steps", "12", "--log-every", "4", "--beta", "300", "--hidden", "16",
                           "--no-tensorboard"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert sum(line.startswith("epoch 1/1 step ") for line in lines) == 3  # steps 4, 8, 12
    assert "warnings.warn" not in proc.stderr and "RuntimeWarning" not in proc.stderr
    assert lines[-1].startswith("trained 12 steps at ") or lines[-1].startswith("trained 12 steps;"), lines[-1]


def test_resume_across_master_weight_settings(tmp_path, small_data):
    """A master-weights checkpoint resumes without them (its model weights are the float32 masters); the other way
    round there are no masters to resume, and the error says which flag to use."""
    with_masters = Trainer(_cfg(tmp_path, "mw", precision="bf16", epochs=1), small_data)
    ckpt = with_masters.fit().checkpoint
    plain = Trainer(_cfg(tmp_path, "plain", precision="bf16", epochs=2, master_weights=False, resume=ckpt),
                    small_data)
    assert plain.fit().epochs == 2
    ckpt = Trainer(_cfg(tmp_path, "plain2", precision="bf16", epochs=1, master_weights=False), small_data).fit()
    with pytest.raises(ValueError, match="no float32 master weights.*--no-master-weights"):
        Trainer(_cfg(tmp_path, "mw2", precision="bf16", epochs=2, resume=ckpt.checkpoint), small_data)


def test_compile_mode_is_validated(tmp_path, small_data):
    with pytest.raises(ValueError, match="--compile-mode must be one of"):
        Trainer(_cfg(tmp_path, "bad", compile=True, compile_mode="fastest"), small_data)
    trainer = Trainer(_cfg(tmp_path, "ro", compile=True, compile_mode="reduce-overhead", epochs=1), small_data)
    # CUDA graphs exist on CUDA only; on CPU the mode compiles without them, and the run still trains.
    assert trainer.plan.compile_mode == "reduce-overhead" and not trainer.plan.cuda_graphs
    assert trainer.fit().compiled is True
    # Unset, the mode is reduce-overhead on CUDA (tests/test_plan.py, tests/test_cuda.py) and default elsewhere.
    assert Trainer(_cfg(tmp_path, "auto", epochs=1), small_data).plan.compile_mode == "default"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_tensorboard_scalars_histograms_and_images(tmp_path, small_data, precision):
    """The CLI's default logging: scalars, the per-dim KL histogram and image grids of reconstructions and samples,
    also with a bf16 model under master weights."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = Trainer(_cfg(tmp_path, precision, precision=precision, epochs=1, tensorboard=True), small_data)
    trainer.fit()
    files = list((tmp_path / precision).rglob("events.out.tfevents.*"))
    assert files, "no TensorBoard event file"
    events = EventAccumulator(str(files[0].parent), size_guidance={"images": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    assert {"reconstructions", "samples"} <= set(tags["images"])
    assert "kl_per_dim" in tags["histograms"]
    assert any(t.startswith("train/") for t in tags["scalars"]) and any(t.startswith("test/") for t in tags["scalars"])
    image = events.Images("samples")[-1]
    assert image.width > 28 and image.height > 28


@pytest.mark.parametrize("likelihood", ["gaussian", "laplace"])
def test_location_scale_likelihoods_train_and_learn_their_scale(tmp_path, small_data, likelihood):
    cfg = _cfg(tmp_path, likelihood, epochs=1, precision="fp32")
    cfg.model.likelihood, cfg.model.learn_sigma = likelihood, True
    trainer = Trainer(cfg, small_data)
    before = trainer.evaluate()["neg_elbo_nats"]
    summary = trainer.fit()
    assert summary.skipped_steps == 0 and summary.test_neg_elbo_nats < before
    assert trainer.model.likelihood.log_sigma.item() != pytest.approx(math.log(0.1))


def test_cli_shows_a_progress_bar_on_a_terminal(tmp_path):
    """stderr on a terminal: tqdm's bar (redrawn with carriage returns), the epoch result as a line of its own."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a terminal 120 columns wide
    proc = subprocess.Popen([sys.executable, "-m", "vaefast", "train", "--out", str(tmp_path / "run"), "--epochs", "1",
                             "--max-steps", "12", "--log-every", "4", "--hidden", "16", "--no-tensorboard"],
                            stdout=subprocess.DEVNULL, stderr=follower, stdin=subprocess.DEVNULL)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=300) == 0
    text = b"".join(chunks).decode(errors="replace")
    assert "\r" in text and "12/" in text and "step" in text, text[-2000:]  # tqdm: "n/total [...step/s]"
    assert "trained 12 steps" in text
