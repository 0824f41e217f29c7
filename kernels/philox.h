// Seeded standard normals, the same stream as vaefast.ops.reference.seeded_normal and the Triton kernels: element i
// is Box-Muller over the first two words of Philox4x32-10 with key (low, high 32 bits of the seed) and counter
// (low, high 32 bits of i, 0, 0). The integers are bit-exact; the normal transform uses vector_math's log and a
// polynomial cos, within a few float32 ulp of the other backends'. Everything is branch-free so that the loops
// filling a tile vectorize.
#pragma once
#include <cstdint>

#include "vector_math.h"

namespace vf {

struct PhiloxKey {
    uint32_t k0 = 0, k1 = 0;
};

static inline PhiloxKey philox_key(int64_t seed) {
    const uint64_t bits = static_cast<uint64_t>(seed);
    return {static_cast<uint32_t>(bits), static_cast<uint32_t>(bits >> 32)};
}

// The first two output words of Philox4x32-10 at counter (c0, c1, 0, 0).
static inline void philox_first_two(PhiloxKey key, uint32_t c0, uint32_t c1, uint32_t& out0, uint32_t& out1) {
    uint32_t c2 = 0, c3 = 0, k0 = key.k0, k1 = key.k1;
    for (int round = 0; round < 10; ++round) {
        const uint64_t pb = static_cast<uint64_t>(0xCD9E8D57u) * c2;
        const uint64_t pa = static_cast<uint64_t>(0xD2511F53u) * c0;
        const uint32_t n0 = static_cast<uint32_t>(pb >> 32) ^ c1 ^ k0;
        const uint32_t n2 = static_cast<uint32_t>(pa >> 32) ^ c3 ^ k1;
        c1 = static_cast<uint32_t>(pb);
        c3 = static_cast<uint32_t>(pa);
        c0 = n0;
        c2 = n2;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out0 = c0;
    out1 = c1;
}

// A uint32 word to [0, 1) as Triton's uint_to_uniform_float: read as int32, negatives folded by bitwise not.
static inline float uniform_from_word(uint32_t w) {
    const int32_t s = static_cast<int32_t>(w);
    return static_cast<float>(s < 0 ? ~s : s) * 4.6566127342e-10f;
}

// cos(2 pi u) for u in [0, 1): folded by symmetry to an angle in [0, pi/4] where Cephes' sin and cos polynomials
// hold float32 accuracy.
static inline float cos_two_pi(float u) {
    const float v = u > 0.5f ? u - 1.0f : u;
    const float a = __builtin_fabsf(v);                   // [0, 0.5]: cos(2 pi a)
    const bool flip = a > 0.25f;                          // cos(2 pi a) = -cos(2 pi (0.5 - a))
    const float b = flip ? 0.5f - a : a;                  // [0, 0.25]
    const bool use_sin = b > 0.125f;                      // cos(2 pi b) = sin(2 pi (0.25 - b))
    const float x = 6.28318530718f * (use_sin ? 0.25f - b : b);  // [0, pi/4]
    const float z = x * x;
    const float s = x + x * z * ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f);
    const float c = 1.0f - 0.5f * z + z * z * ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z +
                                               4.166664568298827e-2f);
    const float r = use_sin ? s : c;
    return flip ? -r : r;
}

static inline float seeded_normal(PhiloxKey key, uint64_t index) {
    uint32_t w0, w1;
    philox_first_two(key, static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32), w0, w1);
    const float u1 = uniform_from_word(w0);
    const float clamped = u1 < 1.0e-7f ? 1.0e-7f : u1;
    return __builtin_sqrtf(-2.0f * log_positive(clamped)) * cos_two_pi(uniform_from_word(w1));
}

// out[i] = the normal of element first + i, for i < n.
static inline void fill_seeded_normal(PhiloxKey key, int64_t first, int64_t n, float* __restrict out) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) out[i] = seeded_normal(key, static_cast<uint64_t>(first + i));
}

}  // namespace vf
