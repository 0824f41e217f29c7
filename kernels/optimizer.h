// C ABI of the fused optimizer kernel (the same library and instruction-set dispatch as vae_loss.h).
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// One Adam (decoupled = 0) or AdamW (decoupled = 1) step, torch.optim semantics, on a tensor whose model copy
// `param` is low precision (`dtype`: VF_BFLOAT16 or VF_FLOAT16) and whose float32 master weights live in
// `master`. One pass reads grad (of `dtype`), master, exp_avg and exp_avg_sq, and writes master, exp_avg,
// exp_avg_sq and param = master rounded to `dtype`. All buffers hold n contiguous elements.
// step_size = lr / (1 - beta1^t) and inv_bias_correction2_sqrt = 1 / sqrt(1 - beta2^t) for step t.
int vf_adam_master_step(int dtype, int64_t n, float* master, const void* grad, float* exp_avg, float* exp_avg_sq,
                        void* param, float lr, float beta1, float beta2, float eps, float weight_decay, int decoupled,
                        float step_size, float inv_bias_correction2_sqrt, int num_threads);

// 1 if all n elements of `data` (of `dtype`) are finite, else 0: the NaN/Inf guard's check of the gradients
// before a step, read-only (torch's multi-tensor check also rewrites them, multiplied by an unscale factor).
int vf_all_finite(int dtype, const void* data, int64_t n, int num_threads);

#ifdef __cplusplus
}
#endif
