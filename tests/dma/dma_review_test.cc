// Adversarial review of dma/: single-threaded regression tests for the issues the review found.
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "dma/device.h"
#include "dma/iommu_domain.h"
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

// Unbind tombstones every live mapping; pushing them into a full FIFO must not erase the tombstone
// of another address of the same unbind whose older copy is evicted (a double unmap after unbind).
TEST(ReviewMappingChecker, UnbindTombstonesSurviveAFullFifo) {
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

// dma_sync_single_for_{device,cpu} with a direction outside the enum (the kernel BUG()s on
// !valid_dma_direction) must be refused like map_page and unmap_page refuse it, also on a
// bidirectional mapping (whose direction check accepts any direction).
TEST(ReviewDevice, SyncRefusesAnInvalidDirection) {
  for (IommuMode mode : {IommuMode::kStrict, IommuMode::kPassthrough}) {
    DeviceConfig c;
    c.name = "sync";
    c.mode = mode;
    absl::StatusOr<std::unique_ptr<Device>> dev = Device::Create(c);
    ASSERT_TRUE(dev.ok());
    absl::StatusOr<DmaAddr> a = (*dev)->MapPage(0x200000, 4096, DmaDirection::kBidirectional);
    ASSERT_TRUE(a.ok());
    const auto bad = static_cast<DmaDirection>(7);
    EXPECT_EQ((*dev)->SyncForDevice(*a, 0, 4096, bad).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ((*dev)->SyncForCpu(*a, 0, 4096, bad).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ((*dev)->sync_calls(), 0u);
    EXPECT_TRUE((*dev)->SyncForCpu(*a, 0, 4096, DmaDirection::kFromDevice).ok());
    EXPECT_TRUE((*dev)->UnmapPage(*a, 4096, DmaDirection::kBidirectional).ok());
  }
}

// Edges of the address space and of the argument ranges: nothing may abort, wrap or misbehave.
TEST(ReviewDomain, AddressWidthEdgesAndHugeArguments) {
  for (unsigned width : {39u, 48u, 57u}) {
    DomainConfig c;
    c.address_width = width;
    absl::StatusOr<std::unique_ptr<IommuDomain>> made = IommuDomain::Create(c);
    ASSERT_TRUE(made.ok());
    IommuDomain& d = **made;
    const uint64_t limit = uint64_t{1} << width;
    const uint32_t rw = kProtRead | kProtWrite;
    // The last page, the last 2 MiB and the last 1 GiB of the space.
    for (uint64_t size : {uint64_t{4096}, kSize2M, kSize1G}) {
      ASSERT_TRUE(d.Map(limit - size, kSize1G, size, rw).ok()) << width << " " << size;
      absl::StatusOr<PhysAddr> pa = d.Translate(limit - 1, true);
      ASSERT_TRUE(pa.ok());
      EXPECT_EQ(*pa, kSize1G + size - 1);
      uint64_t n = 0;
      d.ForEachPresent(limit - 1, ~uint64_t{0}, [&](const PresentEntry& e) {
        EXPECT_EQ(e.iova, limit - size);
        ++n;
        return true;
      });
      EXPECT_EQ(n, 1u);
      EXPECT_EQ(d.SweepDirty(0, ~uint64_t{0}, [](DmaAddr, uint64_t) {}), 1u);
      ASSERT_TRUE(d.Unmap(limit - size, size).ok());
    }
    EXPECT_FALSE(d.Translate(limit, false).ok());
    EXPECT_FALSE(d.Translate(~uint64_t{0}, true).ok());
    // Ranges that reach or wrap past the width or 2^64.
    EXPECT_EQ(d.Map(limit - 4096, 0, 8192, rw).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(d.Map(4096, 0, ~uint64_t{0} - 4095, rw).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(d.Map(~uint64_t{0} - 4095, 0, 8192, rw).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(d.Map(0, ~uint64_t{0} - 4095, 4096, rw).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(d.Map(0, (uint64_t{1} << 52) - 4096, 8192, rw).code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(d.Map(0, 0, 0, rw).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(d.Unmap(0, 0).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(d.Unmap(limit - 4096, 8192).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(d.Unmap(4096, ~uint64_t{0} - 4095).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(d.Unmap(0, limit).code(), absl::StatusCode::kNotFound);
    d.ForEachPresent(~uint64_t{0}, 0, [](const PresentEntry&) { return true; });
    EXPECT_EQ(d.SweepDirty(limit, ~uint64_t{0}, [](DmaAddr, uint64_t) {}), 0u);
    d.Quiesce();
    EXPECT_EQ(d.stats().table_pages, 1u);
    EXPECT_EQ(d.stats().mapped_pages, 0u);
  }
}

// The Device's size arithmetic near 2^64 and the address width.
TEST(ReviewDevice, HugeSizesAreRefusedWithoutWrapping) {
  for (IommuMode mode : {IommuMode::kStrict, IommuMode::kLazy, IommuMode::kPassthrough}) {
    DeviceConfig c;
    c.name = "huge";
    c.mode = mode;
    c.address_width = 39;
    absl::StatusOr<std::unique_ptr<Device>> dev = Device::Create(c);
    ASSERT_TRUE(dev.ok());
    Device& d = **dev;
    for (uint64_t size : {~uint64_t{0}, ~uint64_t{0} - 4095, uint64_t{1} << 63,
                          (uint64_t{1} << 39) + 1}) {
      EXPECT_FALSE(d.MapPage(0, size, DmaDirection::kToDevice).ok()) << size;
    }
    EXPECT_FALSE(d.MapPage(~uint64_t{0} - 4095, 8192, DmaDirection::kToDevice).ok());
    EXPECT_FALSE(d.MapPage(0, 0, DmaDirection::kToDevice).ok());
    EXPECT_FALSE(d.SyncForCpu(0, ~uint64_t{0}, 2, DmaDirection::kToDevice).ok());
    EXPECT_EQ(d.live_mappings(), 0u);
    EXPECT_EQ(d.domain_stats().mapped_pages, 0u);
    EXPECT_TRUE(d.Unbind().ok());
    EXPECT_EQ(d.violations().live_at_unbind, 0u);
  }
}

}  // namespace
}  // namespace pagepool::dma
