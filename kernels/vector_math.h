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

// Clamp that keeps NaN, written as the two selects that x86 MINPS/MAXPS compute exactly (each returns its second
// operand when either is NaN), so it compiles to one min and one max. fminf/fmaxf would drop the NaN, and a nested
// select compiled to four compares and two blends.
static inline float clamp_keep_nan(float x, float lo, float hi) {
    float below_hi = hi < x ? hi : x;
    return lo > below_hi ? lo : below_hi;
}

constexpr float kExpMax = 88.72283905f;   // exp overflows float32 above this
constexpr float kExpMin = -87.33654475f;  // and is below the smallest normal under this
// Where 2^n for the rounded n = x / ln2 is still a normal float32 exponent (n in [-126, 127]).
constexpr float kExpScaleSafe = 87.0f;

// q(r) ~ (e^r - 1 - r) / r^2 for |r| <= ln2/2: a degree-4 near-minimax fit, so that e^r = 1 + r(1 + r q(r)) has
// relative error 3e-9, far below float32's rounding (and q(0) is 1/2 to 1.2e-7).
static inline float exp_reduced_q(float r) {
    float q = 1.381461275741458e-3f;
    q = q * r + 8.368710055947304e-3f;
    q = q * r + 4.166838899254799e-2f;
    q = q * r + 1.666652113199234e-1f;
    return q * r + 4.999999403953552e-1f;
}

// e^x = 2^n e^r with x = n ln2 + r, and the pieces the KL's log-variance term reuses: when n = 0, r is x itself.
struct ExpParts {
    float value, n, r, q;
};

// exp(x) = 2^n e^r with x = n ln2 + r (Cody-Waite: ln2 split in two, so r is exact enough at any n).
// WIDE=false needs |x| <= kExpScaleSafe, where 2^n is one exponent field; WIDE=true reaches kExpMax (n = 128) by
// building 2^(n-1) * 2, one multiply more. NaN propagates through the arithmetic.
template <bool WIDE>
static inline ExpParts exp_parts(float x) {
    // Adding 1.5 * 2^23 rounds to the nearest integer in the low mantissa bits without a round instruction.
    constexpr float kShift = 12582912.0f;
    float t = x * 1.44269504088896341f + kShift;
    float nf = t - kShift;
    float r = x - nf * 0.693359375f;
    r = r + nf * 2.12194440e-4f;
    const float q = exp_reduced_q(r);
    float y = (q * r + 1.0f) * r + 1.0f;
    constexpr int32_t bias = WIDE ? 126 : 127;
    // n sits in the low bits of t's representation: n + bias = bits(t) - bits(kShift) + bias, then shifted into
    // the exponent field.
    uint32_t e = float_to_bits(t) + static_cast<uint32_t>(bias - static_cast<int32_t>(float_to_bits(kShift)));
    float scale = bits_to_float(e << 23);
    return {WIDE ? y * scale * 2.0f : y * scale, nf, r, q};
}

template <bool WIDE>
static inline float exp_reduce_and_scale(float x) {
    return exp_parts<WIDE>(x).value;
}

// exp(x) for x in [kExpMin, kExpMax].
static inline float exp_in_range(float x) { return exp_reduce_and_scale<true>(x); }

// exp(x) for |x| <= kExpScaleSafe, e.g. half a logvar clamped to at most +-170.
static inline float exp_bounded(float x) { return exp_reduce_and_scale<false>(x); }

// exp(x) for any x, with its ExpParts. RANGE_CHECKS=false is for arguments known to satisfy |x| <= kExpScaleSafe.
template <bool RANGE_CHECKS = true>
static inline ExpParts exp_f32_parts(float x) {
    if constexpr (!RANGE_CHECKS) return exp_parts<false>(x);
    float xc = x > kExpMax ? kExpMax : x;
    xc = xc < kExpMin ? kExpMin : xc;
    ExpParts p = exp_parts<true>(xc);
    p.value = x > kExpMax ? __builtin_inff() : p.value;
    p.value = x < kExpMin ? 0.0f : p.value;
    return p;
}

template <bool RANGE_CHECKS = true>
static inline float exp_f32(float x) {
    return exp_f32_parts<RANGE_CHECKS>(x).value;
}

// e^lv - 1 - lv, the KL's log-variance term, never negative, from the parts of std = e^h, h = lv / 2. Near the
// prior, where e^lv - 1 and lv cancel (formed apart they left a slightly negative KL), the reduction left n = 0 and
// r = h, and with em = e^h - 1 = r (1 + r q) and e^h - 1 - h = r^2 q:
//     e^(2h) - 1 - 2h = em^2 + 2 r^2 q,
// two terms that are never negative and cancel nothing (a few ulp, no series of its own). Past |lv| = ln2 the
// difference (std^2 - 1) - lv is at least 0.3 and has nothing left to cancel. NaN propagates (n is NaN).
static inline float exp_minus_one_minus(float lv, const ExpParts& half) {
    const float r = half.r, rq = r * half.q;
    const float em = (rq + 1.0f) * r;
    const float near_prior = em * em + 2.0f * (r * rq);
    return half.n == 0.0f ? near_prior : (half.value * half.value - 1.0f) - lv;
}

