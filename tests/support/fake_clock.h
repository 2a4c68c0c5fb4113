// File: tests/support/fake_clock.h
//
// The one fake base::Clock of the tests: time moves only when the test says so.
//
// Thread safety: any thread.
#ifndef PAGEPOOL_TESTS_SUPPORT_FAKE_CLOCK_H_
#define PAGEPOOL_TESTS_SUPPORT_FAKE_CLOCK_H_

#include <atomic>
#include <cstdint>

#include "base/clock.h"

namespace pagepool::testing {

class FakeClock final : public base::Clock {
 public:
  uint64_t NowNanos() const override { return now_.load(std::memory_order_relaxed); }
  void Advance(uint64_t ns) { now_.fetch_add(ns, std::memory_order_relaxed); }
  void Set(uint64_t ns) { now_.store(ns, std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> now_{1'000'000'000};
};

}  // namespace pagepool::testing

#endif  // PAGEPOOL_TESTS_SUPPORT_FAKE_CLOCK_H_
