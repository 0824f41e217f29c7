"""vaefast's FID Inception and Fréchet distance equal pytorch-fid's given the same weights (random, in the released
file's format, with BatchNorm statistics from photographs so that the features vary): the pool features to 1e-5 of
their scale, the distance to 1e-4 relative.

pytorch-fid imports torchvision, whose PyPI wheel loads only beside the torch it was built for: CI installs both into
its newest-torch venv and runs this file there with VAEFAST_REQUIRE_FID_REFERENCE=1, so it cannot skip there.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from conftest import photo_crops
from vaefast.eval.fid import FIDInceptionV3, frechet_distance, inception_features

if os.environ.get("VAEFAST_REQUIRE_FID_REFERENCE"):
    import pytorch_fid.inception as reference  # noqa: F401  (must import where CI requires the reference)
else:
    reference = pytest.importorskip("pytorch_fid.inception",
                                    reason="pytorch-fid (and a torchvision that loads) is not installed")


@pytest.fixture(scope="module")
def images():
    """Photographs and a blurred, noisier copy of them: a distance well above zero."""
    real = torch.from_numpy(photo_crops(24, 48)).permute(0, 3, 1, 2).float() / 255
    generator = torch.Generator().manual_seed(0)
    fake = torch.nn.functional.avg_pool2d(real, 3, 1, 1, count_include_pad=False)
    fake = (fake + 0.05 * torch.randn(fake.shape, generator=generator)).clamp(0, 1)
    return real, fake


def test_features_and_distance_equal_pytorch_fid(random_inception, images, monkeypatch):
    from pytorch_fid.fid_score import calculate_frechet_distance

    state = torch.load(random_inception, weights_only=True)
    assert len(state) == 566  # the released file's entries, num_batches_tracked included
    # pytorch-fid downloads its weights; here it is handed the same file's tensors instead.
    monkeypatch.setattr(reference, "load_state_dict_from_url", lambda *a, **k: {k: v.clone() for k, v in state.items()})
    theirs_net = reference.InceptionV3([reference.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    ours_net = FIDInceptionV3.from_file(random_inception)
    real, fake = images
    with torch.no_grad():
        theirs = torch.cat([theirs_net(x)[0].flatten(1) for x in (real, fake)]).double()
    ours = torch.cat([inception_features(ours_net, x, batch_size=10) for x in (real, fake)])
    assert ours.shape == (48, 2048) and float(ours.std(0).mean()) > 1e-3 * float(ours.abs().max())
    assert float((ours - theirs).abs().max()) <= 1e-5 * float(theirs.abs().max())

    a, b = ours[:24].numpy(), ours[24:].numpy()
    expected = calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    distance = frechet_distance(ours[:24], ours[24:])
    assert expected > 0 and distance == pytest.approx(expected, rel=1e-4)
    assert abs(frechet_distance(ours[:24], ours[:24])) <= 1e-6 * expected  # zero up to float64 roundoff
