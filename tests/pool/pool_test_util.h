// File: tests/pool/pool_test_util.h
//
// Helpers shared by the pool/ tests: a fake clock, and a test environment that drains RCU callbacks
// at exit so LeakSanitizer does not report index nodes still queued for freeing.
#ifndef PAGEPOOL_TESTS_POOL_POOL_TEST_UTIL_H_
#define PAGEPOOL_TESTS_POOL_POOL_TEST_UTIL_H_

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "dma/iommu_domain.h"
#include "dma/rcu.h"
#include "gtest/gtest.h"

namespace pagepool::pool::testing {

class FakeClock final : public dma::Clock {
 public:
  uint64_t NowNanos() const override { return now_.load(std::memory_order_relaxed); }
  void Advance(uint64_t ns) { now_.fetch_add(ns, std::memory_order_relaxed); }
  void Set(uint64_t ns) { now_.store(ns, std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> now_{1'000'000'000};
};

class RcuBarrierEnvironment : public ::testing::Environment {
 public:
  void TearDown() override { dma::rcu::Barrier(); }
};

inline const bool kRcuEnvRegistered [[maybe_unused]] =
    (::testing::AddGlobalTestEnvironment(new RcuBarrierEnvironment), true);

// An integer from the environment, or `fallback`.
inline long EnvOr(const char* name, long fallback) {
  const char* v = std::getenv(name);
  return v == nullptr || *v == '\0' ? fallback : std::strtol(v, nullptr, 10);
}

}  // namespace pagepool::pool::testing

#endif  // PAGEPOOL_TESTS_POOL_POOL_TEST_UTIL_H_
