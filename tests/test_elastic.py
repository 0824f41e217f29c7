"""Elastic restarts: `torchrun --max-restarts=2 ... -m vaefast train --resume auto` survives a SIGKILL of a rank at a
random moment: torchrun tears the group down and starts it again, every rank resumes from the newest checkpoint
(rank 0's choice), and the run ends bit-identical to an uninterrupted two-rank run, with the LDM recipe too
(discriminator, its optimizer and logvar included).

A restarted group once hung or failed in init_process_group in about half the kills: the workers share torchrun's
agent store across restarts, and the last attempt's Gloo addresses were still in it (DistContext now keys each
attempt apart, vaefast/train/distributed.py). VAEFAST_ELASTIC_SEEDS sets the number of seeds (default 5)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import state_tensors

from vaefast.checkpoint import list_checkpoints, load_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "VAEFAST_NUM_THREADS": "1"}
ENV.pop("TRITON_INTERPRET", None)
# Long enough that the kill lands mid-run. The recipe runs without LPIPS, which is frozen and holds no state to
# resume (the discriminator, its optimizer, logvar and the synchronized BatchNorm are what a restart must restore).
FINAL_STEP = {"plain": 300, "ldm": 30}
SEEDS = list(range(int(os.environ.get("VAEFAST_ELASTIC_SEEDS") or "5")))


def _command(out, seed: int, restarts: int, variant: str) -> list[str]:
    extra = ["--recipe", "ldm", "--perceptual", "none", "--disc-layers", "2", "--disc-start", "10",
             "--checkpoint-every", "3"] if variant == "ldm" else ["--checkpoint-every", "5", "--ema", "0.99"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            f"--max-restarts={restarts}", "-m", "vaefast", "train", "--resume", "auto", "--out", str(out),
            "--hidden", "32", "--latent-dim", "4", "--batch-size", "16", "--epochs", "20", "--max-steps",
            str(FINAL_STEP[variant]), "--keep-checkpoints", "2", "--no-progress", "--no-tensorboard", "--no-compile",
            "--precision", "fp32", "--seed", str(seed), "--dist-timeout", "60", *extra]


def _workers(agent: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(agent)], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The uninterrupted two-rank run of each variant, once: the kills differ by seed, the training does not."""
    runs = {}

    def run(variant: str) -> dict:
        if variant not in runs:
            out = tmp_path_factory.mktemp(f"uninterrupted-{variant}")
            done = subprocess.run(_command(out, 0, 0, variant), capture_output=True, text=True,
                                  env=ENV, timeout=300)
            assert done.returncode == 0, done.stderr[-3000:]
            runs[variant] = load_checkpoint(out)
        return runs[variant]
    return run


@pytest.mark.parametrize("variant,seed", [("plain", seed) for seed in SEEDS] + [("ldm", 0), ("ldm", 1)])
def test_a_killed_rank_restarts_the_group_and_the_run_ends_bit_identical(tmp_path, variant, seed, reliability,
                                                                       uninterrupted):
    """A SIGKILL of a random rank at a random moment (the seed picks both)."""
    rng = random.Random(seed)
    reference = uninterrupted(variant)
    out = tmp_path / "elastic"
    agent = subprocess.Popen(_command(out, 0, 2, variant), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and agent.poll() is None and not list_checkpoints(out):
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 0.5))
    workers = _workers(agent.pid)
    assert agent.poll() is None and len(workers) == 2, "the run must still be training when a rank is killed"
    os.kill(rng.choice(workers), signal.SIGKILL)
    reliability.case("elastic: SIGKILL of a rank under torchrun --max-restarts, --resume auto"
                     + (" (LDM recipe)" if variant == "ldm" else ""))
    _, stderr = agent.communicate(timeout=300)
    assert agent.returncode == 0, stderr[-3000:]
    assert "resuming" in stderr, "the restarted group resumed from a checkpoint"
    a, b = load_checkpoint(out), reference
    assert a["step"] == b["step"] == FINAL_STEP[variant]
    ours, theirs = dict(state_tensors(a)), dict(state_tensors(b))
    compared = [k for k in theirs if k.startswith(("/model/", "/optimizer/", "/ema/", "/recipe/"))]
    assert any(k.startswith("/optimizer/state/") for k in compared)
    if variant == "plain":
        assert any(k.startswith("/ema/") for k in compared), sorted(theirs)[:20]
    if variant == "ldm":
        assert any(k.startswith("/recipe/") for k in compared), sorted(theirs)[:20]
    for key in compared:
        assert torch.equal(ours[key], theirs[key]), key
