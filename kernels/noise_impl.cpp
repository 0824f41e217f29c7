// The seeded normal transform in a translation unit of its own, so that CMakeLists.txt can compile it alone with
// -ffp-contract=off (see fill_seeded_normal in philox.h). The loss loops keep their FMAs: only the noise must be
// the same bit for bit on every CPU, and contracting nothing there costs little next to the Philox rounds.
#include <algorithm>

#include "philox.h"

namespace vf {

void VF_EXPORT(fill_seeded_normal)(PhiloxKey key, int64_t first, int64_t n, float* __restrict out) {
    constexpr int64_t kGroup = 256;
    uint32_t w0[kGroup], w1[kGroup];
    for (int64_t start = 0; start < n; start += kGroup) {
        const int64_t m = std::min(kGroup, n - start);
        philox_words(key, first + start, m, w0, w1);
        float* __restrict dst = out + start;
#pragma omp simd
        for (int64_t i = 0; i < m; ++i) dst[i] = normal_from_words(w0[i], w1[i]);
    }
}

}  // namespace vf
