// Test-only fault injection and entry counting (bound as _C._test_* in module.cpp; the tests in
// tests/ops/test_faults.py use them to check that the Python wrappers call an operator once and
// pass its errors on unchanged).
//
// Every operator calls enter(op) first and at(op, stage) at named points after it has begun
// writing its outputs. Unarmed (the state a process starts in, and after _test_disable()), each
// costs one relaxed atomic load.
#pragma once

#include <atomic>

namespace epi_fast {
namespace test_hooks {

extern std::atomic<bool> g_on;

void count_entry(const char* op);
void maybe_fail(const char* op, const char* stage);

inline void enter(const char* op) {
  if (g_on.load(std::memory_order_relaxed)) count_entry(op);
}

// Stages the operators define: "written" (every operator: its outputs written, about to
// return), "scratch" (taylor_accumulate_: the step computed, acc and skipped untouched), "masks"
// (global_masks_counts: masks and thresholds written, counts not yet).
inline void at(const char* op, const char* stage) {
  if (g_on.load(std::memory_order_relaxed)) maybe_fail(op, stage);
}

// The controls behind _C._test_reset, _test_disable, _test_arm_fault and _test_calls.
void reset();    // clears counts and the armed fault, counts from now on
void disable();  // clears everything and unarms the hooks
// The next time `op` reaches `stage` it throws a c10 error of `kind` ("runtime", "value", "type"
// or "oom"), once. Returns false for an unknown kind.
bool arm(const char* op, const char* stage, const char* kind);
long long calls(const char* op);

}  // namespace test_hooks
}  // namespace epi_fast
