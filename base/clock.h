// File: base/clock.h
//
// Monotonic time in nanoseconds. `Clock` is the injectable interface (the lazy flush queue's 10 ms
// deadline, a pool's detach_time and release-retry warnings): Clock::Real() reads CLOCK_MONOTONIC,
// Clock::Coarse() reads CLOCK_MONOTONIC_COARSE (the tick, like the jiffies the kernel counts its
// flush-queue timeout in; a cheap vDSO read), and tests use the one fake in
// tests/support/fake_clock.h. MonotonicNanos() is the plain function for measuring a duration in
// place.
//
// Thread safety: every function may be called from any thread.
#ifndef PAGEPOOL_BASE_CLOCK_H_
#define PAGEPOOL_BASE_CLOCK_H_

#include <cstdint>

namespace pagepool::base {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual uint64_t NowNanos() const = 0;

  static Clock* Real();    // CLOCK_MONOTONIC; process-wide, never destroyed
  static Clock* Coarse();  // CLOCK_MONOTONIC_COARSE; process-wide, never destroyed
};

// CLOCK_MONOTONIC now, in nanoseconds.
uint64_t MonotonicNanos();

}  // namespace pagepool::base

#endif  // PAGEPOOL_BASE_CLOCK_H_
