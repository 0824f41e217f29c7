"""benchmarks/gpu_suite.sh must run unedited on a CUDA machine: every step it can take on CPU is run here."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_suite_cpu_smoke(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    env["PYTHON"] = sys.executable  # the interpreter running the tests, whether or not its venv is activated
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--cpu-smoke", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "CPU smoke run passed" in proc.stdout
    names = {p.name for p in tmp_path.iterdir()}
    for expected in ("bench_loss-cpu-fp32.json", "bench_loss-cpu-bf16.json", "bench_loss-cpu-fp16.json",
                     "triton_autotune-float32.json", "triton_autotune-check.json", "bench_throughput-cpu.json",
                     "bench_autoencoder-cpu.json", "bench_ldm_recipe-cpu-fp32.json", "bench_video-cpu.json",
                     "bench_loss-noise-cpu.json"):
        assert expected in names, names


def test_gpu_suite_refuses_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh")], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr
