// C ABI of the fused VAE loss CPU kernels. Raw contiguous buffers, no libtorch: the Python side passes
// data pointers from torch tensors through ctypes, so the library builds in seconds with any C++17 compiler.
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Element types of the tensors passed as void*.
enum vf_dtype { VF_FLOAT32 = 0, VF_BFLOAT16 = 1, VF_FLOAT16 = 2 };

// Return codes.
enum vf_status { VF_OK = 0, VF_BAD_DTYPE = 1, VF_BAD_SIZE = 2, VF_NO_COPY = 3 };

// Bumped whenever a signature below changes; the Python loader refuses a library of another version.
int vf_abi_version(void);
// The instruction set the dispatcher chose for this CPU ("x86-64-v4", "x86-64-v3" or "baseline").
const char* vf_isa(void);
// 1 if float16 inputs are supported by this build.
int vf_has_float16(void);

// Latent side, forward. mu, logvar, eps, z: [B, N] of `dtype`; kl: [B] float32;
// exactly one of eps and seed is non-NULL: with seed, the noise of element i (row-major) is drawn from Philox4x32-10
// keyed by *seed (see philox.h) instead of read from eps;
// kl_per_dim: [N] float32 or NULL when not wanted. eps and z are contiguous; the N elements of each row of mu and
// logvar are contiguous and their rows lie mu_stride and logvar_stride elements apart (N when contiguous; 2N for
// the two halves of a packed [B, 2N] encoder output).
// samples = K > 1: z and eps are [K, B, N] (sample k at k * B * N, seeded noise counted likewise), drawn from one
// read of mu and logvar; kl is the analytic KL, the same for every sample.
int vf_latent_fwd(int dtype, const void* mu, const void* logvar, const void* eps, const int64_t* seed, void* z,
                  float* kl, float* kl_per_dim, int64_t B, int64_t N, int64_t mu_stride, int64_t logvar_stride,
                  float lo, float hi, int64_t samples, int num_threads);

// Latent side, backward. gz, mu, logvar, eps, dmu, dlogvar: [B, N] of `dtype`, mu and logvar with row strides as
// in the forward, the others contiguous; gk: [B] float32 with elements gk_stride apart (0: one value broadcast,
// as the gradient of a sum arrives); gd: [N] float32 (upstream gradient of kl_per_dim) or NULL; eps or seed as in
// the forward, which regenerates the same noise.
// With samples = K > 1, gz and eps are [K, B, N] and the gradients are summed over the samples.
int vf_latent_bwd(int dtype, const void* gz, const float* gk, int64_t gk_stride, const float* gd, const void* mu,
                  const void* logvar, const void* eps, const int64_t* seed, void* dmu, void* dlogvar, int64_t B,
                  int64_t N, int64_t mu_stride, int64_t logvar_stride, float lo, float hi, int64_t samples,
                  int num_threads);

// The seeded noise's stream, for tests against the reference: the first two Philox4x32-10 words (out: 2n uint32)
// and the normals (out: n float32) of elements first .. first + n under seed.
int vf_philox_words(int64_t seed, int64_t first, int64_t n, uint32_t* out);
int vf_seeded_normal(int64_t seed, int64_t first, int64_t n, float* out);
// Whether the instruction-set copy `isa` ("baseline", "x86-64-v3", "x86-64-v4") was built and runs on this CPU,
// and that copy's Philox words and normals of counters first .. first + n (VF_NO_COPY where it does not run).
int vf_copy_runs(const char* isa);
int vf_noise_of_copy(const char* isa, int64_t seed, int64_t first, int64_t n, uint32_t* words0, uint32_t* words1,
                     float* normals);

// Pixel side, forward: recon[b] = sum_j BCE-with-logits(x[b, j], t[b, j]). recon: [B] float32. continuous != 0:
// the continuous Bernoulli's NLL instead, the BCE minus the log-normalizer log C(sigmoid(x)) of each pixel.
int vf_bce_fwd(int x_dtype, int t_dtype, int continuous, const void* x, const void* t, float* recon, int64_t B,
               int64_t P, int num_threads);

// Pixel side, backward: dx[b, j] = g[b * g_stride] * (sigmoid(x[b, j]) - t[b, j]), dx of x_dtype. g: float32,
// g_stride 0 for one value broadcast over the batch (the gradient of recon.sum()); with continuous, minus
// d log C / dx as well.
int vf_bce_bwd(int x_dtype, int t_dtype, int continuous, const float* g, int64_t g_stride, const void* x,
               const void* t, void* dx, int64_t B, int64_t P, int num_threads);

#ifdef __cplusplus
}
#endif
