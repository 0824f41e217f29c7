// C ABI of the fused optimizer kernel (the same library and instruction-set dispatch as vae_loss.h).
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// One Adam (decoupled = 0) or AdamW (decoupled = 1) step, torch.optim semantics, over `count` tensors whose model
// copies `param` are low precision (`dtype`: VF_BFLOAT16 or VF_FLOAT16) and whose float32 master weights live in
// `master`, in one parallel region. meta holds 6 int64 per tensor: n, then the addresses of master, grad (of
// `dtype`), exp_avg, exp_avg_sq and param, each a contiguous buffer of n elements. One pass reads grad, master,
// exp_avg and exp_avg_sq, and writes master, exp_avg, exp_avg_sq and param = master rounded to `dtype`.
// factors holds 2 floats per tensor, from its own step count t: lr / (1 - beta1^t) and 1 / sqrt(1 - beta2^t).
int vf_adam_master_step(int dtype, int64_t count, const int64_t* meta, const float* factors, float lr, float beta1,
                        float beta2, float eps, float weight_decay, int decoupled, int num_threads);

// 1 if every element of the `count` buffers data[i] (sizes[i] elements of `dtype` each) is finite, else 0: the
// NaN/Inf guard's check of the gradients before a step, read-only (torch's multi-tensor check also rewrites them,
// multiplied by an unscale factor).
int vf_all_finite(int dtype, int64_t count, const int64_t* sizes, const void* const* data, int num_threads);

#ifdef __cplusplus
}
#endif
