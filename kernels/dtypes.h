// Storage types and their conversion to and from float32 in registers.
#pragma once
#include <cstdint>

#include "vector_math.h"

namespace vf {

struct bf16 {
    uint16_t bits;
};

static inline float to_float(float v) { return v; }
static inline float to_float(bf16 v) { return bits_to_float(static_cast<uint32_t>(v.bits) << 16); }

template <typename T>
static inline T from_float(float v);

template <>
inline float from_float<float>(float v) {
    return v;
}

// Round to nearest even; a NaN keeps its sign and becomes a quiet NaN instead of rounding to infinity.
template <>
inline bf16 from_float<bf16>(float v) {
    uint32_t u = float_to_bits(v);
    uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    uint32_t quiet_nan = (u >> 16) | 0x40u;
    bool is_nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
    return bf16{static_cast<uint16_t>(is_nan ? quiet_nan : rounded)};
}

#ifdef __FLT16_MAX__
#define VF_HAVE_FLOAT16 1
using f16 = _Float16;
static inline float to_float(f16 v) { return static_cast<float>(v); }
template <>
inline f16 from_float<f16>(float v) {
    return static_cast<f16>(v);
}
#else
#define VF_HAVE_FLOAT16 0
#endif

}  // namespace vf
