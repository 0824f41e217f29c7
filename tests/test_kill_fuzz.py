"""Kill fuzzing: runs SIGKILLed three times at random moments (checkpoint writes included, with a checkpoint every
step) and resumed each time end bit-identical to an uninterrupted run, in fp32, in bf16 with float32 master weights,
with the LDM recipe (discriminator, its optimizer and logvar included), and with a video autoencoder on clips
(the recipe in 5D with a 3D discriminator, windows of frames drawn per batch)."""

import json
import random
import tempfile
from functools import lru_cache
from pathlib import Path
import signal
import subprocess
import sys
import time

import pytest
import torch

from vaefast.checkpoint import list_checkpoints, load_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")]
FINAL_STEP = 400  # far more than three kills can reach, so every kill lands mid-run
KILLS = 3
TRAINING_SEED = 0
# The recipe's steps are slower; it starts the discriminator early, and skips LPIPS, which is frozen and not saved.
LDM = ["--recipe", "ldm", "--perceptual", "none", "--disc-start", "5", "--disc-layers", "2", "--beta", "0.01"]


def _final_step(precision):
    # The recipe's steps take several times the plain MLP's, so that three kills reach fewer of them.
    return {"ldm": 45, "video": 30}.get(precision, FINAL_STEP)


@lru_cache(maxsize=None)
def _video_inputs() -> Path:
    """A tiny Wan config and 24 clips of 9 frames (tests/test_video.py's), written once per session."""
    import numpy as np

    from test_video import WAN, moving_shapes

    folder = Path(tempfile.mkdtemp(prefix="vaefast-kill-video-"))
    np.save(folder / "clips.npy", moving_shapes(24, 9, 32))
    (folder / "wan.json").write_text(json.dumps(WAN))
    return folder


def _command(out, seed, precision, resume):
    command = [sys.executable, "-m", "vaefast", "train", "--out", str(out), "--epochs", "20", "--batch-size", "32",
               "--hidden", "32", "--latent-dim", "4", "--no-progress", "--no-tensorboard", "--no-compile",
               "--precision", "fp32" if precision in ("ldm", "video") else precision, "--seed", str(seed),
               "--checkpoint-every", "1", "--keep-checkpoints", "2", "--max-steps", str(_final_step(precision))]
    if precision == "bf16":
        command.append("--master-weights")
    if precision == "ldm":
        command += LDM
    if precision == "video":  # the last occurrence of a flag wins: these replace the MLP's batch size
        folder = _video_inputs()
        command += [*LDM, "--disc", "patchgan3d", "--model", f"diffusers:{folder / 'wan.json'}", "--data",
                    str(folder / "clips.npy"), "--frames", "5", "--batch-size", "2"]
    if resume and list_checkpoints(out):
        command += ["--resume", str(out)]
    return command


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The uninterrupted run of each precision, once: the kill seeds pick different moments of the same training."""
    runs = {}

    def run(precision: str):
        if precision not in runs:
            out = tmp_path_factory.mktemp(f"uninterrupted-{precision}")
            done = subprocess.run(_command(out, TRAINING_SEED, precision, resume=False), capture_output=True,
                                  text=True, timeout=300)
            assert done.returncode == 0, done.stderr
            runs[precision] = load_checkpoint(out)
        return runs[precision]
    return run


# Four runs (twelve kills), three uninterrupted references: the two fp32 runs share theirs.
@pytest.mark.parametrize("seed, precision", [(0, "fp32"), (1, "bf16"), (2, "fp32"), (3, "ldm"), (4, "video")])
def test_killed_and_resumed_runs_end_bit_identical(tmp_path, seed, precision, reliability, uninterrupted):
    rng = random.Random(seed)  # where the kills land
    out = tmp_path / "killed"
    kills = 0
    for _ in range(KILLS):
        proc = subprocess.Popen(_command(out, TRAINING_SEED, precision, resume=True), stderr=subprocess.DEVNULL)
        # Past the start-up (imports, data), into the steps and their checkpoint writes.
        first = list_checkpoints(out)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and list_checkpoints(out) == first:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
            reliability.case(f"SIGKILL at a random moment, then --resume ({precision})")
        proc.wait(timeout=60)
    assert kills == KILLS, "every run was still training when it was killed"
    finish = subprocess.run(_command(out, TRAINING_SEED, precision, resume=True), capture_output=True, text=True,
                            timeout=300)
    assert finish.returncode == 0, finish.stderr
    a, b = load_checkpoint(out), uninterrupted(precision)
    assert a["step"] == b["step"] == _final_step(precision)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    assert all(torch.equal(x, y) for x, y in zip(_moments(a), _moments(b)))
    if precision in ("ldm", "video"):
        recipe_a, recipe_b = a["recipe"], b["recipe"]
        assert torch.equal(recipe_a["logvar"], recipe_b["logvar"])
        assert all(torch.equal(recipe_a["discriminator"][k], v) for k, v in recipe_b["discriminator"].items())
        assert all(torch.equal(x, y) for x, y in zip(_moments({"optimizer": recipe_a["disc_optimizer"]}),
                                                     _moments({"optimizer": recipe_b["disc_optimizer"]})))


def _moments(state):
    return [value for entry in state["optimizer"]["state"].values() for key, value in sorted(entry.items())
            if isinstance(value, torch.Tensor)]
