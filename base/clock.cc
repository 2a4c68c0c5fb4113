#include "base/clock.h"

#include <time.h>

namespace pagepool::base {
namespace {

uint64_t Read(clockid_t id) {
  timespec ts;
  clock_gettime(id, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

class RealClock final : public Clock {
 public:
  uint64_t NowNanos() const override { return Read(CLOCK_MONOTONIC); }
};

class CoarseClock final : public Clock {
 public:
  uint64_t NowNanos() const override { return Read(CLOCK_MONOTONIC_COARSE); }
};

}  // namespace

uint64_t MonotonicNanos() { return Read(CLOCK_MONOTONIC); }

Clock* Clock::Real() {
  static RealClock* clock = new RealClock();
  return clock;
}

Clock* Clock::Coarse() {
  static CoarseClock* clock = new CoarseClock();
  return clock;
}

}  // namespace pagepool::base
