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
#include "tests/dma/dma_test_util.h"

namespace pagepool::dma {
namespace {

using ::testing::HasSubstr;

bool AllZero(const CheckerCounters& c) { return c.Total() == 0; }

// The checker's shard of an address.
unsigned ShardOf(DmaAddr addr) { return MappingChecker::ShardOf(addr); }

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

// An address unmapped again and again (the IOVA magazines hand the same IOVA back at once, so this
// is the common case) fills the per-shard FIFO of recent unmaps with copies of itself. When the
// oldest copy leaves the FIFO, the tombstone must stay: the address was unmapped far more recently
// than that. A double unmap right after must count as double_unmap, not unknown_unmap.
TEST(MappingCheckerTest, RepeatedlyUnmappedAddressKeepsItsTombstone) {
  MappingChecker checker;
  const DmaAddr hot = 0x7000;
  const unsigned shard = ShardOf(hot);
  constexpr unsigned kFifo = MappingChecker::kRecentUnmapsPerShard;
  for (unsigned i = 0; i < kFifo / 2; ++i) {
    checker.OnMap(hot, 0x100000, 4096, DmaDirection::kToDevice);
    ASSERT_TRUE(checker.OnUnmap(hot, 4096, DmaDirection::kToDevice).ok());
  }
  // Other unmaps in the same shard: fewer than the FIFO holds since hot's last unmap.
  unsigned others = 0;
  for (DmaAddr a = 0x10000000; others < kFifo / 2 + 16; a += 4096) {
    if (ShardOf(a) != shard || a == hot) continue;
    checker.OnMap(a, a, 4096, DmaDirection::kToDevice);
    ASSERT_TRUE(checker.OnUnmap(a, 4096, DmaDirection::kToDevice).ok());
    ++others;
  }
  EXPECT_FALSE(checker.OnUnmap(hot, 4096, DmaDirection::kToDevice).ok());
  const CheckerCounters c = checker.counters();
  EXPECT_EQ(c.double_unmap, 1u);
  EXPECT_EQ(c.unknown_unmap, 0u);
}

// Like dma-debug's hash_fn, neighbouring pages stay neighbours: an aligned group of 64 pages
// shares a shard (so a walk over a bulk allocation's pages reads one table in order), and the
// groups are spread over every shard.
TEST(MappingCheckerTest, NeighbouringPagesShareAShardAndGroupsSpread) {
  constexpr DmaAddr kGroupBytes = 64 * 4096;
  std::set<unsigned> shards;
  for (DmaAddr group = 0x40000000; group < 0x40000000 + 256 * kGroupBytes; group += kGroupBytes) {
    const unsigned shard = ShardOf(group);
    for (DmaAddr a = group; a < group + kGroupBytes; a += 4096) {
      ASSERT_EQ(ShardOf(a), shard) << std::hex << a;
    }
    shards.insert(shard);
  }
  EXPECT_EQ(shards.size(), MappingChecker::kShards);
}

// Prefetch is a hint: it changes no mapping, no tombstone and no counter.
TEST(MappingCheckerTest, PrefetchChangesNothing) {
  MappingChecker c;
  c.OnMap(0x1000, 0x1000, 4096, kBi);
  c.OnMap(0x2000, 0x2000, 4096, kBi);
  ASSERT_TRUE(c.OnUnmap(0x2000, 4096, kBi).ok());
  for (DmaAddr a : {DmaAddr{0x1000}, DmaAddr{0x2000}, DmaAddr{0x3000}}) c.Prefetch(a);
  EXPECT_EQ(c.counters().Total(), 0u);
  EXPECT_EQ(c.live_mappings(), 1u);
  EXPECT_TRUE(c.IsLive(0x1000));
  EXPECT_FALSE(c.IsLive(0x2000));
  EXPECT_TRUE(c.OnUnmap(0x1000, 4096, kBi).ok());
  EXPECT_FALSE(c.OnUnmap(0x2000, 4096, kBi).ok());  // still a recent tombstone
  EXPECT_FALSE(c.OnUnmap(0x3000, 4096, kBi).ok());  // still unknown
  EXPECT_EQ(c.counters().double_unmap, 1u);
  EXPECT_EQ(c.counters().unknown_unmap, 1u);
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

// Unbind tombstones every live mapping; pushing them into a full FIFO must not erase the tombstone
// of another address of the same unbind whose older copy is evicted (a double unmap after unbind).
TEST(MappingCheckerTest, UnbindTombstonesSurviveAFullFifo) {
  MappingChecker checker;
  const DmaAddr first = 0x7000;
  const unsigned shard = ShardOf(first);
  std::vector<DmaAddr> same;
  for (DmaAddr a = 0x10000000; same.size() < MappingChecker::kRecentUnmapsPerShard; a += 4096) {
    if (ShardOf(a) == shard) same.push_back(a);
  }
  // first is the oldest FIFO slot, then the FIFO fills up.
  checker.OnMap(first, 0, 4096, DmaDirection::kToDevice);
  ASSERT_TRUE(checker.OnUnmap(first, 4096, DmaDirection::kToDevice).ok());
  for (size_t i = 0; i + 1 < same.size(); ++i) {
    checker.OnMap(same[i], 0, 4096, DmaDirection::kToDevice);
    ASSERT_TRUE(checker.OnUnmap(same[i], 4096, DmaDirection::kToDevice).ok());
  }
  // Live at unbind: first again and another address.
  checker.OnMap(first, 0, 4096, DmaDirection::kToDevice);
  checker.OnMap(same.back(), 0, 4096, DmaDirection::kToDevice);
  uint64_t torn_down = 0;
  checker.OnUnbind([&](DmaAddr, uint64_t, DmaDirection) { ++torn_down; });
  EXPECT_EQ(torn_down, 2u);
  EXPECT_FALSE(checker.OnUnmap(first, 4096, DmaDirection::kToDevice).ok());
  EXPECT_FALSE(checker.OnUnmap(same.back(), 4096, DmaDirection::kToDevice).ok());
  EXPECT_EQ(checker.counters().double_unmap, 2u);
  EXPECT_EQ(checker.counters().unknown_unmap, 0u);
}

// Device::Unbind gives the history back: a checker that saw many unmaps holds its tables and
// FIFOs until ReleaseHistory, which keeps live mappings and nothing else.
TEST(MappingCheckerTest, ReleaseHistoryGivesTheMemoryBackAndKeepsLiveMappings) {
  MappingChecker c;
  const uint64_t empty = c.memory_bytes();
  for (uint64_t i = 0; i < 40000; ++i) {
    const DmaAddr a = 0x100000 + i * 4096;
    c.OnMap(a, a, 4096, kBi);
    ASSERT_TRUE(c.OnUnmap(a, 4096, kBi).ok());
  }
  c.OnMap(0x7000, 0x7000, 4096, kTo);
  const uint64_t full = c.memory_bytes();
  EXPECT_GT(full, empty + MappingChecker::kShards * MappingChecker::kRecentUnmapsPerShard * 8);
  c.ReleaseHistory();
  EXPECT_LT(c.memory_bytes(), empty + 4096);
  EXPECT_EQ(c.live_mappings(), 1u);
  EXPECT_TRUE(c.IsLive(0x7000));
  // The live mapping is still known; a past one is now unknown rather than double.
  EXPECT_TRUE(c.OnUnmap(0x7000, 4096, kTo).ok());
  EXPECT_FALSE(c.OnUnmap(0x100000, 4096, kBi).ok());
  EXPECT_EQ(c.counters().unknown_unmap, 1u);
  EXPECT_EQ(c.counters().double_unmap, 0u);
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
