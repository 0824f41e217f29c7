// Picks, once per process, the most capable compiled copy of the kernels that this CPU can run, so that one
// library runs on any x86-64 (and on other architectures, where only the baseline copy is built).
#include <cstdlib>
#include <cstring>

#include "dtypes.h"
#include "optimizer.h"
#include "philox.h"
#include "vae_loss.h"

#define VF_DECLARE(isa)                                                                                          \
    extern "C" int vf_latent_fwd_##isa(int, const void*, const void*, const void*, const int64_t*, void*,      \
                                       float*, float*, int64_t, int64_t, int64_t, int64_t, float, float,       \
                                       int64_t, int);                                                           \
    extern "C" int vf_latent_bwd_##isa(int, const void*, const float*, int64_t, const float*, const void*,     \
                                       const void*, const void*, const int64_t*, void*, void*, int64_t,        \
                                       int64_t, int64_t, int64_t, float, float, int64_t, int);                  \
    extern "C" int vf_bce_fwd_##isa(int, int, int, const void*, const void*, float*, int64_t, int64_t, int);    \
    extern "C" int vf_bce_bwd_##isa(int, int, int, const float*, int64_t, const void*, const void*, void*,      \
                                    int64_t, int64_t, int);                                                     \
    extern "C" int vf_adam_step_##isa(int, int64_t, const int64_t*, float*, int, const double*, int, int, int);  \
    extern "C" int vf_all_finite_##isa(int, int64_t, const int64_t*, const void* const*, int);                  \
    extern "C" int vf_noise_##isa(int64_t, int64_t, int64_t, uint32_t*, uint32_t*, float*);

