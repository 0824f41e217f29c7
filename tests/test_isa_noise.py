"""The seeded noise of every instruction-set copy of the native kernels, tested through each copy's own entry.

The library holds one copy of the loops per x86-64 level (baseline; v3 with AVX2 and FMA; v4 with AVX-512). Each
copy that runs on this CPU is held to the baseline and to the reference: the Philox words bit for bit (the AVX2
path draws 8 counters at a time and hands a group that crosses 2^32 in the low word to the scalar path), at counters
around that wrap and far past it. The normals agree within a few float32 ulp, not bit for bit: the compiler fuses
multiplies and adds into FMAs in the v3 and v4 copies and cannot in the baseline (what building with
``-ffp-contract=off`` costs is in docs/performance.md).
"""

from __future__ import annotations

import pytest
import torch

from vaefast import native
from vaefast.ops import reference

pytestmark = pytest.mark.skipif(native.load_error() is not None, reason="the native kernel library is not built")

SEEDS = [0, 1, 0x1234_5678_9ABC_DEF0, -1, 2**63 - 1]
# Counters around the low word's wrap (the 8-wide groups break there), far past it, and in a high word of its own.
FIRSTS = [0, 3, 2**32 - 13, 2**32 - 8, 2**32 - 1, 2**33 + 5, 2**40 + 2**32 - 7]
COUNT = 61  # groups of 8 and a remainder


def _copies() -> list[str]:
    copies = native.copies_that_run()
    if len(copies) < 2:
        pytest.skip(f"only the {copies[0]} copy runs on this CPU: nothing to compare it with")
    return copies


@pytest.mark.parametrize("seed", SEEDS)
def test_every_copy_draws_the_baselines_words_bit_for_bit_and_its_normals_within_ulps(seed):
    from vaefast.ops.native_backend import noise_of_copy

    for first in FIRSTS:
        words, normals = noise_of_copy("baseline", seed, first, COUNT)
        for isa in _copies()[1:]:
            other_words, other_normals = noise_of_copy(isa, seed, first, COUNT)
            assert torch.equal(other_words, words), (isa, seed, first)
            # Measured: at most 2.4e-7 apart over 4096 normals of each of these seeds and counters.
            assert (other_normals - normals).abs().max() <= 1e-6, (isa, seed, first)


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
