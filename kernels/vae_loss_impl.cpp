// The fused VAE loss loops. This file is compiled once per instruction-set level (see CMakeLists.txt), each copy
// with its own symbol suffix, and vae_loss_dispatch.cpp picks the best copy the CPU supports at load time.
//
// Work is cut into tiles of kRowBlock rows x kColChunk columns. Each tile's per-row partial sums land in a fixed
// slot and are added in a fixed order afterwards, so the results are bit-identical from run to run whatever the
// thread count and scheduling (no atomics, no reduction across threads).
#include <algorithm>
#include <type_traits>
#include <vector>

#include "dtypes.h"
#include "isa_suffix.h"
#include "philox.h"
#include "vae_loss.h"

namespace {

using vf::bf16;

constexpr int64_t kColChunk = 2048;
constexpr int64_t kRowBlock = 8;
// Below this many elements a parallel region's fork and join cost more than the loop itself.
constexpr int64_t kParallelMinElements = 32768;
// Rows shorter than this are processed kRowBlock at a time as one flat run: row by row, a 20-wide latent spent
// 4 of every 20 elements in the loop's scalar tail and paid a call per row (forward of 128 x 20: 11 us, flat 3.8 us).
constexpr int64_t kShortRow = 256;

struct Tiling {
    int64_t rows, cols, n_chunks, n_row_blocks;
    Tiling(int64_t B, int64_t N)
        : rows(B), cols(N), n_chunks((N + kColChunk - 1) / kColChunk), n_row_blocks((B + kRowBlock - 1) / kRowBlock) {}
    int64_t tiles() const { return n_chunks * n_row_blocks; }
    bool parallel() const { return rows * cols >= kParallelMinElements; }
    int64_t row_begin(int64_t tile) const { return (tile / n_chunks) * kRowBlock; }
    int64_t row_end(int64_t tile) const { return std::min(rows, row_begin(tile) + kRowBlock); }
    int64_t chunk(int64_t tile) const { return tile % n_chunks; }
    int64_t col_begin(int64_t tile) const { return chunk(tile) * kColChunk; }
    int64_t chunk_len(int64_t tile) const { return std::min(kColChunk, cols - col_begin(tile)); }
};

// kl[r] = sum over the column chunks of row r, in chunk order. The chunks' sums are kept and added in double, one
// rounding per row at the end: a 256x256x3 image has 96 chunks, and their float32 sum would round 95 times.
void finish_row_sums(const std::vector<double>& partial, float* out, const Tiling& t, int num_threads) {
    const bool parallel = t.rows * t.n_chunks >= kParallelMinElements;
#pragma omp parallel for num_threads(num_threads) schedule(static) if (parallel)
    for (int64_t r = 0; r < t.rows; ++r) {
        double s = 0.0;
        for (int64_t c = 0; c < t.n_chunks; ++c) s += partial[r * t.n_chunks + c];
        out[r] = static_cast<float>(s);
    }
}

// BOUNDED: the clamp keeps 0.5*lv inside exp's finite range, so the range checks can go.
// True when 0.5 * clamp(lv, lo, hi) cannot leave [-85, 85], inside vf::exp_bounded's range.
bool exp_range_is_safe(float lo, float hi) { return lo >= -170.0f && hi <= 170.0f; }

// z of one latent element, and twice its KL (the 0.5 is applied once per row instead of once per element).
// E, the noise's type: T for a caller's eps, float for seeded noise generated into a tile buffer.
template <typename T, typename E, bool BOUNDED>
inline float latent_fwd_element(T mu, T logvar, E eps, T& z, float lo, float hi) {
    const float m = vf::to_float(mu);
    const float lv = vf::clamp_keep_nan(vf::to_float(logvar), lo, hi);
    const vf::ExpParts half = vf::exp_f32_parts<!BOUNDED>(0.5f * lv);
    z = vf::from_float<T>(m + half.value * vf::to_float(eps));
    return m * m + vf::exp_minus_one_minus(lv, half);
}

template <typename T, typename E, bool PER_DIM, bool BOUNDED>
float latent_fwd_row(const T* __restrict mu, const T* __restrict logvar, const E* __restrict eps, T* __restrict z,
                     float* __restrict dim_acc, int64_t n, float lo, float hi) {
    float acc2 = 0.0f;
#pragma omp simd reduction(+ : acc2)
    for (int64_t i = 0; i < n; ++i) {
        const float kl2 = latent_fwd_element<T, E, BOUNDED>(mu[i], logvar[i], eps[i], z[i], lo, hi);
        acc2 += kl2;
        if constexpr (PER_DIM) dim_acc[i] += 0.5f * kl2;
    }
    return 0.5f * acc2;
}

// Whole rows shorter than kShortRow, as one flat run: the twice-KL terms go to kl2 for the caller to sum per row.
template <typename T, typename E, bool BOUNDED>
void latent_fwd_flat(const T* __restrict mu, const T* __restrict logvar, const E* __restrict eps, T* __restrict z,
                     float* __restrict kl2, int64_t n, float lo, float hi) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i)
        kl2[i] = latent_fwd_element<T, E, BOUNDED>(mu[i], logvar[i], eps[i], z[i], lo, hi);
}