#define VF_TABLE(isa, name) \
    {name, vf_latent_fwd_##isa, vf_latent_bwd_##isa, vf_bce_fwd_##isa, vf_bce_bwd_##isa, vf_adam_step_##isa,        \
     vf_all_finite_##isa, vf_noise_##isa}

VF_DECLARE(baseline)
#ifdef VF_HAVE_X86_64_V3
VF_DECLARE(v3)
#endif
#ifdef VF_HAVE_X86_64_V4
VF_DECLARE(v4)
#endif

namespace {

struct KernelTable {
    const char* isa;
    decltype(&vf_latent_fwd_baseline) latent_fwd;
    decltype(&vf_latent_bwd_baseline) latent_bwd;
    decltype(&vf_bce_fwd_baseline) bce_fwd;
    decltype(&vf_bce_bwd_baseline) bce_bwd;
    decltype(&vf_adam_step_baseline) adam_step;
    decltype(&vf_all_finite_baseline) all_finite;
    decltype(&vf_noise_baseline) noise;
};

bool isa_allowed(const char* name) {
    // VAEFAST_NATIVE_ISA caps the choice, e.g. to test the baseline copy on an AVX-512 machine.
    const char* cap = std::getenv("VAEFAST_NATIVE_ISA");
    if (!cap || !*cap) return true;
    const char* order[] = {"baseline", "x86-64-v3", "x86-64-v4"};
    int cap_rank = -1, rank = -1;
    for (int i = 0; i < 3; ++i) {
        if (std::strcmp(cap, order[i]) == 0) cap_rank = i;
        if (std::strcmp(name, order[i]) == 0) rank = i;
    }
    return cap_rank < 0 || rank <= cap_rank;
}

// The copy named `name` if it was compiled and this CPU runs it (`capped`: also within VAEFAST_NATIVE_ISA's cap).
bool copy_runs(const char* name, bool capped) {
    if (capped && !isa_allowed(name)) return false;
    if (std::strcmp(name, "baseline") == 0) return true;
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
#ifdef VF_HAVE_X86_64_V4
    if (std::strcmp(name, "x86-64-v4") == 0)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#endif
#ifdef VF_HAVE_X86_64_V3
    if (std::strcmp(name, "x86-64-v3") == 0)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
               __builtin_cpu_supports("bmi2");
#endif
#endif
    return false;
}

// The table of a copy that runs here (check copy_runs first).
KernelTable table_of(const char* name) {
#ifdef VF_HAVE_X86_64_V4
    if (std::strcmp(name, "x86-64-v4") == 0) return VF_TABLE(v4, "x86-64-v4");
#endif
#ifdef VF_HAVE_X86_64_V3
    if (std::strcmp(name, "x86-64-v3") == 0) return VF_TABLE(v3, "x86-64-v3");
#endif
    return VF_TABLE(baseline, "baseline");
}

KernelTable choose() {
    for (const char* name : {"x86-64-v4", "x86-64-v3"})
        if (copy_runs(name, true)) return table_of(name);
    return table_of("baseline");
}

const KernelTable& kernels() {
    static const KernelTable table = choose();
    return table;
}

}  // namespace

extern "C" {

int vf_abi_version(void) { return 9; }

const char* vf_isa(void) { return kernels().isa; }

int vf_has_float16(void) { return VF_HAVE_FLOAT16; }

int vf_latent_fwd(int dtype, const void* mu, const void* logvar, const void* eps, const int64_t* seed, void* z,
                  float* kl, float* kl_per_dim, int64_t B, int64_t N, int64_t mu_stride, int64_t logvar_stride,
                  float lo, float hi, int64_t samples, int num_threads) {
    if (B < 0 || N < 0 || mu_stride < 0 || logvar_stride < 0 || samples < 1) return VF_BAD_SIZE;
    if ((eps && seed) || (!eps && !seed && B * N > 0)) return VF_BAD_SIZE;  // one noise source (none if empty)
    return kernels().latent_fwd(dtype, mu, logvar, eps, seed, z, kl, kl_per_dim, B, N, mu_stride, logvar_stride, lo, hi,
                                samples, num_threads);
}

int vf_latent_bwd(int dtype, const void* gz, const float* gk, int64_t gk_stride, const float* gd, const void* mu,
                  const void* logvar, const void* eps, const int64_t* seed, void* dmu, void* dlogvar, int64_t B,
                  int64_t N, int64_t mu_stride, int64_t logvar_stride, float lo, float hi, int64_t samples,
                  int num_threads) {
    if (B < 0 || N < 0 || gk_stride < 0 || mu_stride < 0 || logvar_stride < 0 || samples < 1) return VF_BAD_SIZE;
    if ((eps && seed) || (!eps && !seed && B * N > 0)) return VF_BAD_SIZE;  // one noise source (none if empty)
    return kernels().latent_bwd(dtype, gz, gk, gk_stride, gd, mu, logvar, eps, seed, dmu, dlogvar, B, N, mu_stride,
                                logvar_stride, lo, hi, samples, num_threads);
}

int vf_philox_words(int64_t seed, int64_t first, int64_t n, uint32_t* out) {
    if (first < 0 || n < 0) return VF_BAD_SIZE;
    const vf::PhiloxKey key = vf::philox_key(seed);
    for (int64_t i = 0; i < n; ++i) {
        const uint64_t index = static_cast<uint64_t>(first + i);
        vf::philox_first_two(key, static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32), out[2 * i],
                             out[2 * i + 1]);
    }
    return VF_OK;
}

int vf_copy_runs(const char* isa) { return copy_runs(isa, false) ? 1 : 0; }

int vf_noise_of_copy(const char* isa, int64_t seed, int64_t first, int64_t n, uint32_t* words0, uint32_t* words1,
                     float* normals) {
    if (!copy_runs(isa, false)) return VF_NO_COPY;
    return table_of(isa).noise(seed, first, n, words0, words1, normals);
}

int vf_seeded_normal(int64_t seed, int64_t first, int64_t n, float* out) {
    if (first < 0 || n < 0) return VF_BAD_SIZE;
    vf::fill_seeded_normal(vf::philox_key(seed), first, n, out);
    return VF_OK;
}

int vf_bce_fwd(int x_dtype, int t_dtype, int continuous, const void* x, const void* t, float* recon, int64_t B,
               int64_t P, int num_threads) {
    if (B < 0 || P < 0) return VF_BAD_SIZE;
    return kernels().bce_fwd(x_dtype, t_dtype, continuous, x, t, recon, B, P, num_threads);
}

int vf_bce_bwd(int x_dtype, int t_dtype, int continuous, const float* g, int64_t g_stride, const void* x,
               const void* t, void* dx, int64_t B, int64_t P, int num_threads) {
    if (B < 0 || P < 0 || g_stride < 0) return VF_BAD_SIZE;
    return kernels().bce_bwd(x_dtype, t_dtype, continuous, g, g_stride, x, t, dx, B, P, num_threads);
}

int vf_adam_step(int dtype, int64_t count, const int64_t* meta, float* found_inf, int check_grads,
                 const double* hyper, int decoupled, int flush_subnormals, int num_threads) {
    if (count < 0) return VF_BAD_SIZE;
    for (int64_t i = 0; i < count; ++i)
        if (meta[7 * i] < 0 || meta[7 * i + 6] == 0) return VF_BAD_SIZE;
    return kernels().adam_step(dtype, count, meta, found_inf, check_grads, hyper, decoupled, flush_subnormals,
                               num_threads);
}

int vf_all_finite(int dtype, int64_t count, const int64_t* sizes, const void* const* data, int num_threads) {
    if (count < 0) return -VF_BAD_SIZE;
    for (int64_t i = 0; i < count; ++i)
        if (sizes[i] < 0) return -VF_BAD_SIZE;
    return kernels().all_finite(dtype, count, sizes, data, num_threads);
}

}  // extern "C"
