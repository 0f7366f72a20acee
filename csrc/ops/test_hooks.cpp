// State of the test-only hooks (see test_hooks.h). Only the armed path takes the mutex.
#include "test_hooks.h"

#include <c10/util/Exception.h>

#include <map>
#include <mutex>
#include <string>

namespace epi_fast {
namespace test_hooks {

std::atomic<bool> g_on{false};

namespace {

struct State {
  std::mutex mutex;
  std::map<std::string, long long> calls;
  std::string op, stage, kind;  // the armed fault; op empty when none
};

State& state() {
  static State s;
  return s;
}

}  // namespace

void count_entry(const char* op) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  ++s.calls[op];
}

void maybe_fail(const char* op, const char* stage) {
  State& s = state();
  std::string kind;
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    if (s.op.empty() || s.op != op || s.stage != stage) return;
    kind = s.kind;
    s.op.clear();  // one shot: a second call would run normally (and show up as a retry)
  }
  const std::string what = std::string("epi_fast test fault in ") + op + " at " + stage;
  if (kind == "value") TORCH_CHECK_VALUE(false, what);
  if (kind == "type") TORCH_CHECK_TYPE(false, what);
  if (kind == "oom") TORCH_CHECK_WITH(OutOfMemoryError, false, what);
  TORCH_CHECK(false, what);
}

void reset() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.calls.clear();
  s.op.clear();
  g_on.store(true, std::memory_order_relaxed);
}

void disable() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.calls.clear();
  s.op.clear();
  g_on.store(false, std::memory_order_relaxed);
}

bool arm(const char* op, const char* stage, const char* kind) {
  const std::string k = kind;
  if (k != "runtime" && k != "value" && k != "type" && k != "oom") return false;
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.op = op;
  s.stage = stage;
  s.kind = k;
  g_on.store(true, std::memory_order_relaxed);
  return true;
}

long long calls(const char* op) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  const auto it = s.calls.find(op);
  return it == s.calls.end() ? 0 : it->second;
}

}  // namespace test_hooks
}  // namespace epi_fast
