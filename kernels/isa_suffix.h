// The instruction-set copies of the kernels (see CMakeLists.txt) are the same sources compiled several times with
// VF_ISA_SUFFIX defined to baseline, v3 or v4: VF_EXPORT(name) gives each copy's C entry points distinct names,
// and vae_loss_dispatch.cpp picks one set at load time.
#pragma once

#ifndef VF_ISA_SUFFIX
#define VF_ISA_SUFFIX baseline
#endif
#define VF_CONCAT_(a, b) a##_##b
#define VF_CONCAT(a, b) VF_CONCAT_(a, b)
#define VF_EXPORT(name) VF_CONCAT(name, VF_ISA_SUFFIX)
