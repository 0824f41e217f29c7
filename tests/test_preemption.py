"""SIGTERM stops `vaefast train` at a step boundary with a checkpoint and exit code 75, and --resume then ends
bit-identical to an uninterrupted run; a second signal stops at once, leaving every complete checkpoint loadable."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from vaefast.checkpoint import list_checkpoints, load_checkpoint
from vaefast.train.preemption import PREEMPTED_EXIT_CODE

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
COMMON = ["--epochs", "50", "--batch-size", "32", "--hidden", "32", "--latent-dim", "4", "--log-every", "1",
          "--no-progress", "--no-tensorboard", "--precision", "fp32", "--no-compile", "--seed", "3"]


def _train(out, *extra):
    return [sys.executable, "-m", "vaefast", "train", "--out", str(out), *COMMON, *extra]


def _wait_for_steps(out, proc, steps, timeout=120):
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {proc.stderr.read()}")
        if metrics.exists() and len(metrics.read_text().splitlines()) >= steps:
            return
        time.sleep(0.05)
    raise AssertionError("the run did not reach the step in time")


def _weights(path):
    return load_checkpoint(path)["model"]


def test_sigterm_checkpoints_and_resume_is_bit_exact(tmp_path, reliability):
    reliability.case("SIGTERM: checkpoint, exit 75, --resume")
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(_train(out), stderr=subprocess.PIPE, text=True)
    _wait_for_steps(out, proc, 20)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == PREEMPTED_EXIT_CODE, err
    assert "SIGTERM received" in err and "--resume" in err
    stopped = load_checkpoint(out)
    assert stopped["step"] >= 20
    final_step = stopped["step"] + 7
    resumed = subprocess.run(_train(out, "--resume", str(out), "--max-steps", str(final_step), "--json"),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    reference = tmp_path / "uninterrupted"
    straight = subprocess.run(_train(reference, "--max-steps", str(final_step), "--json"), capture_output=True,
                              text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr
    assert json.loads(resumed.stdout.splitlines()[-1])["steps"] == final_step
    a, b = _weights(out), _weights(reference)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_signal_stops_at_once(tmp_path, reliability):
    reliability.case("a second SIGTERM")
    out = tmp_path / "run"
    proc = subprocess.Popen(_train(out, "--checkpoint-every", "5"), stderr=subprocess.PIPE, text=True)
    _wait_for_steps(out, proc, 12)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode in (-signal.SIGTERM, PREEMPTED_EXIT_CODE)  # at once, or the step had already ended
    checkpoints = list_checkpoints(out)
    assert checkpoints, "the checkpoints written before the signals remain"
    for path in checkpoints:
        load_checkpoint(path)  # complete and verified
    assert os.path.isdir(out)


@pytest.mark.slow
def test_sigterm_under_torchrun_stops_every_rank_at_one_step(tmp_path, reliability):
    """torchrun forwards the signal to its workers; they agree on the stop at the next log step (an all-reduce of
    the flag), rank 0 writes that step's checkpoint, and a resume on 2 ranks carries on from it."""
    reliability.case("SIGTERM under torchrun (2 ranks)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    out = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vaefast"]
    arguments = ["train", "--out", str(out), "--device", "cpu", *COMMON, "--log-every", "2"]  # the last wins
    proc = subprocess.Popen(launcher + arguments, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    _wait_for_steps(out, proc, 10)
    os.killpg(proc.pid, signal.SIGTERM)  # as a scheduler does: the whole job's process group
    _, err = proc.communicate(timeout=120)
    assert "stopped by a signal" in err, err[-3000:]
    stopped = load_checkpoint(out)
    assert stopped["step"] >= 10 and stopped["step"] % 2 == 0  # a log step, the same on both ranks
    resumed = subprocess.run(launcher + arguments + ["--resume", str(out), "--max-steps", str(stopped["step"] + 4)],
                             capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load_checkpoint(out)["step"] == stopped["step"] + 4


def test_under_torchrun_the_agents_forward_of_the_signal_is_not_a_second_signal(monkeypatch):
    """A signal to a torchrun job's process group reaches each worker directly and again from the agent, moments
    apart: the repeat is ignored within the window, and a signal after it still stops at once. Outside torchrun
    any repeat stops at once (test above). The handler is called directly: a real second SIGTERM would end pytest."""
    import vaefast.train.preemption as preemption

    kills = []
    monkeypatch.setattr(preemption.os, "kill", lambda pid, sig: kills.append(sig))
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    request = preemption.StopRequest()
    request._handle(signal.SIGTERM, None)
    request._handle(signal.SIGTERM, None)  # the agent's forward
    assert request.requested and kills == []
    request._first_at -= preemption.FORWARDED_WINDOW_S + 1  # a signal sent later is a second one
    request._handle(signal.SIGTERM, None)
    assert kills == [signal.SIGTERM]
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    alone = preemption.StopRequest()
    alone._handle(signal.SIGTERM, None)
    alone._handle(signal.SIGTERM, None)
    assert kills == [signal.SIGTERM, signal.SIGTERM]
