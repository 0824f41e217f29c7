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

constexpr float kExpMax = 88.72283905f;   // exp overflows float32 above this
constexpr float kExpMin = -87.33654475f;  // and is below the smallest normal under this

// exp(x) for x in [kExpMin, kExpMax]: Cody-Waite range reduction x = n*ln2 + r, |r| <= ln2/2, then Cephes'
// degree-6 polynomial. NaN propagates through the arithmetic.
static inline float exp_in_range(float x) {
    // Adding 1.5 * 2^23 rounds to the nearest integer in the low mantissa bits without a round instruction.
    constexpr float kShift = 12582912.0f;
    float t = x * 1.44269504088896341f + kShift;
    int32_t n = static_cast<int32_t>(float_to_bits(t) - float_to_bits(kShift));
    float nf = t - kShift;
    float r = x - nf * 0.693359375f;
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
    return y * scale * 2.0f;
}

// exp(x) for any x. RANGE_CHECKS=false is for arguments known to lie in range (half a clamped logvar).
template <bool RANGE_CHECKS = true>
static inline float exp_f32(float x) {
    if constexpr (!RANGE_CHECKS) return exp_in_range(x);
    float xc = x > kExpMax ? kExpMax : x;
    xc = xc < kExpMin ? kExpMin : xc;
    float result = exp_in_range(xc);
    result = x > kExpMax ? __builtin_inff() : result;
    return x < kExpMin ? 0.0f : result;
}

// exp(x) for x <= 0 (or NaN): only underflow needs handling.
static inline float exp_nonpositive(float x) {
    float result = exp_in_range(x < kExpMin ? kExpMin : x);
    return x < kExpMin ? 0.0f : result;
}

// log(1 + f) for f in [sqrt(1/2) - 1, sqrt(2) - 1]: f - f^2/2 + f^3 P(f), Cephes' logf polynomial. No division.
static inline float log1p_reduced(float f) {
    float p = 7.0376836292e-2f;
    p = p * f - 1.1514610310e-1f;
    p = p * f + 1.1676998740e-1f;
    p = p * f - 1.2420140846e-1f;
    p = p * f + 1.4249322787e-1f;
    p = p * f - 1.6668057665e-1f;
    p = p * f + 2.0000714765e-1f;
    p = p * f - 2.4999993993e-1f;
    p = p * f + 3.3333331174e-1f;
    float f2 = f * f;
    return f + (f2 * f * p - 0.5f * f2);
}

// log1p(e) for e in [0, 1], as log(u) with u = 1 + e = sqrt(2) (1 + f), f = (u - sqrt2) / sqrt2 in
// [-0.293, 0.414]: one range, no select, so the compiler cannot if-convert it into two polynomial evaluations
// (it did, with a two-range form). u - sqrt2 is exact (Sterbenz); the only error is rounding 1 + e, an absolute
// error below 6e-8, negligible next to the max(x, 0) - x*t term it is added to.
static inline float log1p_0_to_1(float e) {
    float u = 1.0f + e;
    float f = (u - 1.41421356237f) * 0.70710678118f;
    return log1p_reduced(f) + 0.34657359028f;
}

// Per-element BCE with logits, stable at any |x|: max(x, 0) - x*t + log1p(exp(-|x|)).
static inline float bce_with_logits(float x, float t) {
    float e = exp_nonpositive(-__builtin_fabsf(x));
    return (x > 0.0f ? x : 0.0f) - x * t + log1p_0_to_1(e);
}

// sigmoid(x) = exp(min(x, 0)) / (1 + exp(-|x|)), which neither overflows nor loses the small tail.
static inline float sigmoid(float x) {
    float e = exp_nonpositive(-__builtin_fabsf(x));
    return (x >= 0.0f ? 1.0f : e) / (1.0f + e);
}

}  // namespace vf
