// C ABI of the fused optimizer kernels (the same library and instruction-set dispatch as vae_loss.h).
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// One Adam (decoupled = 0) or AdamW (decoupled = 1) step, torch.optim semantics, over `count` tensors in one
// parallel region. `dtype` is that of the model's parameters and gradients:
// - VF_FLOAT32: the parameters are the float32 weights themselves (torch.optim.Adam's own state layout);
// - VF_BFLOAT16 or VF_FLOAT16: low-precision model copies of float32 master weights, written as the master rounded
//   to `dtype` in the same pass.
// meta holds 7 int64 per tensor: n, then the addresses of master (0 for VF_FLOAT32), grad, exp_avg, exp_avg_sq,
// param, and its float32 step count, incremented when the step is applied. Each buffer is contiguous with n
// elements. hyper holds 5 doubles: lr, beta1, beta2, eps, weight_decay. The constants of the update (1 - beta1,
// the bias corrections from each tensor's step count, ...) are computed in double and rounded to float, as torch's
// fused Adam computes them, and the update is torch's vector loop operation for operation: a float32 model steps
// to the bits torch.optim.Adam(fused=True) gives, except in the last size % 16 elements of a tensor (torch's scalar
// loop, which rounds differently by an ulp).
// found_inf (may be null) is GradScaler's skip flag: nonzero on entry skips the step; with check_grads, a
// non-finite gradient anywhere sets it to 1 and skips the step too, leaving every buffer untouched. The check
// reads each thread's own chunks just before it updates them, so the gradients are read from cache the second
// time.
// flush_subnormals (x86-64; elsewhere ignored), used only when eps is a normal float: the update reads subnormal
// inputs as zero and writes zero for subnormal results, on every thread of its region, which then restores its
// previous floating-point mode. torch's update keeps subnormals, at the cost of microcode assists; a moment below
// FLT_MIN moves no weight larger than 2e-31 * lr / eps (then lr * m / eps is below half its ulp).
int vf_adam_step(int dtype, int64_t count, const int64_t* meta, float* found_inf, int check_grads,
                 const double* hyper, int decoupled, int flush_subnormals, int num_threads);

// 1 if every element of the `count` buffers data[i] (sizes[i] elements of `dtype` each) is finite, else 0: the
// NaN/Inf guard's check of the gradients before a step, read-only (torch's multi-tensor check also rewrites them,
// multiplied by an unscale factor).
int vf_all_finite(int dtype, int64_t count, const int64_t* sizes, const void* const* data, int num_threads);

#ifdef __cplusplus
}
#endif
