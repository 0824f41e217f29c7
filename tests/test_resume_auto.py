"""`--resume auto`: the same command for every start of a run (schedulers and torchrun restarts rerun it): a new run
in an empty folder, the newest good checkpoint otherwise, a refusal for a folder of another run; and logs that
match the checkpoint after a resume, each step once."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import quiet_config

from vaefast.train import Trainer


def _cfg(out, **kw):
    return quiet_config(out, **{"hidden": [32], "latent_dim": 4, "precision": "fp32", "resume": "auto", **kw})


def _params(trainer):
    return [p.detach().clone() for p in trainer.model.parameters()]


def test_auto_starts_fresh_then_continues_exactly(tmp_path, tiny_data, reliability):
    reliability.case("--resume auto: empty folder, then a good run")
    out = tmp_path / "run"
    first = Trainer(_cfg(out, max_steps=6, checkpoint_every=3), tiny_data)
    assert first.step == 0  # an empty folder: a new run
    first.fit()
    resumed = Trainer(_cfg(out, max_steps=10, checkpoint_every=3), tiny_data)
    assert resumed.step == 6
    resumed.fit()
    straight = Trainer(_cfg(tmp_path / "straight", max_steps=10, checkpoint_every=3), tiny_data)
    straight.fit()
    assert all(torch.equal(a, b) for a, b in zip(_params(resumed), _params(straight)))


def test_auto_falls_back_to_the_newest_good_checkpoint(tmp_path, tiny_data, reliability):
    reliability.case("--resume auto: newest checkpoint corrupt")
    out = tmp_path / "run"
    Trainer(_cfg(out, max_steps=6, checkpoint_every=3), tiny_data).fit()
    newest = sorted(out.glob("ckpt-step*.pt"))[-1]
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a crash of the disk
    assert Trainer(_cfg(out, max_steps=8), tiny_data).step == 3


def test_auto_refuses_a_folder_of_another_run(tmp_path, tiny_data, reliability):
    reliability.case("--resume auto: a folder of another run")
    out = tmp_path / "run"
    Trainer(_cfg(out, max_steps=3), tiny_data).fit()
    with pytest.raises(ValueError, match=r"another model or data \(model.hidden \[32\] there, \[16\] here\)"):
        Trainer(_cfg(out, max_steps=6, hidden=[16]), tiny_data)


def test_metrics_after_a_kill_and_resume_hold_each_step_once(tmp_path, tiny_data, reliability):
    reliability.case("logs after a kill and resume")
    out = tmp_path / "run"
    Trainer(_cfg(out, max_steps=12, checkpoint_every=5, log_every=1), tiny_data).fit()
    (out / "ckpt-step000000012.pt").unlink()  # killed after step 12; the newest checkpoint is step 10's
    Trainer(_cfg(out, max_steps=15, checkpoint_every=5, log_every=1), tiny_data).fit()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in rows if "train/neg_elbo_nats" in row]
    assert steps == list(range(1, 16))
    aside = (out / "metrics.after-step000000010.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in aside] == [11, 12]  # the lost steps' rows: set aside, not deleted


def test_cli_auto_says_what_it_does_and_a_finished_run_exits_0(tmp_path):
    out = tmp_path / "run"
    base = [sys.executable, "-m", "vaefast", "train", "--out", str(out), "--resume", "auto", "--hidden", "16",
            "--no-tensorboard", "--no-progress"]
    first = subprocess.run(base + ["--max-steps", "4"], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0 and f"no checkpoint in {out}: a new run" in first.stderr, first.stderr
    again = subprocess.run(base + ["--max-steps", "4"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"resuming {out} at step 4" in again.stderr and "nothing left to train" in again.stderr
    assert not (out / "ckpt-step000000005.pt").exists()
