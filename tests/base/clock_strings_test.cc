// Tests of base/clock.h and base/strings.h.
#include <cstdint>

#include "absl/status/status.h"
#include "base/clock.h"
#include "base/strings.h"
#include "gtest/gtest.h"
#include "tests/support/fake_clock.h"

namespace pagepool::base {
namespace {

TEST(Clock, RealAndCoarseAreMonotonicAndAgree) {
  const uint64_t a = Clock::Real()->NowNanos();
  const uint64_t c = Clock::Coarse()->NowNanos();
  const uint64_t b = MonotonicNanos();
  EXPECT_LE(a, b);
  // The coarse clock lags the precise one by at most a tick (a few ms), never leads it by more.
  EXPECT_LE(c, b);
  EXPECT_LT(b - c, uint64_t{100'000'000});
}

TEST(Clock, FakeMovesOnlyWhenTold) {
  testing::FakeClock clock;
  const uint64_t t0 = clock.NowNanos();
  EXPECT_EQ(clock.NowNanos(), t0);
  clock.Advance(10);
  EXPECT_EQ(clock.NowNanos(), t0 + 10);
  clock.Set(5);
  EXPECT_EQ(clock.NowNanos(), 5u);
}

TEST(Strings, Hex) {
  EXPECT_EQ(Hex(0), "0x0");
  EXPECT_EQ(Hex(0xfffffffc1000), "0xfffffffc1000");
}

TEST(Strings, AnnotateKeepsCodeAndPrefixesMessage) {
  const absl::Status s = Annotate(absl::NotFoundError("no pool 7"), "GetPool");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "GetPool: no pool 7");
  EXPECT_TRUE(Annotate(absl::OkStatus(), "x").ok());
}

}  // namespace
}  // namespace pagepool::base
