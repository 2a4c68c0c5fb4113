// File: tests/support/test_env.h
//
// Included by every test binary that frees RCU-protected memory: a test environment that drains RCU
// callbacks at exit so LeakSanitizer does not report tables or index nodes still queued for
// freeing, and EnvOr() for iteration counts a run may raise. Brings in the fake clock too.
#ifndef PAGEPOOL_TESTS_SUPPORT_TEST_ENV_H_
#define PAGEPOOL_TESTS_SUPPORT_TEST_ENV_H_

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "base/rcu.h"
#include "gtest/gtest.h"
#include "tests/support/fake_clock.h"

namespace pagepool::testing {

class RcuBarrierEnvironment : public ::testing::Environment {
 public:
  void TearDown() override { base::rcu::Barrier(); }
};

inline const bool kRcuEnvRegistered [[maybe_unused]] =
    (::testing::AddGlobalTestEnvironment(new RcuBarrierEnvironment), true);

// An integer from the environment, or `fallback`.
inline long EnvOr(const char* name, long fallback) {
  const char* v = std::getenv(name);
  return v == nullptr || *v == '\0' ? fallback : std::strtol(v, nullptr, 10);
}

}  // namespace pagepool::testing

#endif  // PAGEPOOL_TESTS_SUPPORT_TEST_ENV_H_
