"""`vaefast profile` and `vaefast bench --quick`: traces with the stage labels and op names, valid JSON."""

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vaefast import native as vaefast_native

STAGES = ["data", "encoder", "reparam/KL", "decoder", "recon loss", "backward", "optimizer"]


def test_profile_writes_a_trace_with_stages_and_fused_ops(tmp_path):
    out = tmp_path / "prof"
    proc = subprocess.run([sys.executable, "-m", "vaefast", "profile", "--steps", "3", "--out", str(out),
                           "--backend", "native", "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    traces = glob.glob(str(out / "*.pt.trace.json"))
    assert traces and report["traces"] == sorted(traces)
    with open(traces[0]) as f:
        trace = json.load(f)  # Chrome trace-event JSON: what Perfetto and chrome://tracing open
    names = {e.get("name") for e in trace["traceEvents"]}
    for stage in STAGES:
        assert stage in names, f"stage {stage!r} missing from the trace"
    assert "vaefast_latent_native" in names and "vaefast_bce_native" in names
    assert "vaefast_latent_nativeBackward" in names
    _opens_in_the_tensorboard_plugin(traces[0], steps=3)
    shares = [report["stages"][s]["share_of_step"] for s in STAGES]
    assert all(0 < s < 1 for s in shares) and sum(shares) <= 1.0 + 1e-6
    assert report["top_ops"] and report["step_time_us"] > 0


def _opens_in_the_tensorboard_plugin(trace: str, steps: int) -> None:
    """torch-tb-profiler's own parser (what `tensorboard --logdir` runs) reads the steps and the fused ops."""
    import tempfile

    try:
        from torch_tb_profiler.profiler.data import RunProfileData
    except ImportError:
        return  # the plugin is optional (and deprecated upstream); Perfetto needs only the JSON checked above
    data = RunProfileData.parse("vaefast", None, trace, tempfile.mkdtemp())
    data.process()
    data.analyze()
    assert len(data.steps_names) == steps
    names = {op.name for op in data.op_list_groupby_name}
    assert "vaefast_latent_native" in names and "vaefast_bce_nativeBackward" in names


def test_bench_quick_json(tmp_path):
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "vaefast", "bench", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in ("cpu", "cores", "torch", "triton", "dali", "gpu", "date"):
        assert key in result["machine"]
    case = result["loss"][0]
    assert {"eager", "compile", "torch"} <= set(case["variants"])
    for row in case["variants"].values():
        assert row["median_s"] > 0 and row["effective_GBps"] > 0 and 0 < row["fraction_of_copy_bandwidth"]
    assert case["copy_GBps"] > 0 and case["clone_GBps"] > 0
    assert [t["precision"] in ("fp32", "bf16") for t in result["train"]] == [True, True]
    assert all(t["images_per_s"] > 0 for t in result["train"])
    assert result["roofline"]["cases"][0]["fused"]["eager"]["fraction_of_copy"] > 0


def test_keep_freed_memory_sets_glibc_thresholds():
    import platform

    from vaefast.perf.allocator import MAX_MMAP_THRESHOLD, keep_freed_memory

    with pytest.raises(ValueError, match="mmap_threshold"):
        keep_freed_memory(mmap_threshold=MAX_MMAP_THRESHOLD + 1)
    applied = keep_freed_memory()
    assert applied == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


def test_bench_loss_quick_records_the_allocator(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_loss

    payload = bench_loss.main(["--quick", "--results", str(tmp_path)])
    assert payload["allocator"].startswith("glibc")
    variants = payload["results"][0]["variants"]
    assert variants["eager"]["median_s"] > 0 and variants["eager"]["saved_bytes_not_inputs"] > 0
    if "native" in variants:  # absent only where the library was not built
        assert variants["native"]["median_s"] > 0 and variants["native"]["saved_bytes_not_inputs"] == 0


def test_the_compute_roofline_times_every_layer_of_a_step_at_its_shapes():
    """vaefast.perf.roofline finds each Linear / conv in the order a step runs them, at the shapes it sees there,
    and its ceiling is the batch over the sum of the layers' kernel times (MLP, and a conv VAE with transposed
    convolutions, whose backward kernels are called as autograd calls them)."""
    import torch

    from vaefast.config import ModelConfig
    from vaefast.models import build_model
    from vaefast.perf.roofline import step_compute_roofline

    mlp = build_model(ModelConfig(), (1, 28, 28))
    result = step_compute_roofline(mlp, torch.rand(32, 1, 28, 28), rounds=3)
    assert [row["input"] for row in result["layers"]] == [[32, 784], [32, 400], [32, 20], [32, 400]]
    assert all(row["seconds"] > 0 for row in result["layers"])
    assert result["images_per_s"] == pytest.approx(32 / sum(row["seconds"] for row in result["layers"]))
    conv = build_model(ModelConfig(kind="conv", channels=[8, 16], latent_channels=2), (1, 28, 28))
    result = step_compute_roofline(conv, torch.rand(8, 1, 28, 28), dtype=torch.bfloat16, rounds=3)
    kinds = [row["layer"].split("(")[0] for row in result["layers"]]
    assert kinds == ["Conv2d", "Conv2d", "Conv2d", "Conv2d", "ConvTranspose2d", "ConvTranspose2d"]
    assert result["layers"][-1]["input"] == [8, 8, 14, 14] and result["images_per_s"] > 0


def test_bench_step_ab_interleaves_two_checkouts_in_one_process(tmp_path):
    """The A/B of two package checkouts, here the checkout against a copy of itself: both trainers ran, the ratio
    is a median of per-round ratios, and the fractions share one roofline."""
    import vaefast
    import vaefast.native

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_step_ab

    payload = bench_step_ab.main(["--before", str(Path(vaefast.__file__).parent), "--rounds", "3", "--steps", "2",
                                  "--warmup", "3", "--label", "late", "--results", str(tmp_path), "--no-readme"])
    result = payload["result"]
    assert payload["benchmark"] == "bench_step_ab-late" and payload["warmup_steps"] == 3
    assert (tmp_path / "bench_step_ab-late.json").is_file() and "vaefast_before" in sys.modules
    assert sys.modules["vaefast_before"].__file__ != vaefast.__file__
    before = sys.modules["vaefast_before"]
    assert (before.native.load_error() is None) == (vaefast.native.load_error() is None)
    if vaefast.native.load_error() is None:  # both sides timed the native loss, the copy through ops of its own
        cpu = torch.device("cpu")
        assert before.ops.dispatch.select("auto", cpu, torch.float32).name == "native"
        assert hasattr(torch.ops.vaefast_before, "latent_fwd_native")
        assert before.ops.library.OP_NAMESPACE == "vaefast_before" and vaefast.ops.library.OP_NAMESPACE == "vaefast"
    placed = result["by_placement"]
    assert placed["shared"]["rounds"] + placed["apart"]["rounds"] <= 3
    for row in placed.values():
        assert (row["ratio_after_over_before"] is None) == (row["rounds"] == 0)
    for side in ("before", "after"):
        assert result[side]["ms_per_step"] > 0
        assert result[side]["fraction_of_compute_roofline"] == pytest.approx(
            result["roofline_ms_per_step"] / result[side]["ms_per_step"])
    assert 0.2 < result["ratio_after_over_before"] < 5


@pytest.mark.skipif(vaefast_native.load_error() is not None or len(os.sched_getaffinity(0)) < 2,
                    reason="needs the native library and two CPUs")
def test_thread_handoff_is_a_round_trip_time_and_step_timing_records_it_per_chunk():
    """The probe answers nanoseconds (not an error code), and step_timing labels each chunk with a measurement
    before it and one after its roofline."""
    from vaefast.data import ImageDataset, load_dataset
    from vaefast.perf.bench import step_timing
    from vaefast.perf.machine import thread_handoff_ns

    import time

    lib = vaefast_native.library()
    assert lib.vf_thread_handoff_ns(0) == -1.0
    start = time.perf_counter()
    assert lib.vf_thread_handoff_ns(10**15) == -1.0  # gives up after 200 ms, not days
    assert time.perf_counter() - start < 5.0
    # Nanoseconds per round trip: the round trips fit in the call's wall time, and none is under a nanosecond.
    start = time.perf_counter()
    ns = lib.vf_thread_handoff_ns(2000)
    assert 1.0 < ns and ns * 2000 <= (time.perf_counter() - start) * 1e9
    assert thread_handoff_ns(round_trips=500, repeats=3) > 1.0
    full = load_dataset(None)
    timing = step_timing(ImageDataset("embedded", full.train[:512], full.test[:64]), precision="fp32",
                         batch_size=32, steps=4, warmup=1, chunks=2)
    assert len(timing["chunk_handoff_ns"]) == len(timing["chunk_fractions"]) == 2
    assert all(1.0 < ns < 1e7 for pair in timing["chunk_handoff_ns"] for ns in pair)


def test_bench_roofline_splits_chunks_by_where_the_cores_were():
    """Chunks whose two handoff measurements agree count for their placement; one that straddles a move counts in
    neither."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_roofline

    from vaefast.perf.machine import SHARED_CACHE_NS

    near, far = SHARED_CACHE_NS / 2, SHARED_CACHE_NS * 2
    timings = [{"chunk_fractions": [0.6, 0.5, 0.4, 0.3], "chunk_handoff_ns": [(near, near), (near, far),
                                                                               (far, far), (None, None)]},
               {"chunk_fractions": [0.56], "chunk_handoff_ns": [(near, near)]}]
    kinds = bench_roofline.placement_fractions(timings)
    assert kinds["shared"] == {"fraction_median": pytest.approx(0.58), "chunks": 2}
    assert kinds["apart"] == {"fraction_median": pytest.approx(0.4), "chunks": 1}
    assert bench_roofline.placement_fractions([])["shared"] == {"fraction_median": None, "chunks": 0}
    timing = bench_roofline.time_case("mlp 784-400-20", 32, "fp32", steps=1)  # what each fresh process runs
    assert len(timing["chunk_fractions"]) == len(timing["chunk_handoff_ns"]) == 5 and "roofline" not in timing
    assert 0 < timing["fraction_of_compute_roofline"] < 5
