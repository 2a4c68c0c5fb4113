// Unit tests of IommuDomain and its I/O page table (single-threaded).
#include "dma/iommu_domain.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "dma/internal/io_pgtable.h"
#include "dma/iova_allocator.h"
#include "gtest/gtest.h"
#include "tests/dma/dma_test_util.h"
#include "tests/support/fake_clock.h"

namespace pagepool::dma {
namespace {

std::unique_ptr<IommuDomain> MakeDomain(DomainConfig config = {}) {
  absl::StatusOr<std::unique_ptr<IommuDomain>> d = IommuDomain::Create(config);
  EXPECT_TRUE(d.ok()) << d.status();
  return std::move(d).value();
}

std::unique_ptr<IommuDomain> MakeDomain(unsigned width, bool free_tables,
                                        IommuMode mode = IommuMode::kStrict) {
  DomainConfig c;
  c.address_width = width;
  c.free_empty_tables = free_tables;
  c.mode = mode;
  return MakeDomain(c);
}

// A lazy-mode domain's configuration whose flush queue reads `clock`.
DomainConfig LazyConfig(testing::FakeClock* clock) {
  DomainConfig c;
  c.mode = IommuMode::kLazy;
  c.clock = clock;
  return c;
}

// Tables that should be linked with free_empty_tables on: root + one per level above each leaf.
uint64_t TablesFor(unsigned levels, unsigned leaf_level) { return 1 + (levels - 1 - leaf_level); }

// ---- creation --------------------------------------------------------------------------------

TEST(IommuDomainCreate, RejectsUnsupportedWidth) {
  for (unsigned w : {0u, 32u, 40u, 52u, 64u}) {
    DomainConfig c;
    c.address_width = w;
    absl::StatusOr<std::unique_ptr<IommuDomain>> d = IommuDomain::Create(c);
    ASSERT_FALSE(d.ok());
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(d.status().message().find(std::to_string(w)), std::string::npos);
  }
}

TEST(IommuDomainCreate, LevelsRootAndIova) {
  const std::pair<unsigned, unsigned> cases[] = {{39, 3}, {48, 4}, {57, 5}};
  for (auto [width, levels] : cases) {
    auto d = MakeDomain(width, true);
    EXPECT_EQ(d->levels(), levels);
    EXPECT_EQ(d->address_width(), width);
    EXPECT_EQ(d->mode(), IommuMode::kStrict);
    EXPECT_TRUE(d->free_empty_tables());
    DomainStats s = d->stats();
    EXPECT_EQ(s.table_pages, 1u);
    EXPECT_EQ(s.table_bytes, 4096u);
    EXPECT_EQ(s.tables_allocated, 1u);
    ASSERT_NE(d->iova(), nullptr);
    // The allocator covers [1, 2^(w-12) - 1]: its top-down first allocation is the last page.
    absl::StatusOr<uint64_t> pfn = d->iova()->Alloc(1);
    ASSERT_TRUE(pfn.ok()) << pfn.status();
    EXPECT_EQ(*pfn, (uint64_t{1} << (width - 12)) - 1);
  }
}

// ---- map / translate per page size and width ---------------------------------------------------

class IommuDomainWidthTest : public ::testing::TestWithParam<unsigned> {};

TEST_P(IommuDomainWidthTest, MapTranslateUnmapEachPageSize) {
  const unsigned width = GetParam();
  auto d = MakeDomain(width, true);
  const uint64_t top = uint64_t{1} << width;
  struct Case {
    uint64_t iova, phys, size;
    unsigned leaf;
  } cases[] = {
      {0x1000, 0x5000, k4K, 0},    {top - k4K, 0x7000, k4K, 0},  // the very last page of the space
      {4 * k2M, 16 * k2M, k2M, 1}, {top - k2M, 8 * k2M, k2M, 1}, {3 * k1G, 5 * k1G, k1G, 2},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.iova);
    ASSERT_TRUE(d->Map(c.iova, c.phys, c.size, kRW).ok());
    EXPECT_EQ(d->stats().mapped_pages, c.size / k4K);
    EXPECT_EQ(d->stats().table_pages, TablesFor(d->levels(), c.leaf));
    for (uint64_t off : {uint64_t{0}, uint64_t{0x123}, c.size - 8}) {
      absl::StatusOr<PhysAddr> pa = d->Translate(c.iova + off, false);
      ASSERT_TRUE(pa.ok()) << pa.status();
      EXPECT_EQ(*pa, c.phys + off);
    }
    int leaves = 0;
    d->ForEachPresent(0, top, [&](const PresentEntry& e) {
      ++leaves;
      EXPECT_EQ(e.iova, c.iova);
      EXPECT_EQ(e.phys, c.phys);
      EXPECT_EQ(e.size, c.size);
      EXPECT_EQ(e.prot, kRW);
      return true;
    });
    EXPECT_EQ(leaves, 1);
    ASSERT_TRUE(d->Unmap(c.iova, c.size).ok());
    EXPECT_EQ(d->stats().mapped_pages, 0u);
    EXPECT_EQ(d->stats().table_pages, 1u);
    EXPECT_EQ(d->Translate(c.iova, false).status().code(), absl::StatusCode::kNotFound);
  }
  d->Quiesce();
  DomainStats s = d->stats();
  EXPECT_EQ(s.pending_free_pages, 0u);
  EXPECT_EQ(s.tables_freed, s.tables_released);
  EXPECT_EQ(s.tables_allocated, s.tables_freed + 1);
}

TEST_P(IommuDomainWidthTest, BeyondWidthIsInvalid) {
  const unsigned width = GetParam();
  auto d = MakeDomain(width, true);
  const uint64_t top = uint64_t{1} << width;
  absl::Status s = d->Map(top, 0, k4K, kRW);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("address width"), std::string::npos) << s;
  EXPECT_EQ(d->Map(top - k4K, 0, 2 * k4K, kRW).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(d->Map(~uint64_t{0} & ~(k4K - 1), 0, k4K, kRW).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(d->Unmap(top, k4K).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(d->Translate(top, false).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(d->stats().table_pages, 1u);
}

INSTANTIATE_TEST_SUITE_P(Widths, IommuDomainWidthTest, ::testing::Values(39u, 48u, 57u));

TEST(IommuDomainMap, ChoosesLargestLeaves) {
  auto d = MakeDomain();
  // 1G + 2M + 4K with everything 1G aligned: one of each size.
  const uint64_t iova = 2 * k1G, phys = 7 * k1G, size = k1G + k2M + k4K;
  ASSERT_TRUE(d->Map(iova, phys, size, kRW).ok());
  std::vector<uint64_t> sizes;
  d->ForEachPresent(0, uint64_t{1} << 48, [&](const PresentEntry& e) {
    sizes.push_back(e.size);
    EXPECT_EQ(e.phys - phys, e.iova - iova);
    return true;
  });
  EXPECT_EQ(sizes, (std::vector<uint64_t>{k1G, k2M, k4K}));
  EXPECT_EQ(d->stats().mapped_pages, size / k4K);
  ASSERT_TRUE(d->Unmap(iova, size).ok());
  EXPECT_EQ(d->stats().table_pages, 1u);
}

TEST(IommuDomainMap, UnalignedPhysUses4KLeavesAcrossTables) {
  auto d = MakeDomain();
  // 2M of IOVA, 2M aligned, but phys only 4K aligned: 512 4K leaves in one leaf table; then a range
  // that straddles two leaf tables.
  ASSERT_TRUE(d->Map(k2M, k4K, k2M, kRW).ok());
  ASSERT_TRUE(d->Map(4 * k2M - 2 * k4K, 0x100000, 4 * k4K, kProtRead).ok());
  int leaves = 0;
  d->ForEachPresent(0, k1G, [&](const PresentEntry& e) {
    EXPECT_EQ(e.size, k4K);
    ++leaves;
    return true;
  });
  EXPECT_EQ(leaves, 516);
  EXPECT_EQ(d->stats().table_pages, 1u + 2 + 3);  // root, L3, L2, three leaf tables
  EXPECT_EQ(*d->Translate(4 * k2M + k4K + 5, false), 0x100000u + 3 * k4K + 5);
}

// ---- errors ------------------------------------------------------------------------------------

TEST(IommuDomainErrors, Misaligned) {
  auto d = MakeDomain();
  absl::Status s = d->Map(0x1234, 0, k4K, kRW);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("0x1234"), std::string::npos) << s;
  s = d->Map(0x1000, 0x10, k4K, kRW);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("0x10"), std::string::npos) << s;
  s = d->Map(0x1000, 0, 100, kRW);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("0x64"), std::string::npos) << s;
  EXPECT_EQ(d->Map(0x1000, 0, 0, kRW).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(d->Map(0x1000, 0, k4K, 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(d->Map(0x1000, uint64_t{1} << 52, k4K, kRW).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(d->Unmap(0x1800, k4K).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(d->Unmap(0x1000, 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(d->stats().table_pages, 1u);
  EXPECT_EQ(d->stats().maps, 0u);
}

TEST(IommuDomainErrors, DoubleMapLeavesNothingHalfMapped) {
  auto d = MakeDomain();
  ASSERT_TRUE(d->Map(0x3000, 0x9000, k4K, kRW).ok());
  absl::Status s = d->Map(0x3000, 0x1000, k4K, kRW);
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_NE(s.message().find("0x3000"), std::string::npos) << s;
  // A range whose third page is taken, spanning into the next leaf table.
  s = d->Map(0x1000, 0x100000, 3 * k4K, kRW);
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
  // A range crossing from one leaf table into the next, failing in the second.
  ASSERT_TRUE(d->Map(k2M + k4K, 0x9000, k4K, kRW).ok());
  const DomainStats before = d->stats();
  s = d->Map(k2M - 4 * k4K, 0x200000, 6 * k4K, kRW);
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_NE(s.message().find("0x201000"), std::string::npos) << s;
  EXPECT_EQ(d->Translate(k2M - 4 * k4K, false).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(d->Translate(k2M, false).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(d->stats().mapped_pages, 2u);
  EXPECT_EQ(d->stats().table_pages, before.table_pages);
  // A 4K map inside a 2M block, and a block over a non-empty table.
  ASSERT_TRUE(d->Map(8 * k2M, 0, k2M, kRW).ok());
  EXPECT_EQ(d->Map(8 * k2M + k4K, 0, k4K, kRW).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(d->Map(0, 0, k2M, kRW).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(*d->Translate(0x3000, false), 0x9000u);
}

// Edges of the address space and of the argument ranges: nothing may abort, wrap or misbehave.
TEST(IommuDomainErrors, AddressWidthEdgesAndHugeArguments) {
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

TEST(IommuDomainErrors, UnmapNotFound) {
  auto d = MakeDomain();
  absl::Status s = d->Unmap(0x5000, k4K);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(s.message().find("0x5000"), std::string::npos) << s;
  ASSERT_TRUE(d->Map(0x5000, 0, k4K, kRW).ok());
  ASSERT_TRUE(d->Unmap(0x5000, k4K).ok());
  EXPECT_EQ(d->Unmap(0x5000, k4K).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(d->stats().unmaps, 1u);
  EXPECT_EQ(d->stats().iotlb_flushes, 1u);
}

TEST(IommuDomainErrors, PartialBlockUnmapIsInvalidAndChangesNothing) {
  auto d = MakeDomain();
  ASSERT_TRUE(d->Map(k2M, 0, k2M, kRW).ok());
  ASSERT_TRUE(d->Map(2 * k2M, k2M, k4K, kRW).ok());
  for (auto [iova, size] : {std::pair{k2M, k4K}, std::pair{k2M + k4K, k2M - k4K},
                            std::pair{k2M - k4K, 2 * k4K}, std::pair{k2M + k4K, k2M + k4K}}) {
    absl::Status s = d->Unmap(iova, size);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << iova << " " << size;
    EXPECT_NE(s.message().find("0x200000"), std::string::npos) << s;
  }
  EXPECT_EQ(d->stats().mapped_pages, 513u);
  EXPECT_EQ(*d->Translate(2 * k2M, false), k2M);
  // Unmapping the whole block plus the 4K page after it is fine.
  ASSERT_TRUE(d->Unmap(k2M, k2M + k4K).ok());
  EXPECT_EQ(d->stats().mapped_pages, 0u);
  EXPECT_EQ(d->stats().table_pages, 1u);
}

TEST(IommuDomainUnmap, RangeWithHolesUnmapsWhatIsThere) {
  auto d = MakeDomain();
  ASSERT_TRUE(d->Map(0x1000, 0x1000, k4K, kRW).ok());
  ASSERT_TRUE(d->Map(0x5000, 0x5000, 2 * k4K, kRW).ok());
  ASSERT_TRUE(d->Unmap(0, 0x10000).ok());
  EXPECT_EQ(d->stats().mapped_pages, 0u);
  EXPECT_EQ(d->stats().table_pages, 1u);
}

// ---- freeing tables ----------------------------------------------------------------------------

TEST(IommuDomainFree, EmptiedTablesAreFreedAfterGracePeriod) {
  auto d = MakeDomain();
  ASSERT_TRUE(d->Map(5 * k1G + 3 * k2M, 0, k4K, kRW).ok());
  ASSERT_TRUE(d->Map(5 * k1G + 3 * k2M + k4K, 0, k4K, kRW).ok());
  EXPECT_EQ(d->stats().table_pages, 4u);
  ASSERT_TRUE(d->Unmap(5 * k1G + 3 * k2M, k4K).ok());
  EXPECT_EQ(d->stats().table_pages, 4u);  // the leaf table still holds one entry
  ASSERT_TRUE(d->Unmap(5 * k1G + 3 * k2M + k4K, k4K).ok());
  DomainStats s = d->stats();
  EXPECT_EQ(s.table_pages, 1u);
  EXPECT_EQ(s.tables_freed, 3u);  // cascaded: leaf, L2, L3
  EXPECT_EQ(s.peak_table_pages, 4u);
  EXPECT_EQ(s.peak_table_bytes, 4u * 4096);
  EXPECT_EQ(s.pending_free_pages + s.tables_released, 3u);
  d->Quiesce();
  s = d->stats();
  EXPECT_EQ(s.pending_free_pages, 0u);
  EXPECT_EQ(s.tables_released, 3u);
  // Recycled tables come back zeroed: map again in the same place and elsewhere.
  ASSERT_TRUE(d->Map(5 * k1G + 3 * k2M + 7 * k4K, 0x7000, k4K, kRW).ok());
  EXPECT_EQ(*d->Translate(5 * k1G + 3 * k2M + 7 * k4K, false), 0x7000u);
  EXPECT_EQ(d->Translate(5 * k1G + 3 * k2M, false).status().code(), absl::StatusCode::kNotFound);
  int leaves = 0;
  d->ForEachPresent(0, uint64_t{1} << 48, [&](const PresentEntry&) { return ++leaves, true; });
  EXPECT_EQ(leaves, 1);
}

TEST(IommuDomainFree, PolicyOffKeepsTables) {
  auto d = MakeDomain(48, false);
  EXPECT_FALSE(d->free_empty_tables());
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(d->Map(i * k2M, 0, k4K, kRW).ok());
    ASSERT_TRUE(d->Unmap(i * k2M, k4K).ok());
  }
  DomainStats s = d->stats();
  EXPECT_EQ(s.table_pages, 1u + 2 + 8);
  EXPECT_EQ(s.tables_freed, 0u);
  EXPECT_EQ(s.mapped_pages, 0u);
}

TEST(IommuDomainFree, Case1InstallRaceLoserFreesItsTable) {
  auto d = MakeDomain();
  internal::IoPageTable* pt = internal::IommuDomainTestPeer::PageTable(*d);
  ASSERT_NE(pt, nullptr);
  bool fired = false;
  // While our Map holds a fresh, unpublished table for root[0], a "neighbour" maps the next page
  // and installs root[0] (and the tables below it) first.
  pt->set_install_hook_for_test([&] {
    if (fired) return;
    fired = true;
    internal::IotlbGather g;
    ASSERT_TRUE(pt->Map(k2M + 9 * k4K, 0x9000, k4K, internal::kPteRead, &g).ok());
  });
  ASSERT_TRUE(d->Map(k2M + 8 * k4K, 0x8000, k4K, kRW).ok());
  pt->set_install_hook_for_test(nullptr);
  EXPECT_TRUE(fired);
  DomainStats s = d->stats();
  EXPECT_EQ(s.install_races_lost, 1u);
  EXPECT_EQ(*d->Translate(k2M + 8 * k4K, false), 0x8000u);
  EXPECT_EQ(*d->Translate(k2M + 9 * k4K, false), 0x9000u);
  EXPECT_EQ(s.table_pages, 4u);       // root, L3, L2, leaf: the loser's table never linked
  EXPECT_EQ(s.tables_allocated, 5u);  // ... but it was allocated
  EXPECT_EQ(s.tables_freed, 1u);      // and freed at once, without a grace period
  EXPECT_EQ(s.tables_released, 1u);
  EXPECT_EQ(s.pending_free_pages, 0u);
  // Both mappings share the leaf table; it goes only when both are gone.
  ASSERT_TRUE(d->Unmap(k2M + 8 * k4K, k4K).ok());
  EXPECT_EQ(d->stats().table_pages, 4u);
  ASSERT_TRUE(d->Unmap(k2M + 9 * k4K, k4K).ok());
  EXPECT_EQ(d->stats().table_pages, 1u);
}

TEST(IommuDomainFree, Case2BlockOverEmptyTable) {
  auto d = MakeDomain(48, /*free_tables=*/false);
  ASSERT_TRUE(d->Map(6 * k2M, 0, k4K, kRW).ok());
  ASSERT_TRUE(d->Unmap(6 * k2M, k4K).ok());
  EXPECT_EQ(d->stats().table_pages, 4u);  // the empty leaf table stays (policy off)
  ASSERT_TRUE(d->Map(6 * k2M, 0x40000000, k2M, kRW).ok());
  DomainStats s = d->stats();
  EXPECT_EQ(s.block_over_table, 1u);
  EXPECT_EQ(s.tables_freed, 1u);
  EXPECT_EQ(s.table_pages, 3u);
  EXPECT_EQ(*d->Translate(6 * k2M + 0x1234, true), 0x40001234u);
  // 1G block over an L2 table that holds only an empty leaf table.
  ASSERT_TRUE(d->Map(3 * k1G + 5 * k2M, 0, k4K, kRW).ok());
  ASSERT_TRUE(d->Unmap(3 * k1G + 5 * k2M, k4K).ok());
  EXPECT_EQ(d->stats().table_pages, 5u);
  ASSERT_TRUE(d->Map(3 * k1G, 2 * k1G, k1G, kRW).ok());
  s = d->stats();
  EXPECT_EQ(s.block_over_table, 2u);
  EXPECT_EQ(s.tables_freed, 3u);
  EXPECT_EQ(s.table_pages, 3u);
  d->Quiesce();
  EXPECT_EQ(d->stats().tables_released, 3u);
  EXPECT_EQ(*d->Translate(3 * k1G + 5 * k2M, false), 2 * k1G + 5 * k2M);
}

TEST(IommuDomainFree, Case3BlockSizedUnmapFindsTable) {
  for (bool free_tables : {false, true}) {
    SCOPED_TRACE(free_tables);
    auto d = MakeDomain(48, free_tables);
    // 2M of 4K leaves (phys not 2M aligned) unmapped by one 2M unmap.
    ASSERT_TRUE(d->Map(10 * k2M, k4K, k2M, kRW).ok());
    ASSERT_TRUE(d->Map(11 * k2M, 0, k4K, kRW).ok());  // keeps L2 alive
    EXPECT_EQ(d->stats().table_pages, 5u);
    ASSERT_TRUE(d->Unmap(10 * k2M, k2M).ok());
    DomainStats s = d->stats();
    EXPECT_EQ(s.block_unmap_table, 1u);
    EXPECT_EQ(s.tables_freed, 1u);
    EXPECT_EQ(s.table_pages, 4u);
    EXPECT_EQ(s.mapped_pages, 1u);
    EXPECT_EQ(d->Translate(10 * k2M + 0x5000, false).status().code(), absl::StatusCode::kNotFound);
    // A 1G unmap over an L2 table of mixed leaves.
    ASSERT_TRUE(d->Map(k1G, k1G, k2M, kRW).ok());
    ASSERT_TRUE(d->Map(k1G + k2M, 0, 3 * k4K, kRW).ok());
    ASSERT_TRUE(d->Unmap(k1G, k1G).ok());
    s = d->stats();
    EXPECT_EQ(s.block_unmap_table, 2u);
    EXPECT_EQ(s.tables_freed, 3u);
    EXPECT_EQ(s.mapped_pages, 1u);
    d->Quiesce();
    EXPECT_EQ(d->stats().tables_released, 3u);
  }
}

// Maps one 4 KiB page in each of `n` 1 GiB regions starting at region `first` (each needs its own
// leaf and 2M-level tables) and unmaps them all: with freeing on, their tables go to the cache.
void MapAndUnmapRegions(IommuDomain* d, uint64_t first, uint64_t n) {
  for (uint64_t i = first; i < first + n; ++i) {
    ASSERT_TRUE(d->Map(i << 30, i << 12, k4K, kRW).ok());
  }
  for (uint64_t i = first; i < first + n; ++i) ASSERT_TRUE(d->Unmap(i << 30, k4K).ok());
  d->Quiesce();  // the freed tables reach the cache
}

// The cache of zeroed tables gives back, at each TrimIdleCaches, what no map took since the call
// before (its low-water mark): a burst's leftovers go within two calls, a cache in use keeps what
// the maps between two calls drew from it.
TEST(IommuDomainTableCache, TrimIdleGivesBackWhatNoMapNeeded) {
  auto d = MakeDomain(48, /*free_tables=*/true);
  MapAndUnmapRegions(d.get(), 1, 20);
  // A leaf and a 2M-level table per region, and the 512G-level table they share.
  const uint64_t burst = d->stats().cached_table_pages;
  ASSERT_EQ(burst, 2 * 20 + 1u);
  const uint64_t released = d->stats().tables_released;

  // The first call only learns the low-water mark: the cache was drawn from before it.
  EXPECT_EQ(d->TrimIdleCaches(), 0u);
  EXPECT_EQ(d->stats().cached_table_pages, burst);
  // Nothing taken for a whole interval: all of it goes.
  EXPECT_EQ(d->TrimIdleCaches(), burst);
  EXPECT_EQ(d->stats().cached_table_pages, 0u);
  EXPECT_EQ(d->stats().tables_released, released);  // released to the cache before, not again

  // A steady load: 5 regions mapped and unmapped in each interval take 11 tables from the cache
  // and put them back; the other tables of the burst sit idle and are given back.
  MapAndUnmapRegions(d.get(), 1, 20);
  ASSERT_EQ(d->stats().cached_table_pages, burst);
  EXPECT_EQ(d->TrimIdleCaches(), 0u);  // sets the mark at `burst`
  MapAndUnmapRegions(d.get(), 100, 5);
  ASSERT_EQ(d->stats().cached_table_pages, burst);  // every table came back
  EXPECT_EQ(d->TrimIdleCaches(), burst - 11);
  EXPECT_EQ(d->stats().cached_table_pages, 11u);
  // The same load in the next interval is served from what was kept, and keeps it.
  const uint64_t allocated = d->stats().tables_allocated;
  MapAndUnmapRegions(d.get(), 100, 5);
  EXPECT_EQ(d->stats().tables_allocated - allocated, 11u);
  EXPECT_EQ(d->stats().cached_table_pages, 11u);
  EXPECT_EQ(d->TrimIdleCaches(), 0u);
  EXPECT_EQ(d->stats().cached_table_pages, 11u);
  EXPECT_EQ(d->stats().mapped_pages, 0u);
  EXPECT_EQ(d->stats().table_pages, 1u);
}

// ---- IOTLB modes -------------------------------------------------------------------------------

TEST(IommuDomainModes, StrictFlushesEveryUnmapAndReleasesIova) {
  auto d = MakeDomain();
  absl::StatusOr<uint64_t> pfn = d->iova()->Alloc(2);
  ASSERT_TRUE(pfn.ok());
  const uint64_t iova = *pfn << kPageShift;
  ASSERT_TRUE(d->Map(iova, 0x10000, 2 * k4K, kRW).ok());
  EXPECT_EQ(d->stats().iova_allocated_pages, 2u);
  ASSERT_TRUE(d->Unmap(iova, 2 * k4K, /*release_iova=*/true).ok());
  DomainStats s = d->stats();
  EXPECT_EQ(s.iotlb_flushes, 1u);
  EXPECT_EQ(s.iotlb_flushed_entries, 1u);
  EXPECT_EQ(s.fq_pending, 0u);
  EXPECT_EQ(s.iova_allocated_pages, 0u);
}

TEST(IommuDomainModes, LazyFlushesByCount) {
  testing::FakeClock clock;
  DomainConfig c = LazyConfig(&clock);
  c.fq_size = 4;
  auto d = MakeDomain(c);
  std::vector<uint64_t> iovas;
  for (int i = 0; i < 4; ++i) {
    absl::StatusOr<uint64_t> pfn = d->iova()->Alloc(1);
    ASSERT_TRUE(pfn.ok());
    iovas.push_back(*pfn << kPageShift);
    ASSERT_TRUE(d->Map(iovas.back(), 0x1000 * i, k4K, kRW).ok());
  }
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(d->Unmap(iovas[i], k4K, true).ok());
  DomainStats s = d->stats();
  EXPECT_EQ(s.fq_pending, 3u);
  EXPECT_EQ(s.iotlb_flushes, 0u);
  EXPECT_EQ(s.iova_allocated_pages, 4u);  // IOVAs come back only after the flush
  EXPECT_EQ(d->Translate(iovas[0], false).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(d->Unmap(iovas[3], k4K, true).ok());
  s = d->stats();
  EXPECT_EQ(s.fq_pending, 0u);
  EXPECT_EQ(s.iotlb_flushes, 1u);
  EXPECT_EQ(s.iotlb_flushed_entries, 4u);
  EXPECT_EQ(s.iova_allocated_pages, 0u);
  EXPECT_EQ(s.table_pages, 1u);
  d->Quiesce();
  s = d->stats();
  EXPECT_EQ(s.pending_free_pages, 0u);
  EXPECT_EQ(s.tables_released, s.tables_freed);
}

TEST(IommuDomainModes, LazyTablesWaitForTheFlush) {
  testing::FakeClock clock;
  auto d = MakeDomain(LazyConfig(&clock));
  ASSERT_TRUE(d->Map(7 * k1G, 0, k4K, kRW).ok());
  ASSERT_TRUE(d->Unmap(7 * k1G, k4K).ok());
  d->Quiesce();
  DomainStats s = d->stats();
  EXPECT_EQ(s.table_pages, 1u);
  EXPECT_EQ(s.pending_free_pages, 3u);  // unlinked, but the IOTLB has not been flushed yet
  EXPECT_EQ(s.tables_released, 0u);
  d->FlushQueues();
  d->Quiesce();
  s = d->stats();
  EXPECT_EQ(s.pending_free_pages, 0u);
  EXPECT_EQ(s.tables_released, 3u);
  EXPECT_EQ(s.iotlb_flushes, 1u);
}

TEST(IommuDomainModes, LazyFlushesByFakeClockTimeout) {
  testing::FakeClock clock;
  auto d = MakeDomain(LazyConfig(&clock));
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(d->Map(i * k4K, 0, k4K, kRW).ok());
  ASSERT_TRUE(d->Unmap(0, k4K).ok());
  clock.Advance(9'999'999);
  ASSERT_TRUE(d->Unmap(k4K, k4K).ok());
  EXPECT_EQ(d->stats().fq_pending, 2u);
  EXPECT_EQ(d->stats().iotlb_flushes, 0u);
  clock.Advance(1);  // the oldest entry is now 10 ms old
  ASSERT_TRUE(d->Unmap(2 * k4K, k4K).ok());
  DomainStats s = d->stats();
  EXPECT_EQ(s.fq_pending, 0u);
  EXPECT_EQ(s.iotlb_flushes, 1u);
  EXPECT_EQ(s.iotlb_flushed_entries, 3u);
}

TEST(IommuDomainModes, Passthrough) {
  auto d = MakeDomain(48, true, IommuMode::kPassthrough);
  EXPECT_EQ(d->mode(), IommuMode::kPassthrough);
  EXPECT_EQ(d->iova(), nullptr);
  absl::Status s = d->Map(0x1000, 0x1000, k4K, kRW);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("0x1000"), std::string::npos) << s;
  EXPECT_EQ(d->Unmap(0x1000, k4K).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(*d->Translate(0xabcd000, true), 0xabcd000u);
  int n = 0;
  d->ForEachPresent(0, ~uint64_t{0}, [&](const PresentEntry&) { return ++n, true; });
  EXPECT_EQ(n, 0);
  EXPECT_EQ(d->SweepDirty(0, ~uint64_t{0}, [](DmaAddr, uint64_t) {}), 0u);
  d->FlushQueues();
  d->Quiesce();
  DomainStats st = d->stats();
  EXPECT_EQ(st.table_pages, 0u);
  EXPECT_EQ(st.tables_allocated, 0u);
}

TEST(IommuDomainIotlb, LazyShowsStaleTranslationsUntilTheFlush) {
  testing::FakeClock clock;
  DomainConfig c = LazyConfig(&clock);
  c.model_iotlb = true;
  auto d = MakeDomain(c);
  ASSERT_TRUE(d->Map(0x40000, 0x9000, k4K, kRW).ok());
  EXPECT_EQ(*d->Translate(0x40010, false), 0x9010u);  // walk, fill
  EXPECT_EQ(*d->Translate(0x40020, false), 0x9020u);  // hit
  EXPECT_EQ(d->iotlb_hits(), 1u);
  ASSERT_TRUE(d->Unmap(0x40000, k4K).ok());
  // The page table says unmapped; the IOTLB still translates reads (a stale DMA).
  EXPECT_EQ(*d->Translate(0x40030, false), 0x9030u);
  EXPECT_EQ(d->iotlb_hits(), 2u);
  // Writes always walk.
  EXPECT_EQ(d->Translate(0x40000, true).status().code(), absl::StatusCode::kNotFound);
  d->FlushQueues();
  EXPECT_EQ(d->Translate(0x40030, false).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(d->iotlb_hits(), 2u);
  // The timeout flush invalidates too.
  ASSERT_TRUE(d->Map(0x50000, 0xa000, k4K, kRW).ok());
  EXPECT_TRUE(d->Translate(0x50000, false).ok());
  ASSERT_TRUE(d->Unmap(0x50000, k4K).ok());
  EXPECT_TRUE(d->Translate(0x50000, false).ok());  // stale
  clock.Advance(10'000'000);
  ASSERT_TRUE(d->Map(0x60000, 0xb000, k4K, kRW).ok());
  ASSERT_TRUE(d->Unmap(0x60000, k4K).ok());  // oldest entry is 10 ms old: flush
  EXPECT_EQ(d->Translate(0x50000, false).status().code(), absl::StatusCode::kNotFound);
}

TEST(IommuDomainIotlb, StrictInvalidatesBeforeUnmapReturns) {
  DomainConfig c;
  c.model_iotlb = true;
  auto d = MakeDomain(c);
  ASSERT_TRUE(d->Map(k2M, 0, k2M, kRW).ok());  // a block: cached per 4 KiB page
  for (uint64_t off = 0; off < k2M; off += 16 * k4K)
    ASSERT_TRUE(d->Translate(k2M + off, false).ok());
  for (uint64_t off = 0; off < k2M; off += 16 * k4K)
    ASSERT_TRUE(d->Translate(k2M + off, false).ok());
  EXPECT_EQ(d->iotlb_hits(), 32u);
  ASSERT_TRUE(d->Unmap(k2M, k2M).ok());
  for (uint64_t off = 0; off < k2M; off += 16 * k4K) {
    EXPECT_EQ(d->Translate(k2M + off, false).status().code(), absl::StatusCode::kNotFound);
  }
  EXPECT_EQ(d->iotlb_hits(), 32u);
  // Remapping the same IOVA elsewhere is seen at once.
  ASSERT_TRUE(d->Map(k2M, 4 * k2M, k4K, kRW).ok());
  EXPECT_EQ(*d->Translate(k2M + 5, false), 4 * k2M + 5);
}

// ---- walkers -----------------------------------------------------------------------------------

TEST(IommuDomainWalk, DirtySweepTestAndClear) {
  auto d = MakeDomain();
  ASSERT_TRUE(d->Map(0x10000, 0x10000, 4 * k4K, kRW).ok());
  ASSERT_TRUE(d->Map(4 * k2M, 0, k2M, kRW).ok());
  ASSERT_TRUE(d->Map(0x20000, 0x20000, k4K, kProtRead).ok());
  ASSERT_TRUE(d->Translate(0x11000, true).ok());
  ASSERT_TRUE(d->Translate(0x11800, true).ok());  // same page: one dirty leaf
  ASSERT_TRUE(d->Translate(0x13000, true).ok());
  ASSERT_TRUE(d->Translate(0x12000, false).ok());
  ASSERT_TRUE(d->Translate(4 * k2M + 0x5000, true).ok());
  // Write to a read-only mapping faults.
  EXPECT_EQ(d->Translate(0x20000, true).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(d->Translate(0x30000, false).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(d->faults(), 2u);

  std::vector<PresentEntry> entries;
  d->ForEachPresent(0, uint64_t{1} << 48, [&](const PresentEntry& e) {
    entries.push_back(e);
    return true;
  });
  ASSERT_EQ(entries.size(), 6u);
  EXPECT_FALSE(entries[0].accessed);
  EXPECT_TRUE(entries[1].accessed && entries[1].dirty);
  EXPECT_TRUE(entries[2].accessed && !entries[2].dirty);
  EXPECT_EQ(entries[4].prot, uint32_t{kProtRead});

  std::vector<std::pair<DmaAddr, uint64_t>> dirty;
  const uint64_t n =
      d->SweepDirty(0, uint64_t{1} << 48, [&](DmaAddr a, uint64_t s) { dirty.emplace_back(a, s); });
  EXPECT_EQ(n, 3u);
  EXPECT_EQ(dirty, (std::vector<std::pair<DmaAddr, uint64_t>>{
                       {0x11000, k4K}, {0x13000, k4K}, {4 * k2M, k2M}}));
  EXPECT_EQ(d->SweepDirty(0, uint64_t{1} << 48, [](DmaAddr, uint64_t) {}), 0u);
  EXPECT_EQ(d->stats().dirty_reports, 3u);
  // A sub-range sweep only touches its leaves.
  ASSERT_TRUE(d->Translate(0x10000, true).ok());
  ASSERT_TRUE(d->Translate(0x13000, true).ok());
  EXPECT_EQ(d->SweepDirty(0x13000, 0x14000, [](DmaAddr, uint64_t) {}), 1u);
  EXPECT_EQ(d->SweepDirty(0, 0x13000, [](DmaAddr, uint64_t) {}), 1u);
}

TEST(IommuDomainWalk, ForEachPresentRangeAndStop) {
  auto d = MakeDomain(57, true);
  const uint64_t high = (uint64_t{1} << 56) + 5 * k1G;
  ASSERT_TRUE(d->Map(high, 0x1000, k4K, kRW).ok());
  ASSERT_TRUE(d->Map(high + k4K, 0x2000, k4K, kRW).ok());
  ASSERT_TRUE(d->Map(0x1000, 0x3000, k4K, kRW).ok());
  std::vector<uint64_t> seen;
  d->ForEachPresent(0, ~uint64_t{0}, [&](const PresentEntry& e) {
    seen.push_back(e.iova);
    return true;
  });
  EXPECT_EQ(seen, (std::vector<uint64_t>{0x1000, high, high + k4K}));
  seen.clear();
  d->ForEachPresent(high, high + 2 * k4K, [&](const PresentEntry& e) {
    seen.push_back(e.iova);
    return false;
  });
  EXPECT_EQ(seen, (std::vector<uint64_t>{high}));
  EXPECT_EQ(d->stats().table_pages, 1u + 4 + 4);
}

TEST(IommuDomainAccounting, PeakAndTotals) {
  auto d = MakeDomain();
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(d->Map(i * k2M, 0, k4K, kRW).ok());
  EXPECT_EQ(d->stats().table_pages, 1u + 2 + 100);
  EXPECT_EQ(d->stats().mapped_pages, 100u);
  EXPECT_EQ(d->stats().maps, 100u);
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(d->Unmap(i * k2M, k4K).ok());
  d->Quiesce();
  DomainStats s = d->stats();
  EXPECT_EQ(s.table_pages, 1u);
  EXPECT_EQ(s.table_bytes, 4096u);
  EXPECT_EQ(s.peak_table_pages, 103u);
  EXPECT_EQ(s.peak_table_bytes, 103u * 4096);
  EXPECT_EQ(s.tables_allocated, 103u);
  EXPECT_EQ(s.tables_freed, 102u);
  EXPECT_EQ(s.tables_released, 102u);
  EXPECT_EQ(s.pending_free_pages, 0u);
  EXPECT_EQ(s.unmaps, 100u);
  EXPECT_EQ(s.mapped_pages, 0u);
  // Tables recycled from the cache are counted as allocated again.
  ASSERT_TRUE(d->Map(0, 0, k4K, kRW).ok());
  EXPECT_EQ(d->stats().tables_allocated, 106u);
}

TEST(IommuDomainTeardown, DestroyWithLiveMappingsAndPendingTables) {
  for (IommuMode mode : {IommuMode::kStrict, IommuMode::kLazy}) {
    auto d = MakeDomain(48, true, mode);
    for (int i = 0; i < 50; ++i) ASSERT_TRUE(d->Map(i * k1G, 0, k4K, kRW).ok());
    for (int i = 0; i < 25; ++i) ASSERT_TRUE(d->Unmap(i * k1G, k4K).ok());
    d.reset();  // ASan checks that every table is freed exactly once
  }
}

}  // namespace
}  // namespace pagepool::dma
