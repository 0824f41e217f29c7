"""Checkpoints written in the background: the step loop waits only for the copy to host memory; the write keeps the
synchronous write's guarantees (atomic file, hash, pruning, one-line disk errors), raised at the next step boundary."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
from conftest import quiet_config

from vaefast import checkpoint as ckpt_module
from vaefast.checkpoint import CheckpointError, Checkpointer, list_checkpoints, load_checkpoint
from vaefast.train import Trainer


def test_the_write_runs_beside_the_loop_and_holds_the_state_of_its_step(tmp_path):
    weights = torch.zeros(1000)
    started, release = threading.Event(), threading.Event()
    real = ckpt_module.atomic_save

    def slow(state, path):
        started.set()
        release.wait(10)
        return real(state, path)

    ckpt_module.atomic_save = slow
    try:
        checkpointer = Checkpointer(tmp_path, keep=2)
        path = checkpointer.save({"w": weights}, 1)
        started.wait(10)
        weights.add_(1.0)  # the training thread moves on while the file is being written
        assert not path.exists()
        release.set()
        checkpointer.wait()
    finally:
        ckpt_module.atomic_save = real
    assert torch.equal(load_checkpoint(path)["w"], torch.zeros(1000))  # the copy taken at save(), not later


def test_a_full_disk_in_the_background_is_raised_at_the_next_step_boundary(tmp_path, tiny_data, monkeypatch,
                                                                           reliability):
    reliability.case("asynchronous checkpoint: full disk during the background write")
    trainer = Trainer(quiet_config(tmp_path / "run", epochs=1, checkpoint_every=2, hidden=[16], latent_dim=4),
                      tiny_data)
    trainer.run(2)  # step 2's checkpoint is written
    trainer.checkpointer.wait()
    before = {p.name: p.read_bytes() for p in list_checkpoints(tmp_path / "run")}

    def full(obj, f, *a, **k):
        f.write(b"part")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    assert trainer.run(2) == 2  # step 4 starts the failing write; step 4's own boundary has already passed
    trainer.checkpointer._writer.join()  # the write has failed by the time the next step ends
    with pytest.raises(CheckpointError, match="the disk is full"):
        trainer.run(1)  # raised at the boundary of step 5, before its checkpoint check
    assert {p.name: p.read_bytes() for p in list_checkpoints(tmp_path / "run")} == before
    assert not list((tmp_path / "run").glob(".*.tmp"))


def test_a_kill_during_a_background_write_leaves_the_previous_checkpoint(tmp_path, reliability):
    """The process is killed (SIGKILL) from inside the background write, halfway through the file: the previous
    checkpoint loads, and opening the run folder again removes the half-written temporary file."""
    reliability.case("asynchronous checkpoint: SIGKILL during the background write")
    code = textwrap.dedent(f"""
        import os, signal, torch
        from vaefast import checkpoint
        ck = checkpoint.Checkpointer({str(tmp_path)!r})
        ck.save({{"w": torch.ones(10)}}, 1)
        ck.wait()
        real = torch.save
        def dying(obj, f, *a, **k):
            f.write(b"x" * 1000)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = dying
        ck.save({{"w": torch.full((10,), 2.0)}}, 2)
        ck.wait()
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-step000000001.pt"]
    assert torch.equal(load_checkpoint(tmp_path)["w"], torch.ones(10))
    assert list(tmp_path.glob(".ckpt-step000000002.pt.*.tmp"))  # what the kill left: not a checkpoint
    Checkpointer(tmp_path)  # the run folder opened again
    assert not list(tmp_path.glob(".*.tmp"))
    assert os.listdir(tmp_path) == ["ckpt-step000000001.pt"]