// z = mu + std * eps alone, for the samples after the first of a K-sample draw: the first sample's pass computed
// the KL, and mu and logvar are read again from cache, not memory.
template <typename T, typename E, bool BOUNDED>
void latent_z_run(const T* __restrict mu, const T* __restrict logvar, const E* __restrict eps, T* __restrict z,
                  int64_t n, float lo, float hi) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
        const float lv = vf::clamp_keep_nan(vf::to_float(logvar[i]), lo, hi);
        z[i] = vf::from_float<T>(vf::to_float(mu[i]) + vf::exp_f32<!BOUNDED>(0.5f * lv) * vf::to_float(eps[i]));
    }
}

// The noise of elements first .. first + n: the caller's eps there, or with a seed the regenerated normals in
// `buf` (a tile's worth on the caller's stack), so that no latent-sized noise tensor exists. fn receives either.
template <typename T, typename Fn>
void with_noise(const T* eps, const int64_t* seed, int64_t first, int64_t n, float* buf, Fn&& fn) {
    if (seed) {
        vf::fill_seeded_normal(vf::philox_key(*seed), first, n, buf);
        fn(static_cast<const float*>(buf));
    } else {
        fn(eps + first);
    }
}

// Rows r0 .. r0 + rows of a [B, N] input whose rows lie `stride` elements apart, as one contiguous run: the input
// itself when its rows are adjacent, else a copy in `buf` (kRowBlock * kShortRow elements, on the caller's stack).
// A chunk of a packed [B, 2N] tensor into mu and logvar arrives this way without a clone per call.
template <typename T>
const T* contiguous_rows(const T* base, int64_t stride, int64_t r0, int64_t rows, int64_t N, T* buf) {
    if (stride == N) return base + r0 * N;
    for (int64_t r = 0; r < rows; ++r) std::copy(base + (r0 + r) * stride, base + (r0 + r) * stride + N, buf + r * N);
    return buf;
}

// Samples 1 .. K-1 of the rows of one tile (sample k's elements lie k * B * N after sample 0's).
template <typename T>
void latent_fwd_more_samples(const T* mu, const T* logvar, const T* eps, const int64_t* seed, T* z, int64_t B,
                             int64_t N, int64_t mu_stride, int64_t logvar_stride, float lo, float hi, bool bounded,
                             int64_t samples, int64_t r0, int64_t r1, int64_t c0, int64_t n) {
    float noise[kColChunk];
    for (int64_t k = 1; k < samples; ++k) {
        for (int64_t r = r0; r < r1; ++r) {
            const int64_t off = k * B * N + r * N + c0;
            with_noise(eps, seed, off, n, noise, [&](auto* e) {
                using E = std::remove_const_t<std::remove_pointer_t<decltype(e)>>;
                (bounded ? latent_z_run<T, E, true> : latent_z_run<T, E, false>)(
                    mu + r * mu_stride + c0, logvar + r * logvar_stride + c0, e, z + off, n, lo, hi);
            });
        }
    }
}

