// File: tests/dma/mapping_checker_test.cc
//
// MappingChecker: every counter moves when, and only when, it should.
#include "dma/mapping_checker.h"

#include <cstdint>
#include <set>
#include <tuple>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pagepool::dma {
namespace {

using ::testing::HasSubstr;

constexpr DmaDirection kBi = DmaDirection::kBidirectional;
constexpr DmaDirection kTo = DmaDirection::kToDevice;
constexpr DmaDirection kFrom = DmaDirection::kFromDevice;

bool AllZero(const CheckerCounters& c) { return c.Total() == 0; }

TEST(MappingCheckerTest, MapUnmapCountsNothing) {
  MappingChecker c;
  c.OnMap(0x1000, 0x5000, 4096, kFrom);
  c.OnMap(0x2000, 0x6000, 8192, kTo);
  EXPECT_EQ(c.live_mappings(), 2u);
  EXPECT_TRUE(c.IsLive(0x1000));
  EXPECT_TRUE(c.OnUnmap(0x1000, 4096, kFrom).ok());
  EXPECT_FALSE(c.IsLive(0x1000));
  EXPECT_TRUE(c.OnUnmap(0x2000, 8192, kTo).ok());
  EXPECT_EQ(c.live_mappings(), 0u);
  EXPECT_TRUE(AllZero(c.counters()));
}

TEST(MappingCheckerTest, UnknownUnmap) {
  MappingChecker c;
  absl::Status s = c.OnUnmap(0xabc000, 4096, kBi);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("0xabc000"));
  EXPECT_THAT(s.message(), HasSubstr("4096"));
  CheckerCounters k = c.counters();
  EXPECT_EQ(k.unknown_unmap, 1u);
  EXPECT_EQ(k.Total(), 1u);
}

TEST(MappingCheckerTest, DoubleUnmap) {
  MappingChecker c;
  c.OnMap(0x3000, 0x7000, 4096, kFrom);
  ASSERT_TRUE(c.OnUnmap(0x3000, 4096, kFrom).ok());
  absl::Status s = c.OnUnmap(0x3000, 4096, kFrom);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("double unmap"));
  EXPECT_THAT(s.message(), HasSubstr("0x3000"));
  EXPECT_THAT(s.message(), HasSubstr("0x7000"));
  CheckerCounters k = c.counters();
  EXPECT_EQ(k.double_unmap, 1u);
  EXPECT_EQ(k.unknown_unmap, 0u);
  EXPECT_EQ(k.Total(), 1u);
  // The address mapped again is fine, and a second round is a double unmap again.
  c.OnMap(0x3000, 0x8000, 4096, kTo);
  EXPECT_TRUE(c.OnUnmap(0x3000, 4096, kTo).ok());
  EXPECT_FALSE(c.OnUnmap(0x3000, 4096, kTo).ok());
  EXPECT_EQ(c.counters().double_unmap, 2u);
  EXPECT_EQ(c.counters().Total(), 2u);
  EXPECT_EQ(c.live_mappings(), 0u);
}

TEST(MappingCheckerTest, OldDoubleUnmapBecomesUnknownUnmap) {
  // The tombstone record is bounded: after enough other unmaps, a double unmap is reported as an
  // unknown unmap (still refused and counted).
  MappingChecker c;
  c.OnMap(0x1000, 0x1000, 4096, kBi);
  ASSERT_TRUE(c.OnUnmap(0x1000, 4096, kBi).ok());
  const uint64_t n = uint64_t{MappingChecker::kShards} * MappingChecker::kRecentUnmapsPerShard * 4;
  for (uint64_t i = 0; i < n; ++i) {
    const DmaAddr a = 0x100000000ull + i * 4096;
    c.OnMap(a, a, 4096, kBi);
    ASSERT_TRUE(c.OnUnmap(a, 4096, kBi).ok());
  }
  EXPECT_FALSE(c.OnUnmap(0x1000, 4096, kBi).ok());
  EXPECT_EQ(c.counters().unknown_unmap, 1u);
  EXPECT_EQ(c.counters().double_unmap, 0u);
  // A recent one is still a double unmap.
  const DmaAddr last = 0x100000000ull + (n - 1) * 4096;
  EXPECT_FALSE(c.OnUnmap(last, 4096, kBi).ok());
  EXPECT_EQ(c.counters().double_unmap, 1u);
}

TEST(MappingCheckerTest, SizeMismatchKeepsMappingLive) {
  MappingChecker c;
  c.OnMap(0x4000, 0x9000, 4096, kFrom);
  absl::Status s = c.OnUnmap(0x4000, 8192, kFrom);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("different size"));
  EXPECT_THAT(s.message(), HasSubstr("4096"));
  EXPECT_THAT(s.message(), HasSubstr("8192"));
  EXPECT_EQ(c.counters().size_mismatch, 1u);
  EXPECT_EQ(c.counters().Total(), 1u);
  EXPECT_EQ(c.live_mappings(), 1u);
  EXPECT_TRUE(c.OnUnmap(0x4000, 4096, kFrom).ok());
  EXPECT_EQ(c.counters().Total(), 1u);
}

TEST(MappingCheckerTest, DirectionMismatchKeepsMappingLive) {
  MappingChecker c;
  c.OnMap(0x5000, 0x9000, 4096, kFrom);
  absl::Status s = c.OnUnmap(0x5000, 4096, kTo);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("different direction"));
  EXPECT_THAT(s.message(), HasSubstr("from_device"));
  EXPECT_THAT(s.message(), HasSubstr("to_device"));
  EXPECT_EQ(c.counters().direction_mismatch, 1u);
  EXPECT_EQ(c.counters().Total(), 1u);
  EXPECT_EQ(c.live_mappings(), 1u);
  // Both wrong: both counted once.
  EXPECT_FALSE(c.OnUnmap(0x5000, 1, kBi).ok());
  EXPECT_EQ(c.counters().direction_mismatch, 2u);
  EXPECT_EQ(c.counters().size_mismatch, 1u);
  EXPECT_TRUE(c.OnUnmap(0x5000, 4096, kFrom).ok());
  EXPECT_EQ(c.counters().Total(), 3u);
}

