// Adam/AdamW in one pass over each tensor, for float32 models and for low-precision models with float32 master
// weights. Compiled once per instruction-set level like vae_loss_impl.cpp; vae_loss_dispatch.cpp picks the copy.
//
// Under autocast a model keeps float32 weights, casts each to bf16 in every forward and casts each weight
// gradient back to float32 in every backward. With bf16 model weights and this step, the forward and backward
// read and write bf16 only, and the casts become the loads and stores of the optimizer pass that runs anyway.
// For a float32 model the step is torch's fused Adam with the NaN guard's gradient check folded into the same
// parallel region, and one foreign call for every tensor of the step.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define VF_CAN_FLUSH_SUBNORMALS 1
#else
#define VF_CAN_FLUSH_SUBNORMALS 0
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#include "dtypes.h"
#include "isa_suffix.h"
#include "optimizer.h"
#include "vae_loss.h"

namespace {

// Elements per parallel work item: small tensors (biases) run on the calling thread.
constexpr int64_t kChunk = 16384;

// The step's constants, each computed in double and rounded to float32 as torch's fused Adam computes them.
struct AdamHyper {
    float exp_avg_coef, beta2, exp_avg_sq_coef, eps, weight_decay, decay;
    float neg_step_size, bias_correction2_sqrt;  // per tensor, from its step count
};

// hyper: lr, beta1, beta2, eps, weight_decay (optimizer.h).
AdamHyper step_constants(const double* hyper) {
    const double lr = hyper[0], beta1 = hyper[1], beta2 = hyper[2], eps = hyper[3], weight_decay = hyper[4];
    return AdamHyper{float(1.0 - beta1), float(beta2), float(1.0 - beta2), float(eps), float(weight_decay),
                     float(1.0 - lr * weight_decay), 0.0f, 1.0f};
}

// A tensor's bias corrections at step count t (after this step), in double as torch's fused Adam computes them.
void set_bias_corrections(AdamHyper& h, const double* hyper, double t) {
    const double lr = hyper[0], beta1 = hyper[1], beta2 = hyper[2];
    h.neg_step_size = float(-(lr / (1.0 - std::pow(beta1, t))));
    h.bias_correction2_sqrt = float(std::sqrt(1.0 - std::pow(beta2, t)));
}

// A multiply-add where torch's fused Adam has one: its explicit fmadd, and the two its compiler contracts (into the
// weight decay and the second moment; pinned by tests/test_native_adam.py). Fused where the vector unit has an FMA,
// a multiply then an add where it has not (and everywhere in a VAEFAST_PORTABLE_BITS build). The file is compiled
// without contraction, so that nothing else is fused.
inline float multiply_add(float a, float b, float c) {
#if defined(__FMA__) && !defined(VF_PORTABLE_BITS)
    return std::fma(a, b, c);
#else
    return a * b + c;
#endif
}

// While alive, this thread's float unit reads subnormal inputs as zero and writes zero for subnormal results (x86
// MXCSR's DAZ and FTZ bits), and restores its previous mode on exit. Once a unit stops receiving gradient (a dead
// ReLU), its first moment decays by beta1 per step into the subnormal range and stays there for over a hundred
// steps; the update's arithmetic on subnormals takes microcode assists. Each thread of a parallel region has its
// own mode register, so each sets its own.
class SubnormalsFlushed {
public:
    explicit SubnormalsFlushed(bool on) : on_(on && VF_CAN_FLUSH_SUBNORMALS) {
#if VF_CAN_FLUSH_SUBNORMALS
        if (on_) {
            saved_ = _mm_getcsr();
            _mm_setcsr(saved_ | kDenormalsAreZero | kFlushToZero);
        }
#endif
    }
    ~SubnormalsFlushed() {
#if VF_CAN_FLUSH_SUBNORMALS
        if (on_) _mm_setcsr(saved_);
#endif
    }
    SubnormalsFlushed(const SubnormalsFlushed&) = delete;
    SubnormalsFlushed& operator=(const SubnormalsFlushed&) = delete;

private:
    static constexpr unsigned kDenormalsAreZero = 0x0040, kFlushToZero = 0x8000;
    bool on_;
    unsigned saved_ = 0;
};

// The per-tensor record of a multi-tensor Adam call (optimizer.h).
constexpr int64_t kMetaFields = 7;

template <typename T>
struct TensorRefs {
    int64_t n;
    float* master;
    const T* grad;
    float* exp_avg;
    float* exp_avg_sq;
    T* param;
    float* step;
    explicit TensorRefs(const int64_t* m)
        : n(m[0]),
          master(reinterpret_cast<float*>(m[1])),
          grad(reinterpret_cast<const T*>(m[2])),
          exp_avg(reinterpret_cast<float*>(m[3])),
          exp_avg_sq(reinterpret_cast<float*>(m[4])),
          param(reinterpret_cast<T*>(m[5])),
          step(reinterpret_cast<float*>(m[6])) {}
};

// torch's fused CPU Adam (aten/src/ATen/native/cpu/FusedAdamKernel.cpp, its vector loop as compiled) operation for
// operation: a float32 model steps to the bits torch.optim.Adam(fused=True) gives wherever torch's vector loop
// runs (all but the last size % 16 elements of a tensor, whose scalar loop torch compiles differently).
// ``weights`` is the float32 master, or with MASTER false the float32 parameter itself (then ``param`` is unused).
template <typename T, bool DECOUPLED, bool MASTER>
void adam_chunk(int64_t n, float* __restrict weights, const T* __restrict grad, float* __restrict exp_avg,
                float* __restrict exp_avg_sq, T* __restrict param, const AdamHyper h) {
    // exp_avg.lerp_(grad, w) as torch computes it: from exp_avg when the weight is small, else from grad.
    const bool small_weight = std::abs(h.exp_avg_coef) < 0.5f;
    const float lerp_coef = small_weight ? h.exp_avg_coef : h.exp_avg_coef - 1.0f;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
        float g = vf::to_float(grad[i]);
        float p = weights[i];
        if (h.weight_decay != 0.0f) {
            if constexpr (DECOUPLED) {
                p = p * h.decay;
            } else {
                g = multiply_add(p, h.weight_decay, g);
            }
        }
        const float m = multiply_add(lerp_coef, g - exp_avg[i], small_weight ? exp_avg[i] : g);
        const float v = multiply_add(h.exp_avg_sq_coef * g, g, exp_avg_sq[i] * h.beta2);
        const float denom = std::sqrt(v) / h.bias_correction2_sqrt + h.eps;
        p = p + h.neg_step_size * m / denom;
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        weights[i] = p;
        if constexpr (MASTER) param[i] = vf::from_float<T>(p);
    }
}