// exp(x) for x <= 0 (or NaN), where the result only feeds 1 + e or a product with a bounded factor: below
// -kExpScaleSafe it returns exp(-kExpScaleSafe) = 1.6e-38 instead of underflowing towards 0, an absolute error
// under 2e-38 that no float32 sum with 1 or with an O(1) term can see. One max instead of a range check.
static inline float exp_nonpositive(float x) {
    return exp_bounded(-kExpScaleSafe > x ? -kExpScaleSafe : x);
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

// log(u) for a positive normal float u (and +inf, NaN, which pass through): u = 2^e m with m in
// [sqrt(1/2), sqrt(2)), log = e ln2 + log1p(m - 1).
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline float log_positive(float u) {
    const uint32_t bits = float_to_bits(u);
    const int32_t e = static_cast<int32_t>(bits >> 23) - 127;
    const float m = bits_to_float((bits & 0x7FFFFFu) | 0x3F800000u);  // [1, 2)
    const bool halve = m > 1.41421356237f;
    const float f = (halve ? 0.5f * m : m) - 1.0f;
    const float ef = static_cast<float>(halve ? e + 1 : e);
    const float result = ef * 0.693359375f + (log1p_reduced(f) + ef * -2.12194440e-4f);
    return u <= 3.40282347e38f ? result : u;  // false for +inf and NaN
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

// Per-element BCE with logits, stable at any |x|: x (1 - t) for x > 0, -x t otherwise, plus log1p(exp(-|x|)).
// Two branches rather than max(x, 0) - x*t, which is inf - inf = NaN at x = +inf; a zero weight gives 0 even at
// |x| = inf (the limits: +inf for 0 < t < 1, 0 at the matching end). A NaN x stays NaN through the log1p term.
static inline float bce_with_logits(float x, float t) {
    float e = exp_nonpositive(-__builtin_fabsf(x));
    float weight = x > 0.0f ? 1.0f - t : -t;
    return (weight == 0.0f ? 0.0f : x * weight) + log1p_0_to_1(e);
}

// The continuous Bernoulli's log-normalizer (Loaiza-Ganem & Cunningham, 2019) at lambda = sigmoid(x):
// log C = log(2 atanh(1 - 2 lambda) / (1 - 2 lambda)) = log(x / tanh(x / 2)), even in x; with a = |x| and
// e = exp(-a), log a - log(1 - e) + log(1 + e), and below a = 0.5, where log a and log(1 - e) cancel, its Taylor
// series log 2 + x^2/12 - 7x^4/1440 + 31x^6/90720 - 127x^8/4838400 + 73x^10/34214400 (next term 4e-11 at 0.5).
constexpr float kContinuousBernoulliTaylor = 0.5f;

static inline float cb_log_norm(float x) {
    const float a = __builtin_fabsf(x);
    const bool small = a < kContinuousBernoulliTaylor;
    const float safe = small ? 1.0f : a;
    const float e = exp_nonpositive(-safe);
    const float direct = log_positive(safe) - log_positive(1.0f - e) + log1p_0_to_1(e);
    const float x2 = x * x;
    const float taylor = 0.69314718056f +
        x2 * (8.33333333e-2f + x2 * (-4.86111111e-3f + x2 * (3.41710758e-4f + x2 * (-2.62483466e-5f +
                                                                                    x2 * 2.13360456e-6f))));
    return small ? taylor : direct;
}

// d log C / dx = 1/x - csch(x) (odd), with csch(x) = sign(x) 2e / (1 - e^2); below |x| = 0.5 its series
// x/6 - 7x^3/360 + 31x^5/15120 - 127x^7/604800 + 73x^9/3421440.
static inline float cb_log_norm_grad(float x) {
    const float a = __builtin_fabsf(x);
    const bool small = a < kContinuousBernoulliTaylor;
    const float safe = small ? 1.0f : x;
    const float e = exp_nonpositive(-(small ? 1.0f : a));
    const float csch = 2.0f * e / (1.0f - e * e);
    const float direct = 1.0f / safe - (safe < 0.0f ? -csch : csch);
    const float x2 = x * x;
    const float taylor = x * (1.66666667e-1f + x2 * (-1.94444444e-2f + x2 * (2.05026455e-3f + x2 * (-2.09986772e-4f +
                                                                                                 x2 * 2.13360456e-5f))));
    return small ? taylor : direct;
}

// sigmoid(x) = exp(min(x, 0)) / (1 + exp(-|x|)), which neither overflows nor loses the small tail.
static inline float sigmoid(float x) {
    float e = exp_nonpositive(-__builtin_fabsf(x));
    return (x >= 0.0f ? 1.0f : e) / (1.0f + e);
}

}  // namespace vf