TEST(MappingCheckerTest, Sync) {
  MappingChecker c;
  c.OnMap(0x6000, 0xa000, 4096, kFrom);
  c.OnMap(0x8000, 0xb000, 4096, kBi);
  // In bounds, right direction.
  EXPECT_TRUE(c.OnSync(0x6000, 0, 4096, kFrom).ok());
  EXPECT_TRUE(c.OnSync(0x6000, 128, 1500, kFrom).ok());
  EXPECT_TRUE(c.OnSync(0x6000, 4096, 0, kFrom).ok());
  // A bidirectional mapping may be synced either way.
  EXPECT_TRUE(c.OnSync(0x8000, 0, 64, kTo).ok());
  EXPECT_TRUE(c.OnSync(0x8000, 0, 64, kFrom).ok());
  EXPECT_TRUE(AllZero(c.counters()));

  absl::Status s = c.OnSync(0x6000, 4000, 200, kFrom);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("outside"));
  EXPECT_EQ(c.counters().size_mismatch, 1u);
  EXPECT_FALSE(c.OnSync(0x6000, ~uint64_t{0}, 2, kFrom).ok());  // overflowing offset
  EXPECT_EQ(c.counters().size_mismatch, 2u);

  s = c.OnSync(0x6000, 0, 64, kTo);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c.counters().direction_mismatch, 1u);

  s = c.OnSync(0x7000, 0, 64, kFrom);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("0x7000"));
  EXPECT_EQ(c.counters().sync_unknown, 1u);
  // A sync after unmap is a sync of an unknown address.
  ASSERT_TRUE(c.OnUnmap(0x6000, 4096, kFrom).ok());
  EXPECT_FALSE(c.OnSync(0x6000, 0, 64, kFrom).ok());
  EXPECT_EQ(c.counters().sync_unknown, 2u);
  EXPECT_EQ(c.counters().Total(), 5u);
}

TEST(MappingCheckerTest, SameAddressMappedTwice) {
  // Passthrough: two maps of one page give one bus address; both are live.
  MappingChecker c;
  c.OnMap(0x9000, 0x9000, 4096, kBi);
  c.OnMap(0x9000, 0x9000, 4096, kBi);
  EXPECT_EQ(c.live_mappings(), 2u);
  EXPECT_TRUE(c.OnUnmap(0x9000, 4096, kBi).ok());
  EXPECT_TRUE(c.IsLive(0x9000));
  EXPECT_TRUE(c.OnUnmap(0x9000, 4096, kBi).ok());
  EXPECT_FALSE(c.OnUnmap(0x9000, 4096, kBi).ok());
  EXPECT_EQ(c.counters().double_unmap, 1u);
  EXPECT_EQ(c.counters().Total(), 1u);
}

TEST(MappingCheckerTest, CallAfterUnbind) {
  MappingChecker c;
  c.OnCallAfterUnbind();
  c.OnCallAfterUnbind();
  EXPECT_EQ(c.counters().call_after_unbind, 2u);
  EXPECT_EQ(c.counters().Total(), 2u);
}

TEST(MappingCheckerTest, UnbindReportsAndForgetsLiveMappings) {
  MappingChecker c;
  std::set<std::tuple<DmaAddr, uint64_t, DmaDirection>> mapped;
  for (uint64_t i = 0; i < 100; ++i) {
    const DmaAddr a = 0x10000 + i * 4096;
    c.OnMap(a, a, 4096, i % 2 ? kTo : kFrom);
    mapped.emplace(a, 4096, i % 2 ? kTo : kFrom);
  }
  c.OnMap(0x20000000, 0x1000, 8192, kBi);
  ASSERT_TRUE(c.OnUnmap(0x20000000, 8192, kBi).ok());  // not live: not reported
  std::set<std::tuple<DmaAddr, uint64_t, DmaDirection>> seen;
  c.OnUnbind([&](DmaAddr a, uint64_t size, DmaDirection dir) { seen.emplace(a, size, dir); });
  EXPECT_EQ(seen, mapped);
  EXPECT_EQ(c.live_mappings(), 0u);
  CheckerCounters k = c.counters();
  EXPECT_EQ(k.live_at_unbind, 100u);
  EXPECT_EQ(k.Total(), 100u);
  // Nothing live the second time.
  int calls = 0;
  c.OnUnbind([&](DmaAddr, uint64_t, DmaDirection) { ++calls; });
  EXPECT_EQ(calls, 0);
  EXPECT_EQ(c.counters().live_at_unbind, 100u);
  // A torn-down mapping unmapped later is a double unmap.
  EXPECT_FALSE(c.OnUnmap(0x10000, 4096, kFrom).ok());
  EXPECT_EQ(c.counters().double_unmap, 1u);
}

TEST(MappingCheckerTest, UnbindWithNothingLiveCountsNothing) {
  MappingChecker c;
  c.OnMap(0x1000, 0x1000, 4096, kBi);
  ASSERT_TRUE(c.OnUnmap(0x1000, 4096, kBi).ok());
  c.OnUnbind([](DmaAddr, uint64_t, DmaDirection) { ADD_FAILURE() << "nothing is live"; });
  EXPECT_TRUE(AllZero(c.counters()));
}

}  // namespace
}  // namespace pagepool::dma
