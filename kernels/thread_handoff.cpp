// The cache-line round trip between two threads of the OpenMP pool (thread_handoff.h). Compiled once, outside the
// per-instruction-set copies: it measures the machine, and the same code must time it on every level.
#include "thread_handoff.h"

#include <atomic>
#include <chrono>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {
constexpr int kGiveUpAfterMs = 200;
}

extern "C" double vf_thread_handoff_ns(int64_t round_trips) {
#ifdef _OPENMP
    if (round_trips <= 0) return -1.0;
    // Thread 0 writes the even turns, thread 1 the odd ones: each waits for the other's write before its own.
    alignas(64) std::atomic<int64_t> turn{0};
    // Two threads that share one core (a container's CPU quota, an oversubscribed host) hand over once per
    // scheduler time slice: the measurement gives up rather than spin for minutes.
    alignas(64) std::atomic<bool> gave_up{false};
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kGiveUpAfterMs);
    double ns = -1.0;
#pragma omp parallel num_threads(2)
    {
        if (omp_get_num_threads() == 2) {
            const int64_t me = omp_get_thread_num();
            const auto start = std::chrono::steady_clock::now();
            for (int64_t t = me; t < 2 * round_trips && !gave_up.load(std::memory_order_relaxed); t += 2) {
                for (int64_t spins = 1; turn.load(std::memory_order_acquire) != t; ++spins) {
                    if (spins % 4096 == 0 && (gave_up.load(std::memory_order_relaxed) ||
                                              std::chrono::steady_clock::now() > deadline)) {
                        gave_up.store(true, std::memory_order_relaxed);
                        break;
                    }
                }
                turn.store(t + 1, std::memory_order_release);
            }
            if (me == 1 && !gave_up.load()) {  // thread 1 writes the last turn: its clock covers every round trip
                const std::chrono::duration<double, std::nano> took = std::chrono::steady_clock::now() - start;
                ns = took.count() / double(round_trips);
            }
        }
    }
    return ns;
#else
    (void)round_trips;
    return -1.0;
#endif
}