template <typename T>
void latent_fwd(const T* mu, const T* logvar, const T* eps, const int64_t* seed, T* z, float* kl,
                float* kl_per_dim, int64_t B, int64_t N, int64_t mu_stride, int64_t logvar_stride, float lo, float hi,
                int64_t samples, int num_threads) {
    const Tiling t(B, N);
    const bool parallel = t.parallel();
    const bool bounded = exp_range_is_safe(lo, hi);
    std::vector<double> row_partial(B * t.n_chunks);
    // Per-dim partial sums, one row of N per row block, summed over blocks in order below.
    std::vector<float> dim_partial(kl_per_dim ? t.n_row_blocks * N : 0);
#pragma omp parallel for num_threads(num_threads) schedule(static) if (parallel)
    for (int64_t tile = 0; tile < t.tiles(); ++tile) {
        const int64_t c0 = t.col_begin(tile), n = t.chunk_len(tile);
        float* dim_acc = kl_per_dim ? dim_partial.data() + (tile / t.n_chunks) * N + c0 : nullptr;
        if (dim_acc) std::fill(dim_acc, dim_acc + n, 0.0f);
        if (samples > 1)
            latent_fwd_more_samples(mu, logvar, eps, seed, z, B, N, mu_stride, logvar_stride, lo, hi, bounded, samples,
                                    t.row_begin(tile), t.row_end(tile), c0, n);
        if (N < kShortRow) {  // then one column chunk: the tile is whole rows, contiguous
            const int64_t r0 = t.row_begin(tile), rows = t.row_end(tile) - r0;
            float kl2[kRowBlock * kShortRow], noise[kRowBlock * kShortRow];
            T mu_rows[kRowBlock * kShortRow], logvar_rows[kRowBlock * kShortRow];
            const T* mu_tile = contiguous_rows(mu, mu_stride, r0, rows, N, mu_rows);
            const T* logvar_tile = contiguous_rows(logvar, logvar_stride, r0, rows, N, logvar_rows);
            with_noise(eps, seed, r0 * N, rows * N, noise, [&](auto* e) {
                using E = std::remove_const_t<std::remove_pointer_t<decltype(e)>>;
                (bounded ? latent_fwd_flat<T, E, true> : latent_fwd_flat<T, E, false>)(
                    mu_tile, logvar_tile, e, z + r0 * N, kl2, rows * N, lo, hi);
            });
            for (int64_t r = 0; r < rows; ++r) {
                const float* __restrict terms = kl2 + r * N;
                float acc2 = 0.0f;
#pragma omp simd reduction(+ : acc2)
                for (int64_t i = 0; i < N; ++i) acc2 += terms[i];
                row_partial[r0 + r] = 0.5f * acc2;
                if (dim_acc) {
#pragma omp simd
                    for (int64_t i = 0; i < N; ++i) dim_acc[i] += 0.5f * terms[i];
                }
            }
            continue;
        }
        float noise[kColChunk];
        for (int64_t r = t.row_begin(tile); r < t.row_end(tile); ++r) {
            const int64_t off = r * N + c0;
            with_noise(eps, seed, off, n, noise, [&](auto* e) {
                using E = std::remove_const_t<std::remove_pointer_t<decltype(e)>>;
                auto row = dim_acc
                    ? (bounded ? latent_fwd_row<T, E, true, true> : latent_fwd_row<T, E, true, false>)
                    : (bounded ? latent_fwd_row<T, E, false, true> : latent_fwd_row<T, E, false, false>);
                row_partial[r * t.n_chunks + t.chunk(tile)] =
                    row(mu + r * mu_stride + c0, logvar + r * logvar_stride + c0, e, z + off, dim_acc, n, lo, hi);
            });
        }
    }
    finish_row_sums(row_partial, kl, t, num_threads);
    if (!kl_per_dim) return;
    if (t.n_row_blocks == 0) {  // an empty batch: the per-dim sums are empty sums
        std::fill(kl_per_dim, kl_per_dim + N, 0.0f);
        return;
    }
#pragma omp parallel for num_threads(num_threads) schedule(static) if (parallel)
    for (int64_t c = 0; c < t.n_chunks; ++c) {
        const int64_t c0 = c * kColChunk, n = std::min(kColChunk, N - c0);
        // The row blocks' sums added in double, like the per-row sums (a batch of 1024 has 128 row blocks).
        double total[kColChunk];
        std::copy(dim_partial.data() + c0, dim_partial.data() + c0 + n, total);
        for (int64_t rb = 1; rb < t.n_row_blocks; ++rb) {
            const float* __restrict part = dim_partial.data() + rb * N + c0;
#pragma omp simd
            for (int64_t i = 0; i < n; ++i) total[i] += part[i];
        }
        std::copy(total, total + n, kl_per_dim + c0);
    }
}

