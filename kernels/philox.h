// Seeded standard normals, the same stream as vaefast.ops.reference.seeded_normal and the Triton kernels: element i
// is Box-Muller over the first two words of Philox4x32-10 with key (low, high 32 bits of the seed) and counter
// (low, high 32 bits of i, 0, 0). The integers are bit-exact; the normal transform uses vector_math's log and a
// polynomial cos, within a few float32 ulp of the other backends' and bit-identical across this library's
// instruction-set copies. The transform is branch-free so that its loop vectorizes.
#pragma once
#include <algorithm>
#include <cstdint>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "isa_suffix.h"
#include "vector_math.h"

// Forced inline: called from many kernel instantiations, GCC's inliner otherwise gives up on the per-element
// functions, and a loop left with a call inside does not vectorize.
#if defined(__GNUC__)
#define VF_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define VF_ALWAYS_INLINE inline
#endif

namespace vf {

struct PhiloxKey {
    uint32_t k0 = 0, k1 = 0;
};

static inline PhiloxKey philox_key(int64_t seed) {
    const uint64_t bits = static_cast<uint64_t>(seed);
    return {static_cast<uint32_t>(bits), static_cast<uint32_t>(bits >> 32)};
}

// The first two output words of Philox4x32-10 at counter (c0, c1, 0, 0), one element at a time: the scalar path
// (baseline copy, group remainders); philox_words runs groups of 16 with AVX-512 and of 8 with AVX2 where the
// copy has them.
static VF_ALWAYS_INLINE void philox_first_two(PhiloxKey key, uint32_t c0, uint32_t c1, uint32_t& out0,
                                              uint32_t& out1) {
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
static VF_ALWAYS_INLINE float uniform_from_word(uint32_t w) {
    const int32_t s = static_cast<int32_t>(w);
    return static_cast<float>(s < 0 ? ~s : s) * 4.6566127342e-10f;
}

// cos(2 pi u) for u in [0, 1): folded by symmetry to an angle in [0, pi/4] where Cephes' sin and cos polynomials
// hold float32 accuracy.
static VF_ALWAYS_INLINE float cos_two_pi(float u) {
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

// Box-Muller of two Philox words, as Triton's pair_uniform_to_normal (first output).
static VF_ALWAYS_INLINE float normal_from_words(uint32_t w0, uint32_t w1) {
    const float u1 = uniform_from_word(w0);
    const float clamped = u1 < 1.0e-7f ? 1.0e-7f : u1;
    return __builtin_sqrtf(-2.0f * log_positive(clamped)) * cos_two_pi(uniform_from_word(w1));
}

#if defined(__AVX2__)
// The lane operations of the vector Philox below, for 8 lanes (AVX2) and 16 (AVX-512). x86 has no 32-bit
// multiply-high: the even and odd lanes are multiplied apart as 32x32->64 products (vpmuludq) and blended back.
// Compilers vectorize the scalar form with 64-bit lanes and emulated 64-bit multiplies, several times slower.
struct Lanes8 {
    using V = __m256i;
    static constexpr uint32_t kWidth = 8;
    static V set1(uint32_t x) { return _mm256_set1_epi32(static_cast<int>(x)); }
    static V iota() { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }
    static V add(V a, V b) { return _mm256_add_epi32(a, b); }
    static V bit_xor(V a, V b) { return _mm256_xor_si256(a, b); }
    static void mul_hi_lo(V constant, V x, V& hi, V& lo) {
        const V even = _mm256_mul_epu32(constant, x);
        const V odd = _mm256_mul_epu32(constant, _mm256_srli_epi64(x, 32));
        lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
        hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
    }
    static void store(uint32_t* out, V v) { _mm256_storeu_si256(reinterpret_cast<V*>(out), v); }
};
#endif

#if defined(__AVX512F__)
struct Lanes16 {
    using V = __m512i;
    static constexpr uint32_t kWidth = 16;
    static V set1(uint32_t x) { return _mm512_set1_epi32(static_cast<int>(x)); }
    static V iota() { return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); }
    static V add(V a, V b) { return _mm512_add_epi32(a, b); }
    static V bit_xor(V a, V b) { return _mm512_xor_si512(a, b); }
    static void mul_hi_lo(V constant, V x, V& hi, V& lo) {
        const V even = _mm512_mul_epu32(constant, x);
        const V odd = _mm512_mul_epu32(constant, _mm512_srli_epi64(x, 32));
        lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
        hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
    }
    static void store(uint32_t* out, V v) { _mm512_storeu_si512(out, v); }
};
#endif

#if defined(__AVX2__)
// Words of L::kWidth consecutive counters (low word first .., high word `high`), no carry between them.
template <typename L>
static inline void philox_first_two_lanes(PhiloxKey key, uint32_t first, uint32_t high, uint32_t* out0,
                                          uint32_t* out1) {
    using V = typename L::V;
    V c0 = L::add(L::set1(first), L::iota()), c1 = L::set1(high), c2 = L::set1(0), c3 = c2;
    V k0 = L::set1(key.k0), k1 = L::set1(key.k1);
    const V round_a = L::set1(0xD2511F53u), round_b = L::set1(0xCD9E8D57u);
    const V key_a = L::set1(0x9E3779B9u), key_b = L::set1(0xBB67AE85u);
    for (int round = 0; round < 10; ++round) {
        V hi_b, lo_b, hi_a, lo_a;
        L::mul_hi_lo(round_b, c2, hi_b, lo_b);
        L::mul_hi_lo(round_a, c0, hi_a, lo_a);
        c0 = L::bit_xor(L::bit_xor(hi_b, c1), k0);
        c2 = L::bit_xor(L::bit_xor(hi_a, c3), k1);
        c1 = lo_b;
        c3 = lo_a;
        k0 = L::add(k0, key_a);
        k1 = L::add(k1, key_b);
    }
    L::store(out0, c0);
    L::store(out1, c1);
}

// Counters first + i .. in groups of L::kWidth while they last, from i on; returns where it stopped: at the end, or
// at a group whose low word would wrap past 2^32 (the high word changes inside it), left to a narrower path.
template <typename L>
static inline int64_t philox_groups(PhiloxKey key, int64_t first, int64_t i, int64_t n, uint32_t* out0,
                                    uint32_t* out1) {
    for (; i + L::kWidth <= n; i += L::kWidth) {
        const uint64_t index = static_cast<uint64_t>(first + i);
        const uint32_t low = static_cast<uint32_t>(index);
        if (low > 0xFFFFFFFFu - (L::kWidth - 1)) break;
        philox_first_two_lanes<L>(key, low, static_cast<uint32_t>(index >> 32), out0 + i, out1 + i);
    }
    return i;
}
#endif

// The first two words of counters first .. first + n.
static inline void philox_words(PhiloxKey key, int64_t first, int64_t n, uint32_t* __restrict out0,
                                uint32_t* __restrict out1) {
    int64_t i = 0;
#if defined(__AVX512F__)
    i = philox_groups<Lanes16>(key, first, i, n, out0, out1);
#endif
#if defined(__AVX2__)
    i = philox_groups<Lanes8>(key, first, i, n, out0, out1);
#endif
    for (; i < n; ++i) {
        const uint64_t index = static_cast<uint64_t>(first + i);
        philox_first_two(key, static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32), out0[i], out1[i]);
    }
}

// out[i] = the normal of element first + i, for i < n. Defined in noise_impl.cpp, once per instruction-set copy,
// where it alone is compiled with -ffp-contract=off: a multiply and add contracted into one FMA rounds once instead
// of twice, so the v3 and v4 copies would otherwise draw normals a few ulp from the baseline's, and a run
// checkpointed on one CPU would not draw the same noise when it resumes on another.
void VF_EXPORT(fill_seeded_normal)(PhiloxKey key, int64_t first, int64_t n, float* out);

static inline void fill_seeded_normal(PhiloxKey key, int64_t first, int64_t n, float* out) {
    VF_EXPORT(fill_seeded_normal)(key, first, n, out);
}

}  // namespace vf
