"""A run checkpointed with one instruction-set copy of the native kernels and resumed with another.

The default build draws the same noise in every copy (tests/test_isa_noise.py) but lets the v3 and v4 copies fuse
multiply-adds in the loss and optimizer loops, so the resumed run differs in the last bits. Built with
``-DVAEFAST_PORTABLE_BITS=ON`` (``pip install -e . -C cmake.define.VAEFAST_PORTABLE_BITS=ON``) no copy contracts, and
a run resumed with the dispatch capped to the baseline (as on a CPU without AVX2) ends bit-identical to an
uninterrupted run on the best copy this CPU has, in float32 and in bf16 with float32 master weights. The library is
built here, into a temporary folder, with the CMake the package builds with.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import state_tensors

from vaefast import native

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # builds the library once more, then trains in four processes


@pytest.fixture(scope="module")
def portable_library(tmp_path_factory) -> Path:
    if native.load_error() is not None or shutil.which("cmake") is None:
        pytest.skip("needs the native library and cmake")
    if native.copies_that_run()[-1] == "baseline":
        pytest.skip("only the baseline copy runs on this CPU: nothing to resume across")
    build = tmp_path_factory.mktemp("portable-build")
    subprocess.run(["cmake", "-S", str(REPO), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                    "-DVAEFAST_PORTABLE_BITS=ON"], check=True, capture_output=True, timeout=300)
    subprocess.run(["cmake", "--build", str(build), "-j", "2"], check=True, capture_output=True, timeout=600)
    return next(build.glob("libvaefast_kernels.*"))


def _train(out: Path, steps: int, precision: str, library: Path, isa: str | None, resume: Path | None = None):
    env = {**os.environ, "VAEFAST_NATIVE_LIBRARY": str(library), "OMP_NUM_THREADS": "2"}
    env.pop("VAEFAST_NATIVE_ISA", None)
    if isa:
        env["VAEFAST_NATIVE_ISA"] = isa
    cmd = [sys.executable, "-m", "vaefast", "train", "--max-steps", str(steps), "--checkpoint-every", "2",
           "--batch-size", "128", "--precision", precision, "--backend", "native", "--out", str(out)]
    if resume:
        cmd += ["--resume", str(resume)]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_run_resumed_on_the_baseline_copy_ends_bit_identical(portable_library, tmp_path, precision):
    best = native.copies_that_run()[-1]
    _train(tmp_path / "straight", 4, precision, portable_library, best)
    # The straight run's step-2 checkpoint is where a run stopped at step 2 would be: resumed from it on the
    # baseline copy, in a folder of its own.
    _train(tmp_path / "moved", 4, precision, portable_library, "baseline",
           resume=tmp_path / "straight" / "ckpt-step000000002.pt")
    name = "ckpt-step000000004.pt"
    straight = dict(state_tensors(torch.load(tmp_path / "straight" / name, weights_only=True)))
    moved = dict(state_tensors(torch.load(tmp_path / "moved" / name, weights_only=True)))
    assert straight.keys() == moved.keys() and any("/model/" in k for k in straight)
    for key, value in straight.items():
        assert torch.equal(value, moved[key]), key