// dmu and dlogvar of one latent element. w is its KL weight: the sample's upstream gradient plus the per-dim KL's.
// g: the upstream gradient of z (summed over samples), g_eps: the gradient times the noise (summed likewise).
template <typename T, bool BOUNDED>
inline void latent_bwd_core(float g, float g_eps, float w, T mu, T logvar, T& dmu, T& dlogvar, float lo,
                            float hi) {
    const float m = vf::to_float(mu);
    const float raw = vf::to_float(logvar);
    const float lv = vf::clamp_keep_nan(raw, lo, hi);
    const float std = vf::exp_f32<!BOUNDED>(0.5f * lv);
    // torch.clamp's gradient passes where lo <= raw <= hi, exactly where the clamp left raw unchanged (a NaN
    // compares unequal and gets 0, as in torch).
    const bool passes = lv == raw;
    dmu = vf::from_float<T>(g + w * m);
    // dz/dlv = 0.5 * eps * std and d(0.5*w*(exp(lv) - lv))/dlv = 0.5*w*std*std - 0.5*w, so
    // d = 0.5 * std * (g*eps + w*std) - 0.5*w. w*std is formed before the product with std, never std*std
    // alone, which keeps it finite wherever the true value is (exp(lv) overflows float32 above lv = 88.7
    // even when w is small).
    const float d = 0.5f * (std * (g_eps + w * std) - w);
    dlogvar = vf::from_float<T>(passes ? d : 0.0f);
}

template <typename T, typename E, bool BOUNDED>
inline void latent_bwd_element(T gz, float w, T mu, T logvar, E eps, T& dmu, T& dlogvar, float lo, float hi) {
    const float g = vf::to_float(gz);
    latent_bwd_core<T, BOUNDED>(g, g * vf::to_float(eps), w, mu, logvar, dmu, dlogvar, lo, hi);
}

// Backward of a K-sample draw over one run of n elements of a row: the upstream gradients and gradient-times-noise
// summed over the samples first (sample k's elements lie k * B * N on), then the single-sample formula.
template <typename T, bool BOUNDED>
void latent_bwd_samples_run(const T* gz, const T* eps, const int64_t* seed, int64_t sample_stride, int64_t samples,
                            int64_t first, float gk, const float* gd, const T* __restrict mu,
                            const T* __restrict logvar, T* __restrict dmu, T* __restrict dlogvar, int64_t n, float lo,
                            float hi) {
    float g_sum[kColChunk], g_eps_sum[kColChunk], noise[kColChunk];
    std::fill(g_sum, g_sum + n, 0.0f);
    std::fill(g_eps_sum, g_eps_sum + n, 0.0f);
    for (int64_t k = 0; k < samples; ++k) {
        const T* __restrict g = gz + k * sample_stride + first;
        with_noise(eps, seed, k * sample_stride + first, n, noise, [&](auto* e) {
#pragma omp simd
            for (int64_t i = 0; i < n; ++i) {
                const float gi = vf::to_float(g[i]);
                g_sum[i] += gi;
                g_eps_sum[i] += gi * vf::to_float(e[i]);
            }
        });
    }
#pragma omp simd
    for (int64_t i = 0; i < n; ++i)
        latent_bwd_core<T, BOUNDED>(g_sum[i], g_eps_sum[i], gd ? gk + gd[i] : gk, mu[i], logvar[i], dmu[i],
                                    dlogvar[i], lo, hi);
}