// Tensor i of a multi-tensor call owns the work items [first[i], first[i + 1]): its kChunk-element chunks. Its
// size is sizes[i * stride].
std::vector<int64_t> first_chunks(int64_t count, const int64_t* sizes, int64_t stride) {
    std::vector<int64_t> first(count + 1, 0);
    for (int64_t i = 0; i < count; ++i) first[i + 1] = first[i] + (sizes[i * stride] + kChunk - 1) / kChunk;
    return first;
}

// This thread's share of a multi-tensor pass: the same fraction of every tensor (thread k of n takes chunks
// [n_i * k / n, n_i * (k + 1) / n) of tensor i), in both of the step's loops. Thread k's core is then mostly the
// one whose matrix products just read those weight rows and wrote those gradient rows (giving thread k the other
// share instead measured slower than either); one contiguous run of chunks across all tensors (the plain static
// schedule) had one thread update whole tensors that both cores had touched, and each such cache line moved
// between the cores, at a chiplet crossing's cost where the host has put them apart (docs/performance.md).
class OwnShare {
public:
    OwnShare() {
#ifdef _OPENMP
        threads_ = omp_get_num_threads();
        me_ = omp_get_thread_num();
#endif
    }
    template <typename Fn>
    void each_chunk(const std::vector<int64_t>& first, Fn&& fn) const {
        for (size_t i = 0; i + 1 < first.size(); ++i) {
            const int64_t chunks = first[i + 1] - first[i];
            for (int64_t c = first[i] + chunks * me_ / threads_; c < first[i] + chunks * (me_ + 1) / threads_; ++c)
                fn(int64_t(i), c);
        }
    }

private:
    int64_t threads_ = 1, me_ = 0;
};

// Which tensor owns work item c, and where its chunk starts.
inline int64_t owner(const std::vector<int64_t>& first, int64_t c) {
    return std::upper_bound(first.begin(), first.end(), c) - first.begin() - 1;
}

// Non-finite means an all-ones exponent field; checking the bits needs no float compare and no conversion.
template <typename T>
bool chunk_finite(const T* data, int64_t n) {
    static_assert(sizeof(T) == 2 || sizeof(T) == 4, "16- or 32-bit floats");
    using Bits = std::conditional_t<sizeof(T) == 2, uint16_t, uint32_t>;
    constexpr Bits exponent = sizeof(T) == 4 ? Bits(0x7F800000u)
                              : std::is_same_v<T, vf::bf16> ? Bits(0x7F80u) : Bits(0x7C00u);
    const Bits* bits = reinterpret_cast<const Bits*>(data);
    int bad = 0;
#pragma omp simd reduction(| : bad)
    for (int64_t k = 0; k < n; ++k) bad |= (bits[k] & exponent) == exponent;
    return bad == 0;
}

