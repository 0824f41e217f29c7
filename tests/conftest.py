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

    reason = vaefast.available_backends("cpu")[request.param]
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
    reason = vaefast.available_backends(device)[backend]
    if reason is not None:
        pytest.skip(reason)
    return backend, torch.device(device)


@pytest.fixture(scope="session")
def tiny_data():
    """512 training and 128 test images of the embedded Fashion-MNIST split: a few steps of real data."""
    from vaefast.data import ImageDataset, load_dataset

    full = load_dataset(None)
    return ImageDataset("tiny", full.train[:512], full.test[:128])


def quiet_config(out, **overrides):
    """A short run that prints and logs little: batch 64, 2 epochs, eager, metrics every 4 steps."""
    from vaefast.config import TrainConfig

    return TrainConfig(out=str(out), **{"batch_size": 64, "epochs": 2, "progress": False, "tensorboard": False,
                                        "compile": False, "log_every": 4, **overrides})