template <typename T, typename E, bool HAS_GD, bool BOUNDED>
void latent_bwd_row(const T* __restrict gz, float gk, const float* __restrict gd, const T* __restrict mu,
                    const T* __restrict logvar, const E* __restrict eps, T* __restrict dmu, T* __restrict dlogvar,
                    int64_t n, float lo, float hi) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
        const float w = HAS_GD ? gk + gd[i] : gk;
        latent_bwd_element<T, E, BOUNDED>(gz[i], w, mu[i], logvar[i], eps[i], dmu[i], dlogvar[i], lo, hi);
    }
}

// Whole rows shorter than kShortRow, as one flat run with the KL weight of every element in w.
template <typename T, typename E, bool BOUNDED>
void latent_bwd_flat(const T* __restrict gz, const float* __restrict w, const T* __restrict mu,
                     const T* __restrict logvar, const E* __restrict eps, T* __restrict dmu, T* __restrict dlogvar,
                     int64_t n, float lo, float hi) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i)
        latent_bwd_element<T, E, BOUNDED>(gz[i], w[i], mu[i], logvar[i], eps[i], dmu[i], dlogvar[i], lo, hi);
}

template <typename T>
void latent_bwd(const T* gz, const float* gk, int64_t gk_stride, const float* gd, const T* mu, const T* logvar,
                const T* eps, const int64_t* seed, T* dmu, T* dlogvar, int64_t B, int64_t N, int64_t mu_stride,
                int64_t logvar_stride, float lo, float hi, int64_t samples, int num_threads) {
    const Tiling t(B, N);
    const bool parallel = t.parallel();
    const bool bounded = exp_range_is_safe(lo, hi);
#pragma omp parallel for num_threads(num_threads) schedule(static) if (parallel)
    for (int64_t tile = 0; tile < t.tiles(); ++tile) {
        const int64_t c0 = t.col_begin(tile), n = t.chunk_len(tile);
        if (samples > 1) {
            for (int64_t r = t.row_begin(tile); r < t.row_end(tile); ++r) {
                const int64_t off = r * N + c0;
                (bounded ? latent_bwd_samples_run<T, true> : latent_bwd_samples_run<T, false>)(
                    gz, eps, seed, B * N, samples, off, gk[r * gk_stride], gd ? gd + c0 : nullptr,
                    mu + r * mu_stride + c0, logvar + r * logvar_stride + c0, dmu + off, dlogvar + off, n, lo, hi);
            }
            continue;
        }
        if (N < kShortRow) {  // then one column chunk: the tile is whole rows, contiguous
            const int64_t r0 = t.row_begin(tile), rows = t.row_end(tile) - r0;
            float w[kRowBlock * kShortRow];
            for (int64_t r = 0; r < rows; ++r) {
                const float row_weight = gk[(r0 + r) * gk_stride];
                for (int64_t i = 0; i < N; ++i) w[r * N + i] = gd ? row_weight + gd[i] : row_weight;
            }
            const int64_t off = r0 * N;
            T mu_rows[kRowBlock * kShortRow], logvar_rows[kRowBlock * kShortRow];
            float noise[kRowBlock * kShortRow];
            const T* mu_tile = contiguous_rows(mu, mu_stride, r0, rows, N, mu_rows);
            const T* logvar_tile = contiguous_rows(logvar, logvar_stride, r0, rows, N, logvar_rows);
            with_noise(eps, seed, off, rows * N, noise, [&](auto* e) {
                using E = std::remove_const_t<std::remove_pointer_t<decltype(e)>>;
                (bounded ? latent_bwd_flat<T, E, true> : latent_bwd_flat<T, E, false>)(
                    gz + off, w, mu_tile, logvar_tile, e, dmu + off, dlogvar + off, rows * N, lo, hi);
            });
            continue;
        }
        float noise[kColChunk];
        for (int64_t r = t.row_begin(tile); r < t.row_end(tile); ++r) {
            const int64_t off = r * N + c0;
            with_noise(eps, seed, off, n, noise, [&](auto* e) {
                using E = std::remove_const_t<std::remove_pointer_t<decltype(e)>>;
                auto row = gd ? (bounded ? latent_bwd_row<T, E, true, true> : latent_bwd_row<T, E, true, false>)
                              : (bounded ? latent_bwd_row<T, E, false, true> : latent_bwd_row<T, E, false, false>);
                row(gz + off, gk[r * gk_stride], gd ? gd + c0 : nullptr, mu + r * mu_stride + c0,
                    logvar + r * logvar_stride + c0, e, dmu + off, dlogvar + off, n, lo, hi);
            });
        }
    }
}

