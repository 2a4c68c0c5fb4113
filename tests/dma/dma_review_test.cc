// Adversarial review of dma/: single-threaded regression tests for the issues the review found.
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "dma/device.h"
#include "dma/mapping_checker.h"
#include "gtest/gtest.h"

namespace pagepool::dma {
namespace {

// The checker's shard of an address (white box: mirrors MappingChecker::Impl::ShardFor).
unsigned ShardOf(DmaAddr addr) {
  const uint64_t h = (addr >> kPageShift) * 0x9E3779B97F4A7C15ull;
  return static_cast<unsigned>(h >> 60 & (MappingChecker::kShards - 1));
}

// An address unmapped again and again (the IOVA magazines hand the same IOVA back at once, so this
// is the common case) fills the per-shard FIFO of recent unmaps with copies of itself. When the
// oldest copy leaves the FIFO, the tombstone must stay: the address was unmapped far more recently
// than that. A double unmap right after must count as double_unmap, not unknown_unmap.
TEST(ReviewMappingChecker, RepeatedlyUnmappedAddressKeepsItsTombstone) {
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

}  // namespace
}  // namespace pagepool::dma
