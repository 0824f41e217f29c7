// Adam/AdamW with float32 master weights and a low-precision model copy, in one pass over each tensor. Compiled
// once per instruction-set level like vae_loss_impl.cpp; vae_loss_dispatch.cpp picks the copy.
//
// Under autocast a model keeps float32 weights, casts each to bf16 in every forward and casts each weight
// gradient back to float32 in every backward. With bf16 model weights and this step, the forward and backward
// read and write bf16 only, and the casts become the loads and stores of the optimizer pass that runs anyway.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

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

// The per-tensor record of a multi-tensor Adam call: n, then the master, grad, exp_avg, exp_avg_sq and param
// addresses (optimizer.h).
constexpr int64_t kMetaFields = 6;

template <typename T>
struct TensorRefs {
    int64_t n;
    float* master;
    const T* grad;
    float* exp_avg;
    float* exp_avg_sq;
    T* param;
    explicit TensorRefs(const int64_t* m)
        : n(m[0]),
          master(reinterpret_cast<float*>(m[1])),
          grad(reinterpret_cast<const T*>(m[2])),
          exp_avg(reinterpret_cast<float*>(m[3])),
          exp_avg_sq(reinterpret_cast<float*>(m[4])),
          param(reinterpret_cast<T*>(m[5])) {}
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

// Tensor i of a multi-tensor call owns the work items [first[i], first[i + 1]): its kChunk-element chunks. Its
// size is sizes[i * stride].
std::vector<int64_t> first_chunks(int64_t count, const int64_t* sizes, int64_t stride) {
    std::vector<int64_t> first(count + 1, 0);
    for (int64_t i = 0; i < count; ++i) first[i + 1] = first[i] + (sizes[i * stride] + kChunk - 1) / kChunk;
    return first;
}

// Which tensor owns work item c, and where its chunk starts.
inline int64_t owner(const std::vector<int64_t>& first, int64_t c) {
    return std::upper_bound(first.begin(), first.end(), c) - first.begin() - 1;
}

// All tensors of one step in one parallel region: per-tensor calls cost a fork and join and a foreign call each,
// and small tensors (biases) that ran serially now share the region with the large ones.
template <typename T>
void adam_master_step(int64_t count, const int64_t* meta, const float* factors, const AdamHyper& base,
                      bool decoupled, int num_threads) {
    const std::vector<int64_t> first = first_chunks(count, meta, kMetaFields);
    const int64_t total = first[count];
    auto chunk_fn = decoupled ? adam_chunk<T, true> : adam_chunk<T, false>;
#pragma omp parallel for num_threads(num_threads) schedule(static) if (total > 1)
    for (int64_t c = 0; c < total; ++c) {
        const int64_t i = owner(first, c);
        const TensorRefs<T> r(meta + kMetaFields * i);
        const int64_t b = (c - first[i]) * kChunk, len = std::min(kChunk, r.n - b);
        AdamHyper h = base;
        h.step_size = factors[2 * i];
        h.inv_bc2_sqrt = factors[2 * i + 1];
        chunk_fn(len, r.master + b, r.grad + b, r.exp_avg + b, r.exp_avg_sq + b, r.param + b, h);
    }
}

// Non-finite means an all-ones exponent field; checking the bits needs no float compare and no conversion.
template <typename T>
bool all_finite(int64_t count, const int64_t* sizes, const void* const* data, int num_threads) {
    static_assert(sizeof(T) == 2 || sizeof(T) == 4, "16- or 32-bit floats");
    using Bits = std::conditional_t<sizeof(T) == 2, uint16_t, uint32_t>;
    constexpr Bits exponent = sizeof(T) == 4 ? Bits(0x7F800000u)
                              : std::is_same_v<T, vf::bf16> ? Bits(0x7F80u) : Bits(0x7C00u);
    const std::vector<int64_t> first = first_chunks(count, sizes, 1);
    const int64_t total = first[count];
    int bad = 0;
#pragma omp parallel for num_threads(num_threads) schedule(static) reduction(| : bad) if (total > 1)
    for (int64_t c = 0; c < total; ++c) {
        const int64_t i = owner(first, c);
        const Bits* bits = static_cast<const Bits*>(data[i]);
        const int64_t b = (c - first[i]) * kChunk, e = std::min(sizes[i], b + kChunk);
        int chunk_bad = 0;
#pragma omp simd reduction(| : chunk_bad)
        for (int64_t k = b; k < e; ++k) chunk_bad |= (bits[k] & exponent) == exponent;
        bad |= chunk_bad;
    }
    return bad == 0;
}

}  // namespace

extern "C" int VF_EXPORT(vf_all_finite)(int dtype, int64_t count, const int64_t* sizes, const void* const* data,
                                        int num_threads) {
    switch (dtype) {
        case VF_FLOAT32: return all_finite<float>(count, sizes, data, num_threads) ? 1 : 0;
        case VF_BFLOAT16: return all_finite<vf::bf16>(count, sizes, data, num_threads) ? 1 : 0;
#if VF_HAVE_FLOAT16
        case VF_FLOAT16: return all_finite<vf::f16>(count, sizes, data, num_threads) ? 1 : 0;
#endif
        default: return -VF_BAD_DTYPE;
    }
}

extern "C" int VF_EXPORT(vf_adam_master_step)(int dtype, int64_t count, const int64_t* meta, const float* factors,
                                              float lr, float beta1, float beta2, float eps, float weight_decay,
                                              int decoupled, int num_threads) {
    const AdamHyper h{lr, beta1, beta2, eps, weight_decay, 0.0f, 0.0f};
    switch (dtype) {
        case VF_BFLOAT16:
            adam_master_step<vf::bf16>(count, meta, factors, h, decoupled != 0, num_threads);
            return VF_OK;
#if VF_HAVE_FLOAT16
        case VF_FLOAT16:
            adam_master_step<vf::f16>(count, meta, factors, h, decoupled != 0, num_threads);
            return VF_OK;
#endif
        default:
            return VF_BAD_DTYPE;
    }
}
