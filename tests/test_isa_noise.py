"""The seeded noise of every instruction-set copy of the native kernels, tested through each copy's own entry.

The library holds one copy of the loops per x86-64 level (baseline; v3 with AVX2 and FMA; v4 with AVX-512). Each
copy that runs on this CPU is held to the baseline bit for bit, the Philox words (the AVX-512 and AVX2 paths draw
16 and 8 counters at a time and hand a group that crosses 2^32 in the low word to the narrower path) and the
normals (the transform is
compiled with -ffp-contract=off, so no copy fuses a multiply-add the baseline rounds twice), at counters around that
wrap and far past it; and through the dispatcher of a process whose choice is capped to the baseline.
"""

from __future__ import annotations

import pytest
import torch

from vaefast import native
from vaefast.ops import reference

pytestmark = pytest.mark.skipif(native.load_error() is not None, reason="the native kernel library is not built")

SEEDS = [0, 1, 0x1234_5678_9ABC_DEF0, -1, 2**63 - 1]
# Counters around the low word's wrap (the 8-wide groups break there), far past it, and in a high word of its own.
FIRSTS = [0, 3, 2**32 - 33, 2**32 - 20, 2**32 - 13, 2**32 - 8, 2**32 - 1, 2**33 + 5, 2**40 + 2**32 - 7]
COUNT = 61  # groups of 16 and 8 and a remainder


def _copies() -> list[str]:
    copies = native.copies_that_run()
    if len(copies) < 2:
        pytest.skip(f"only the {copies[0]} copy runs on this CPU: nothing to compare it with")
    return copies


@pytest.mark.parametrize("seed", SEEDS)
def test_every_copy_draws_the_baselines_words_and_normals_bit_for_bit(seed):
    from vaefast.ops.native_backend import noise_of_copy

    for first in FIRSTS:
        words, normals = noise_of_copy("baseline", seed, first, COUNT)
        for isa in _copies()[1:]:
            other_words, other_normals = noise_of_copy(isa, seed, first, COUNT)
            assert torch.equal(other_words, words), (isa, seed, first)
            assert torch.equal(other_normals, normals), (isa, seed, first)


@pytest.mark.parametrize("first", FIRSTS)
def test_the_words_are_the_references_and_the_normals_within_its_bound(first):
    """The integers are Philox4x32-10's exactly (the reference's); the normals' transform differs from the
    reference's (native cos(2πu) by a polynomial, the reference cos(fl(fl(2π)·u))), within the stated bound."""
    from vaefast.ops.native_backend import noise_of_copy

    seed = 0x1234_5678_9ABC_DEF0
    index = torch.arange(first, first + COUNT, dtype=torch.int64)
    k0, k1 = reference.seed_words(torch.tensor(seed))
    zero = torch.zeros_like(index)
    w0, w1, _, _ = reference.philox4x32_10((index & 0xFFFFFFFF, index >> 32, zero, zero), (k0, k1))
    expected = reference.seeded_normal(torch.tensor(seed), (COUNT,), first_index=first)
    for isa in native.copies_that_run():
        words, normals = noise_of_copy(isa, seed, first, COUNT)
        assert torch.equal(words[:, 0], w0) and torch.equal(words[:, 1], w1), isa
        assert (normals - expected).abs().max() <= 2e-6 * (1 + expected.abs().max()), isa


_DRAW = """
import sys, torch
from vaefast import native
from vaefast.ops import native_backend
first = 2**32 - 1000  # the 8-wide groups break at the low word's wrap inside this range
normals = native_backend.seeded_normal(0x1234_5678_9ABC_DEF0, first, 4099)
mu = torch.zeros(3, 4099)
z, _ = __import__("vaefast").reparameterize_kl(mu, torch.zeros_like(mu), seed=77, backend="native")
torch.save({"isa": native.isa(), "normals": normals, "z": z}, sys.argv[1])
"""


def test_a_process_capped_to_the_baseline_draws_the_same_noise_through_the_dispatcher(tmp_path):
    """What a run resumed on a CPU of another level sees: VAEFAST_NATIVE_ISA caps the dispatcher's choice as an
    older CPU would, and the seeded noise through the public op (z = 0 + 1 * eps) is the same bit for bit."""
    import os
    import subprocess
    import sys

    best = native.copies_that_run()[-1]
    if best == "baseline":
        pytest.skip("only the baseline copy runs on this CPU: nothing to compare it with")
    draws = {}
    for cap in (best, "baseline"):
        out = tmp_path / f"{cap}.pt"
        env = {**os.environ, "VAEFAST_NATIVE_ISA": cap}
        subprocess.run([sys.executable, "-c", _DRAW, str(out)], env=env, check=True, timeout=120)
        draws[cap] = torch.load(out)
        assert draws[cap]["isa"] == cap
    assert torch.equal(draws[best]["normals"], draws["baseline"]["normals"])
    assert torch.equal(draws[best]["z"], draws["baseline"]["z"])