// CONTINUOUS: the continuous Bernoulli's NLL, the BCE minus its log-normalizer, in the same pass.
template <typename T, typename U, bool CONTINUOUS>
float bce_fwd_row(const T* __restrict x, const U* __restrict target, int64_t n) {
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; ++i) {
        const float xi = vf::to_float(x[i]);
        const float bce = vf::bce_with_logits(xi, vf::to_float(target[i]));
        acc += CONTINUOUS ? bce - vf::cb_log_norm(xi) : bce;
    }
    return acc;
}

template <typename T, typename U, bool CONTINUOUS>
void bce_fwd(const T* x, const U* target, float* recon, int64_t B, int64_t P, int num_threads) {
    const Tiling t(B, P);
    const bool parallel = t.parallel();
    std::vector<double> row_partial(B * t.n_chunks);
#pragma omp parallel for num_threads(num_threads) schedule(static) if (parallel)
    for (int64_t tile = 0; tile < t.tiles(); ++tile) {
        const int64_t c0 = t.col_begin(tile), n = t.chunk_len(tile);
        for (int64_t r = t.row_begin(tile); r < t.row_end(tile); ++r)
            row_partial[r * t.n_chunks + t.chunk(tile)] =
                bce_fwd_row<T, U, CONTINUOUS>(x + r * P + c0, target + r * P + c0, n);
    }
    finish_row_sums(row_partial, recon, t, num_threads);
}

template <typename T, typename U, bool CONTINUOUS>
void bce_bwd_row(float g, const T* __restrict x, const U* __restrict target, T* __restrict dx, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
        const float xi = vf::to_float(x[i]);
        const float d = vf::sigmoid(xi) - vf::to_float(target[i]);
        dx[i] = vf::from_float<T>(g * (CONTINUOUS ? d - vf::cb_log_norm_grad(xi) : d));
    }
}

template <typename T, typename U, bool CONTINUOUS>
void bce_bwd(const float* g, int64_t g_stride, const T* x, const U* target, T* dx, int64_t B, int64_t P,
             int num_threads) {
    const Tiling t(B, P);
    const bool parallel = t.parallel();
#pragma omp parallel for num_threads(num_threads) schedule(static) if (parallel)
    for (int64_t tile = 0; tile < t.tiles(); ++tile) {
        const int64_t c0 = t.col_begin(tile), n = t.chunk_len(tile);
        for (int64_t r = t.row_begin(tile); r < t.row_end(tile); ++r)
            bce_bwd_row<T, U, CONTINUOUS>(g[r * g_stride], x + r * P + c0, target + r * P + c0, dx + r * P + c0, n);
    }
}

// Calls fn with a null pointer of the storage type named by `dtype`; returns false for an unknown code.
template <typename Fn>
bool with_dtype(int dtype, Fn&& fn) {
    switch (dtype) {
        case VF_FLOAT32: fn(static_cast<float*>(nullptr)); return true;
        case VF_BFLOAT16: fn(static_cast<bf16*>(nullptr)); return true;
#if VF_HAVE_FLOAT16
        case VF_FLOAT16: fn(static_cast<vf::f16*>(nullptr)); return true;
#endif
        default: return false;
    }
}

}  // namespace

