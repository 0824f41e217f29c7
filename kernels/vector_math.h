// Branch-free float32 math that GCC and Clang vectorize inside `#pragma omp simd` loops. glibc's scalar expf and
// log1pf stop the vectorizer, and its vector variants are declared only under -ffast-math, which assumes NaN
// never occurs; these keep NaN propagation and stay within about 2 ulp of the correctly rounded result.
#pragma once
#include <cstdint>
#include <cstring>

namespace vf {

static inline float bits_to_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint32_t float_to_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

// Clamp with comparisons, not fminf/fmaxf: NaN fails both tests and passes through, and the selects vectorize.
static inline float clamp_keep_nan(float x, float lo, float hi) {
    return x < lo ? lo : (x > hi ? hi : x);
}

// exp(x): Cody-Waite range reduction x = n*ln2 + r, |r| <= ln2/2, then Cephes' degree-6 polynomial.
static inline float exp_f32(float x) {
    constexpr float kMax = 88.72283905f;   // exp overflows float32 above this
    constexpr float kMin = -87.33654475f;  // and is below the smallest normal under this
    float xc = x > kMax ? kMax : x;
    xc = xc < kMin ? kMin : xc;
    // Adding 1.5 * 2^23 rounds to the nearest integer in the low mantissa bits without a round instruction.
    constexpr float kShift = 12582912.0f;
    float t = xc * 1.44269504088896341f + kShift;
    int32_t n = static_cast<int32_t>(float_to_bits(t) - float_to_bits(kShift));
    float nf = t - kShift;
    float r = xc - nf * 0.693359375f;
    r = r + nf * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * (r * r) + r + 1.0f;
    // 2^n built as 2^(n-1) * 2, so that n = 128 at the top of the range stays a finite exponent.
    float scale = bits_to_float(static_cast<uint32_t>(n + 126) << 23);
    float result = y * scale * 2.0f;
    result = x > kMax ? __builtin_inff() : result;
    return x < kMin ? 0.0f : result;
}

// log(u) for u in [1, 2]: u = m * 2^k with m in [1/sqrt2, sqrt2], then the atanh series of log(m).
static inline float log_1_to_2(float u) {
    bool high = u > 1.41421356f;
    float m = high ? u * 0.5f : u;
    float s = (m - 1.0f) / (m + 1.0f);
    float s2 = s * s;
    float q = 1.0f / 11.0f;
    q = q * s2 + 1.0f / 9.0f;
    q = q * s2 + 1.0f / 7.0f;
    q = q * s2 + 1.0f / 5.0f;
    q = q * s2 + 1.0f / 3.0f;
    q = q * s2 + 1.0f;
    float log_m = 2.0f * s * q;
    return high ? log_m + 0.693147180559945f : log_m;
}

// log1p(e) for e in [0, 1]. log(u) * e / (u - 1), u = 1 + e, cancels the rounding error of u (Goldberg's trick),
// so tiny e stays accurate.
static inline float log1p_0_to_1(float e) {
    float u = 1.0f + e;
    float d = u - 1.0f;
    return d == 0.0f ? e : log_1_to_2(u) * (e / d);
}

// Per-element BCE with logits, stable at any |x|: max(x, 0) - x*t + log1p(exp(-|x|)).
static inline float bce_with_logits(float x, float t) {
    float e = exp_f32(-__builtin_fabsf(x));
    return (x > 0.0f ? x : 0.0f) - x * t + log1p_0_to_1(e);
}

// sigmoid(x) = exp(min(x, 0)) / (1 + exp(-|x|)), which neither overflows nor loses the small tail.
static inline float sigmoid(float x) {
    float e = exp_f32(-__builtin_fabsf(x));
    return (x >= 0.0f ? 1.0f : e) / (1.0f + e);
}

}  // namespace vf
