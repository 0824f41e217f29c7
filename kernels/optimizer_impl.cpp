// Adam/AdamW with float32 master weights and a low-precision model copy, in one pass over each tensor. Compiled
// once per instruction-set level like vae_loss_impl.cpp; vae_loss_dispatch.cpp picks the copy.
//
// Under autocast a model keeps float32 weights, casts each to bf16 in every forward and casts each weight
// gradient back to float32 in every backward. With bf16 model weights and this step, the forward and backward
// read and write bf16 only, and the casts become the loads and stores of the optimizer pass that runs anyway.
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "dtypes.h"
#include "isa_suffix.h"
#include "optimizer.h"
#include "vae_loss.h"

namespace {

// Elements per parallel work item: small tensors (biases) run on the calling thread.
constexpr int64_t kChunk = 16384;

struct AdamHyper {
    float lr, beta1, beta2, eps, weight_decay, step_size, inv_bc2_sqrt;
};

// The arithmetic of torch's fused CPU Adam (aten/src/ATen/native/cpu/FusedAdamKernel.cpp), except that the
// division by sqrt(bias_correction2) is a multiplication by its inverse, computed once.
template <typename T, bool DECOUPLED>
void adam_chunk(int64_t n, float* __restrict master, const T* __restrict grad, float* __restrict exp_avg,
                float* __restrict exp_avg_sq, T* __restrict param, const AdamHyper h) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
        float g = vf::to_float(grad[i]);
        float p = master[i];
        if constexpr (DECOUPLED) {
            p -= h.lr * h.weight_decay * p;
        } else {
            g += h.weight_decay * p;
        }
        const float m = exp_avg[i] + (1.0f - h.beta1) * (g - exp_avg[i]);
        const float v = h.beta2 * exp_avg_sq[i] + (1.0f - h.beta2) * g * g;
        const float denom = std::sqrt(v) * h.inv_bc2_sqrt + h.eps;
        p -= h.step_size * m / denom;
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        master[i] = p;
        param[i] = vf::from_float<T>(p);
    }
}

template <typename T>
void adam_master_step(int64_t n, float* master, const T* grad, float* exp_avg, float* exp_avg_sq, T* param,
                      const AdamHyper& h, bool decoupled, int num_threads) {
    const int64_t chunks = (n + kChunk - 1) / kChunk;
    auto chunk_fn = decoupled ? adam_chunk<T, true> : adam_chunk<T, false>;
#pragma omp parallel for num_threads(num_threads) schedule(static) if (chunks > 1)
    for (int64_t c = 0; c < chunks; ++c) {
        const int64_t b = c * kChunk, len = n - b < kChunk ? n - b : kChunk;
        chunk_fn(len, master + b, grad + b, exp_avg + b, exp_avg_sq + b, param + b, h);
    }
}

// Non-finite means an all-ones exponent field; checking the bits needs no float compare and no conversion.
template <typename T>
bool all_finite(const T* data, int64_t n, int num_threads) {
    static_assert(sizeof(T) == 2 || sizeof(T) == 4, "16- or 32-bit floats");
    using Bits = std::conditional_t<sizeof(T) == 2, uint16_t, uint32_t>;
    constexpr Bits exponent = sizeof(T) == 4 ? Bits(0x7F800000u)
                              : std::is_same_v<T, vf::bf16> ? Bits(0x7F80u) : Bits(0x7C00u);
    const Bits* bits = reinterpret_cast<const Bits*>(data);
    const int64_t chunks = (n + kChunk - 1) / kChunk;
    int bad = 0;
#pragma omp parallel for num_threads(num_threads) schedule(static) reduction(| : bad) if (chunks > 1)
    for (int64_t c = 0; c < chunks; ++c) {
        const int64_t b = c * kChunk, e = n - b < kChunk ? n : b + kChunk;
        int chunk_bad = 0;
#pragma omp simd reduction(| : chunk_bad)
        for (int64_t i = b; i < e; ++i) chunk_bad |= (bits[i] & exponent) == exponent;
        bad |= chunk_bad;
    }
    return bad == 0;
}

}  // namespace

extern "C" int VF_EXPORT(vf_all_finite)(int dtype, const void* data, int64_t n, int num_threads) {
    switch (dtype) {
        case VF_FLOAT32: return all_finite(static_cast<const float*>(data), n, num_threads) ? 1 : 0;
        case VF_BFLOAT16: return all_finite(static_cast<const vf::bf16*>(data), n, num_threads) ? 1 : 0;
#if VF_HAVE_FLOAT16
        case VF_FLOAT16: return all_finite(static_cast<const vf::f16*>(data), n, num_threads) ? 1 : 0;
#endif
        default: return -VF_BAD_DTYPE;
    }
}

extern "C" int VF_EXPORT(vf_adam_master_step)(int dtype, int64_t n, float* master, const void* grad, float* exp_avg,
                                              float* exp_avg_sq, void* param, float lr, float beta1, float beta2,
                                              float eps, float weight_decay, int decoupled, float step_size,
                                              float inv_bias_correction2_sqrt, int num_threads) {
    const AdamHyper h{lr, beta1, beta2, eps, weight_decay, step_size, inv_bias_correction2_sqrt};
    switch (dtype) {
        case VF_BFLOAT16:
            adam_master_step(n, master, static_cast<const vf::bf16*>(grad), exp_avg, exp_avg_sq,
                             static_cast<vf::bf16*>(param), h, decoupled != 0, num_threads);
            return VF_OK;
#if VF_HAVE_FLOAT16
        case VF_FLOAT16:
            adam_master_step(n, master, static_cast<const vf::f16*>(grad), exp_avg, exp_avg_sq,
                             static_cast<vf::f16*>(param), h, decoupled != 0, num_threads);
            return VF_OK;
#endif
        default:
            return VF_BAD_DTYPE;
    }
}
