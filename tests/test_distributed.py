"""DDP through torchrun on CPU with gloo, 2 processes: equivalence with one process, uneven shards, failures,
and resume across world sizes."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from numerics import assert_reordered_close, mutation_is_caught

from vaefast.train import load_checkpoint

WORKER = str(Path(__file__).with_name("ddp_worker.py"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "VAEFAST_NUM_THREADS": "1"}
ENV.pop("TRITON_INTERPRET", None)


def torchrun(nproc: int, args: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", WORKER,
           json.dumps(args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)


def single(args: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, WORKER, json.dumps(args)], capture_output=True, text=True, env=ENV,
                          timeout=timeout)


def _params(out: Path, rank: int) -> torch.Tensor:
    return torch.load(out / f"params-rank{rank}.pt")["params"]


def _launch_pairs(root: Path, cases: dict[str, dict], timeout: float) -> dict[str, tuple[Path, Path]]:
    """Every case on 2 ranks with per-rank batch b in one torchrun launch, and in one plain process with batch 2b:
    (the DDP run's folder, the single process's) per case. Two launches for all cases instead of two per case."""
    folders = {name: (root / name / "ddp", root / name / "single") for name in cases}
    ddp = [{**case, "out": str(folders[name][0])} for name, case in cases.items()]
    one = [{**case, "batch_size": 2 * case["batch_size"], "out": str(folders[name][1])}
           for name, case in cases.items()]
    proc = torchrun(2, {"runs": ddp}, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    proc = single({"runs": one}, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return folders


EQUIVALENCE_CASES = [(96, 1), (33, 1), (64, 2)]


@pytest.fixture(scope="module")
def equivalence_runs(tmp_path_factory):
    cases = {f"{n}-{accum}": {"n_images": n, "epochs": 2, "zero_noise": True, "grad_accum": accum, "batch_size": 8}
             for n, accum in EQUIVALENCE_CASES}
    return _launch_pairs(tmp_path_factory.mktemp("equivalence"), cases, timeout=300)


@pytest.mark.parametrize("n_images, grad_accum", EQUIVALENCE_CASES)
def test_two_ranks_match_one_process(equivalence_runs, n_images, grad_accum):
    """Per-rank batch b on 2 ranks is the single-process batch 2b, exactly: also when one rank's last batch is
    empty (33 images, b = 8: rank 0 ends with 1 image, rank 1 with none), and with gradient accumulation."""
    ddp_out, ref_out = equivalence_runs[f"{n_images}-{grad_accum}"]
    rank0, rank1, reference = _params(ddp_out, 0), _params(ddp_out, 1), _params(ref_out, 0)
    assert torch.equal(rank0, rank1), "DDP ranks must hold identical parameters"
    assert (rank0 - reference).abs().max().item() < 1e-6
    moved = (reference - torch.load(ref_out / "params-rank0.pt")["initial"]).abs().max().item()
    assert moved > 1e-3, "training must have changed the parameters for the comparison to mean anything"


@pytest.fixture(scope="module")
def ldm_equivalence_runs(tmp_path_factory, random_vgg16):
    recipe = {"recipe": "ldm", "lpips_weights": str(random_vgg16[0]), "disc_start": 0, "beta": 0.01}
    cases = {str(accum): {"n_images": 64, "zero_noise": True, "grad_accum": accum, "recipe": recipe,
                          "first_step_grads": True, "batch_size": 8} for accum in (1, 2)}
    return _launch_pairs(tmp_path_factory.mktemp("ldm-equivalence"), cases, timeout=400)


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_the_ldm_recipe_on_two_ranks_matches_one_process(ldm_equivalence_runs, grad_accum):
    """Both networks: the autoencoder with logvar, and the discriminator, whose BatchNorm takes the global batch's
    statistics (vaefast.train.sync_norm); the adaptive weight is the global batch's. Compared on the first step's
    gradients: Adam's early updates (about lr times the gradient's sign) would magnify rounding in parameters."""
    ddp_out, ref_out = ldm_equivalence_runs[str(grad_accum)]
    rank0, rank1 = torch.load(ddp_out / "grads-rank0.pt"), torch.load(ddp_out / "grads-rank1.pt")
    reference = torch.load(ref_out / "grads-rank0.pt")
    assert all(torch.equal(a, b) for a, b in zip(rank0["grads"], rank1["grads"])), "ranks must hold equal gradients"
    # Two float32 evaluations that sum in different orders (batch splits, the all-reduce, the GEMM kernels oneDNN
    # picks for each batch size on this CPU): held to the rounding-error bound of the chain of sums they went
    # through (tests/numerics.py), which a gradient element off by 1e-3 of the tensor's largest still fails.
    lengths = reference["reduction_lengths"]
    assert lengths == rank0["reduction_lengths"]
    trained = [(a, b) for a, b in zip(rank0["grads"], reference["grads"]) if b.abs().max() > 0]
    assert len(trained) > 15  # the autoencoder's, logvar's and the discriminator's (LPIPS is frozen)
    for a, b in trained:
        assert_reordered_close(a, b, lengths, f"gradient {tuple(b.shape)}")
    largest = max(trained, key=lambda pair: pair[1].numel())
    assert mutation_is_caught(lambda a, b: assert_reordered_close(a, b, lengths, "mutated"), *largest)


@pytest.fixture(scope="module")
def clip_equivalence_runs(tmp_path_factory):
    pytest.importorskip("diffusers")
    from test_video import WAN, moving_shapes

    root = tmp_path_factory.mktemp("clip-equivalence")
    np.save(root / "clips.npy", moving_shapes(16, 5, 32))
    (root / "wan.json").write_text(json.dumps(WAN))
    clips = {"data": str(root / "clips.npy"), "model": str(root / "wan.json"), "frames": 5}
    cases = {disc: {"n_images": 8, "zero_noise": True, "clips": clips, "first_step_grads": True, "batch_size": 2,
                    "recipe": {"recipe": "ldm", "perceptual": "none", "disc": disc, "disc_layers": 2,
                               "disc_start": 0, "beta": 0.01}}
             for disc in ("patchgan", "patchgan3d")}
    return _launch_pairs(root, cases, timeout=400)


@pytest.mark.parametrize("disc", ["patchgan", "patchgan3d"])
def test_a_video_autoencoder_with_the_recipe_on_two_ranks_matches_one_process(clip_equivalence_runs, disc):
    """A tiny AutoencoderKLWan on clips [B, 3, 5, 32, 32] with the 5D recipe (a PatchGAN on frames, or a 3D one on
    clips): the first step's gradients of 2 ranks equal one process's, within the reordering bound."""
    ddp_out, ref_out = clip_equivalence_runs[disc]
    rank0, rank1 = torch.load(ddp_out / "grads-rank0.pt"), torch.load(ddp_out / "grads-rank1.pt")
    reference = torch.load(ref_out / "grads-rank0.pt")
    assert all(torch.equal(a, b) for a, b in zip(rank0["grads"], rank1["grads"])), "ranks must hold equal gradients"
    lengths = reference["reduction_lengths"]
    trained = [(a, b) for a, b in zip(rank0["grads"], reference["grads"]) if b.abs().max() > 0]
    assert len(trained) > 20
    for a, b in trained:
        assert_reordered_close(a, b, lengths, f"gradient {tuple(b.shape)}")
    largest = max(trained, key=lambda pair: pair[1].numel())
    assert mutation_is_caught(lambda a, b: assert_reordered_close(a, b, lengths, "mutated"), *largest)


def test_a_nan_on_one_rank_is_skipped_on_all(tmp_path, reliability):
    reliability.case("NaN on one of 2 DDP ranks: skipped on both")
    out = tmp_path / "nan"
    proc = torchrun(2, {"n_images": 96, "batch_size": 8, "epochs": 1, "out": str(out), "nan_at_step": 2})
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = (torch.load(out / f"params-rank{r}.pt") for r in (0, 1))
    assert r0["skipped"] == r1["skipped"] == 1
    assert torch.equal(r0["params"], r1["params"]) and torch.isfinite(r0["params"]).all()


@pytest.mark.parametrize("how", ["raise", "kill"])
def test_a_failing_rank_fails_the_job_and_keeps_the_checkpoint(tmp_path, how):
    out = tmp_path / how
    start = time.monotonic()
    proc = torchrun(2, {"n_images": 256, "batch_size": 8, "epochs": 3, "out": str(out), "checkpoint_every": 2,
                        "fail_at_step": 5, "fail_how": how, "timeout": 20})
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert elapsed < 60, f"the job took {elapsed:.0f}s to fail"
    state = load_checkpoint(out)
    assert state["step"] == 4, "the last good checkpoint, from before the failure, is intact"


@pytest.mark.slow  # four launches
def test_resume_across_world_sizes(tmp_path):
    two = tmp_path / "two"
    proc = torchrun(2, {"n_images": 128, "batch_size": 8, "epochs": 2, "out": str(two), "max_steps": 4})
    assert proc.returncode == 0, proc.stderr[-4000:]
    state = load_checkpoint(two)
    assert (state["step"], state["batch_in_epoch"], state["world_size"]) == (4, 4, 2)
    # 2 -> 1: 4 batches of 8 on 2 ranks consumed 64 samples, i.e. 8 single-process batches of 8.
    proc = single({"n_images": 128, "batch_size": 8, "epochs": 2, "out": str(tmp_path / "one"),
                   "resume": str(two)})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert torch.load(tmp_path / "one" / "params-rank0.pt")["steps"] == 4 + (16 - 8) + 16
    # 1 -> 2
    one = tmp_path / "one_first"
    proc = single({"n_images": 128, "batch_size": 8, "epochs": 2, "out": str(one), "max_steps": 6})
    assert proc.returncode == 0, proc.stderr[-4000:]
    proc = torchrun(2, {"n_images": 128, "batch_size": 8, "epochs": 2, "out": str(tmp_path / "two_after"),
                        "resume": str(one)})
    assert proc.returncode == 0, proc.stderr[-4000:]
    after = tmp_path / "two_after"
    assert torch.equal(_params(after, 0), _params(after, 1))
    assert torch.load(after / "params-rank0.pt")["steps"] == 6 + (8 - 3) + 8


@pytest.mark.slow
def test_two_nodes_through_a_c10d_rendezvous(tmp_path):
    """Two torchrun agents on this machine stand in for two nodes: each starts one process, and they meet through
    the c10d rendezvous as multi-node jobs do."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "nodes"
    args = json.dumps({"n_images": 64, "batch_size": 8, "epochs": 1, "out": str(out), "zero_noise": True})
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                                "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=vaefast-test",
                                f"--node_rank={node}", WORKER, args], env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for node in (0, 1)]
    for agent in agents:
        _, err = agent.communicate(timeout=180)
        assert agent.returncode == 0, err[-3000:]
    assert torch.equal(_params(out, 0), _params(out, 1))


@pytest.mark.slow  # inductor in each rank
def test_compiled_model_inside_ddp(tmp_path):
    """torch.compile after the DDP wrap, with bf16 autocast and the fused ops: ranks stay identical and finite."""
    out = tmp_path / "compiled"
    proc = torchrun(2, {"n_images": 64, "batch_size": 8, "epochs": 1, "out": str(out), "compile": True,
                        "precision": "bf16"}, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = _params(out, 0), _params(out, 1)
    assert torch.equal(r0, r1) and torch.isfinite(r0).all()
    moved = (r0 - torch.load(out / "params-rank0.pt")["initial"]).abs().max().item()
    assert moved > 1e-3


def test_ranks_read_no_device_value_outside_log_steps(tmp_path):
    """The skip decision stays collective and on the device under DDP: zero host reads per step on both ranks."""
    out = tmp_path / "reads"
    proc = torchrun(2, {"n_images": 400, "batch_size": 8, "epochs": 1, "out": str(out), "count_reads": 12})
    assert proc.returncode == 0, proc.stderr[-4000:]
    for rank in (0, 1):
        counts = json.loads((out / f"reads-rank{rank}.json").read_text())
        assert [b - a for a, b in zip(counts, counts[1:])] == [0] * 11, (rank, counts)
