"""vaefast's LPIPS equals the `lpips` package's `LPIPS(net="vgg")` given the same weights: a random VGG16 trunk
written to a file in torchvision's format, and the linear layers both ship. Values and gradients, float64.

`lpips` imports torchvision, whose PyPI wheel loads only beside the torch it was built for: CI installs both into
its newest-torch venv and runs this file there with VAEFAST_REQUIRE_LPIPS_REFERENCE=1, so it cannot skip there.
"""

from __future__ import annotations

import hashlib
import os
from importlib import resources
from pathlib import Path

import pytest
import torch

from vaefast.models.lpips import LPIPS, STAGE_ENDS

if os.environ.get("VAEFAST_REQUIRE_LPIPS_REFERENCE"):
    import lpips  # noqa: F401  (must import where CI requires the reference)
else:
    lpips = pytest.importorskip("lpips", reason="the lpips package (and a torchvision that loads) is not installed")


def _reference(state: dict):
    ref = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)  # its own linear weights, a random trunk
    bounds = [0, *[end + 1 for end in STAGE_ENDS]]
    slices = {}
    for key, value in state.items():
        index, param = int(key.split(".")[1]), key.split(".")[2]
        stage = next(s for s in range(5) if bounds[s] <= index < bounds[s + 1])
        slices[f"slice{stage + 1}.{index}.{param}"] = value
    ref.net.load_state_dict(slices)
    return ref.double().eval()


def test_the_shipped_linear_weights_are_the_packages():
    ours = resources.files("vaefast.models").joinpath("weights/lpips-vgg-lin-v0.1.pth").read_bytes()
    theirs = (Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth").read_bytes()
    assert hashlib.sha256(ours).hexdigest() == hashlib.sha256(theirs).hexdigest()


def test_values_and_gradients_equal_the_lpips_package(random_vgg16):
    path, state = random_vgg16
    ours, ref = LPIPS.from_files(path).double(), _reference(state)
    torch.manual_seed(1)
    x = torch.rand(3, 3, 64, 64, dtype=torch.float64) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    y_ours, y_ref = y.clone().requires_grad_(), y.clone().requires_grad_()
    value_ours, value_ref = ours(x, y_ours), ref(x, y_ref)
    assert value_ours.shape == value_ref.shape == (3, 1, 1, 1)
    torch.testing.assert_close(value_ours, value_ref, rtol=1e-10, atol=0)
    value_ours.sum().backward()
    value_ref.sum().backward()
    torch.testing.assert_close(y_ours.grad, y_ref.grad, rtol=1e-9, atol=1e-15)
    assert y_ours.grad.abs().sum() > 0