extern "C" {

int VF_EXPORT(vf_latent_fwd)(int dtype, const void* mu, const void* logvar, const void* eps, const int64_t* seed,
                             void* z, float* kl, float* kl_per_dim, int64_t B, int64_t N, int64_t mu_stride,
                             int64_t logvar_stride, float lo, float hi, int64_t samples, int num_threads) {
    bool ok = with_dtype(dtype, [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        latent_fwd<T>(static_cast<const T*>(mu), static_cast<const T*>(logvar), static_cast<const T*>(eps), seed,
                      static_cast<T*>(z), kl, kl_per_dim, B, N, mu_stride, logvar_stride, lo, hi, samples,
                      num_threads);
    });
    return ok ? VF_OK : VF_BAD_DTYPE;
}

int VF_EXPORT(vf_latent_bwd)(int dtype, const void* gz, const float* gk, int64_t gk_stride, const float* gd,
                             const void* mu, const void* logvar, const void* eps, const int64_t* seed, void* dmu,
                             void* dlogvar, int64_t B, int64_t N, int64_t mu_stride, int64_t logvar_stride, float lo,
                             float hi, int64_t samples, int num_threads) {
    bool ok = with_dtype(dtype, [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        latent_bwd<T>(static_cast<const T*>(gz), gk, gk_stride, gd, static_cast<const T*>(mu),
                      static_cast<const T*>(logvar), static_cast<const T*>(eps), seed, static_cast<T*>(dmu),
                      static_cast<T*>(dlogvar), B, N, mu_stride, logvar_stride, lo, hi, samples, num_threads);
    });
    return ok ? VF_OK : VF_BAD_DTYPE;
}

int VF_EXPORT(vf_bce_fwd)(int x_dtype, int t_dtype, int continuous, const void* x, const void* t, float* recon,
                          int64_t B, int64_t P, int num_threads) {
    bool t_ok = false;
    bool x_ok = with_dtype(x_dtype, [&](auto* x_tag) {
        using T = std::remove_pointer_t<decltype(x_tag)>;
        t_ok = with_dtype(t_dtype, [&](auto* t_tag) {
            using U = std::remove_pointer_t<decltype(t_tag)>;
            (continuous ? bce_fwd<T, U, true> : bce_fwd<T, U, false>)(static_cast<const T*>(x),
                                                                      static_cast<const U*>(t), recon, B, P,
                                                                      num_threads);
        });
    });
    return x_ok && t_ok ? VF_OK : VF_BAD_DTYPE;
}

int VF_EXPORT(vf_bce_bwd)(int x_dtype, int t_dtype, int continuous, const float* g, int64_t g_stride, const void* x,
                          const void* t, void* dx, int64_t B, int64_t P, int num_threads) {
    bool t_ok = false;
    bool x_ok = with_dtype(x_dtype, [&](auto* x_tag) {
        using T = std::remove_pointer_t<decltype(x_tag)>;
        t_ok = with_dtype(t_dtype, [&](auto* t_tag) {
            using U = std::remove_pointer_t<decltype(t_tag)>;
            (continuous ? bce_bwd<T, U, true> : bce_bwd<T, U, false>)(
                g, g_stride, static_cast<const T*>(x), static_cast<const U*>(t), static_cast<T*>(dx), B, P,
                num_threads);
        });
    });
    return x_ok && t_ok ? VF_OK : VF_BAD_DTYPE;
}

// This copy's noise, as its kernels draw it: the first two Philox words of each counter (vectorized where the copy
// has AVX2) and the normals. The per-copy entry that tests hold bit for bit to the baseline copy.
int VF_EXPORT(vf_noise)(int64_t seed, int64_t first, int64_t n, uint32_t* words0, uint32_t* words1, float* normals) {
    if (first < 0 || n < 0) return VF_BAD_SIZE;
    const vf::PhiloxKey key = vf::philox_key(seed);
    vf::philox_words(key, first, n, words0, words1);
    vf::fill_seeded_normal(key, first, n, normals);
    return VF_OK;
}

}  // extern "C"