// All tensors of one step in one parallel region: per-tensor calls cost a fork and join and a foreign call each,
// and small tensors (biases) that ran serially now share the region with the large ones. With check_grads the
// region first checks every gradient; OwnShare gives each thread the same chunks in both loops.
template <typename T, bool MASTER>
bool adam_step(int64_t count, const int64_t* meta, const double* hyper, bool decoupled, bool skip, bool check_grads,
               bool flush_subnormals, int num_threads) {
    const std::vector<int64_t> first = first_chunks(count, meta, kMetaFields);
    const int64_t total = first[count];
    auto chunk_fn = decoupled ? adam_chunk<T, true, MASTER> : adam_chunk<T, false, MASTER>;
    // Each tensor's constants, from its own step count (usually one count for all: computed once).
    std::vector<AdamHyper> per_tensor(count, step_constants(hyper));
    for (int64_t i = 0; i < count; ++i) {
        const float t = *TensorRefs<T>(meta + kMetaFields * i).step + 1.0f;
        if (i > 0 && t == *TensorRefs<T>(meta + kMetaFields * (i - 1)).step + 1.0f) {
            per_tensor[i] = per_tensor[i - 1];
        } else {
            set_bias_corrections(per_tensor[i], hyper, t);
        }
    }
    int bad = skip ? 1 : 0;
    // Decided before the region: a thread that read the shared `bad` here could see another thread's reduction
    // land and skip the loop (and its barrier) that the others wait in.
    const bool check = check_grads && !skip;
    // Only with an eps that is itself a normal number: then every denominator stays >= eps > 0, and a moment
    // flushed to zero makes a zero update, not 0 / 0.
    const bool flush = flush_subnormals && hyper[3] >= FLT_MIN;
#pragma omp parallel num_threads(num_threads) if (total > 1)
    {
        const SubnormalsFlushed mode(flush);
        const OwnShare share;
        if (check) {
            bool mine_bad = false;
            share.each_chunk(first, [&](int64_t i, int64_t c) {
                const TensorRefs<T> r(meta + kMetaFields * i);
                const int64_t b = (c - first[i]) * kChunk;
                mine_bad |= !chunk_finite(r.grad + b, std::min(kChunk, r.n - b));
            });
            if (mine_bad) {
#pragma omp atomic write
                bad = 1;
            }
#pragma omp barrier
        }
        int any_bad;
#pragma omp atomic read
        any_bad = bad;
        if (!any_bad) {  // the same for every thread: read after the check loop's barrier, or never written
            share.each_chunk(first, [&](int64_t i, int64_t c) {
                const TensorRefs<T> r(meta + kMetaFields * i);
                const int64_t b = (c - first[i]) * kChunk, len = std::min(kChunk, r.n - b);
                chunk_fn(len, (MASTER ? r.master : reinterpret_cast<float*>(r.param)) + b, r.grad + b,
                         r.exp_avg + b, r.exp_avg_sq + b, r.param + b, per_tensor[i]);
            });
        }
    }
    if (bad) return false;
    for (int64_t i = 0; i < count; ++i) *TensorRefs<T>(meta + kMetaFields * i).step += 1.0f;
    return true;
}

template <typename T>
bool all_finite(int64_t count, const int64_t* sizes, const void* const* data, int num_threads) {
    const std::vector<int64_t> first = first_chunks(count, sizes, 1);
    const int64_t total = first[count];
    int bad = 0;
#pragma omp parallel for num_threads(num_threads) schedule(static) reduction(| : bad) if (total > 1)
    for (int64_t c = 0; c < total; ++c) {
        const int64_t i = owner(first, c);
        const int64_t b = (c - first[i]) * kChunk;
        bad |= !chunk_finite(static_cast<const T*>(data[i]) + b, std::min(kChunk, sizes[i] - b));
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

extern "C" int VF_EXPORT(vf_adam_step)(int dtype, int64_t count, const int64_t* meta, float* found_inf,
                                       int check_grads, const double* hyper, int decoupled, int flush_subnormals,
                                       int num_threads) {
    const bool skip = found_inf != nullptr && *found_inf != 0.0f, check = check_grads != 0, dec = decoupled != 0,
               flush = flush_subnormals != 0;
    bool applied;
    switch (dtype) {
        case VF_FLOAT32:
            applied = adam_step<float, false>(count, meta, hyper, dec, skip, check, flush, num_threads);
            break;
        case VF_BFLOAT16:
            applied = adam_step<vf::bf16, true>(count, meta, hyper, dec, skip, check, flush, num_threads);
            break;
#if VF_HAVE_FLOAT16
        case VF_FLOAT16:
            applied = adam_step<vf::f16, true>(count, meta, hyper, dec, skip, check, flush, num_threads);
            break;
#endif
        default:
            return VF_BAD_DTYPE;
    }
    if (!applied && found_inf != nullptr) *found_inf = 1.0f;
    return VF_OK;
}
