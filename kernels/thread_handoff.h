// C ABI of a measurement of the machine, not of the loss: how long two threads of the kernels' OpenMP pool take to
// hand a cache line to each other (the same library as vae_loss.h).
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Nanoseconds per round trip of a cache line between two OpenMP threads that take turns writing it, averaged over
// `round_trips`; -1 where the pool cannot run two threads, or where the round trips take over 200 ms in all (two
// threads sharing one core). Every parallel op hands its inputs and outputs from thread to thread like this: two
// cores that share a last-level cache do it in tens of nanoseconds, two cores on different chiplets (which a
// virtual machine's cores can become between one minute and the next) in hundreds.
double vf_thread_handoff_ns(int64_t round_trips);

#ifdef __cplusplus
}
#endif
