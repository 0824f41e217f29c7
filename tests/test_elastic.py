"""Elastic restarts: `torchrun --max-restarts=2 ... -m vaefast train --resume auto` survives a SIGKILL of a rank at a
random moment: torchrun tears the group down and starts it again, every rank resumes from the newest checkpoint
(rank 0's choice), and the run ends bit-identical to an uninterrupted two-rank run.

Opt-in (VAEFAST_ELASTIC_SEEDS=N runs N seeds): on this machine's gloo, the restarted group sometimes hangs inside
init_process_group (both new workers waiting in ProcessGroupGloo's constructor, seen in 2 of about 20 kills), which
would make the suite flaky; what is known of it is in issue #27's note."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from vaefast.checkpoint import list_checkpoints, load_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
              pytest.mark.skipif(not os.environ.get("VAEFAST_ELASTIC_SEEDS"),
                                 reason="opt-in: VAEFAST_ELASTIC_SEEDS=N (a restarted gloo group can hang, see above)")]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "VAEFAST_NUM_THREADS": "1"}
ENV.pop("TRITON_INTERPRET", None)
FINAL_STEP = 300  # long enough that the kill lands mid-run (see the note on a kill at the very end)
SEEDS = list(range(int(os.environ.get("VAEFAST_ELASTIC_SEEDS") or "0")))


def _command(out, seed: int, restarts: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            f"--max-restarts={restarts}", "-m", "vaefast", "train", "--resume", "auto", "--out", str(out),
            "--hidden", "32", "--latent-dim", "4", "--batch-size", "16", "--epochs", "20", "--max-steps",
            str(FINAL_STEP), "--checkpoint-every", "5", "--keep-checkpoints", "2", "--no-progress",
            "--no-tensorboard", "--no-compile", "--precision", "fp32", "--seed", str(seed), "--dist-timeout", "60"]


def _workers(agent: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(agent)], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found]


@pytest.mark.parametrize("seed", SEEDS)
def test_a_killed_rank_restarts_the_group_and_the_run_ends_bit_identical(tmp_path, seed, reliability):
    rng = random.Random(seed)
    reference = tmp_path / "reference"
    done = subprocess.run(_command(reference, seed, 0), capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "elastic"
    agent = subprocess.Popen(_command(out, seed, 2), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env=ENV)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and agent.poll() is None and not list_checkpoints(out):
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 0.5))
    workers = _workers(agent.pid)
    assert agent.poll() is None and len(workers) == 2, "the run must still be training when a rank is killed"
    os.kill(rng.choice(workers), signal.SIGKILL)
    reliability.case("elastic: SIGKILL of a rank under torchrun --max-restarts, --resume auto")
    _, stderr = agent.communicate(timeout=300)
    assert agent.returncode == 0, stderr[-3000:]
    assert "resuming" in stderr, "the restarted group resumed from a checkpoint"
    a, b = load_checkpoint(out), load_checkpoint(reference)
    assert a["step"] == b["step"] == FINAL_STEP
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    moments = [(x, y) for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values())
               for x, y in zip(sa.values(), sb.values()) if isinstance(x, torch.Tensor)]
    assert moments and all(torch.equal(x, y) for x, y in moments)
