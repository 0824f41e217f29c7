"""Checkpoint integrity and safety: a flipped byte in the tensor data is always detected, loading never runs code
from the file, a corrupt newest checkpoint falls back to the newest good one (or refuses), and a full disk is one
clear error with the previous checkpoint intact and no temporary files left."""

import errno
import io
import os
import zipfile

import numpy as np
import pytest
import torch
from conftest import quiet_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaefast import checkpoint as ckpt_module
from vaefast.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from vaefast.cli import main
from vaefast.train import Trainer


def _small_config(out, **overrides):
    cfg = quiet_config(out, **{"epochs": 1, "batch_size": 128, **overrides})
    cfg.model.hidden, cfg.model.latent_dim = [16], 4
    return cfg


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory, tiny_data):
    out = tmp_path_factory.mktemp("integrity")
    path = Trainer(_small_config(out, ema=0.9), tiny_data).fit().checkpoint
    return out / os.path.basename(path)


def _tensor_data_ranges(path):
    """Byte ranges of the stored tensor data (the zip's data/N records, stored uncompressed)."""
    raw = path.read_bytes()
    ranges = []
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if "/data/" not in info.filename or info.file_size == 0:
                continue
            # local header: 30 bytes + name + extra field, then the data
            name_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little")
            extra_len = int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
            start = info.header_offset + 30 + name_len + extra_len
            ranges.append((start, start + info.file_size))
    return raw, ranges


def _flip(raw: bytes, position: int, mask: int) -> bytes:
    data = bytearray(raw)
    data[position] ^= mask
    return bytes(data)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.floats(0, 1, exclude_max=True), st.integers(1, 255))
def test_any_flipped_byte_in_tensor_data_is_detected(checkpoint_file, tmp_path_factory, reliability, fraction, mask):
    reliability.case("checkpoint: one flipped byte in the tensor data")
    raw, ranges = _tensor_data_ranges(checkpoint_file)
    total = sum(b - a for a, b in ranges)
    offset = int(fraction * total)
    for start, end in ranges:
        if offset < end - start:
            position = start + offset
            break
        offset -= end - start
    corrupt = tmp_path_factory.getbasetemp() / "flipped-ckpt-step000000001.pt"
    corrupt.write_bytes(_flip(raw, position, mask))
    with pytest.raises(CheckpointError, match=rf"{corrupt.name} is corrupt|cannot read checkpoint .*{corrupt.name}"):
        load_checkpoint(corrupt)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.floats(0, 1, exclude_max=True), st.integers(1, 255))
