import os

# The Triton kernels run on CPU tensors through the interpreter, which must be chosen before triton is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True, print_blob=True)
settings.register_profile("dev", max_examples=30, deadline=None)
settings.register_profile("thorough", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

torch.set_num_threads(min(2, torch.get_num_threads()))

FUSED_BACKENDS = ("triton", "native")
# (backend, device) pairs the property tests hold to the reference. Triton on CPU runs under the interpreter (CI);
# Triton on CUDA is the compiled kernel, where a GPU is present (run with TRITON_INTERPRET=0 there).
FUSED_TARGETS = (("triton", "cpu"), ("native", "cpu"), ("triton", "cuda"))


@pytest.fixture(params=FUSED_BACKENDS, scope="session")
def fused_backend(request):
    """Each fused backend that can run on CPU here; a missing one is skipped (test_backends_required catches CI)."""
    import vaefast

    reason = vaefast.unavailable_backends("cpu").get(request.param)
    if reason is not None:
        pytest.skip(reason)
    return request.param


@pytest.fixture(params=FUSED_TARGETS, ids=lambda t: f"{t[0]}-{t[1]}", scope="session")
def fused_target(request):
    """(backend, device) for each fused backend on each device it can run on here; the others are skipped."""
    import vaefast

    backend, device = request.param
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    reason = vaefast.unavailable_backends(device).get(backend)
    if reason is not None:
        pytest.skip(reason)
    return backend, torch.device(device)


@pytest.fixture(scope="session")
def tiny_data():
    """512 training and 128 test images of the embedded Fashion-MNIST split: a few steps of real data."""
    from vaefast.data import ImageDataset, load_dataset

    full = load_dataset(None)
    return ImageDataset("tiny", full.train[:512], full.test[:128])


@pytest.fixture(scope="session")
def random_vgg16(tmp_path_factory):
    """A VGG16 trunk with random weights in torchvision's state-dict format (ImageNet weights are not downloaded
    here): (its path, its state)."""
    from vaefast.models.lpips import LPIPS

    torch.manual_seed(0)
    state = {f"features.{k}": torch.randn_like(v) * 0.05 for k, v in LPIPS().features.state_dict().items()}
    path = tmp_path_factory.mktemp("vgg16") / "vgg16-397923af.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="session")
def random_inception(tmp_path_factory):
    """FID Inception weights in pytorch-fid's file format, random (the released ones are not downloaded here), with
    each BatchNorm's statistics set from one batch of photographs, so that the pool features vary between images as
    the trained network's do (random weights with unit statistics give nearly constant features): its path."""
    from vaefast.eval.fid import FIDInceptionV3

    torch.manual_seed(2)
    net = FIDInceptionV3()
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the calibration batch
    photos = torch.from_numpy(photo_crops(16, 64)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        net.train()(photos)
    path = tmp_path_factory.mktemp("fid") / "pt_inception-2015-12-05-random.pth"
    torch.save(net.state_dict(), path)
    return path


def photo_crops(count: int, size: int) -> "np.ndarray":
    """``count`` RGB crops [N, size, size, 3] uint8 of the photographs bundled with scikit-image (real images without
    a download), taken on a grid at a few scales; skips the test without scikit-image."""
    import numpy as np

    data = pytest.importorskip("skimage.data")
    from skimage.transform import resize

    crops = []
    for photo in (data.astronaut(), data.coffee(), data.chelsea(), data.rocket()):
        for scale in (2, 4, 8):
            small = resize(photo, (photo.shape[0] // scale, photo.shape[1] // scale), anti_aliasing=True)
            for top in range(0, small.shape[0] - size + 1, size):
                for left in range(0, small.shape[1] - size + 1, size):
                    crops.append(small[top:top + size, left:left + size])
    return (np.stack(crops[:count]) * 255).round().astype(np.uint8)


def state_tensors(state, path=""):
    """(path, tensor) for every tensor in a nested checkpoint state, e.g. ("/optimizer/state/0/exp_avg", ...)."""
    if isinstance(state, dict):
        for key, value in state.items():
            yield from state_tensors(value, f"{path}/{key}")
    elif isinstance(state, (list, tuple)):
        for i, value in enumerate(state):
            yield from state_tensors(value, f"{path}/{i}")
    elif isinstance(state, torch.Tensor):
        yield path, state


def refused_in_one_line(capsys, out, *argv) -> str:
    """Run ``vaefast train ARGV --out OUT`` in this process and require the refusal of bad input: exit code 2, one
    line on stderr, and nothing written to ``out``. Returns the line."""
    from vaefast.cli import main

    code = main([*map(str, argv), "--out", str(out), "--no-progress", "--max-steps", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert not out.exists(), f"{out} was written"
    assert len(err) == 1 and err[0].startswith("vaefast train: error: "), err
    return err[0]


def quiet_config(out, **overrides):
    """A short run that prints and logs little: batch 64, 2 epochs, eager, metrics every 4 steps, in float32 (not
    `auto`, which picks bf16 on CPUs with bf16 hardware: a test of bf16 asks for it)."""
    from vaefast.config import TrainConfig

    return TrainConfig.from_options(**{"out": str(out), "batch_size": 64, "epochs": 2, "progress": False,
                                       "tensorboard": False, "compile": False, "log_every": 4, "precision": "fp32",
                                       **overrides})


# ------------------------------------------------------------------------------------------------ reliability
# Tests of failure scenarios count the cases they try through the `reliability` fixture; with
# VAEFAST_RELIABILITY_JSON set, the session writes scenario -> {cases tried, cases passed, tests}, from which
# benchmarks/reliability_table.py writes the README's Reliability table.
_RELIABILITY: dict[str, dict] = {}


class ReliabilityRecorder:
    def __init__(self):
        self.counts: dict[str, int] = {}

    def case(self, scenario: str) -> None:
        self.counts[scenario] = self.counts.get(scenario, 0) + 1


@pytest.fixture
def reliability(request):
    recorder = ReliabilityRecorder()
    yield recorder
    report = getattr(request.node, "rep_call", None)
    passed = report is not None and report.passed
    for scenario, tried in recorder.counts.items():
        entry = _RELIABILITY.setdefault(scenario, {"tried": 0, "passed": 0, "tests": 0, "failed_tests": 0})
        entry["tried"] += tried
        entry["passed"] += tried if passed else 0
        entry["tests"] += 1
        entry["failed_tests"] += 0 if passed else 1


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("VAEFAST_RELIABILITY_JSON")
    if path and _RELIABILITY:
        import json

        with open(path, "w") as f:
            json.dump(_RELIABILITY, f, indent=2, sort_keys=True)


def tiny_diffusers_vae(channels: int, likelihood, image_size: int):
    """(the diffusers AutoencoderKL, it behind vaefast's protocol): two blocks of 16 and 32 channels, 4 latent
    channels at half the image size, seeded; skips the test without diffusers."""
    diffusers = pytest.importorskip("diffusers")
    from vaefast.integrations.diffusers import DIFFUSERS_CLAMP, from_diffusers
    from vaefast.models.protocol import ModuleVAE

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=channels, out_channels=channels, block_out_channels=(16, 32),
                                  layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8)
    model = ModuleVAE(from_diffusers(vae), likelihood, (channels, image_size, image_size), DIFFUSERS_CLAMP, "auto")
    return vae, model