def test_a_flipped_byte_anywhere_is_detected_or_harmless(checkpoint_file, tmp_path_factory, reliability, fraction,
                                                         mask):
    reliability.case("checkpoint: one flipped byte anywhere in the file")
    raw = checkpoint_file.read_bytes()
    reference = load_checkpoint(checkpoint_file)
    corrupt = tmp_path_factory.getbasetemp() / "anywhere-ckpt-step000000001.pt"
    corrupt.write_bytes(_flip(raw, int(fraction * len(raw)), mask))
    try:
        state = load_checkpoint(corrupt)
    except CheckpointError:
        return
    # A byte the reader never uses (zip padding, an unused header field): the content must be identical.
    assert ckpt_module.content_digest(state) == ckpt_module.content_digest(reference)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_malicious_pickle_never_runs(tmp_path, capsys, reliability):
    for _ in range(3):  # load_checkpoint, vaefast eval, vaefast train --resume
        reliability.case("checkpoint: a pickle that runs a command")
    marker = tmp_path / "pwned"
    evil = tmp_path / "ckpt-step000000001.pt"
    torch.save({"format_version": 2, "model": {}, "config": {}, "payload": _Payload(marker)}, evil)
    with pytest.raises(CheckpointError, match="runs code from the file.*--trust-checkpoint"):
        load_checkpoint(evil)
    assert main(["eval", "--checkpoint", str(evil)]) == 2
    assert main(["train", "--resume", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("--trust-checkpoint" in line for line in err), err
    assert not marker.exists(), "loading ran code from the checkpoint"


def test_format_1_checkpoints_need_trust(tmp_path, tiny_data, reliability):
    reliability.case("checkpoint: previous format, refused unless trusted")
    out = tmp_path / "run"
    trainer = Trainer(_small_config(out), tiny_data)
    trainer.fit()
    state = trainer.checkpointer.state()
    state["rng"]["numpy"] = np.random.get_state()  # format 1 pickled numpy's state as an ndarray
    legacy = out / "ckpt-step000000099.pt"
    torch.save({"format_version": 1, **state}, legacy)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_checkpoint(legacy)
    loaded = load_checkpoint(legacy, trust=True)
    assert loaded["step"] == state["step"]
    resumed = Trainer(_small_config(tmp_path / "resumed", epochs=2, resume=str(legacy), trust_checkpoint=True),
                      tiny_data)
    assert resumed.step == state["step"]


def test_resume_falls_back_to_the_newest_good_checkpoint(tmp_path, tiny_data, caplog, reliability):
    reliability.case("resume: newest checkpoint corrupt")
    out = tmp_path / "run"
    cfg = _small_config(out, epochs=1, checkpoint_every=1, max_steps=3)
    Trainer(cfg, tiny_data).fit()
    checkpoints = list_checkpoints(out)
    newest, previous = checkpoints[-1], checkpoints[-2]
    raw, ranges = _tensor_data_ranges(newest)
    newest.write_bytes(_flip(raw, ranges[0][0] + 3, 0x10))
    with caplog.at_level("WARNING", logger="vaefast.checkpoint"):
        trainer = Trainer(_small_config(tmp_path / "again", epochs=1, resume=str(out)), tiny_data)
    assert trainer.step == int(previous.name[len("ckpt-step"):-3])
    assert newest.name in caplog.text and previous.name in caplog.text
    with pytest.raises(CheckpointError, match=f"{newest.name} is corrupt"):
        Trainer(_small_config(tmp_path / "strict", epochs=1, resume=str(out), resume_fallback=False), tiny_data)


class _FullDisk(io.RawIOBase):
    """A file that accepts ``room`` bytes, then fails as a full disk does."""

    def __init__(self, real, room):
        self.real, self.room = real, room

    def writable(self):
        return True

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.real.write(data)

    def flush(self):
        self.real.flush()

    def fileno(self):
        return self.real.fileno()

    def close(self):
        self.real.close()
        super().close()


def _resume_on_a_failing_disk(tmp_path, tiny_data, capsys, break_the_disk):
    """Train 2 steps, call ``break_the_disk()``, resume to step 4 through the CLI: (run folder, the checkpoints'
    bytes before, exit code, stderr lines)."""
    out = tmp_path / "run"
    Trainer(_small_config(out, max_steps=2), tiny_data).fit()
    before = {p.name: p.read_bytes() for p in out.glob("ckpt-step*.pt")}
    break_the_disk()
    code = main(["train", "--resume", str(out), "--out", str(out), "--max-steps", "4", "--no-progress",
                 "--no-tensorboard"])
    return out, before, code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("room", [0, 2000, 20_000])
def test_a_full_disk_is_one_clear_error_and_loses_nothing(tmp_path, tiny_data, monkeypatch, capsys, room,
                                                          reliability):
    reliability.case("full disk during a checkpoint write")
    real_fdopen = os.fdopen
    out, before, code, err = _resume_on_a_failing_disk(tmp_path, tiny_data, capsys, lambda: monkeypatch.setattr(
        ckpt_module.os, "fdopen", lambda fd, mode: _FullDisk(real_fdopen(fd, mode), room)))
    assert code == 2
    assert len(err) == 1 and "the disk is full" in err[0] and str(out) in err[0] and "MiB free" in err[0], err
    assert "Traceback" not in "".join(err)
    after = {p.name: p.read_bytes() for p in out.glob("ckpt-step*.pt")}
    assert after == before, "the previous checkpoints are intact"
    assert not list(out.glob(".*.tmp")), "no temporary file is left"


def _read_only_after(calls):
    """A tempfile.mkstemp that works ``calls`` times, then fails as on a file system remounted read-only."""
    real = ckpt_module.tempfile.mkstemp
    count = {"calls": 0}

    def mkstemp(*args, dir=None, **kwargs):
        count["calls"] += 1
        if count["calls"] > calls:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
        return real(*args, dir=dir, **kwargs)
    return mkstemp


@pytest.mark.parametrize("when", ["at start", "at a checkpoint"])
def test_a_read_only_disk_is_one_clear_error_and_loses_nothing(tmp_path, tiny_data, monkeypatch, capsys, when,
                                                               reliability):
    reliability.case("read-only disk")
    # the trainer's write check at start is the first mkstemp; the checkpoint write is the second
    failing = _read_only_after(0 if when == "at start" else 1)
    out, before, code, err = _resume_on_a_failing_disk(
        tmp_path, tiny_data, capsys, lambda: monkeypatch.setattr(ckpt_module.tempfile, "mkstemp", failing))
    assert code == 2
    assert len(err) == 1 and "the file system is read-only" in err[0] and str(out) in err[0], err
    assert {p.name: p.read_bytes() for p in out.glob("ckpt-step*.pt")} == before
    assert not list(out.glob(".*.tmp")) and not list(out.glob(".vaefast-write-check.*"))


def test_a_log_write_on_a_full_disk_is_one_clear_error(tmp_path, tiny_data, monkeypatch, capsys, reliability):
    reliability.case("full disk during a log write")
    from vaefast.train import monitor as monitor_module

    class FullFile(io.StringIO):
        def flush(self):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(monitor_module, "open", lambda *args, **kwargs: FullFile(), raising=False)
    out = tmp_path / "run"
    code = main(["train", "--out", str(out), "--max-steps", "4", "--log-every", "2", "--no-progress",
                 "--no-tensorboard"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "the disk is full" in err[0] and str(out) in err[0], err
